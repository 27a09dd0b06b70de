"""MNIST from a local folder of IDX files, or from torchvision's download.

A folder may hold the official names (``train-images-idx3-ubyte``,
``t10k-images-idx3-ubyte``, ...) or subsets such as ``train-10k-images-idx3-ubyte.gz``
and ``test-5k-images-idx3-ubyte.gz``; files may be gzipped or not.
"""

from __future__ import annotations

import gzip
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

Split = Literal["train", "test"]

# Mean and standard deviation of MNIST training pixels in [0, 1]: the network's input normalisation.
MNIST_MEAN = 0.1307
MNIST_STD = 0.3081

IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049


class MnistDataError(ValueError):
    """The data folder has no usable MNIST files; str(e) says what is wrong and where."""


@dataclass(frozen=True)
class MnistSplit:
    """One split of MNIST: uint8 images (N, 28, 28), int64 labels (N,) and where they came from."""

    images: torch.Tensor
    labels: torch.Tensor
    source: str

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise MnistDataError(f"cannot read {path}: {e}") from e


def read_idx(path: str | Path, expected_magic: int) -> np.ndarray:
    """Read an IDX file (gzipped or not) of unsigned bytes, checking its magic number and size."""
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 8:
        raise MnistDataError(f"{path} is too short to be an IDX file")
    magic = int.from_bytes(raw[:4], "big")
    if magic != expected_magic:
        raise MnistDataError(
            f"{path} has IDX magic number {magic}, expected {expected_magic} "
            f"({'images' if expected_magic == IMAGES_MAGIC else 'labels'})"
        )
    ndim = raw[3]
    header = 4 + 4 * ndim
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    expected = int(np.prod(dims))
    if len(raw) - header != expected:
        raise MnistDataError(
            f"{path} declares shape {tuple(dims)} ({expected} bytes) but holds {len(raw) - header}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


_SPLIT_PREFIX = {"train": ("train",), "test": ("test", "t10k")}


def find_idx_files(folder: str | Path, split: Split) -> tuple[Path, Path]:
    """The (images, labels) IDX files of ``split`` in ``folder``; raises MnistDataError if absent."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MnistDataError(f"MNIST folder {folder} does not exist")
    prefixes = "|".join(_SPLIT_PREFIX[split])

    def pick(kind: str, idx: str) -> Path:
        pattern = re.compile(rf"^({prefixes})[-_].*{kind}[-_.]{idx}[-_.]ubyte(\.gz)?$")
        found = sorted(p for p in folder.iterdir() if pattern.match(p.name))
        if not found:
            raise MnistDataError(
                f"no MNIST {split} {kind} file (like '{_SPLIT_PREFIX[split][0]}-{kind}-{idx}-ubyte[.gz]') "
                f"in {folder}"
            )
        return found[0]

    return pick("images", "idx3"), pick("labels", "idx1")


def load_mnist(folder: str | Path, split: Split = "train") -> MnistSplit:
    """Load one split of MNIST from a folder of IDX files."""
    images_path, labels_path = find_idx_files(folder, split)
    images = read_idx(images_path, IMAGES_MAGIC)
    labels = read_idx(labels_path, LABELS_MAGIC)
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise MnistDataError(f"{images_path} holds images of shape {images.shape[1:]}, expected (28, 28)")
    if labels.ndim != 1 or len(labels) != len(images):
        raise MnistDataError(
            f"{images_path.name} has {len(images)} images but {labels_path.name} has {len(labels)} labels"
        )
    if labels.size and labels.max() > 9:
        raise MnistDataError(f"{labels_path} has labels outside 0-9")
    return MnistSplit(
        images=torch.from_numpy(images.copy()),
        labels=torch.from_numpy(labels.astype(np.int64)),
        source=str(images_path),
    )


def download_mnist(root: str | Path, split: Split = "train") -> MnistSplit:
    """The official MNIST split through torchvision (downloads into ``root`` on first use)."""
    from torchvision.datasets import MNIST

    try:
        ds = MNIST(str(root), train=(split == "train"), download=True)
    except Exception as e:  # torchvision raises RuntimeError/URLError/... when offline
        raise MnistDataError(f"could not download MNIST into {root}: {e}") from e
    return MnistSplit(images=ds.data.clone(), labels=ds.targets.clone().long(), source=f"torchvision:{root}")


def get_mnist(folder: str | Path | None, split: Split = "train", download_root: str | Path | None = None) -> MnistSplit:
    """Load from ``folder`` if given, else download with torchvision into ``download_root``."""
    if folder is not None:
        return load_mnist(folder, split)
    if download_root is None:
        raise MnistDataError("give a folder of MNIST IDX files or a folder to download MNIST into")
    return download_mnist(download_root, split)


def take(split: MnistSplit, n: int | None) -> MnistSplit:
    """The first ``n`` examples of ``split`` (all of them when n is None)."""
    if n is None or n >= len(split):
        return split
    if n < 1:
        raise ValueError("n must be at least 1")
    return MnistSplit(split.images[:n], split.labels[:n], f"{split.source}[:{n}]")


def to_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 images (N, 28, 28) -> normalised float network input (N, 1, 28, 28)."""
    return ((images.float() / 255.0) - MNIST_MEAN).div(MNIST_STD).unsqueeze(1)
