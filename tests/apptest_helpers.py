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
