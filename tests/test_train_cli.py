"""The command lines `python -m cnn_core.train` and `python -m cnn_core.evaluate`: bad input, interrupts, a tiny run."""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

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
    (["--lr", "nan"], "--lr must be a finite number"),
    (["--lr", "inf"], "--lr must be a finite number"),
    (["--weight-decay=-inf"], "--weight-decay must be a finite number"),
    (["--rotate", "nan"], "--rotate must be a finite number"),
    (["--elastic", "inf"], "--elastic must be a finite number"),
    (["--zoom", "1.0"], "augmentation out of range"),
    (["--ema", "1.0"], "--ema must be at least 0 and below 1"),
    (["--label-smoothing", "nan"], "--label-smoothing must be a finite number"),
    (["--seed", "-1"], "--seed must be between"),
    (["--validation", "-1"], "--validation must not be negative"),
    (["--threads", "-1"], "--threads must be at least 1"),
    # The architecture limits are the app's own (cnn_core.model.check_config).
    (["--kernel", "40"], "kernel size must be between 1 and 7"),
    (["--dropout", "1.5"], "dropout must be between 0.0 and 0.9"),
    (["--dropout", "1.0"], "dropout must be between 0.0 and 0.9"),
    (["--dropout", "nan"], "dropout must be a finite number"),
    (["--conv1", "500"], "conv1 filters must be between 1 and 128"),
    (["--padding", "4"], "padding must be between 0 and 3"),
    (["--arch", "mlp", "--hidden", "8", "8", "8", "8", "8"], "number of hidden layers must be between 1 and 4"),
    (["--hidden", "64", "32"], "--hidden takes one width"),
])
def test_bad_settings_exit_2_before_training(tmp_path, capsys, good_weights, monkeypatch, args, message):
    data = write_mnist(tmp_path / "data")
    monkeypatch.setattr(train_cli, "train_model", lambda *a, **k: pytest.fail("trained despite bad settings"))
    code, _, err = run_train(["--data", str(data), "--out", str(good_weights), *args], capsys)
    assert code == 2
    assert message in err
    assert err.count("\n") == 1 and err.startswith("error: ")  # one line, no traceback
    assert_untouched(good_weights)


