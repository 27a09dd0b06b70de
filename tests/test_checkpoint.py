"""Weights and model cards: round trip, and refusal of anything damaged, mismatched or malicious."""

from __future__ import annotations

import ast
import io
import json
import os
import pickle
import re
import resource
import struct
import zipfile
from pathlib import Path

import pytest
import torch

import cnn_core.checkpoint as checkpoint
from cnn_core.checkpoint import (
    WeightsError,
    card_path_for,
    load_checkpoint,
    load_checkpoint_bytes,
    save_checkpoint,
    sha256_bytes,
    state_dict_bytes,
)
from cnn_core.model import CNNConfig, build_model, count_parameters

ROOT = Path(__file__).resolve().parent.parent
SMALL = CNNConfig(conv1_channels=4, conv2_channels=8, hidden=16)  # small files, same layer names


def small_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(SMALL)


@pytest.fixture
def saved(tmp_path):
    """A freshly saved small checkpoint: (weights path, card dict, model)."""
    model = small_model()
    path = tmp_path / "small.pt"
    card = save_checkpoint(model, SMALL, path, {"name": "small", "seed": 0})
    return path, card, model


def rewrite_weights(path: Path, data: bytes, update_card_sha: bool) -> None:
    """Replace the weights file's bytes, optionally making the card's sha256 agree with them."""
    path.write_bytes(data)
    if update_card_sha:
        card_file = card_path_for(path)
        card = json.loads(card_file.read_text())
        card["sha256"] = sha256_bytes(data)
        card_file.write_text(json.dumps(card))


# --------------------------------------------------------------------------- round trip


def test_round_trip_gives_equal_weights_and_a_full_card(saved):
    path, card, model = saved
    loaded = load_checkpoint(path)
    original, restored = model.state_dict(), loaded.model.state_dict()
    assert original.keys() == restored.keys()
    for k in original:
        assert torch.equal(original[k], restored[k]), k
    assert loaded.config == SMALL
    assert loaded.card == card == json.loads(card_path_for(path).read_text())
    assert card["sha256"] == sha256_bytes(path.read_bytes())
    assert card["parameters"] == count_parameters(model)
    assert card["architecture"] == SMALL.to_dict()
    assert card["weights_file"] == "small.pt"
    assert card["name"] == "small" and loaded.name == "small"
    assert not loaded.model.training
    assert not any(p.requires_grad for p in loaded.model.parameters())


def test_loaded_model_predicts_like_the_saved_one(saved):
    path, _, model = saved
    model.eval()
    x = torch.rand(3, 1, 28, 28)
    with torch.inference_mode():
        assert torch.equal(model(x), load_checkpoint(path).model(x))


def test_saved_files_are_readable_by_others(saved):
    path, _, _ = saved
    assert path.stat().st_mode & 0o044 == 0o044
    assert card_path_for(path).stat().st_mode & 0o044 == 0o044


def test_shipped_model_loads_and_matches_its_card(shipped):
    from cnn_core.checkpoint import SHIPPED_WEIGHTS

    assert shipped.card["sha256"] == sha256_bytes(SHIPPED_WEIGHTS.read_bytes())
    assert shipped.card["parameters"] == count_parameters(build_model(shipped.config))
    assert shipped.card["weights_file"] == SHIPPED_WEIGHTS.name
    acc = shipped.card["metrics"]["test_accuracy"]
    assert isinstance(acc, float) and 0.0 <= acc <= 1.0


# --------------------------------------------------------------------------- missing and damaged files


def test_missing_weights_file(tmp_path):
    with pytest.raises(WeightsError, match="missing"):
        load_checkpoint(tmp_path / "nothing.pt")


def test_missing_card(saved):
    path, _, _ = saved
    card_path_for(path).unlink()
    with pytest.raises(WeightsError, match="model card .* is missing"):
        load_checkpoint(path)


def test_truncated_weights_are_reported_as_corrupted(saved):
    path, _, _ = saved
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="corrupted"):
        load_checkpoint(path)


def test_one_tampered_byte_is_reported_as_corrupted(saved):
    path, _, _ = saved
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="corrupted"):
        load_checkpoint(path)


@pytest.mark.parametrize("garbage", [b"", b"not a checkpoint at all", b"PK\x03\x04" + b"\x00" * 64, bytes(range(256)) * 8])
def test_garbage_with_a_matching_sha_is_refused(saved, garbage):
    path, _, _ = saved
    rewrite_weights(path, garbage, update_card_sha=True)
    with pytest.raises(WeightsError, match="refused"):
        load_checkpoint(path)


