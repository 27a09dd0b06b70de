"""A few digits to explore when the user has drawn nothing.

Real MNIST test digits when a data folder is there; otherwise digits typed in
a font and preprocessed like a drawing, so the app works with no data at all.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .data import MnistDataError, load_mnist

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA_DIR = PROJECT_ROOT.parent / "shared" / "data" / "mnist"


@dataclass(frozen=True)
class Sample:
    """A ready 28x28 input in [0, 1] with its true label and where it came from."""

    pixels: np.ndarray
    label: int
    source: str


def data_dir() -> Path:
    """The MNIST folder the app uses: $CNN_EXPLORER_DATA, else ../shared/data/mnist."""
    return Path(os.environ.get("CNN_EXPLORER_DATA", DEFAULT_DATA_DIR))


def mnist_samples(folder: str | Path, per_digit: int = 1) -> list[Sample]:
    """The first ``per_digit`` test digits of each class, in order 0-9."""
    split = load_mnist(folder, "test")
    out: list[Sample] = []
    for digit in range(10):
        idx = np.nonzero(split.labels.numpy() == digit)[0][:per_digit]
        out += [Sample(split.images[i].numpy().astype(np.float32) / 255, digit, f"MNIST test #{i}") for i in idx]
    return out


def typed_samples() -> list[Sample]:
    """Digits 0-9 typed in Pillow's built-in font, preprocessed like a drawing."""
    from .preprocess import preprocess

    font = ImageFont.load_default(size=120)
    out = []
    for digit in range(10):
        img = Image.new("L", (160, 160), 0)
        ImageDraw.Draw(img).text((80, 80), str(digit), fill=255, font=font, anchor="mm")
        out.append(Sample(preprocess(img).pixels, digit, "typed digit"))
    return out


def load_samples(folder: str | Path | None = None) -> list[Sample]:
    """MNIST samples from ``folder`` (default: :func:`data_dir`), or typed digits if it has none."""
    try:
        return mnist_samples(folder if folder is not None else data_dir())
    except MnistDataError:
        return typed_samples()