def test_corrupt_deflate_stream_is_an_error_line(tmp_path, capsys, good_weights):
    import gzip

    data = write_mnist(tmp_path / "data")
    raw = (data / "train-images-idx3-ubyte").read_bytes()
    packed = bytearray(gzip.compress(raw))
    for i in range(30, 60):  # damage the deflate stream, keep the gzip header
        packed[i] ^= 0xFF
    (data / "train-images-idx3-ubyte").unlink()
    (data / "train-images-idx3-ubyte.gz").write_bytes(bytes(packed))
    code = train_cli.main(["--data", str(data), "--out", str(good_weights)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and "Traceback" not in err
    assert_untouched(good_weights)


def test_diverged_weights_are_not_saved(tmp_path, capsys, good_weights, monkeypatch):
    data = write_mnist(tmp_path / "data")
    real_train = train_cli.train_model

    def diverging(*args, **kwargs):
        result = real_train(*args, **kwargs)
        with torch.no_grad():
            result.model.fc1.weight[0, 0] = float("nan")
        return result

    monkeypatch.setattr(train_cli, "train_model", diverging)
    code, _, err = run_train(["--data", str(data), "--out", str(good_weights), "--epochs", "1", "--validation", "0",
                              "--threads", "1"], capsys)
    assert code == 2
    assert "training diverged" in err and "nothing written" in err
    assert_untouched(good_weights)


# --------------------------------------------------------------------------- bad output paths


@pytest.mark.parametrize("device", ["/dev/null", "/dev/full"])
def test_output_that_is_a_device_is_refused(tmp_path, capsys, monkeypatch, device):
    """Run as root, an earlier version replaced /dev/null with a regular file."""
    data = write_mnist(tmp_path / "data")
    before = os.stat(device)
    monkeypatch.setattr(train_cli, "train_model", lambda *a, **k: pytest.fail("trained for nothing"))
    code, _, err = run_train(["--data", str(data), "--out", device], capsys)
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1
    after = os.stat(device)
    assert stat.S_ISCHR(after.st_mode) and after.st_rdev == before.st_rdev
    assert not Path(device + ".json").exists()


def test_output_in_a_system_folder_is_refused(tmp_path, capsys, monkeypatch):
    data = write_mnist(tmp_path / "data")
    monkeypatch.setattr(train_cli, "train_model", lambda *a, **k: pytest.fail("trained for nothing"))
    code, _, err = run_train(["--data", str(data), "--out", "/dev/shm/../model.pt"], capsys)
    assert code == 2
    assert "system folder" in err
    assert not Path("/dev/model.pt").exists()


@pytest.mark.parametrize("which", ["weights", "card"])
@pytest.mark.parametrize("kind", ["fifo", "symlink"])
def test_output_or_its_card_that_is_not_a_regular_file_is_refused(tmp_path, capsys, monkeypatch, which, kind):
    data = write_mnist(tmp_path / "data")
    out = tmp_path / "m.pt"
    target = out if which == "weights" else card_path_for(out)
    if kind == "fifo":
        os.mkfifo(target)
    else:
        (tmp_path / "elsewhere").write_text("keep me")
        target.symlink_to(tmp_path / "elsewhere")
    monkeypatch.setattr(train_cli, "train_model", lambda *a, **k: pytest.fail("trained for nothing"))
    code, _, err = run_train(["--data", str(data), "--out", str(out)], capsys)
    assert code == 2
    assert f"{target} exists and is not a regular file" in err
    assert not stat.S_ISREG(os.lstat(target).st_mode)
    if kind == "symlink":
        assert (tmp_path / "elsewhere").read_text() == "keep me"


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
    code, _, err = run_train(["--data", str(data), "--out", str(good_weights), "--validation", "16"], capsys)
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
    # the last 1,000 training digits are validation digits, measured after each epoch; test-5k at the end
    assert card["data"]["held_out_examples"] == 1000 and card["data"]["held_out"].endswith("[9000:]")
    assert card["data"]["train"].endswith("[:9000][:256]")
    assert 0.0 <= card["metrics"]["validation_accuracy"] <= 1.0
    assert card["history"][0]["test_accuracy"] == card["metrics"]["validation_accuracy"]
    assert len(card["metrics"]["test_per_class"]) == 10
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


# --------------------------------------------------------------------------- a tiny run with pen digits


def write_pen_file(path: Path) -> Path:
    """A small pen-trajectory file: 24 writers of 3 sites, every digit, strokes that differ by class."""
    from cnn_core.pen import PenDigit, write_pen_digits

    rng = np.random.default_rng(0)
    digits, line = [], 0
    for site in ("aaa", "bbb", "ccc"):
        for w in range(8):
            for label in range(10):
                line += 1
                angle = label * 0.6
                a = np.array([140 - 80 * np.cos(angle), 140 - 80 * np.sin(angle)])
                stroke = np.stack([np.linspace(a[0], 280 - a[0], 12), np.linspace(a[1], 280 - a[1], 12)], 1)
                digits.append(PenDigit(label, f"{site}/w{w}", (stroke + rng.normal(0, 2, stroke.shape),), line))
    write_pen_digits(path, digits)
    return path


def test_tiny_run_with_pen_digits_writes_card_and_uncertainty(tmp_path, capsys, monkeypatch):
    from cnn_core import pen
    from cnn_core.uncertainty import load_uncertainty, uncertainty_path

    data = write_mnist(tmp_path / "data", n_train=200, n_test=40)
    pen_file = write_pen_file(tmp_path / "pen.jsonl.gz")
    test_writers = pen.split_by_writer(pen.read_pen_digits(pen_file))["test"]
    bundle = tmp_path / "bundle"
    pen.bundle_pen_test(test_writers, bundle)
    # the run measures the bundled test writers: here, this file's own
    monkeypatch.setattr(train_cli, "load_bundled_pen_test", lambda: pen.load_bundled_pen_test(bundle))
    monkeypatch.setattr(train_cli, "load_bundled_pen_trajectories", lambda: pen.load_bundled_pen_trajectories(bundle))
    out = tmp_path / "m.pt"
    args = ["--data", str(data), "--out", str(out), "--validation", "50", "--epochs", "1", "--threads", "1",
            "--pen", str(pen_file), "--pen-train", "--pen-variants", "2", "--pen-styles", "0.5",
            "--outliers", "40", "--outlier-weight", "0.5"]
    code, stdout, err = run_train(args, capsys)
    assert code == 0, err
    card = json.loads(card_path_for(out).read_text())
    parts = pen.split_by_writer(pen.read_pen_digits(pen_file))
    assert card["data"]["pen_train_examples"] == len(parts["train"])
    assert card["data"]["train_examples"] == 150
    assert "pen_test_warning" not in card["data"]
    assert card["metrics"]["pen_test"]["examples"] == len(test_writers)
    assert set(card["metrics"]["pen_test"]["accuracy_by_brush_width"]) == {"12", "16", "20", "24", "26"}
    assert card["metrics"]["pen_validation_examples"] == len(parts["validation"])
    assert all(m["writer"] in {d.writer for d in test_writers} for m in card["metrics"]["pen_test"]["mistakes"])
    assert card["training"]["outlier_weight"] == 0.5 and "outliers" in card["data"]
    entry = card["uncertainty"]
    assert entry["file"] == "m.uncertainty.npz" == uncertainty_path(out).name
    assert entry["sha256"] == sha256_bytes(uncertainty_path(out).read_bytes())
    assert entry["fit_examples"] == 150 + len(parts["train"])
    u = load_uncertainty(out)
    assert u is not None and u.temperature == entry["temperature"] and u.means.shape == (10, 128)
    for key in ("validation_false_alarm", "mnist_test_false_alarm", "pen_test_false_alarm", "all_test_ece_raw",
                "all_test_ece_calibrated"):
        assert key in entry["rates"] and entry["rates"][key] == u.rates[key]
    assert load_checkpoint(out).card == card
    targets = {row["target"]: row for row in card["targets"]}
    mnist_row = next(r for t, r in targets.items() if t.startswith("MNIST test digits"))
    assert mnist_row["measured"] == card["metrics"]["test_accuracy"]
    assert mnist_row["met"] == (card["metrics"]["test_accuracy"] >= train_cli.TARGETS["mnist_test_accuracy"])
    assert any(t.startswith("zeros of the test writers") for t in targets)


def test_pen_flags_need_each_other(tmp_path, capsys, good_weights):
    data = write_mnist(tmp_path / "data")
    for extra, message in ((["--pen-train"], "--pen-train needs --pen"),
                           (["--pen", "x", "--outliers", "10"], "--outliers needs --pen-train"),
                           (["--pen-styles", "2"], "--pen-styles must be 0-1")):
        code, _, err = run_train(["--data", str(data), "--out", str(good_weights), *extra], capsys)
        assert code == 2 and message in err, err
    assert_untouched(good_weights)


def test_uncertainty_file_that_is_not_regular_is_refused(tmp_path, capsys, monkeypatch):
    data = write_mnist(tmp_path / "data")
    out = tmp_path / "m.pt"
    os.mkfifo(tmp_path / "m.uncertainty.npz")
    monkeypatch.setattr(train_cli, "train_model", lambda *a, **k: pytest.fail("trained for nothing"))
    code, _, err = run_train(["--data", str(data), "--out", str(out)], capsys)
    assert code == 2 and "m.uncertainty.npz exists and is not a regular file" in err
