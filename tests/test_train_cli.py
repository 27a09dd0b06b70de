"""The command lines `python -m cnn_core.train` and `python -m cnn_core.evaluate`: bad input, interrupts, a tiny run."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import cnn_core.train as train_cli
from cnn_core import evaluate as evaluate_cli
from cnn_core.checkpoint import card_path_for, load_checkpoint, sha256_bytes
from cnn_core.data import IMAGES_MAGIC, LABELS_MAGIC

ROOT = Path(__file__).resolve().parent.parent
GOOD_BYTES = b"an existing, good weights file"


def write_idx(path: Path, magic: int, array: np.ndarray) -> None:
    """Write an uncompressed IDX file; the magic's last byte is normally ndim, but any magic can be written."""
    header = magic.to_bytes(4, "big")
    if magic in (IMAGES_MAGIC, LABELS_MAGIC):
        assert header[3] == array.ndim
    header += b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_mnist(folder: Path, n_train: int = 64, n_test: int = 32, *, images_magic: int = IMAGES_MAGIC,
                labels_magic: int = LABELS_MAGIC, train_labels: int | None = None) -> Path:
    """A small, valid (unless told otherwise) MNIST folder of random digits."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, n, n_labels in (("train", n_train, train_labels), ("t10k", n_test, None)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte", images_magic, rng.integers(0, 256, (n, 28, 28)))
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels_magic,
                  rng.integers(0, 10, n if n_labels is None else n_labels))
    return folder


@pytest.fixture
def good_weights(tmp_path) -> Path:
    """An existing weights file (and card) that a failed run must leave alone."""
    out = tmp_path / "models" / "existing.pt"
    out.parent.mkdir()
    out.write_bytes(GOOD_BYTES)
    card_path_for(out).write_text('{"name": "existing"}')
    return out


def assert_untouched(out: Path) -> None:
    assert out.read_bytes() == GOOD_BYTES
    assert card_path_for(out).read_text() == '{"name": "existing"}'
    assert [p.name for p in out.parent.iterdir() if p.name.endswith(".tmp")] == []


def run_train(args: list[str], capsys) -> tuple[int, str, str]:
    code = train_cli.main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# --------------------------------------------------------------------------- bad data


def test_folder_without_mnist(tmp_path, capsys, good_weights):
    (tmp_path / "empty").mkdir()
    code, _, err = run_train(["--data", str(tmp_path / "empty"), "--out", str(good_weights)], capsys)
    assert code == 2
    assert "error: no MNIST train images file" in err and str(tmp_path / "empty") in err
    assert "Traceback" not in err
    assert_untouched(good_weights)


def test_folder_that_does_not_exist(tmp_path, capsys):
    code, _, err = run_train(["--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "m.pt")], capsys)
    assert code == 2
    assert "does not exist" in err
    assert not (tmp_path / "m.pt").exists()


def test_wrong_images_magic_number(tmp_path, capsys, good_weights):
    data = write_mnist(tmp_path / "data", images_magic=0x00000803 + 0x100)  # 2307: not 2051
    code, _, err = run_train(["--data", str(data), "--out", str(good_weights)], capsys)
    assert code == 2
    assert "magic number 2307, expected 2051 (images)" in err
    assert_untouched(good_weights)


def test_labels_and_images_swapped(tmp_path, capsys, good_weights):
    data = write_mnist(tmp_path / "data")
    train_images = data / "train-images-idx3-ubyte"
    train_labels = data / "train-labels-idx1-ubyte"
    images, labels = train_images.read_bytes(), train_labels.read_bytes()
    train_images.write_bytes(labels)
    train_labels.write_bytes(images)
    code, _, err = run_train(["--data", str(data), "--out", str(good_weights)], capsys)
    assert code == 2
    assert "magic number 2049, expected 2051" in err
    assert_untouched(good_weights)


def test_mismatched_image_and_label_counts(tmp_path, capsys, good_weights):
    data = write_mnist(tmp_path / "data", n_train=64, train_labels=63)
    code, _, err = run_train(["--data", str(data), "--out", str(good_weights)], capsys)
    assert code == 2
    assert "has 64 images but" in err and "has 63 labels" in err
    assert_untouched(good_weights)


def test_truncated_idx_file(tmp_path, capsys, good_weights):
    data = write_mnist(tmp_path / "data")
    f = data / "t10k-images-idx3-ubyte"
    f.write_bytes(f.read_bytes()[:-100])
    code, _, err = run_train(["--data", str(data), "--out", str(good_weights)], capsys)
    assert code == 2
    assert "declares shape (32, 28, 28)" in err
    assert_untouched(good_weights)


def test_split_with_no_digits(tmp_path, capsys, good_weights):
    data = write_mnist(tmp_path / "data", n_train=0, train_labels=0)
    code, _, err = run_train(["--data", str(data), "--out", str(good_weights)], capsys)
    assert code == 2
    assert "holds no digits" in err
    assert_untouched(good_weights)


@pytest.mark.parametrize("args, message", [
    (["--train-size", "0"], "--train-size must be at least 1"),
    (["--train-size", "-5"], "--train-size must be at least 1"),
    (["--epochs", "0"], "--epochs and --batch-size must be at least 1"),
    (["--batch-size", "0"], "--epochs and --batch-size must be at least 1"),
    (["--lr", "-0.1"], "--lr must be positive"),
    (["--lr", "nan"], "--lr must be positive"),
    (["--threads", "-1"], "--threads must be at least 1"),
    (["--kernel", "40"], "shrinks the 28x28 input"),
    (["--dropout", "1.5"], "dropout"),
    (["--hidden", "64", "32"], "--hidden takes one width"),
])
def test_bad_settings_exit_2_before_training(tmp_path, capsys, good_weights, monkeypatch, args, message):
    data = write_mnist(tmp_path / "data")
    monkeypatch.setattr(train_cli, "train_model", lambda *a, **k: pytest.fail("trained despite bad settings"))
    code, _, err = run_train(["--data", str(data), "--out", str(good_weights), *args], capsys)
    assert code == 2
    assert message in err
    assert_untouched(good_weights)


# --------------------------------------------------------------------------- bad output paths


def test_output_folder_that_does_not_exist(tmp_path, capsys):
    data = write_mnist(tmp_path / "data")
    out = tmp_path / "no" / "such" / "folder" / "m.pt"
    code, _, err = run_train(["--data", str(data), "--out", str(out)], capsys)
    assert code == 2
    assert "does not exist" in err
    assert not out.parent.exists()


def test_output_under_a_regular_file(tmp_path, capsys):
    data = write_mnist(tmp_path / "data")
    (tmp_path / "afile").write_text("I am a file")
    code, _, err = run_train(["--data", str(data), "--out", str(tmp_path / "afile" / "out.pt")], capsys)
    assert code == 2
    assert "afile does not exist" in err
    assert (tmp_path / "afile").read_text() == "I am a file"


def test_output_that_is_a_folder(tmp_path, capsys, monkeypatch):
    data = write_mnist(tmp_path / "data")
    (tmp_path / "adir").mkdir()
    monkeypatch.setattr(train_cli, "train_model", lambda *a, **k: pytest.fail("trained for nothing"))
    code, _, err = run_train(["--data", str(data), "--out", str(tmp_path / "adir")], capsys)
    assert code == 2
    assert "is a folder" in err


def test_output_named_like_a_model_card(tmp_path, capsys, monkeypatch):
    data = write_mnist(tmp_path / "data")
    monkeypatch.setattr(train_cli, "train_model", lambda *a, **k: pytest.fail("trained for nothing"))
    code, _, err = run_train(["--data", str(data), "--out", str(tmp_path / "m.json")], capsys)
    assert code == 2
    assert "must not end in .json" in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into a 0o500 folder, so there is nothing to refuse")
def test_output_folder_that_is_not_writable(tmp_path, capsys):
    data = write_mnist(tmp_path / "data")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        code, _, err = run_train(["--data", str(data), "--out", str(locked / "m.pt")], capsys)
    finally:
        locked.chmod(0o700)
    assert code == 2
    assert "not writable" in err


# --------------------------------------------------------------------------- interrupts


def test_interrupted_run_exits_130_and_writes_nothing(tmp_path, capsys, good_weights, monkeypatch):
    data = write_mnist(tmp_path / "data")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_cli, "train_model", interrupted)
    code, _, err = run_train(["--data", str(data), "--out", str(good_weights)], capsys)
    assert code == 130
    assert "interrupted: nothing written" in err
    assert_untouched(good_weights)


def test_ctrl_c_in_a_real_training_process(tmp_path, good_weights):
    """SIGINT while the subprocess trains: exit 130, the old weights untouched."""
    data = write_mnist(tmp_path / "data", n_train=2000, n_test=32)
    proc = subprocess.Popen(
        [sys.executable, "-m", "cnn_core.train", "--data", str(data), "--out", str(good_weights),
         "--epochs", "50", "--threads", "1"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        first = proc.stdout.readline()  # printed once the data is loaded, just before training
        assert first.startswith("training cnn"), first
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # 130 is main()'s answer; on a loaded machine the interpreter has also been seen to end by the
    # signal itself (-SIGINT) after main() handled it. Either way it stopped as interrupted, and:
    assert proc.returncode in (130, -signal.SIGINT), err[-2000:]
    assert "interrupted: nothing written" in err
    assert "Traceback" not in err
    assert_untouched(good_weights)


# --------------------------------------------------------------------------- the real exit code


def test_subprocess_exit_code_for_missing_data(tmp_path):
    (tmp_path / "empty").mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "cnn_core.train", "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "m.pt")],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: no MNIST train images file")
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "m.pt").exists()


# --------------------------------------------------------------------------- a tiny real run


def test_tiny_training_run_writes_a_loadable_checkpoint(tmp_path, capsys, data_dir, test_split):
    from cnn_core.evaluate import accuracy

    out = tmp_path / "m.pt"
    args = ["--data", str(data_dir), "--out", str(out), "--epochs", "1", "--train-size", "256", "--batch-size", "64"]
    code, stdout, err = run_train(args, capsys)
    assert code == 0, err
    card = json.loads(card_path_for(out).read_text())
    assert card["command"] == "python -m cnn_core.train " + " ".join(args)
    assert card["seed"] == 0
    acc = card["metrics"]["test_accuracy"]
    assert isinstance(acc, float) and 0.0 <= acc <= 1.0
    assert card["metrics"]["test_examples"] == len(test_split)
    assert card["data"]["train_examples"] == 256
    assert card["sha256"] == sha256_bytes(out.read_bytes())
    assert len(card["history"]) == 1
    loaded = load_checkpoint(out)
    assert loaded.card == card
    assert accuracy(loaded.model, test_split) == acc  # the card reports what the written weights do
    assert f"test accuracy {acc:.4f}" in stdout
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


# --------------------------------------------------------------------------- evaluate


def test_evaluate_prints_the_accuracy_of_evaluate(capsys, data_dir, test_split, shipped):
    from cnn_core.checkpoint import SHIPPED_WEIGHTS

    code = evaluate_cli.main(["--data", str(data_dir), "--weights", str(SHIPPED_WEIGHTS)])
    out = capsys.readouterr().out
    assert code == 0
    result = evaluate_cli.evaluate(shipped.model, test_split)
    n = len(test_split)
    match = re.search(r"^accuracy: ([0-9.]+) \((\d+)/(\d+)\)$", out, re.MULTILINE)
    assert match, out
    assert match.group(1) == f"{result.accuracy:.4f}"
    assert int(match.group(2)) == int((result.predictions == test_split.labels).sum())
    assert int(match.group(3)) == n
    assert evaluate_cli.format_report(result, n) in out


def test_evaluate_subprocess_missing_weights(tmp_path, data_dir):
    proc = subprocess.run(
        [sys.executable, "-m", "cnn_core.evaluate", "--data", str(data_dir), "--weights", str(tmp_path / "none.pt")],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: weights file") and "is missing" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_evaluate_bad_data_and_empty_split(tmp_path, capsys):
    from cnn_core.checkpoint import SHIPPED_WEIGHTS

    (tmp_path / "empty").mkdir()
    assert evaluate_cli.main(["--data", str(tmp_path / "empty"), "--weights", str(SHIPPED_WEIGHTS)]) == 2
    assert "no MNIST test images file" in capsys.readouterr().err
    data = write_mnist(tmp_path / "zero", n_test=0)
    assert evaluate_cli.main(["--data", str(data), "--weights", str(SHIPPED_WEIGHTS)]) == 2
    assert "holds no digits" in capsys.readouterr().err


def test_evaluate_refuses_a_corrupted_weights_file(tmp_path, capsys, data_dir):
    from cnn_core.checkpoint import SHIPPED_WEIGHTS

    weights = tmp_path / "copy.pt"
    weights.write_bytes(SHIPPED_WEIGHTS.read_bytes()[:-10])
    card_path_for(weights).write_bytes(card_path_for(SHIPPED_WEIGHTS).read_bytes())
    assert evaluate_cli.main(["--data", str(data_dir), "--weights", str(weights)]) == 2
    assert "corrupted" in capsys.readouterr().err
