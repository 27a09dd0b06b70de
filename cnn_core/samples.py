"""A few digits to explore when the user has drawn nothing: real MNIST test digits, bundled with the project."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .data import MnistSplit, load_bundled_test


@dataclass(frozen=True)
class Sample:
    """A ready 28x28 input in [0, 1] with its true label and where it came from."""

    pixels: np.ndarray
    label: int
    source: str


def mnist_samples(split: MnistSplit, per_digit: int = 1) -> list[Sample]:
    """The first ``per_digit`` digits of each class of ``split``, in order 0-9."""
    out: list[Sample] = []
    labels = split.labels.numpy()
    for digit in range(10):
        for i in np.nonzero(labels == digit)[0][:per_digit]:
            out.append(Sample(split.images[i].numpy().astype(np.float32) / 255, digit, f"MNIST test #{i}"))
    return out


def load_samples() -> list[Sample]:
    """One bundled MNIST test digit of each class, 0 to 9."""
    return mnist_samples(load_bundled_test())
