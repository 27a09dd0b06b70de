"""Everything the pages measure over test digits, computed once per model and stored beside it.

The Model, ANN vs CNN, Filters and Why this digit pages show a network measured on the bundled
test digits: accuracy, confusion matrix, mistakes, accuracy on shifted digits, the digits that
excite each filter most. Computing that takes seconds, so it is done once per model: for the
shipped models by ``python -m cnn_core.measure models/NAME.pt`` at training time, stored as
``models/NAME.measurements.json``; for an uploaded or in-app-trained model when a page first needs
it. A stored file names the model's identity (architecture and weights) and the sha256 of the
test data it was measured on, so it is never used for another model or other digits.

    python -m cnn_core.measure models/mnist_cnn.pt [models/mnist_mlp.pt ...]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from torch import nn

from .checkpoint import LoadedModel, WeightsError, atomic_write_bytes, load_checkpoint
from .convolution import conv_layer_names
from .data import MnistDataError, MnistSplit, load_bundled_test, take
from .evaluate import evaluate
from .explain import shift_accuracy_curve, top_activating
from .paths import BUNDLED_DATA_DIR

FORMAT = 1
SHIFTS = tuple(range(-4, 5))  # pixels, in each direction
SHIFT_DIGITS = 1000  # test digits per shifted measurement: a clear curve at a 17th of the cost of all 5,000
MISTAKES_KEPT = 48  # the most confident mistakes kept per split
TOP_K = 10  # digits kept per filter

Progress = Callable[[float, str], None]  # (fraction done, what is being done)


@dataclass(frozen=True)
class SplitMeasurement:
    """A model measured on one set of labelled test digits."""

    name: str  # "mnist" or "pen"
    source: str  # where the digits come from, in words
    n: int
    accuracy: float
    per_class: list[float]
    confusion: list[list[int]]  # rows: true digit, columns: the model's answer
    mistakes: list[int]  # indices into the split, most confident mistakes first
    mistake_predictions: list[int]
    mistake_confidences: list[float]

    @property
    def correct(self) -> int:
        return sum(self.confusion[d][d] for d in range(len(self.confusion)))


@dataclass(frozen=True)
class FilterRanking:
    """For each channel of one convolution, the test digits whose map peaks highest (best first)."""

    layer: str
    indices: list[list[int]]  # (C, k)
    values: list[list[float]]  # (C, k)
    positions: list[list[list[int]]]  # (C, k, 2): row, col of each peak in the map
    n_images: int


@dataclass(frozen=True)
class ShiftCurve:
    """Accuracy on the first ``n_images`` test digits moved by each shift, sideways and up/down."""

    shifts: list[int]
    horizontal: list[float]
    vertical: list[float]
    n_images: int


@dataclass(frozen=True)
class Measurements:
    """Everything measured for one model, and what it was measured on."""

    identity: str  # cnn_core.checkpoint.LoadedModel.identity of the model measured
    data: dict[str, str]  # sha256 of each test set used, by name
    splits: dict[str, SplitMeasurement]  # "mnist" and, when the pen test set is there, "pen"
    shifts: ShiftCurve
    filters: dict[str, FilterRanking] = field(default_factory=dict)  # by conv layer name
    seconds: float = 0.0

    @property
    def mnist(self) -> SplitMeasurement:
        return self.splits["mnist"]

    @property
    def pen(self) -> SplitMeasurement | None:
        return self.splits.get("pen")

    def to_json(self) -> bytes:
        """The measurements as JSON bytes (what ``NAME.measurements.json`` holds)."""
        body = {"format": FORMAT, **asdict(self)}
        return (json.dumps(body, indent=1) + "\n").encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Measurements:
        """Read back :meth:`to_json`; ValueError for anything else."""
        try:
            d = json.loads(raw)
            if d.pop("format") != FORMAT:
                raise ValueError("unknown format")
            return cls(identity=str(d["identity"]), data=dict(d["data"]),
                       splits={k: SplitMeasurement(**v) for k, v in d["splits"].items()},
                       shifts=ShiftCurve(**d["shifts"]),
                       filters={k: FilterRanking(**v) for k, v in d.get("filters", {}).items()},
                       seconds=float(d.get("seconds", 0.0)))
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:
            raise ValueError(f"not a measurements file: {e}") from e


@dataclass(frozen=True)
class TestSets:
    """The labelled digits models are measured on, with the sha256 that identifies each."""

    mnist: MnistSplit
    pen: MnistSplit | None
    digests: dict[str, str]


def _digest(split: MnistSplit) -> str:
    h = hashlib.sha256(split.images.numpy().tobytes())
    h.update(split.labels.numpy().tobytes())
    return h.hexdigest()


def bundled_pen_test() -> MnistSplit | None:
    """The pen-drawn digits of unseen writers bundled in data/pen-digits, or None when they are not there."""
    try:
        from .pen import load_bundled_pen_test
    except ImportError:
        return None
    try:
        result = load_bundled_pen_test()
    except (OSError, ValueError, MnistDataError):
        return None
    return result[0] if isinstance(result, tuple) else result


def load_test_sets() -> TestSets:
    """The bundled MNIST test digits and, when bundled, the pen test digits."""
    mnist = load_bundled_test()
    pen = bundled_pen_test()
    digests = {"mnist": _digest(mnist)}
    if pen is not None:
        digests["pen"] = _digest(pen)
    return TestSets(mnist, pen, digests)


def measure_split(model: nn.Module, split: MnistSplit, name: str, source: str) -> SplitMeasurement:
    """Accuracy, per-class accuracy, confusion matrix and the most confident mistakes of ``model`` on ``split``."""
    result = evaluate(model, split)
    wrong = result.misclassified[:MISTAKES_KEPT]
    return SplitMeasurement(
        name=name, source=source, n=len(split), accuracy=result.accuracy,
        per_class=[float(v) for v in result.per_class], confusion=result.confusion.tolist(),
        mistakes=wrong.tolist(), mistake_predictions=result.predictions[wrong].tolist(),
        mistake_confidences=[float(c) for c in result.confidences[wrong]],
    )


def measure(loaded: LoadedModel, sets: TestSets, progress: Progress | None = None) -> Measurements:
    """Measure ``loaded`` on ``sets``; ``progress(fraction, words)`` is called between the steps."""
    started = time.perf_counter()
    model = loaded.model
    convs = conv_layer_names(model)
    steps = 2 + (sets.pen is not None) + len(convs)
    done = 0

    def step(words: str) -> None:
        if progress is not None:
            progress(done / steps, words)

    step(f"Classifying {len(sets.mnist):,} MNIST test digits")
    splits = {"mnist": measure_split(model, sets.mnist, "mnist", f"{len(sets.mnist):,} MNIST test digits")}
    done += 1
    if sets.pen is not None:
        step(f"Classifying {len(sets.pen):,} pen-drawn digits")
        splits["pen"] = measure_split(model, sets.pen, "pen",
                                      f"{len(sets.pen):,} pen-drawn digits of writers never trained on")
        done += 1
    step(f"Moving {SHIFT_DIGITS:,} test digits by up to {max(SHIFTS)} px")
    part = take(sets.mnist, SHIFT_DIGITS)
    curve = shift_accuracy_curve(model, part.images, part.labels, SHIFTS)
    shifts = ShiftCurve(list(curve.shifts), [float(v) for v in curve.horizontal], [float(v) for v in curve.vertical],
                        curve.n_images)
    done += 1
    filters = {}
    for name in convs:
        step(f"Ranking the test digits for each filter of {name}")
        top = top_activating(model, sets.mnist.images, name, TOP_K)
        filters[name] = FilterRanking(name, top.indices.tolist(), top.values.tolist(), top.positions.tolist(),
                                      top.n_images)
        done += 1
    step("Done")
    return Measurements(loaded.identity, dict(sets.digests), splits, shifts, filters,
                        round(time.perf_counter() - started, 2))


def measurements_path(weights_path: str | Path) -> Path:
    """Where the measurements of a weights file are stored: ``NAME.measurements.json`` beside it."""
    return Path(weights_path).with_suffix(".measurements.json")


def load_stored(weights_path: str | Path, loaded: LoadedModel, sets: TestSets) -> Measurements | None:
    """The stored measurements of ``loaded``, or None when there are none, or they are of another model or data."""
    path = measurements_path(weights_path)
    try:
        stored = Measurements.from_json(path.read_bytes())
    except (OSError, ValueError):
        return None
    if stored.identity != loaded.identity or stored.data != sets.digests:
        return None  # stale: other weights, another architecture, or other test digits
    return stored


def _measure_files(paths: Iterable[str], sets: TestSets) -> int:
    code = 0
    for path in paths:
        try:
            loaded = load_checkpoint(path)
        except WeightsError as e:
            print(f"error: {e}", file=sys.stderr)
            code = 2
            continue
        result = measure(loaded, sets, lambda f, words: print(f"  {f:4.0%} {words}", file=sys.stderr))
        atomic_write_bytes(measurements_path(path), result.to_json())
        pen = f", pen {result.pen.accuracy:.2%}" if result.pen is not None else ""
        print(f"{path}: MNIST {result.mnist.accuracy:.2%}{pen} ({result.seconds:.1f} s) -> {measurements_path(path)}")
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: measure weights files and store the results beside them."""
    p = argparse.ArgumentParser(prog="python -m cnn_core.measure", description="Measure models on the bundled "
                                f"test digits ({BUNDLED_DATA_DIR}) and store the results beside their weights.")
    p.add_argument("weights", nargs="+", help="weights files (each with its .json card beside it)")
    a = p.parse_args(argv)
    return _measure_files(a.weights, load_test_sets())


if __name__ == "__main__":
    raise SystemExit(main())
