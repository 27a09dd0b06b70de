"""MNIST from a local folder of IDX files, or from torchvision's download.

A folder may hold the official names (``train-images-idx3-ubyte``,
``t10k-images-idx3-ubyte``, ...) or subsets such as ``train-10k-images-idx3-ubyte.gz``
and ``test-5k-images-idx3-ubyte.gz``; files may be gzipped or not.
"""

from __future__ import annotations

import gzip
import math
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal, cast

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


MAX_IDX_BYTES = 256 * 1024 * 1024  # the full official training images are 47 MB; refuse absurd headers


@dataclass(frozen=True)
class IdxHeader:
    """What an IDX file's header declares: its magic number and its dimensions."""

    magic: int
    dims: tuple[int, ...]

    @property
    def size(self) -> int:
        """Bytes of data the header promises after itself."""
        return math.prod(self.dims)

    @property
    def length(self) -> int:
        """Bytes of the header itself."""
        return 4 + 4 * len(self.dims)


def _open(path: Path) -> IO[bytes]:
    """The file's bytes as a stream, inflated on the fly when it is gzipped."""
    try:
        return cast(IO[bytes], gzip.open(path, "rb")) if path.suffix == ".gz" else path.open("rb")
    except OSError as e:
        raise MnistDataError(f"cannot read {path}: {e}") from e


def _read_exactly(stream: IO[bytes], n: int, path: Path) -> bytes:
    # A damaged gzip stream raises zlib.error, BadGzipFile (an OSError) or EOFError part-way through.
    try:
        return stream.read(n)
    except (OSError, EOFError, zlib.error) as e:
        raise MnistDataError(f"cannot read {path}: the file is damaged ({e})") from e


def read_idx_header(path: str | Path, expected_magic: int) -> IdxHeader:
    """Read and check only the header of an IDX file: nothing else is inflated or read."""
    path = Path(path)
    with _open(path) as f:
        head = _read_exactly(f, 4, path)
        if len(head) < 4:
            raise MnistDataError(f"{path} is too short to be an IDX file")
        magic = int.from_bytes(head, "big")
        if magic != expected_magic:
            raise MnistDataError(
                f"{path} has IDX magic number {magic}, expected {expected_magic} "
                f"({'images' if expected_magic == IMAGES_MAGIC else 'labels'})"
            )
        ndim = head[3]
        raw_dims = _read_exactly(f, 4 * ndim, path)
    if len(raw_dims) < 4 * ndim:
        raise MnistDataError(f"{path} is too short to be an IDX file")
    header = IdxHeader(magic, tuple(int.from_bytes(raw_dims[4 * i: 4 * i + 4], "big") for i in range(ndim)))
    if header.size > MAX_IDX_BYTES:
        raise MnistDataError(f"{path} declares shape {header.dims} ({header.size:,} bytes); "
                             f"the limit is {MAX_IDX_BYTES:,} bytes")
    return header


def read_idx(path: str | Path, expected_magic: int) -> np.ndarray:
    """Read an IDX file (gzipped or not) of unsigned bytes, checking its magic number and size.

    The header is checked first and at most the bytes it declares (plus one, to notice extra data)
    are inflated, so a small file that declares a huge shape is refused before any large allocation.
    """
    path = Path(path)
    header = read_idx_header(path, expected_magic)
    with _open(path) as f:
        _read_exactly(f, header.length, path)
        data = _read_exactly(f, header.size + 1, path)
    if len(data) != header.size:
        found = f"{len(data):,}" if len(data) <= header.size else "more"
        raise MnistDataError(f"{path} declares shape {header.dims} ({header.size:,} bytes) but holds {found}")
    return np.frombuffer(data, dtype=np.uint8).reshape(header.dims)


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
    # Compare the headers before inflating anything: a file declaring a million images for ten
    # thousand labels is refused in microseconds, not after gigabytes of decompression.
    image_dims = read_idx_header(images_path, IMAGES_MAGIC).dims
    label_dims = read_idx_header(labels_path, LABELS_MAGIC).dims
    if len(image_dims) != 3 or image_dims[1:] != (28, 28):
        raise MnistDataError(f"{images_path} holds images of shape {image_dims[1:]}, expected (28, 28)")
    if len(label_dims) != 1 or label_dims[0] != image_dims[0]:
        raise MnistDataError(f"{images_path.name} has {image_dims[0]} images but {labels_path.name} has "
                             f"{label_dims[0] if len(label_dims) == 1 else label_dims} labels")
    images = read_idx(images_path, IMAGES_MAGIC)
    labels = read_idx(labels_path, LABELS_MAGIC)
    if labels.size and labels.max() > 9:
        raise MnistDataError(f"{labels_path} has labels outside 0-9")
    return MnistSplit(
        images=torch.from_numpy(images.copy()),
        labels=torch.from_numpy(labels.astype(np.int64)),
        source=str(images_path),
    )


def load_bundled_test() -> MnistSplit:
    """The 5,000 MNIST test digits that ship with the project (data/mnist): what every page measures on."""
    from .paths import BUNDLED_MNIST_DIR

    return load_mnist(BUNDLED_MNIST_DIR, "test")


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
