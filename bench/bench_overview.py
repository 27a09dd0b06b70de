"""The Overview page's cost per run: server time, and bytes sent to the browser.

    .venv/bin/python bench/bench_overview.py [--digits 10] [--browser]

Server side (Streamlit's AppTest, the real script, no browser), for the shipped network:

- ``first run``: imports, model load and process-wide caches;
- ``new digit``: the run after the input changed (every layer's picture rendered again);
- ``new unit``: the run after a click selected another unit (the pictures come from the cache);

and the size of each chart of the strip as sent (its figure's JSON: the layer pictures are PNG data
URIs inside it). With ``--browser``, one app process and headless chromium measure the websocket
bytes the server really sends for: the first load, a click on a map, a second click in the same
chart, and a stroke on the page's canvas.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # tests/browser.py: the app server and chromium helpers

from streamlit.testing.v1 import AppTest

from cnn_core.data import load_bundled_test
from ui.state import DIGIT_KEY, Digit

PAGE = str(ROOT / "pages" / "0_Overview.py")
SELECTED = "ov_selected"


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def server_side(n_digits: int) -> None:
    """Median script time of the page per kind of run, and what each chart weighs."""
    split = load_bundled_test()
    digits = [split.images[i].numpy().astype("float32") / 255 for i in range(n_digits)]
    at = AppTest.from_file(PAGE, default_timeout=300)
    at.session_state[DIGIT_KEY] = Digit(digits[0], "MNIST test #0")
    t0 = time.perf_counter()
    at.run()
    first = time.perf_counter() - t0
    assert not at.exception, [e.value for e in at.exception]
    new_digit, new_unit = [], []
    for i, pixels in enumerate(digits[1:], start=1):
        at.session_state[DIGIT_KEY] = Digit(pixels, f"MNIST test #{i}")
        t0 = time.perf_counter()
        at.run()
        new_digit.append(time.perf_counter() - t0)
        at.session_state[SELECTED] = {"layer": "conv2", "block": i % 64, "index": None}
        t0 = time.perf_counter()
        at.run()
        new_unit.append(time.perf_counter() - t0)
        assert not at.exception, [e.value for e in at.exception]
    print(f"Overview page, server time per run (AppTest, {len(digits) - 1} digits, median):")
    print(f"  first run {ms(first)}, new digit {ms(statistics.median(new_digit))}, "
          f"new unit {ms(statistics.median(new_unit))}")
    charts = {c.key: len(c.proto.spec.encode()) for c in at.get("plotly_chart")}
    images = 0
    for c in at.get("plotly_chart"):
        images += sum(len(t.get("source", "")) for t in json.loads(c.proto.spec)["data"] if t["type"] == "image")
    print("  charts as sent: " + ", ".join(f"{k} {v / 1024:.0f} KiB" for k, v in charts.items())
          + f"; total {sum(charts.values()) / 1024:.0f} KiB, of which the layer pictures {images / 1024:.0f} KiB")


def browser_side() -> None:
    """Websocket bytes the server sends the page per run, in chromium."""
    from browser import CHROMIUM_ARGS, chromium_path, follow_script_runs, script_rerun, start_streamlit
    from playwright.sync_api import sync_playwright

    from ui import overview as ov

    server = start_streamlit("app.py")
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(chromium_path()), args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            follow_script_runs(page)
            sizes: list[int] = []
            page.on("websocket", lambda ws: ws.on("framereceived", lambda f: sizes.append(len(f))))

            def measure(label: str, action) -> None:
                sizes.clear()
                t0 = time.perf_counter()
                with script_rerun(page):
                    action()
                page.wait_for_function("() => document.querySelector('[data-testid^=\"stSkeleton\"]') === null")
                print(f"  {label}: {sum(sizes) / 1024:.0f} KiB in {len(sizes)} messages, "
                      f"{time.perf_counter() - t0:.2f} s to the end of the run")

            def click_tile(channel: int) -> None:
                box = page.locator(".st-key-ov_chart_conv2 .nsewdrag").first.bounding_box()
                panel = ov.layout_panel("conv2", "Conv2d", (64, 14, 14), int(box["height"]))
                x, y = panel.blocks[channel].centre
                page.mouse.move(box["x"] + x, box["y"] + y)
                page.mouse.click(box["x"] + x, box["y"] + y)

            def stroke() -> None:
                box = page.locator("canvas.upper-canvas").bounding_box()
                page.mouse.move(box["x"] + 50, box["y"] + 60)
                page.wait_for_timeout(300)  # the toolbar slides off the canvas once the pointer is on it
                page.mouse.move(box["x"] + 50, box["y"] + 30)
                page.mouse.down()
                for i in range(1, 31):
                    page.mouse.move(box["x"] + 50, box["y"] + 30 + 2 * i, steps=2)
                page.mouse.up()

            print("Overview page, websocket bytes per run (chromium, 1280x800):")
            measure("first load", lambda: page.goto(f"{server.url}/Overview"))
            page.wait_for_timeout(2000)
            measure("click a map of conv2", lambda: click_tile(10))
            measure("click another map of conv2", lambda: click_tile(20))
            measure("a stroke on the page's canvas", stroke)
            browser.close()
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--digits", type=int, default=10, help="digits to run the page on (default 10)")
    parser.add_argument("--browser", action="store_true", help="also measure websocket bytes in chromium")
    args = parser.parse_args()
    logging.getLogger("streamlit").setLevel(logging.ERROR)
    server_side(max(2, args.digits))
    if args.browser:
        browser_side()


if __name__ == "__main__":
    main()
