"""Two sessions, one server: what one visitor's model computes never shows up for another (issue 12, item 1).

AppTest instances in one process share Streamlit's process-wide caches (st.cache_resource, st.cache_data
and ui.state's measurements), as the sessions of one server do. Session A brings a model whose weights
file is byte for byte the shipped CNN's but whose card says average pooling and a ReLU after fc1: the
same state_dict keys and shapes, the same sha256, another network. Caches keyed by a card's sha256 or
a name would hand A's results to B; keyed by the model's identity (architecture and weights) they cannot.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from apptest_helpers import chart, decode
from streamlit.testing.v1 import AppTest

from cnn_core.checkpoint import LoadedModel, load_checkpoint
from cnn_core.data import take
from cnn_core.explain import integrated_gradients, shift_accuracy_curve, shift_sensitivity, top_activating
from cnn_core.introspect import trace
from cnn_core.measure import SHIFT_DIGITS, SHIFTS
from cnn_core.model import CNNConfig, build_model
from cnn_core.preprocess import normalise
from ui.state import DIGIT_KEY, MODEL_KEY, OWN_MODELS_KEY, SHIPPED_ID, Digit, model_id_of, shipped_model_paths

PAGES = Path(__file__).resolve().parent.parent / "pages"
WHY, FILTERS = str(PAGES / "8_Why_this_digit.py"), str(PAGES / "7_Filters.py")
DIGIT_INDEX = 21  # a bundled test digit


def session(page: str, digit: Digit, model: LoadedModel | None = None) -> AppTest:
    """A new session on ``page`` with ``digit``: its own ``model`` registered and selected (as ui.state.register_model
    does), or the shipped CNN."""
    at = AppTest.from_file(page, default_timeout=600)
    at.session_state[DIGIT_KEY] = digit
    if model is None:
        at.session_state[MODEL_KEY] = SHIPPED_ID
    else:
        at.session_state[OWN_MODELS_KEY] = {model_id_of(model): model}
        at.session_state[MODEL_KEY] = model_id_of(model)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    return at


def same_weights_other_network(shipped: LoadedModel) -> LoadedModel:
    """The shipped weights in another architecture of the same state_dict shape, with the shipped card's sha256."""
    config = replace(shipped.config, pool="avg", hidden_relu=True)
    assert isinstance(config, CNNConfig)
    model = build_model(config)
    model.load_state_dict(shipped.model.state_dict())  # same keys and shapes: relu3 has no parameters
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    card = dict(shipped.card, name="Shipped CNN", architecture=config.to_dict(), origin="uploaded")
    return LoadedModel(model, config, card)


def why_figures(at: AppTest) -> dict[str, np.ndarray]:
    return {"saliency": decode(chart(at, "why_overlay")["data"][1]["z"]),
            "shift_grid": decode(chart(at, "why_shift_grid")["data"][0]["z"]),
            "accuracy": np.concatenate([decode(t["y"]) for t in chart(at, "why_accuracy")["data"]])}


def test_a_second_session_sees_the_shipped_model_not_the_first_sessions(test_split):
    assert SHIPPED_ID in shipped_model_paths()
    shipped = load_checkpoint(shipped_model_paths()[SHIPPED_ID])
    impostor = same_weights_other_network(shipped)
    assert impostor.card["sha256"] == shipped.card["sha256"] and impostor.identity != shipped.identity
    pixels = test_split.images[DIGIT_INDEX].numpy().astype(np.float32) / 255
    digit = Digit(pixels, f"MNIST test #{DIGIT_INDEX}")

    # Session A: the impostor on both pages (everything it computes lands in the shared caches first).
    a_why = why_figures(session(WHY, digit, impostor))
    a_filters = session(FILTERS, digit, impostor)

    # Session B: a fresh visitor on the shipped CNN.
    b = session(WHY, digit)
    b_why = why_figures(b)
    tr = trace(shipped.model, normalise(pixels))
    assert [m.value for m in b.metric if m.label == "Prediction"] == [str(tr.prediction)]
    expected_saliency = integrated_gradients(shipped.model, pixels, tr.prediction).attributions.numpy()
    assert np.allclose(b_why["saliency"], expected_saliency, atol=1e-5)
    grid = shift_sensitivity(shipped.model, pixels, SHIFTS).grid[:, :, tr.prediction].numpy()
    assert np.allclose(b_why["shift_grid"], grid, atol=1e-6)
    part = take(test_split, SHIFT_DIGITS)
    curve = shift_accuracy_curve(shipped.model, part.images, part.labels, SHIFTS)
    assert np.allclose(b_why["accuracy"], [*curve.horizontal, *curve.vertical])

    b_filters = session(FILTERS, digit)
    top = top_activating(shipped.model, test_split.images, "conv1", 10)
    assert list(b_filters.image[0].captions) == [f"{int(test_split.labels[i])} · {v:.2f}"
                                                 for i, v in zip(top.indices[0].tolist(), top.values[0].tolist())]
    own_map = decode(chart(b_filters, "fl_own_conv1")["data"][0]["z"])
    assert np.allclose(own_map, tr["conv1"][0].numpy(), atol=1e-6)

    # The test has teeth: the impostor really computes other numbers than the shipped CNN.
    assert not np.allclose(a_why["saliency"], b_why["saliency"], atol=1e-3)
    assert not np.allclose(a_why["accuracy"], b_why["accuracy"])
    a_top = list(a_filters.image[1].captions)  # conv2: avg pooling before it changes what excites its filters
    b_top = list(b_filters.image[1].captions)
    assert a_top != b_top


@pytest.mark.parametrize("page", [WHY, FILTERS])
def test_the_impostor_gets_its_own_figures_after_the_shipped_ones(page, test_split):
    """The other order: the shipped CNN first, then the impostor's session sees its own network's numbers."""
    shipped = load_checkpoint(shipped_model_paths()[SHIPPED_ID])
    impostor = same_weights_other_network(shipped)
    pixels = test_split.images[DIGIT_INDEX + 1].numpy().astype(np.float32) / 255
    digit = Digit(pixels, "MNIST test digit")
    session(page, digit)
    at = session(page, digit, impostor)
    if page == WHY:
        target = trace(impostor.model, normalise(pixels)).prediction
        expected = integrated_gradients(impostor.model, pixels, target).attributions.numpy()
        assert np.allclose(decode(chart(at, "why_overlay")["data"][1]["z"]), expected, atol=1e-5)
    else:
        expected = trace(impostor.model, normalise(pixels))["conv2"][0].numpy()
        assert np.allclose(decode(chart(at, "fl_own_conv2")["data"][0]["z"]), expected, atol=1e-6)
        top = top_activating(impostor.model, test_split.images, "conv2", 10)
        assert list(at.image[1].captions) == [f"{int(test_split.labels[i])} · {v:.2f}"
                                              for i, v in zip(top.indices[0].tolist(), top.values[0].tolist())]
    assert torch.equal(next(impostor.model.parameters()), next(shipped.model.parameters()))  # same weights
