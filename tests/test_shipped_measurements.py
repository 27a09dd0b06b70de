"""The measurements stored beside every shipped model are the model's own, on the bundled digits.

Pages read them instead of measuring at a visitor's first click; a stale file (other weights, another
architecture, other test digits) would be ignored by the app and measured again, slowly: this test
catches it before it ships. Refresh with `python -m cnn_core.measure models/*.pt`.
"""

from __future__ import annotations

import pytest

from cnn_core.checkpoint import load_checkpoint
from cnn_core.evaluate import evaluate
from cnn_core.measure import Measurements, load_stored, load_test_sets, measurements_path
from ui.state import SHIPPED_MODELS

PRESENT = [m for m in SHIPPED_MODELS if m.file.is_file()]


@pytest.fixture(scope="module")
def sets():
    return load_test_sets()


@pytest.mark.parametrize("shipped", PRESENT, ids=[m.id for m in PRESENT])
def test_stored_measurements_are_current(shipped, sets):
    loaded = load_checkpoint(shipped.file)
    path = measurements_path(shipped.file)
    assert path.is_file(), f"no {path.name}: run python -m cnn_core.measure {shipped.file}"
    stored = Measurements.from_json(path.read_bytes())
    assert stored.identity == loaded.identity, f"{path.name} belongs to other weights or another architecture"
    assert stored.data == sets.digests, f"{path.name} was measured on other test digits"
    assert load_stored(shipped.file, loaded, sets) == stored
    # An independent recount of the headline figure from the model itself.
    assert stored.mnist.accuracy == pytest.approx(evaluate(loaded.model, sets.mnist).accuracy)
    if sets.pen is not None:
        assert stored.pen is not None
        assert stored.pen.accuracy == pytest.approx(evaluate(loaded.model, sets.pen).accuracy)
