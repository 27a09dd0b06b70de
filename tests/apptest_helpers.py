"""Helpers for the AppTest page tests: reading Plotly figures back from a page (not a test module)."""

from __future__ import annotations

import base64
import json

import numpy as np
from streamlit.testing.v1 import AppTest


def chart(at: AppTest, key: str) -> dict:
    """The figure JSON of the one Plotly chart with this key."""
    found = [c for c in at.get("plotly_chart") if c.key == key]
    assert len(found) == 1, f"no single chart {key!r}: {[c.key for c in at.get('plotly_chart')]}"
    return json.loads(found[0].proto.spec)


def decode(values) -> np.ndarray:
    """An array of a figure's JSON, whether plotly sent a list or a base64 typed array."""
    if isinstance(values, dict):
        flat = np.frombuffer(base64.b64decode(values["bdata"]), dtype=np.dtype(values["dtype"]))
        shape = [int(s) for s in str(values.get("shape", len(flat))).split(",")]
        return flat.reshape(shape).astype(float)
    return np.asarray(values, dtype=float)


def session_model(config, name: str = "variant", seed: int = 0, scale: float | None = None,
                  origin: str | None = None):
    """An untrained eval-mode model of ``config`` with a card like the app gives its own models.

    Weights come from a generator seeded with ``seed`` (PyTorch's default initialisation, or normal
    values times ``scale`` when given, for livelier activations); the card's sha256 is the weights'.
    """
    import torch

    from cnn_core.checkpoint import LoadedModel, sha256_bytes, state_dict_bytes
    from cnn_core.model import build_model, count_parameters

    with torch.random.fork_rng():  # the default initialisation draws from the global generator: keep it as it was
        torch.manual_seed(seed)
        model = build_model(config).eval()
    if scale is not None:
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.randn(p.shape, generator=generator) * scale)
    for p in model.parameters():
        p.requires_grad_(False)  # as the app's own models (cnn_core.jobs, cnn_core.checkpoint)
    card = {"name": name, "architecture": config.to_dict(), "sha256": sha256_bytes(state_dict_bytes(model)),
            "parameters": count_parameters(model)}
    if origin is not None:
        card["origin"] = origin
    return LoadedModel(model, config, card)


def run_page(page, model=None, digit=None, state: dict | None = None, select: str | None = None,
             timeout: float = 300) -> AppTest:
    """Run a page once and fail on any exception.

    ``model`` (a LoadedModel) becomes this session's own model and is selected, as ui.state.register_model
    does; else ``select`` (a picker id) is selected, if given. ``digit`` (a ui.state.Digit) is the current
    digit. ``state`` is set in session state first (widget values too).
    """
    from ui.state import DIGIT_KEY, MODEL_KEY, OWN_MODELS_KEY, model_id_of

    at = AppTest.from_file(str(page), default_timeout=timeout)
    for key, value in (state or {}).items():
        at.session_state[key] = value
    if digit is not None:
        at.session_state[DIGIT_KEY] = digit
    if model is not None:
        at.session_state[OWN_MODELS_KEY] = {model_id_of(model): model}
        at.session_state[MODEL_KEY] = model_id_of(model)
    elif select is not None:
        at.session_state[MODEL_KEY] = select
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def new_page(page, models: dict | None = None, selected: str | None = None, digit=None,
             timeout: float = 180) -> AppTest:
    """A page's session, not run yet: ``models`` (picker id -> LoadedModel) as this session's own models,
    ``selected`` as the picked model, ``digit`` (a ui.state.Digit) as the current digit."""
    from ui.state import DIGIT_KEY, MODEL_KEY, OWN_MODELS_KEY

    at = AppTest.from_file(str(page), default_timeout=timeout)
    if models is not None:
        at.session_state[OWN_MODELS_KEY] = models
    if selected is not None:
        at.session_state[MODEL_KEY] = selected
    if digit is not None:
        at.session_state[DIGIT_KEY] = digit
    return at


def ok(at: AppTest) -> AppTest:
    """Run the page and fail on any exception."""
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at
