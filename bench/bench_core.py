"""Benchmark of cnn_core: trace latency, batched throughput, training time per epoch, peak memory.

    .venv/bin/python bench/bench_core.py [--data ../shared/data/mnist] [--threads 1]

Prints figures; asserts nothing (speed goals are read, not tested).
Target: one trace in under 5 ms median on one CPU core.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cnn_core.checkpoint import load_checkpoint
from cnn_core.data import load_mnist, to_input
from cnn_core.introspect import trace
from cnn_core.model import CNNConfig
from cnn_core.paths import BUNDLED_MNIST_DIR, training_data_dir
from cnn_core.train import TrainConfig, train_model


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) by nearest rank."""
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * len(s)) - 1))]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=None, help="MNIST folder with a train split (default: the server's training "
                   "data); the trace timings use the bundled test digits")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 = one core)")
    p.add_argument("--calls", type=int, default=200)
    p.add_argument("--train-size", type=int, default=10_000, help="digits for the one-epoch timing")
    a = p.parse_args()
    torch.set_num_threads(a.threads)

    model = load_checkpoint().model
    test = load_mnist(BUNDLED_MNIST_DIR, "test")
    x = to_input(test.images[: a.calls])

    for i in range(10):  # warm-up
        trace(model, x[i])
    times = []
    for i in range(a.calls):
        t0 = time.perf_counter()
        trace(model, x[i])
        times.append((time.perf_counter() - t0) * 1000)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    print(f"trace, batch 1: median {statistics.median(times):.2f} ms, p95 {percentile(times, 95):.2f} ms "
          f"over {a.calls} calls")

    batch = to_input(test.images[:1000])
    with torch.inference_mode():
        model(batch)
        t0 = time.perf_counter()
        for _ in range(3):
            model(batch)
        dt = (time.perf_counter() - t0) / 3
    print(f"batched inference, batch 1000: {1000 / dt:,.0f} images/s")

    folder = a.data or training_data_dir()
    if folder is None:
        print("training: skipped (no MNIST training data: pass --data or set CNN_EXPLORER_DATA)")
    else:
        train = load_mnist(folder, "train")
        t0 = time.perf_counter()
        train_model(CNNConfig(), train, None, TrainConfig(epochs=1, train_size=a.train_size))
        print(f"training: {time.perf_counter() - t0:.1f} s per epoch of {min(a.train_size, len(train)):,} digits")

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak memory (max RSS): {peak:.0f} MiB")


if __name__ == "__main__":
    main()
