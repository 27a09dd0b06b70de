"""Benchmark of the pages: median server-side time from a changed input to a rendered page.

    .venv/bin/python bench/bench_app.py [--digits 15]

Each page runs in Streamlit's AppTest (the real script, no browser). For each of
N different MNIST test digits, the digit is set as the session's input and the
page is run; the time of that run is what a user waits for after a stroke,
less the browser's drawing. The first run of each page (imports, model load,
process-wide caches) is reported apart. Targets: home page under 150 ms,
feature-maps page under 1 s.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from streamlit.testing.v1 import AppTest

from cnn_core.data import load_mnist
from cnn_core.paths import BUNDLED_MNIST_DIR
from ui.state import DIGIT_KEY, Digit

PAGES = ["app.py", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "pages").glob("*.py"))]


def time_page(page: str, digits: list[np.ndarray]) -> tuple[float, list[float]]:
    """Seconds of the first run, and of each run after the input changed."""
    at = AppTest.from_file(str(ROOT / page), default_timeout=300)
    t0 = time.perf_counter()
    at.run()
    first = time.perf_counter() - t0
    times = []
    for i, pixels in enumerate(digits):
        at.session_state[DIGIT_KEY] = Digit(pixels, f"bench digit {i}")
        t0 = time.perf_counter()
        at.run()
        times.append(time.perf_counter() - t0)
        if at.exception:
            raise RuntimeError(f"{page}: {at.exception[0].value}")
    return first, times


def main() -> None:
    logging.getLogger("streamlit").setLevel(logging.ERROR)  # AppTest's "missing ScriptRunContext" noise
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(BUNDLED_MNIST_DIR), help="folder with MNIST test files")
    p.add_argument("--digits", type=int, default=15, help="different inputs per page")
    p.add_argument("--pages", nargs="*", default=PAGES, help="page files, relative to the project root")
    a = p.parse_args()
    split = load_mnist(a.data, "test")
    digits = [split.images[i].numpy().astype(np.float32) / 255 for i in range(a.digits)]
    print(f"{'page':<32} {'first run':>10} {'median':>9} {'p90':>9}  (changed input, {a.digits} digits)")
    for page in a.pages:
        first, times = time_page(page, digits)
        p90 = sorted(times)[int(0.9 * (len(times) - 1))]
        print(f"{page:<32} {first * 1000:>8.0f} ms {statistics.median(times) * 1000:>6.0f} ms {p90 * 1000:>6.0f} ms")


if __name__ == "__main__":
    main()
