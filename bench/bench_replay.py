"""The whole drawing path in a real browser: replay pen trajectories on the home canvas, read the page's answer.

    .venv/bin/python bench/bench_replay.py [--n 200] [--seed 0] [--pen FILE]

Starts the app (``streamlit run app.py``) and Debian's chromium, and for a sample of pen-drawn
digits of the **validation writers** (from ``--pen``, default the server's pen file; the bundled
test writers when there is none) moves the mouse along each stroke's points on the home page's
canvas (mouse down, one move per recorded point, mouse up: the canvas's own Fabric.js brush
smooths them), waits for the page's run, reads the digit the "Prediction" metric shows and
clears the canvas with the page's Clear button. The same trajectories are drawn offline
(``cnn_core.pen.render_input``: the brush's curves, width 20, then ``preprocess``) and given to
the same model. Prints how often the browser and the offline path agree (target >= 97%), the
accuracy of each, and how close the browser's canvas pixels and 28x28 inputs are to the
offline ones. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # tests/browser.py: the browser tests' helpers

from browser import (  # noqa: I001 - tests/browser.py is found through the path set above
    CANVAS_DRAWING,
    CANVAS_INPUT,
    TIMEOUT_MS,
    VIEWPORT,
    canvas_image,
    default_weights,
    follow_script_runs,
    launch_chromium,
    script_rerun,
    start_streamlit,
    wait_for_script_idle,
)

from cnn_core.checkpoint import load_checkpoint
from cnn_core.data import to_input
from cnn_core.paths import pen_data_file
from cnn_core.pen import APP_BRUSH, CANVAS, PenDigit, load_bundled_pen_trajectories, read_pen_digits, \
    render_canvas, render_input, split_by_writer, to_uint8
from cnn_core.preprocess import preprocess

METRIC_VALUE = '[data-testid="stMetricValue"]'


def sample(digits: list[PenDigit], n: int, seed: int) -> list[PenDigit]:
    """``n`` digits, as many of each class as possible, drawn with a seeded generator."""
    rng = np.random.default_rng(seed)
    by_class = [[d for d in digits if d.label == c] for c in range(10)]
    picked: list[PenDigit] = []
    for c in range(10):
        k = min(len(by_class[c]), n // 10 + (1 if c < n % 10 else 0))
        picked += [by_class[c][i] for i in rng.choice(len(by_class[c]), k, replace=False)]
    return picked


def shown_prediction(page, timeout_ms: int = 15_000) -> str | None:
    """The digit in the visible "Prediction" metric, or None when the page shows none within ``timeout_ms``.

    The canvas may send a stroke in more than one message (right after Clear, the reloaded canvas
    first reports the old, empty drawing), so the answer can come one run after the stroke's.
    """
    import re

    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.wait_for_function(
            """() => [...document.querySelectorAll('[data-testid="stMetricLabel"]')]
                         .some(e => e.offsetParent !== null && e.innerText.trim() === 'Prediction')""",
            timeout=timeout_ms)
        wait_for_script_idle(page)
    except PlaywrightTimeout:
        return None
    label = page.get_by_test_id("stMetricLabel").filter(has_text=re.compile(r"^\s*Prediction\s*$"))
    value = page.get_by_test_id("stMetric").filter(has=label).filter(visible=True).locator(METRIC_VALUE)
    if value.count() == 0:
        return None
    return value.first.inner_text().strip()


def settle(page, runs, quiet_ms: int = 800) -> None:
    """Wait until no script run has finished for ``quiet_ms``: every message of the last stroke is answered."""
    while True:
        before = runs.finished
        page.wait_for_timeout(quiet_ms)  # the canvas may still send: there is no event for "nothing more"
        wait_for_script_idle(page)
        if runs.finished == before:
            return


def replay(page, digit: PenDigit) -> None:
    """Draw the digit's strokes with the mouse, one move per recorded point, waiting for each stroke's run."""
    box = page.locator(CANVAS_INPUT).first.bounding_box()
    sx, sy = box["width"] / CANVAS, box["height"] / CANVAS
    for stroke in digit.strokes:
        with script_rerun(page):
            x0, y0 = stroke[0]
            page.mouse.move(box["x"] + x0 * sx, box["y"] + y0 * sy)
            page.mouse.down()
            for x, y in stroke[1:]:
                page.mouse.move(box["x"] + x * sx, box["y"] + y * sy, steps=1)
            page.mouse.up()


def clear(page) -> None:
    """The page's Clear button, and wait until no prediction is shown."""
    button = page.get_by_role("button", name="Clear")
    with script_rerun(page):
        button.first.click()
    page.wait_for_function(
        """() => ![...document.querySelectorAll('[data-testid="stMetricLabel"]')]
                     .some(e => e.offsetParent !== null && e.innerText.trim() === 'Prediction')""",
        timeout=TIMEOUT_MS)


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--n", type=int, default=200, help="digits to replay")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pen", default=None, help="pen-trajectory file (default: the server's)")
    a = p.parse_args()
    torch.set_num_threads(1)
    pen_file = a.pen or pen_data_file()
    if pen_file is not None:
        digits = split_by_writer(read_pen_digits(pen_file))["validation"]
        where = f"validation writers of {pen_file}"
    else:
        digits = load_bundled_pen_trajectories()
        where = "the bundled test writers (no pen file for the validation writers)"
    chosen = sample(digits, a.n, a.seed)
    weights = default_weights()
    model = load_checkpoint(weights).model

    offline_inputs = np.stack([to_uint8(render_input(d.strokes, APP_BRUSH)) for d in chosen])
    with torch.inference_mode():
        offline = model(to_input(torch.from_numpy(offline_inputs))).argmax(1).tolist()

    from playwright.sync_api import sync_playwright

    server = start_streamlit("app.py")
    browser_preds: list[int | None] = []
    canvas_diffs, input_diffs, seconds = [], [], []
    try:
        with sync_playwright() as pw:
            browser = launch_chromium(pw)
            context = browser.new_context(viewport=VIEWPORT)
            context.set_default_timeout(TIMEOUT_MS)
            page = context.new_page()
            runs = follow_script_runs(page)
            page.goto(server.url)
            wait_for_script_idle(page)
            page.locator(CANVAS_INPUT).wait_for(state="visible")
            for i, d in enumerate(chosen):
                started = time.perf_counter()
                replay(page, d)
                settle(page, runs)
                shown = shown_prediction(page)
                browser_preds.append(int(shown) if shown is not None and shown.isdigit() else None)
                drawn = canvas_image(page, CANVAS_DRAWING)
                if drawn.shape[:2] == (CANVAS, CANVAS):
                    grey = drawn[..., :3].mean(axis=2) * (drawn[..., 3] / 255.0)
                    canvas_diffs.append(float(np.abs(grey - render_canvas(d.strokes, APP_BRUSH)).mean() / 255))
                    seen = preprocess(drawn).pixels
                    input_diffs.append(float(np.abs(seen - offline_inputs[i] / 255.0).mean()))
                clear(page)
                seconds.append(time.perf_counter() - started)
                if (i + 1) % 20 == 0:
                    print(f"  {i + 1}/{len(chosen)} replayed", flush=True)
            browser.close()
    finally:
        server.stop()

    labels = [d.label for d in chosen]
    n = len(chosen)
    agree = sum(b == o for b, o in zip(browser_preds, offline)) / n
    print(f"\nreplayed {n} pen digits of {len({d.writer for d in chosen})} writers ({where}) on the home canvas "
          f"of the app, answered by {Path(weights).name}")
    print(f"browser and offline predictions agree: {agree:.1%} (target >= 97%)")
    print(f"accuracy in the browser: {sum(b == y for b, y in zip(browser_preds, labels)) / n:.1%}; "
          f"offline (render + preprocess + model): {sum(o == y for o, y in zip(offline, labels)) / n:.1%}")
    print(f"no prediction shown: {sum(b is None for b in browser_preds)}")
    if canvas_diffs:
        print(f"canvas pixels, browser vs offline render: mean |difference| {np.mean(canvas_diffs):.4f} of full "
              f"scale (worst digit {np.max(canvas_diffs):.4f}); 28x28 inputs: {np.mean(input_diffs):.4f} "
              f"(worst {np.max(input_diffs):.4f})")
    print(f"seconds a digit (draw, answer, clear): median {np.median(seconds):.2f}")
    disagreements = [(d.writer, d.label, b, o) for d, b, o in zip(chosen, browser_preds, offline) if b != o]
    for writer, label, b, o in disagreements[:20]:
        print(f"  disagreement: {writer}, a {label}: browser {b}, offline {o}")


if __name__ == "__main__":
    main()
