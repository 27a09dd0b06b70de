"""How much slower pages render while a training job runs in the same server process.

    .venv/bin/python bench/bench_train_load.py [--renders 15] [--train-size 5000] [--page app.py]

One session (Streamlit's AppTest, in this process, as the server would run it) renders the
home page again and again, each time with a new digit (so every render traces a new input:
no cache hit). With nothing else going on (before and after), and while a cnn_core.jobs.TrainingJob
trains the shipped architecture in a background thread, as the "Train your own" page does
(1 epoch on --train-size digits, batch 32, tested on 2,000 digits). Prints the median
render time of each and their ratio (the target is at most 2x on the 2-core reference
machine). Renders are only counted while the job is actually training.

torch's thread count is left as it is (torch.set_num_threads is process-wide): the job and
the renders share the same cores, as they do in the app.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np
import torch
from streamlit.testing.v1 import AppTest

from cnn_core.data import load_mnist, take
from cnn_core.jobs import NICE, TrainingJob
from cnn_core.model import CNNConfig
from cnn_core.paths import BUNDLED_MNIST_DIR, training_data_dir
from cnn_core.samples import load_samples
from cnn_core.train import TrainConfig
from ui.state import DIGIT_KEY, Digit

WARM_UP = 10


def digits(n: int) -> list[np.ndarray]:
    """``n`` different inputs: the sample digits, each shifted by a different small amount of noise."""
    rng = np.random.default_rng(0)
    base = [s.pixels for s in load_samples()]
    return [np.clip(base[i % len(base)] + rng.uniform(0, 0.02, (28, 28)).astype(np.float32), 0, 1)
            for i in range(n)]


def render_times(at: AppTest, inputs: Iterator[np.ndarray], count: int, keep_going=lambda: True) -> list[float]:
    """Seconds of up to ``count`` renders of the page, one new digit (from ``inputs``) per render, while ``keep_going()``."""
    times: list[float] = []
    for pixels in inputs:
        if len(times) >= count or not keep_going():
            break
        at.session_state[DIGIT_KEY] = Digit(pixels, "bench digit")
        start = time.perf_counter()
        at.run()
        elapsed = time.perf_counter() - start
        if at.exception:
            raise RuntimeError(f"the page failed: {[e.value for e in at.exception]}")
        if keep_going():  # a render that overlapped the end of training does not count
            times.append(elapsed)
    return times


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--renders", type=int, default=15, help="renders measured in each condition")
    p.add_argument("--train-size", type=int, default=5000)
    p.add_argument("--page", default="app.py", help="the page to render, relative to the project root")
    p.add_argument("--nice", type=int, default=NICE, help="niceness the training thread adds to itself (0: none)")
    a = p.parse_args(argv)

    at = AppTest.from_file(str(ROOT / a.page), default_timeout=120)
    inputs = iter(digits(4 * a.renders + WARM_UP + 500))
    render_times(at, inputs, WARM_UP)  # warm up: model load, imports, first figures, allocator
    for name in list(logging.root.manager.loggerDict):  # quiet: Streamlit sets a level on each of its loggers
        if name.startswith("streamlit"):
            logging.getLogger(name).setLevel(logging.ERROR)
    idle_before = render_times(at, inputs, a.renders)

    folder = training_data_dir()
    if folder is None:
        raise SystemExit("no MNIST training data: set CNN_EXPLORER_DATA or put ../shared/data/mnist beside the project")
    train, test = load_mnist(folder, "train"), take(load_mnist(BUNDLED_MNIST_DIR, "test"), 2000)
    job = TrainingJob(CNNConfig(), train, test, TrainConfig(epochs=1, batch_size=32, train_size=a.train_size,
                                                            augment=False), name="bench", nice=a.nice).start()
    while job.snapshot().fraction == 0 and not job.snapshot().finished:
        time.sleep(0.05)  # wait for the first batch: count only renders that overlap training
    training = render_times(at, inputs, a.renders, keep_going=lambda: job.snapshot().running)
    snap = job.snapshot()
    job.cancel()
    job.wait(120)
    idle_after = render_times(at, inputs, a.renders)  # idle again: any drift over time shows as a difference
    idle = idle_before + idle_after

    print(f"torch threads: {torch.get_num_threads()}, page: {a.page}, job: 1 epoch on {a.train_size:,} digits, "
          f"nice +{a.nice} "
          f"(reached {snap.fraction:.0%} while measuring)")
    if not idle or not training:
        print("not enough renders measured (the job finished too early?)")
        return 1
    idle_ms, busy_ms = statistics.median(idle) * 1000, statistics.median(training) * 1000
    print(f"median render, idle:           {idle_ms:7.1f} ms over {len(idle)} renders "
          f"(before training {statistics.median(idle_before) * 1000:.1f}, after {statistics.median(idle_after) * 1000:.1f})")
    print(f"median render, while training: {busy_ms:7.1f} ms over {len(training)} renders")
    print(f"ratio: {busy_ms / idle_ms:.2f}x (target <= 2x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
