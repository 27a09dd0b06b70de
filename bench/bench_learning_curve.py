"""How MNIST test accuracy grows with the number of MNIST training digits, for the article's CNN.

    .venv/bin/python bench/bench_learning_curve.py --data ../shared/data/mnist [--sizes 1125 2250 4500 9000]
        [--out-dir /tmp/learning-curve] [--jobs 2]

Trains the shipped MNIST-only recipe (the command in models/README.md: elastic distortion 1.5 px, 90
epochs, seed 0, one thread) on the first N of the 9,000 training digits for each N, with
``python -m cnn_core.train``, and prints each model's accuracy on the 5,000 MNIST test digits and the
error's fall per doubling of the data. Runs ``--jobs`` trainings side by side (each on one thread, so
the weights do not depend on it). Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ["--elastic", "1.5", "--epochs", "90", "--seed", "0", "--threads", "1"]


def train(data: str, size: int, out_dir: Path) -> dict:
    """Train on the first ``size`` training digits; the model card the training script wrote."""
    out = out_dir / f"mnist_cnn_{size}.pt"
    log = out_dir / f"mnist_cnn_{size}.log"
    command = [sys.executable, "-m", "cnn_core.train", "--data", data, "--train-size", str(size), *RECIPE,
               "--out", str(out)]
    with log.open("w") as stream:
        subprocess.run(command, cwd=ROOT, stdout=stream, stderr=subprocess.STDOUT, check=True)
    return json.loads(out.with_suffix(".json").read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="folder with the MNIST IDX files (e.g. ../shared/data/mnist)")
    p.add_argument("--sizes", type=int, nargs="+", default=[1125, 2250, 4500, 9000])
    p.add_argument("--out-dir", type=Path, default=Path("/tmp/learning-curve"))
    p.add_argument("--jobs", type=int, default=2)
    a = p.parse_args()
    a.out_dir.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=a.jobs) as pool:
        cards = list(pool.map(lambda n: train(a.data, n, a.out_dir), a.sizes))
    print(f"{'training digits':>15} {'MNIST test':>11} {'errors':>7} {'validation':>11} {'seconds':>8}")
    previous: tuple[int, float] | None = None
    for size, card in zip(a.sizes, cards):
        m = card["metrics"]
        errors = round((1 - m["test_accuracy"]) * m["test_examples"])
        print(f"{size:>15,} {m['test_accuracy']:>10.2%} {errors:>7} {m['validation_accuracy']:>10.1%} "
              f"{card['train_seconds']:>8.0f}")
        if previous is not None and errors and previous[1]:
            doublings = math.log2(size / previous[0])
            print(f"{'':>15} error x{(errors / previous[1]) ** (1 / doublings):.2f} per doubling")
        previous = (size, errors)


if __name__ == "__main__":
    main()