def test_damaged_pickles_with_a_matching_sha_raise_only_weights_error(saved):
    """Flipped bytes make torch.load and zipfile raise KeyError, TypeError, NotImplementedError...: all must be WeightsError."""
    path, card, _ = saved
    good = path.read_bytes()
    info = next(i for i in zipfile.ZipFile(io.BytesIO(good)).infolist() if i.filename.endswith("data.pkl"))
    name_len, extra_len = struct.unpack("<HH", good[info.header_offset + 26: info.header_offset + 30])
    start = info.header_offset + 30 + name_len + extra_len  # the pickle's first byte in the archive
    assert good[start] == 0x80  # pickle PROTO opcode: we found it
    refused = 0
    # The pickle, then the archive's central directory at the end (damage there upsets the zip readers).
    for i in [*range(start, start + info.file_size), *range(len(good) - 700, len(good))]:
        for delta in (1, 97):
            data = bytearray(good)
            data[i] = (data[i] + delta) % 256
            card_bytes = json.dumps(dict(card, sha256=sha256_bytes(bytes(data)))).encode()
            try:
                load_checkpoint_bytes(bytes(data), card_bytes)
            except WeightsError:
                refused += 1
    assert refused > info.file_size  # most damage is caught; none escapes as another exception


def test_card_that_is_not_json(saved):
    path, _, _ = saved
    card_path_for(path).write_text("{ this is not json")
    with pytest.raises(WeightsError, match="not valid JSON"):
        load_checkpoint(path)


@pytest.mark.parametrize("content", ["[1, 2, 3]", '"a string"', b"\xff\xfe\x00garbage"])
def test_card_that_is_not_an_object(saved, content):
    path, _, _ = saved
    target = card_path_for(path)
    target.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(WeightsError):
        load_checkpoint(path)


@pytest.mark.parametrize("drop", ["sha256", "architecture"])
def test_card_without_a_required_entry(saved, drop):
    path, card, _ = saved
    card_path_for(path).write_text(json.dumps({k: v for k, v in card.items() if k != drop}))
    with pytest.raises(WeightsError, match=drop):
        load_checkpoint(path)


@pytest.mark.parametrize("arch", [
    {"kind": "transformer"},
    {"conv1_channels": -1},
    {"kernel_size": 40},
    {"dropout": 2.0},
    {"unknown_setting": 1},
    "not a dict",
    None,
])
def test_card_with_an_invalid_architecture(saved, arch):
    path, card, _ = saved
    card_path_for(path).write_text(json.dumps(dict(card, architecture=arch)))
    with pytest.raises(WeightsError):
        load_checkpoint(path)


@pytest.mark.parametrize("huge, words", [
    ({"hidden": 10**6}, "hidden width must be between 1 and 1024"),
    ({"conv2_channels": 10**5}, "conv2 filters must be between 1 and 128"),
    ({"hidden": 10**12}, "hidden width must be between"),
    # Still 421,642 parameters, but every feature map 1,026 x 1,026: gigabytes of activations per digit.
    ({"padding": 500}, "padding must be between 0 and 3"),
    ({"conv2_channels": 128, "hidden": 1024}, "parameters; the limit is 4,000,000"),
    ({"dropout": float("nan")}, "dropout must be a finite number"),
    ({"dropout": 1.0}, "dropout must be between 0.0 and 0.9"),
    ({"kernel_size": True}, "kernel size must be a whole number"),
    ({"pool": ["max"]}, "pooling must be"),
])
def test_card_asking_for_a_costly_network_is_refused_without_allocating_it(saved, huge, words):
    """A card (e.g. uploaded on the Train page) must not make the server allocate gigabytes before refusing."""
    path, card, _ = saved
    card_path_for(path).write_text(json.dumps(dict(card, architecture=dict(card["architecture"], **huge))))
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(WeightsError, match=re.escape(words)):
        load_checkpoint(path)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before < 200 * 1024  # KiB: < 200 MiB


def test_a_deep_mlp_of_the_same_size_is_refused(saved):
    """2,000 hidden layers (the issue's 421,642-parameter MLP) would make pages draw 1,550 charts."""
    path, card, _ = saved
    card_path_for(path).write_text(json.dumps(dict(card, architecture={"kind": "mlp", "hidden": [10] * 2000})))
    with pytest.raises(WeightsError, match="1 to 4 numbers"):
        load_checkpoint(path)


