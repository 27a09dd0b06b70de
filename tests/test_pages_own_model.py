"""Your own network: the Train your own and Compare pages, and the Model picker, run headless with AppTest.

Expected values come from cnn_core (layer_table, trace) on the same models the pages use.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from apptest_helpers import chart, decode, new_page, ok, session_model
from streamlit.testing.v1 import AppTest

from cnn_core.checkpoint import LoadedModel
from cnn_core.introspect import trace
from cnn_core.model import CNNConfig, MLPConfig
from cnn_core.preprocess import normalise
from cnn_core.samples import load_samples
from ui.state import (
    MODEL_KEY,
    OWN_MODELS_KEY,
    PICKER_KEY,
    SHIPPED_ID,
    Digit,
    default_model_id,
    shipped_model_paths,
)

PAGES = Path(__file__).resolve().parent.parent / "pages"
TRAIN = str(PAGES / "9_Train_your_own.py")
COMPARE = str(PAGES / "10_Compare.py")
FEATURE_MAPS = str(PAGES / "1_Feature_maps.py")
ARCHITECTURE = str(PAGES / "2_Architecture.py")
VARIANT = CNNConfig(conv1_channels=16, conv2_channels=24, kernel_size=5, padding=0, pool="avg", dropout=0.1,
                    hidden=128, hidden_relu=True)


pytestmark = pytest.mark.usefixtures("no_job_outlives_its_test")


# --- helpers -------------------------------------------------------------------------------------------




def random_model(config, name: str, seed: int = 0) -> LoadedModel:
    """An untrained model with a card like the app gives its own models (the sha256 is the weights')."""
    return session_model(config, name, seed=seed, scale=None)


def own(loaded: LoadedModel) -> tuple[str, dict[str, LoadedModel]]:
    model_id = "own:" + loaded.card["sha256"]
    return model_id, {model_id: loaded}


def table(at: AppTest, index: int):
    return at.dataframe[index].value


def assert_table_matches(df, rows) -> None:
    assert list(df["name"]) == [r.name for r in rows]
    assert list(df["type"]) == [r.kind for r in rows]
    assert list(df["parameters"]) == [r.parameters for r in rows]
    assert list(df["output shape"]) == [" × ".join(map(str, r.output_shape)) for r in rows]
    assert list(df["output size"]) == [r.size.formula() if r.size is not None else "" for r in rows]


def own_models_of(at: AppTest) -> dict:
    return at.session_state[OWN_MODELS_KEY] if OWN_MODELS_KEY in at.session_state else {}


def texts(elements) -> str:
    return "\n".join(e.value for e in elements)


def sample_digit(i: int = 0) -> Digit:
    s = load_samples()[i]
    return Digit(s.pixels, f"sample {s.label}")


# --- page 9: design and train ----------------------------------------------------------------------------


def test_picking_a_model_in_the_sidebar_changes_what_pages_show(shipped):
    variant = random_model(VARIANT, "variant")
    model_id, models = own(variant)
    digit = sample_digit(2)
    at = ok(new_page(FEATURE_MAPS, models, digit=digit))
    shipped_prediction = trace(shipped.model, normalise(digit.pixels)).prediction
    assert [m.value for m in at.metric if m.label == "Prediction"] == [str(shipped_prediction)]
    at.selectbox(key=PICKER_KEY).set_value(model_id)
    ok(at)
    assert at.session_state[MODEL_KEY] == model_id
    expected = trace(variant.model, normalise(digit.pixels))
    assert [m.value for m in at.metric if m.label == "Prediction"] == [str(expected.prediction)]
    headers = [h.value for h in at.header]
    assert any("relu3" in h for h in headers), headers  # the variant's own layers are explained


def test_a_session_keeps_at_most_max_own_models():
    def script():
        import streamlit as st
        import torch

        from cnn_core.checkpoint import LoadedModel, sha256_bytes, state_dict_bytes
        from cnn_core.model import MLPConfig, build_model
        from ui.state import (
            MAX_OWN_MODELS,
            default_model_id,
            forget_model,
            get_model,
            own_models,
            register_model,
            selected_model_id,
        )

        ids = []
        for seed in range(MAX_OWN_MODELS + 2):
            torch.manual_seed(seed)
            model = build_model(MLPConfig(hidden=(4,))).eval()
            card = {"name": f"m{seed}", "sha256": sha256_bytes(state_dict_bytes(model))}
            ids.append(register_model(LoadedModel(model, MLPConfig(hidden=(4,)), card), select=seed == 0))
        st.markdown(f"kept {list(own_models()) == [ids[0], *ids[3:]]}")  # the selected stays, the oldest others go
        st.markdown(f"selected {selected_model_id() == ids[0] and get_model().name == 'm0'}")
        forget_model(ids[0])
        st.markdown(f"forgotten {ids[0] not in own_models() and selected_model_id() == default_model_id()}")

    at = AppTest.from_function(script, default_timeout=60)
    ok(at)
    assert [m.value for m in at.markdown] == ["kept True", "selected True", "forgotten True"]


# --- page 10: compare ------------------------------------------------------------------------------------


def test_two_inputs_through_one_network(shipped):
    variant = random_model(VARIANT, "variant", seed=1)
    model_id, models = own(variant)
    digit = sample_digit(0)
    at = ok(new_page(COMPARE, models, model_id, digit))
    samples = load_samples()
    b_label = at.selectbox(key="compare_b").value
    b_sample = next(s for s in samples if f"sample {s.label} ({s.source})" == b_label)
    at.selectbox(key="compare_layer").set_value("conv2")
    at.get_by_key("compare_channel").set_value(5)
    ok(at)
    tr_a = trace(variant.model, normalise(digit.pixels))
    tr_b = trace(variant.model, normalise(b_sample.pixels))
    a, b = tr_a["conv2"][5].numpy(), tr_b["conv2"][5].numpy()
    assert np.allclose(decode(chart(at, "compare_map_a")["data"][0]["z"]), a, atol=1e-6)
    assert np.allclose(decode(chart(at, "compare_map_b")["data"][0]["z"]), b, atol=1e-6)
    assert np.allclose(decode(chart(at, "compare_map_diff")["data"][0]["z"]), a - b, atol=1e-6)
    bars = chart(at, "compare_layer_bars")["data"][0]
    assert list(bars["x"]) == ["input", *tr_a.names()]
    expected = [float((tr_a.input - tr_b.input).abs().mean())] + [
        float((la.output - lb.output).abs().mean()) for la, lb in zip(tr_a.layers, tr_b.layers)]
    assert np.allclose(decode(bars["y"]), expected, rtol=1e-5)
    assert decode(bars["y"]).max() > 0
    assert set(at.selectbox(key="compare_layer").options) == {"input", "conv1", "relu1", "pool1", "conv2",
                                                              "relu2", "pool2"}


def test_one_input_through_two_networks(shipped):
    variant = random_model(VARIANT, "variant", seed=2)
    model_id, models = own(variant)
    digit = sample_digit(4)
    at = ok(new_page(COMPARE, models, model_id, digit))
    assert at.selectbox(key="compare_model_1").value == model_id
    assert at.selectbox(key="compare_model_2").value == SHIPPED_ID
    bars = chart(at, "compare_models_bars")["data"]
    x = normalise(digit.pixels)
    assert len(bars) == 2
    assert np.allclose(decode(bars[0]["y"]), trace(variant.model, x).probabilities.numpy(), atol=1e-6)
    assert np.allclose(decode(bars[1]["y"]), trace(shipped.model, x).probabilities.numpy(), atol=1e-6)
    labels = {d.proto.label for d in at.get("download_button")}
    assert {"Activations of A (.npz)", "Maps of conv1 for A (.png)", "Download activations (.npz)"} <= labels


def test_compare_with_only_the_shipped_networks_and_with_an_mlp():
    at = ok(new_page(COMPARE))
    if len(shipped_model_paths()) == 1:  # the CNN alone: nothing to compare it with yet
        assert "only one network" in texts(at.info)
    else:  # another shipped network is the default one's partner: the article's CNN, or the other model
        first, second = at.selectbox(key="compare_model_1").value, at.selectbox(key="compare_model_2").value
        assert first == default_model_id() and second != first and second in shipped_model_paths()
        assert len(chart(at, "compare_models_bars")["data"]) == 2
    mlp = random_model(MLPConfig(hidden=(32,)), "tiny MLP")
    model_id, models = own(mlp)
    at = ok(new_page(COMPARE, models, model_id))
    assert "has no convolution" in texts(at.info)
    assert at.selectbox(key="compare_layer").options == ["input"]
    assert list(chart(at, "compare_layer_bars")["data"][0]["x"]) == ["input", "flatten", "dropout", "fc1", "relu1",
                                                                       "fc2"]
