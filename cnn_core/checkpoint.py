"""Saving and loading weights together with their model card.

A checkpoint is two files: ``NAME.pt`` (a plain ``state_dict``) and ``NAME.json``
(the model card: architecture, how it was trained, sha256 of the ``.pt`` file,
measured accuracy). Loading refuses anything that does not match its card, and
never unpickles code (``torch.load(..., weights_only=True)``).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .model import ModelConfig, build_model, config_from_dict, count_parameters
from .paths import MODELS_DIR

MAX_WEIGHTS_BYTES = 64 * 1024 * 1024
MAX_CARD_BYTES = 1_000_000  # a card with its history is about 12 kB
SHIPPED_WEIGHTS = MODELS_DIR / "mnist_cnn.pt"
SHIPPED_MLP_WEIGHTS = MODELS_DIR / "mnist_mlp.pt"


class WeightsError(ValueError):
    """A weights file or model card that cannot be used; str(e) says what is wrong."""


@dataclass
class LoadedModel:
    """An eval-mode model with its card, and its identity.

    ``identity`` names everything that determines the model's outputs (the architecture and every
    weight), so caches shared between sessions key on it: two models with the same weights file but
    different architectures in their cards can never share a cached result.
    """

    model: nn.Sequential
    config: ModelConfig
    card: dict
    identity: str = field(init=False)

    def __post_init__(self) -> None:
        self.identity = model_identity(self.config, self.model)

    @property
    def name(self) -> str:
        return str(self.card.get("name", "model"))


def model_identity(config: ModelConfig, model: nn.Module) -> str:
    """A sha256 of the canonical architecture and of every tensor of the state_dict (names, dtypes, shapes, values)."""
    h = hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True, separators=(",", ":")).encode())
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        h.update(f"\n{name}:{t.dtype}:{tuple(t.shape)}\n".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def card_path_for(weights_path: str | Path) -> Path:
    """The model card that belongs to a weights file: same name, ``.json``."""
    return Path(weights_path).with_suffix(".json")


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename.

    A crash or an interrupt never leaves a half-written file in place of a good one.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:  # owns fd from here: closed even if a write fails
            os.fchmod(f.fileno(), 0o644)  # mkstemp makes 0600 files; weights are meant to be shared
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def state_dict_bytes(model: nn.Module) -> bytes:
    """The model's state_dict serialised with ``torch.save``."""
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu().clone() for k, v in model.state_dict().items()}, buf)
    return buf.getvalue()


def save_checkpoint(model: nn.Module, config: ModelConfig, weights_path: str | Path, card: dict) -> dict:
    """Write weights and card atomically; returns the full card (with sha256 and parameter count)."""
    data = state_dict_bytes(model)
    full = dict(card)
    full.update(
        architecture=config.to_dict(),
        weights_file=Path(weights_path).name,
        sha256=sha256_bytes(data),
        parameters=count_parameters(model),
    )
    weights_path = Path(weights_path)
    # Keep the old weights so that a failed card write can put them back: the pair must match.
    previous = weights_path.read_bytes() if weights_path.is_file() else None
    atomic_write_bytes(weights_path, data)
    try:
        atomic_write_bytes(card_path_for(weights_path), (json.dumps(full, indent=2) + "\n").encode())
    except BaseException:
        if previous is not None:
            atomic_write_bytes(weights_path, previous)
        else:
            weights_path.unlink(missing_ok=True)
        raise
    return full