@pytest.mark.parametrize("body", [b"[" * 200_000 + b"]" * 200_000, b'{"a": ' * 100_000 + b"1" + b"}" * 100_000])
def test_a_deeply_nested_card_is_refused_with_a_sentence(saved, body):
    path, _, _ = saved
    card_path_for(path).write_bytes(body)
    with pytest.raises(WeightsError, match="nested too deeply|at most"):
        load_checkpoint(path)


# --------------------------------------------------------------------------- code in pickles


class RunsAShellCommand:
    """Unpickling this runs a shell command: what a booby-trapped checkpoint does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class RunsPython:
    """Unpickling this runs Python through the builtin exec."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


def malicious_payloads(marker: Path) -> dict[str, bytes]:
    state = dict(small_model().state_dict())
    out = {}
    buf = io.BytesIO()
    torch.save(dict(state, **{"conv1.weight": RunsAShellCommand(marker)}), buf)
    out["torch.save with os.system"] = buf.getvalue()
    buf = io.BytesIO()
    torch.save({"payload": RunsPython(marker)}, buf)
    out["torch.save with exec"] = buf.getvalue()
    out["raw pickle with os.system"] = pickle.dumps(RunsAShellCommand(marker), protocol=2)
    out["raw pickle with exec"] = pickle.dumps({"conv1.weight": RunsPython(marker)})
    return out


@pytest.mark.parametrize("kind", ["torch.save with os.system", "torch.save with exec",
                                  "raw pickle with os.system", "raw pickle with exec"])
def test_malicious_pickle_is_refused_and_runs_nothing(saved, tmp_path, kind):
    path, _, _ = saved
    marker = tmp_path / f"pwned_{kind.replace(' ', '_').replace('.', '_')}"
    payload = malicious_payloads(marker)[kind]
    # The payload really is live: an unsafe load runs it (checked on a copy, with a separate marker).
    probe = tmp_path / "probe_marker"
    live = malicious_payloads(probe)[kind]
    if kind.startswith("raw"):
        pickle.loads(live)
    else:
        torch.load(io.BytesIO(live), weights_only=False)
    assert probe.exists()
    rewrite_weights(path, payload, update_card_sha=True)
    with pytest.raises(WeightsError, match="refused"):
        load_checkpoint(path)
    assert not marker.exists(), "loading a checkpoint ran code from the pickle"


