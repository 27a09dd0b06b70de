"""Your own network: the Train your own and Compare pages, and the Model picker, run headless with AppTest.

Expected values come from cnn_core (layer_table, trace) on the same models the pages use.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from streamlit.testing.v1 import AppTest

from apptest_helpers import chart, decode

from cnn_core import jobs
from cnn_core.architecture import layer_table, total_parameters
from cnn_core.checkpoint import LoadedModel, save_checkpoint, sha256_bytes, state_dict_bytes
from cnn_core.introspect import trace
from cnn_core.model import CNNConfig, MLPConfig, build_model
from cnn_core.preprocess import normalise
from cnn_core.samples import load_samples
from ui.state import (
    DIGIT_KEY,
    MODEL_KEY,
    OWN_MODELS_KEY,
    PICKER_KEY,
    SHIPPED_ID,
    Digit,
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


def new_page(page: str, models: dict[str, LoadedModel] | None = None, selected: str | None = None,
             digit: Digit | None = None) -> AppTest:
    at = AppTest.from_file(page, default_timeout=180)
    if models is not None:
        at.session_state[OWN_MODELS_KEY] = models
    if selected is not None:
        at.session_state[MODEL_KEY] = selected
    if digit is not None:
        at.session_state[DIGIT_KEY] = digit
    return at


def ok(at: AppTest) -> AppTest:
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def random_model(config, name: str, seed: int = 0) -> LoadedModel:
    """An untrained model with a card like the app gives its own models (the sha256 is the weights')."""
    torch.manual_seed(seed)
    model = build_model(config).eval()
    for p in model.parameters():
        p.requires_grad_(False)  # as the app's own models (cnn_core.jobs, cnn_core.checkpoint)
    card = {"name": name, "architecture": config.to_dict(), "sha256": sha256_bytes(state_dict_bytes(model)),
            "parameters": sum(p.numel() for p in model.parameters())}
    return LoadedModel(model, config, card)


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


def test_the_design_table_follows_the_settings():
    at = ok(new_page(TRAIN))
    shipped_rows = layer_table(build_model(CNNConfig()))
    assert_table_matches(table(at, 0), shipped_rows)  # the defaults are the shipped network
    for key, value in (("own_conv1", 16), ("own_conv2", 24), ("own_kernel", 5), ("own_padding", 0),
                       ("own_pool", "avg"), ("own_dropout", 0.1), ("own_hidden_relu", True)):
        at.get_by_key(key).set_value(value)
    ok(at)
    rows = layer_table(build_model(VARIANT))
    assert_table_matches(table(at, 0), rows)
    assert "relu3" in list(table(at, 0)["name"]) and "AvgPool2d" in list(table(at, 0)["type"])
    assert [m.value for m in at.metric if m.label == "Parameters"] == [f"{total_parameters(rows):,}"]


def test_training_on_the_page_registers_a_model_every_page_explores(data_dir):
    at = ok(new_page(TRAIN))
    for key, value in (("own_conv1", 8), ("own_conv2", 8), ("own_kernel", 5), ("own_padding", 2),
                       ("own_train_size", 500), ("own_epochs", 1), ("own_name", "page test")):
        at.get_by_key(key).set_value(value)
    at.button(key="own_train").click()
    ok(at)
    job = at.session_state["training_job"]
    assert job.config.train_size == 500 and job.config.epochs == 1
    assert job.model_config == CNNConfig(8, 8, 5, 2, "max", 0.25, 128, False)
    assert at.get("progress"), "no progress bar while training"
    assert job.wait(180), "the training run did not finish"
    ok(at)  # the page sees the finished job: the model goes into the picker, selected

    model_id = at.session_state[MODEL_KEY]
    assert model_id.startswith("own:") and at.selectbox(key=PICKER_KEY).value == model_id
    trained = at.session_state[OWN_MODELS_KEY][model_id]
    assert trained.name == "page test" and trained.card["sha256"] == model_id.removeprefix("own:")
    assert "page test" in texts(at.success)
    assert_table_matches(table(at, 1), layer_table(trained.model))  # the trained network's architecture
    assert len(trained.card["history"]) == 1
    assert not at.button(key="own_train").disabled  # finished: another run may start

    # Other pages of the same session now explore the trained network.
    digit = sample_digit(7)
    expected = trace(trained.model, normalise(digit.pixels))
    fm = ok(new_page(FEATURE_MAPS, at.session_state[OWN_MODELS_KEY], model_id, digit))
    assert [m.value for m in fm.metric if m.label == "Prediction"] == [str(expected.prediction)]
    arch = ok(new_page(ARCHITECTURE, at.session_state[OWN_MODELS_KEY], model_id))
    assert list(table(arch, 0)["name"]) == [r.name for r in layer_table(trained.model)]
    assert list(table(arch, 0)["parameters"]) == [r.parameters for r in layer_table(trained.model)]


def test_a_run_that_finishes_on_another_page_is_not_lost(data_dir):
    at = ok(new_page(TRAIN))
    at.get_by_key("own_train_size").set_value(500)
    at.get_by_key("own_name").set_value("left behind")
    at.button(key="own_train").click()
    ok(at)
    job = at.session_state["training_job"]
    other = new_page(COMPARE)  # the user went on to another page of the same session
    other.session_state["training_job"] = job
    assert job.wait(180)
    ok(other)
    model_id = other.session_state[MODEL_KEY]
    assert model_id.startswith("own:") and other.session_state[OWN_MODELS_KEY][model_id].name == "left behind"
    assert other.selectbox(key=PICKER_KEY).value == model_id
    ok(other)  # registered once: a rerun does not add it again
    assert list(other.session_state[OWN_MODELS_KEY]) == [model_id]


def test_cancel_on_the_page_keeps_no_model(data_dir):
    at = ok(new_page(TRAIN))
    at.get_by_key("own_train_size").set_value(5000)
    at.get_by_key("own_epochs").set_value(3)
    at.button(key="own_train").click()
    ok(at)
    job = at.session_state["training_job"]
    assert at.button(key="own_train").disabled, "a second run could start while one runs"
    at.button(key="own_cancel").click()
    ok(at)
    assert job.wait(60), "cancel did not stop the run"
    ok(at)
    snap = job.snapshot()
    assert snap.status == "cancelled" and job.result.cancelled and snap.fraction < 1
    assert "cancelled" in texts(at.info)
    assert not own_models_of(at)
    assert at.selectbox(key=PICKER_KEY).value == SHIPPED_ID


def test_a_full_server_says_so(data_dir, monkeypatch):
    monkeypatch.setattr(jobs, "MAX_RUNNING_JOBS", 0)
    at = ok(new_page(TRAIN))
    at.button(key="own_train").click()
    ok(at)
    assert "busy training" in texts(at.warning) and "limit is 0" in texts(at.warning)
    assert "training_job" not in at.session_state


def test_no_data_folder_gives_a_clear_message(tmp_path, monkeypatch):
    monkeypatch.setenv("CNN_EXPLORER_DATA", str(tmp_path))
    at = ok(new_page(TRAIN))
    at.button(key="own_train").click()
    ok(at)
    assert "No MNIST digits to train on" in texts(at.error) and str(tmp_path) in texts(at.error)
    assert "--download" in texts(at.info)
    assert "training_job" not in at.session_state


# --- page 9: bring your own weights -------------------------------------------------------------------------


def upload(at: AppTest, weights: tuple[str, bytes] | None, card: tuple[str, bytes] | None) -> AppTest:
    if weights is not None:
        at.file_uploader(key="upload_weights").set_value((weights[0], weights[1], "application/octet-stream"))
    if card is not None:
        at.file_uploader(key="upload_card").set_value((card[0], card[1], "application/json"))
    return ok(at)


@pytest.fixture
def saved(tmp_path) -> tuple[bytes, bytes, LoadedModel]:
    loaded = random_model(VARIANT, "ignored", seed=3)
    card = save_checkpoint(loaded.model, VARIANT, tmp_path / "uploaded.pt", {"name": "uploaded net"})
    assert card["sha256"]
    return (tmp_path / "uploaded.pt").read_bytes(), (tmp_path / "uploaded.json").read_bytes(), loaded


def test_a_good_weights_file_is_loaded_and_selected(saved):
    weights, card, original = saved
    at = upload(ok(new_page(TRAIN)), ("uploaded.pt", weights), ("uploaded.json", card))
    assert not at.error
    assert "uploaded net" in texts(at.success)
    model_id = "own:" + sha256_bytes(weights)
    assert at.session_state[MODEL_KEY] == model_id and at.selectbox(key=PICKER_KEY).value == model_id
    loaded = at.session_state[OWN_MODELS_KEY][model_id]
    assert loaded.card["origin"] == "uploaded" and loaded.config == VARIANT
    x = normalise(sample_digit().pixels)
    assert torch.equal(trace(loaded.model, x).probabilities, trace(original.model, x).probabilities)
    ok(at)  # a rerun with the same files does not load them again or change the selection
    assert list(at.session_state[OWN_MODELS_KEY]) == [model_id]


def test_an_mlp_can_be_uploaded(tmp_path):
    mlp = random_model(MLPConfig(hidden=(32,)), "x")
    save_checkpoint(mlp.model, mlp.config, tmp_path / "mlp.pt", {"name": "an MLP"})
    at = upload(ok(new_page(TRAIN)), ("mlp.pt", (tmp_path / "mlp.pt").read_bytes()),
                ("mlp.json", (tmp_path / "mlp.json").read_bytes()))
    assert not at.error and "MLP" in texts(at.success)


def _tampered_card(card: bytes) -> bytes:
    d = json.loads(card)
    d["sha256"] = "0" * 64
    return json.dumps(d).encode()


@pytest.mark.parametrize("case, expected", [
    ("garbage weights", "sha256"),
    ("tampered sha", "sha256"),
    ("garbage card", "not valid JSON"),
    ("wrong architecture", "shape"),
    ("pickled code", "not a plain PyTorch state_dict"),
])
def test_bad_files_get_the_reason_and_no_traceback(saved, case, expected, tmp_path):
    weights, card, _ = saved
    if case == "garbage weights":
        weights = b"\x80\x02 this is not a checkpoint" * 10
    elif case == "tampered sha":
        card = _tampered_card(card)
    elif case == "garbage card":
        card = b"{not json"
    elif case == "wrong architecture":  # a valid card for other shapes, with the right sha256
        d = json.loads(card)
        d["architecture"] = CNNConfig(conv1_channels=8).to_dict()
        card = json.dumps(d).encode()
    elif case == "pickled code":  # a pickle that is not a state_dict: weights_only refuses it
        import io
        buf = io.BytesIO()
        torch.save({"model": torch.nn.Linear(2, 2)}, buf)
        weights = buf.getvalue()
        d = json.loads(card)
        d["sha256"] = sha256_bytes(weights)
        card = json.dumps(d).encode()
    at = upload(ok(new_page(TRAIN)), ("bad.pt", weights), ("bad.json", card))
    errors = texts(at.error)
    assert "bad.pt was not loaded" in errors and expected in errors, errors
    assert not own_models_of(at)
    assert at.selectbox(key=PICKER_KEY).value == SHIPPED_ID


def test_one_file_alone_asks_for_the_other(saved):
    weights, _, _ = saved
    at = upload(ok(new_page(TRAIN)), ("w.pt", weights), None)
    assert "Add the other file" in texts(at.info) and not at.error


# --- the picker ------------------------------------------------------------------------------------------


def test_each_session_sees_only_its_own_models(saved):
    weights, card, _ = saved
    mine = upload(ok(new_page(TRAIN)), ("uploaded.pt", weights), ("uploaded.json", card))
    theirs = ok(new_page(TRAIN))
    assert len(mine.selectbox(key=PICKER_KEY).options) == len(shipped_model_paths()) + 1
    assert theirs.selectbox(key=PICKER_KEY).options == ["Shipped CNN"] + (
        ["Shipped MLP (no convolutions)"] if len(shipped_model_paths()) > 1 else [])
    assert theirs.selectbox(key=PICKER_KEY).value == SHIPPED_ID


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
        from ui.state import (MAX_OWN_MODELS, forget_model, get_model, own_models, register_model,
                              selected_model_id)

        ids = []
        for seed in range(MAX_OWN_MODELS + 2):
            torch.manual_seed(seed)
            model = build_model(MLPConfig(hidden=(4,))).eval()
            card = {"name": f"m{seed}", "sha256": sha256_bytes(state_dict_bytes(model))}
            ids.append(register_model(LoadedModel(model, MLPConfig(hidden=(4,)), card), select=seed == 0))
        st.markdown(f"kept {list(own_models()) == [ids[0], *ids[3:]]}")  # the selected stays, the oldest others go
        st.markdown(f"selected {selected_model_id() == ids[0] and get_model().name == 'm0'}")
        forget_model(ids[0])
        st.markdown(f"forgotten {ids[0] not in own_models() and selected_model_id() == 'shipped:cnn'}")

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
    else:  # the shipped MLP is there: it is the CNN's default partner
        assert at.selectbox(key="compare_model_2").value != SHIPPED_ID
        assert len(chart(at, "compare_models_bars")["data"]) == 2
    mlp = random_model(MLPConfig(hidden=(32,)), "tiny MLP")
    model_id, models = own(mlp)
    at = ok(new_page(COMPARE, models, model_id))
    assert "has no convolution" in texts(at.info)
    assert at.selectbox(key="compare_layer").options == ["input"]
    assert list(chart(at, "compare_layer_bars")["data"][0]["x"]) == ["input", "flatten", "dropout", "fc1", "relu1",
                                                                       "fc2"]