def parse_card(card_bytes: bytes, where: str = "model card") -> dict:
    """Parse a model card's JSON and check it has what loading needs (its architecture is checked on loading)."""
    if len(card_bytes) > MAX_CARD_BYTES:
        raise WeightsError(f"{where} is {len(card_bytes):,} bytes; a model card is at most {MAX_CARD_BYTES:,}")
    try:
        card = json.loads(card_bytes.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WeightsError(f"{where} is not valid JSON: {str(e)[:200]}") from e
    except RecursionError:  # e.g. 200,000 nested brackets: the parser gives up before we could look
        raise WeightsError(f"{where} is nested too deeply to be a model card") from None
    if not isinstance(card, dict):
        raise WeightsError(f"{where} must be a JSON object")
    for key in ("architecture", "sha256"):
        if key not in card:
            raise WeightsError(f"{where} has no '{key}' entry")
    if not (isinstance(card["sha256"], str) and re.fullmatch(r"[0-9a-f]{64}", card["sha256"])):
        raise WeightsError(f"{where}: 'sha256' must be 64 lowercase hexadecimal digits")
    if not isinstance(card["architecture"], dict):
        raise WeightsError(f"{where}: 'architecture' must be a JSON object")
    return card


def _refuse_compressed_archive(weights: bytes, where: str) -> None:
    """Refuse zip archives with compressed entries before torch.load inflates them.

    torch.save never compresses, but torch.load reads deflated entries too: a 1 MB file
    could make it allocate 1 GB (a "zip bomb", e.g. among weights uploaded on a page).
    """
    if not weights.startswith(b"PK\x03\x04"):
        return  # not a zip: torch.load's legacy format checks sizes before allocating
    try:
        entries = zipfile.ZipFile(io.BytesIO(weights)).infolist()
    except Exception as e:
        raise WeightsError(f"{where} is not a plain PyTorch state_dict and was refused: {e}") from e
    if any(e.compress_type != zipfile.ZIP_STORED for e in entries):
        raise WeightsError(f"{where} holds compressed data, which torch.save never writes, and was refused")
    if sum(e.file_size for e in entries) > MAX_WEIGHTS_BYTES:
        raise WeightsError(f"{where} unpacks to more than {MAX_WEIGHTS_BYTES // 2**20} MiB and was refused")


def load_checkpoint_bytes(weights: bytes, card_bytes: bytes, where: str = "weights") -> LoadedModel:
    """Validate and load weights given as bytes with their card's bytes."""
    card = parse_card(card_bytes, f"model card of {where}")
    if len(weights) > MAX_WEIGHTS_BYTES:
        raise WeightsError(f"{where} is {len(weights) / 1e6:.0f} MB; the limit is {MAX_WEIGHTS_BYTES / 1e6:.0f} MB")
    digest = sha256_bytes(weights)
    if digest != card["sha256"]:
        raise WeightsError(
            f"{where} is corrupted or was changed: its sha256 is {digest[:12]}..., "
            f"the model card expects {str(card['sha256'])[:12]}..."
        )
    try:
        config = config_from_dict(card["architecture"])
        with torch.device("meta"):  # count first, allocating nothing: a card may ask for a huge network
            parameters = count_parameters(build_model(config))
        if parameters > MAX_WEIGHTS_BYTES // 4:
            raise ValueError(f"{parameters:,} parameters do not fit in a weights file of at most "
                             f"{MAX_WEIGHTS_BYTES // 2**20} MiB")
        model = build_model(config)
    except (TypeError, ValueError, RuntimeError) as e:  # RuntimeError: e.g. a negative channel count
        raise WeightsError(f"the model card of {where} describes an invalid architecture: {e}") from e
    _refuse_compressed_archive(weights, where)
    try:
        state = torch.load(io.BytesIO(weights), map_location="cpu", weights_only=True)
    except Exception as e:
        raise WeightsError(f"{where} is not a plain PyTorch state_dict and was refused: {e}") from e
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{where} is not a state_dict (a mapping of names to tensors)")
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        raise WeightsError(f"{where} does not match its architecture: missing {missing}, unexpected {extra}")
    for k, v in expected.items():
        got = state[k]
        if got.shape != v.shape:
            raise WeightsError(f"{where}: '{k}' has shape {tuple(got.shape)}, the architecture needs {tuple(v.shape)}")
        if got.layout != torch.strided or got.is_complex() or got.is_floating_point() != v.is_floating_point():
            raise WeightsError(f"{where}: '{k}' is a {got.layout} {got.dtype} tensor, the architecture needs {v.dtype}")
        if got.is_floating_point() and not bool(torch.isfinite(got).all()):
            raise WeightsError(f"{where}: '{k}' holds NaN or infinite values")
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise WeightsError(f"{where} could not be loaded into its architecture: {e}") from e
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return LoadedModel(model=model, config=config, card=card)


def load_checkpoint(weights_path: str | Path = SHIPPED_WEIGHTS, card_path: str | Path | None = None) -> LoadedModel:
    """Load a weights file and its model card, checking the sha256 and the shapes."""
    weights_path = Path(weights_path)
    card_path = Path(card_path) if card_path else card_path_for(weights_path)
    if not weights_path.is_file():
        raise WeightsError(f"weights file {weights_path} is missing; train one with `python -m cnn_core.train`")
    if not card_path.is_file():
        raise WeightsError(f"model card {card_path} for {weights_path.name} is missing")
    if weights_path.stat().st_size > MAX_WEIGHTS_BYTES:
        raise WeightsError(f"{weights_path} is larger than {MAX_WEIGHTS_BYTES // 2**20} MiB")
    return load_checkpoint_bytes(weights_path.read_bytes(), card_path.read_bytes(), where=str(weights_path))