def deflated_archive(good: bytes, inflated_storage_bytes: int | None = None) -> bytes:
    """``good`` (a torch.save zip) re-packed with compressed entries, optionally with one storage blown up."""
    source = zipfile.ZipFile(io.BytesIO(good))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for info in source.infolist():
            if inflated_storage_bytes is not None and info.filename.endswith("data/0"):
                with archive.open(info.filename, "w", force_zip64=True) as f:
                    for _ in range(inflated_storage_bytes // 2**20):
                        f.write(bytes(2**20))  # zeros: about 1000 to 1 once compressed
            else:
                archive.writestr(info.filename, source.read(info.filename))
    return out.getvalue()


def test_compressed_archives_are_refused_before_torch_load_inflates_them(saved, monkeypatch):
    path, _, _ = saved
    good = path.read_bytes()
    assert all(i.compress_type == zipfile.ZIP_STORED for i in zipfile.ZipFile(io.BytesIO(good)).infolist())
    # Even an honest state_dict, merely re-packed with compression: torch.save never writes that.
    repacked = deflated_archive(good)
    assert torch.load(io.BytesIO(repacked), weights_only=True).keys() == small_model().state_dict().keys()
    rewrite_weights(path, repacked, update_card_sha=True)
    with pytest.raises(WeightsError, match="compressed data"):
        load_checkpoint(path)
    # A storage that inflates to 64 MiB from a file of well under 1 MiB: refused before any unpacking.
    bomb = deflated_archive(good, inflated_storage_bytes=64 * 2**20)
    assert len(bomb) < 2**20
    rewrite_weights(path, bomb, update_card_sha=True)
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load was reached"))
    with pytest.raises(WeightsError, match="compressed data"):
        load_checkpoint(path)


def test_zip_that_python_cannot_read_is_refused(saved):
    path, _, _ = saved
    rewrite_weights(path, b"PK\x03\x04" + bytes(200), update_card_sha=True)
    with pytest.raises(WeightsError, match="refused"):
        load_checkpoint(path)


# --------------------------------------------------------------------------- weights that do not fit the card


def test_weights_of_another_architecture_are_refused(saved):
    path, _, _ = saved
    other = build_model(CNNConfig(conv1_channels=6, conv2_channels=8, hidden=16))
    rewrite_weights(path, state_dict_bytes(other), update_card_sha=True)
    with pytest.raises(WeightsError, match="shape"):
        load_checkpoint(path)


def test_missing_and_extra_keys_are_refused(saved):
    path, _, model = saved
    state = dict(model.state_dict())
    del state["fc2.bias"]
    state["fc3.weight"] = torch.zeros(2, 2)
    buf = io.BytesIO()
    torch.save(state, buf)
    rewrite_weights(path, buf.getvalue(), update_card_sha=True)
    with pytest.raises(WeightsError, match=r"missing \['fc2.bias'\].*unexpected \['fc3.weight'\]"):
        load_checkpoint(path)


@pytest.mark.parametrize("change, message", [
    (lambda t: t.to_sparse(), "sparse"),
    (lambda t: t.to(torch.complex64), "complex64"),
    (lambda t: t > 0, "torch.bool"),
    (lambda t: torch.full_like(t, float("nan")), "NaN or infinite"),
    (lambda t: torch.where(t > 0, float("inf"), t), "NaN or infinite"),
])
def test_tensors_of_the_wrong_kind_or_not_finite_are_refused(saved, change, message):
    path, _, model = saved
    state = dict(model.state_dict())
    state["fc2.weight"] = change(state["fc2.weight"])
    buf = io.BytesIO()
    torch.save(state, buf)
    rewrite_weights(path, buf.getvalue(), update_card_sha=True)
    with pytest.raises(WeightsError, match=message):
        load_checkpoint(path)


def test_other_float_precisions_are_accepted(saved):
    path, _, model = saved
    state = {k: v.double() for k, v in model.state_dict().items()}
    buf = io.BytesIO()
    torch.save(state, buf)
    rewrite_weights(path, buf.getvalue(), update_card_sha=True)
    loaded = load_checkpoint(path)
    assert all(torch.equal(loaded.model.state_dict()[k], v.float()) for k, v in state.items())


@pytest.mark.parametrize("payload", [[1, 2, 3], {"conv1.weight": [1.0, 2.0]}, torch.zeros(3)])
def test_something_that_is_not_a_state_dict_is_refused(saved, payload):
    path, _, _ = saved
    buf = io.BytesIO()
    torch.save(payload, buf)
    rewrite_weights(path, buf.getvalue(), update_card_sha=True)
    with pytest.raises(WeightsError, match="not a state_dict"):
        load_checkpoint(path)


def test_oversized_weights_are_refused_before_reading(saved, monkeypatch):
    path, _, _ = saved
    monkeypatch.setattr(checkpoint, "MAX_WEIGHTS_BYTES", path.stat().st_size - 1)
    with pytest.raises(WeightsError, match="larger than"):
        load_checkpoint(path)


# --------------------------------------------------------------------------- failed writes


def _temp_files(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_failed_fsync_leaves_the_old_checkpoint_intact(saved, monkeypatch):
    path, card, _ = saved
    old_weights, old_card = path.read_bytes(), card_path_for(path).read_bytes()

    def broken_fsync(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint.os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="No space"):
        save_checkpoint(small_model(seed=1), SMALL, path, {"name": "newer"})
    monkeypatch.undo()
    assert path.read_bytes() == old_weights
    assert card_path_for(path).read_bytes() == old_card
    assert _temp_files(path.parent) == []
    assert load_checkpoint(path).card == card


def test_write_interrupted_midway_leaves_the_old_file_and_no_temp_file(tmp_path, monkeypatch):
    target = tmp_path / "weights.pt"
    target.write_bytes(b"good old weights")
    real_fdopen = os.fdopen

    class HalfWriter:
        """A file whose write stores half the data, then the process is interrupted."""

        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            self.f.write(data[: len(data) // 2])
            raise KeyboardInterrupt

        def __getattr__(self, name):
            return getattr(self.f, name)

    monkeypatch.setattr(checkpoint.os, "fdopen", lambda fd, mode: HalfWriter(real_fdopen(fd, mode)))
    with pytest.raises(KeyboardInterrupt):
        checkpoint.atomic_write_bytes(target, b"new weights that never fully arrive" * 100)
    monkeypatch.undo()
    assert target.read_bytes() == b"good old weights"
    assert _temp_files(tmp_path) == []


def test_failed_card_write_puts_the_old_weights_back(saved, monkeypatch):
    """Weights and card are two files: if the card cannot be written, the old pair must still match."""
    path, card, _ = saved
    old_weights, old_card = path.read_bytes(), card_path_for(path).read_bytes()
    real_write = checkpoint.atomic_write_bytes

    def card_write_fails(target, data):
        if Path(target).suffix == ".json":
            raise OSError(28, "No space left on device")
        real_write(target, data)

    monkeypatch.setattr(checkpoint, "atomic_write_bytes", card_write_fails)
    with pytest.raises(OSError):
        save_checkpoint(small_model(seed=2), SMALL, path, {"name": "newer"})
    monkeypatch.undo()
    assert path.read_bytes() == old_weights
    assert card_path_for(path).read_bytes() == old_card
    assert load_checkpoint(path).card == card
    assert _temp_files(path.parent) == []


def test_failed_first_save_leaves_no_orphan_weights(tmp_path, monkeypatch):
    path = tmp_path / "fresh.pt"
    real_write = checkpoint.atomic_write_bytes

    def card_write_fails(target, data):
        if Path(target).suffix == ".json":
            raise OSError(28, "No space left on device")
        real_write(target, data)

    monkeypatch.setattr(checkpoint, "atomic_write_bytes", card_write_fails)
    with pytest.raises(OSError):
        save_checkpoint(small_model(), SMALL, path, {})
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- no unsafe unpickling anywhere


def _python_files() -> list[Path]:
    files = [ROOT / "app.py"]
    for folder in ("cnn_core", "ui", "pages", "bench"):
        if (ROOT / folder).is_dir():
            files += sorted((ROOT / folder).rglob("*.py"))
    return [f for f in files if f.is_file()]


def _unsafe_loads(tree: ast.AST) -> tuple[int, list[str]]:
    """(number of torch.load calls, descriptions of unsafe ones) in a module's syntax tree."""
    torch_loads, unsafe = 0, []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = ast.unparse(func)
        if name in ("torch.load", "torch.serialization.load"):
            torch_loads += 1
            weights_only = [k for k in node.keywords if k.arg == "weights_only"]
            if not (weights_only and isinstance(weights_only[0].value, ast.Constant)
                    and weights_only[0].value.value is True):
                unsafe.append(f"line {node.lineno}: {ast.unparse(node)}")
        elif name in ("pickle.load", "pickle.loads", "pickle.Unpickler", "dill.load", "dill.loads"):
            unsafe.append(f"line {node.lineno}: {ast.unparse(node)}")
    return torch_loads, unsafe


def test_every_torch_load_passes_weights_only_true():
    total, problems = 0, []
    for f in _python_files():
        n, unsafe = _unsafe_loads(ast.parse(f.read_text(), filename=str(f)))
        total += n
        problems += [f"{f.relative_to(ROOT)} {u}" for u in unsafe]
    assert problems == []
    assert total >= 1  # the scan does see cnn_core/checkpoint.py's torch.load


def test_the_scan_catches_an_unsafe_load():
    n, unsafe = _unsafe_loads(ast.parse(
        "torch.load(f)\ntorch.load(f, weights_only=False)\ntorch.load(\n  f,\n  weights_only=True)\npickle.loads(b)"))
    assert n == 3
    assert len(unsafe) == 3


def test_identity_names_the_architecture_and_every_weight(saved):
    """Caches shared between sessions key on identity: the same weights under another architecture differ."""
    path, card, _ = saved
    first = load_checkpoint(path)
    assert load_checkpoint(path).identity == first.identity  # the same file: the same model
    card_path_for(path).write_text(json.dumps(dict(card, architecture=dict(card["architecture"], pool="avg",
                                                                            hidden_relu=True))))
    other = load_checkpoint(path)  # the same weights file (same sha256), another architecture
    assert other.card["sha256"] == first.card["sha256"]
    assert other.identity != first.identity
    changed = build_model(first.config)
    changed.load_state_dict(first.model.state_dict())
    with torch.no_grad():
        changed.fc2.bias[3] += 1e-6  # one weight, barely moved
    assert checkpoint.model_identity(first.config, changed) != first.identity
