import gzip
import struct

import numpy as np
import pytest

from cnn_core.data import MnistDataError, find_idx_files, load_mnist, read_idx, take, to_input


def write_idx(path, array, magic, compress=False):
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if compress:
        data = gzip.compress(data)
    path.write_bytes(data)


def make_folder(tmp_path, n=5, prefix="train", compress=False, labels_n=None, magic=2051):
    suffix = ".gz" if compress else ""
    rng = np.random.default_rng(0)
    write_idx(tmp_path / f"{prefix}-images-idx3-ubyte{suffix}", rng.integers(0, 256, (n, 28, 28)), magic, compress)
    write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte{suffix}", rng.integers(0, 10, (labels_n or n,)), 2049, compress)
    return tmp_path


def test_shared_subset_loads(data_dir):
    train, test = load_mnist(data_dir, "train"), load_mnist(data_dir, "test")
    assert train.images.shape == (10_000, 28, 28) and len(train) == 10_000
    assert test.images.shape == (5_000, 28, 28)
    assert int(train.labels.min()) == 0 and int(train.labels.max()) == 9
    assert test.labels[:5].tolist() == [7, 2, 1, 0, 4]  # the official first test labels


@pytest.mark.parametrize("compress", [False, True])
def test_official_names_plain_or_gzipped(tmp_path, compress):
    make_folder(tmp_path, prefix="t10k", compress=compress)
    split = load_mnist(tmp_path, "test")
    assert len(split) == 5
    x = to_input(split.images)
    assert x.shape == (5, 1, 28, 28)


def test_take_keeps_the_first_examples(tmp_path):
    split = load_mnist(make_folder(tmp_path), "train")
    assert take(split, 3).labels.tolist() == split.labels[:3].tolist()
    assert take(split, None) is split


def test_missing_folder_and_missing_files(tmp_path):
    with pytest.raises(MnistDataError, match="does not exist"):
        load_mnist(tmp_path / "nope")
    with pytest.raises(MnistDataError, match="no MNIST train images"):
        find_idx_files(tmp_path, "train")


def test_wrong_magic(tmp_path):
    make_folder(tmp_path, magic=2049)
    with pytest.raises(MnistDataError, match="magic number 2049, expected 2051"):
        load_mnist(tmp_path)


def test_count_mismatch(tmp_path):
    make_folder(tmp_path, n=5, labels_n=4)
    with pytest.raises(MnistDataError, match="5 images but .* 4 labels"):
        load_mnist(tmp_path)


def test_truncated_file(tmp_path):
    make_folder(tmp_path)
    p = tmp_path / "train-images-idx3-ubyte"
    p.write_bytes(p.read_bytes()[:-10])
    with pytest.raises(MnistDataError, match="declares shape"):
        read_idx(p, 2051)
    bad = tmp_path / "train-labels-idx1-ubyte.gz"
    bad.write_bytes(b"not gzip at all")
    with pytest.raises(MnistDataError, match="cannot read"):
        read_idx(bad, 2049)


@pytest.mark.parametrize("n, words", [(100_000, "100000 images but .* 10 labels"), (1_000_000, "the limit is")])
def test_a_small_file_declaring_many_images_is_refused_before_inflating(tmp_path, n, words):
    """A header that disagrees with the labels' header, or declares too much, is refused from the headers alone."""
    import resource

    header = struct.pack(">IIII", 2051, n, 28, 28)
    z = gzip.compress(header + bytes(28 * 28) * n, compresslevel=9)  # ~760 kB per million images
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(z)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(10, np.uint8), 2049, compress=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(MnistDataError, match=words):
        load_mnist(tmp_path, "train")
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 100 * 1024  # KiB: nothing was inflated


def test_a_corrupt_deflate_stream_is_a_data_error(tmp_path):
    make_folder(tmp_path, compress=True)
    p = tmp_path / "train-images-idx3-ubyte.gz"
    raw = bytearray(p.read_bytes())
    middle = len(raw) // 2
    raw[middle:middle + 30] = bytes(range(30))  # garbage in the middle of the compressed data
    p.write_bytes(bytes(raw))
    with pytest.raises(MnistDataError, match="cannot read|declares shape"):
        load_mnist(tmp_path, "train")
