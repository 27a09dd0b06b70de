"""The Train your own page, run headless with AppTest: design, the training queue, epoch-by-epoch views, uploads.

Training here runs on a folder of generated digits written for the test (the page only needs IDX
files), so these tests run in a fresh clone too; expected values come from cnn_core on the same models.
What a reader sees of a Markdown element is its text with CommonMark's backslash escapes removed:
:func:`shown` is that reading, independent of how the page escapes.
"""

from __future__ import annotations

import gc
import gzip
import io
import json
import re
from pathlib import Path

import apptest_helpers as helpers
import numpy as np
import pytest
import torch
from apptest_helpers import chart, decode, ok, session_model
from streamlit.testing.v1 import AppTest
from test_jobs import GatedTraining, generated_digits

from cnn_core import jobs, paths
from cnn_core.architecture import layer_table, total_parameters
from cnn_core.checkpoint import (
    SHIPPED_WEIGHTS,
    LoadedModel,
    card_path_for,
    save_checkpoint,
    sha256_bytes,
)
from cnn_core.data import IMAGES_MAGIC, LABELS_MAGIC, MnistSplit
from cnn_core.introspect import trace
from cnn_core.jobs import Owner, TrainingJob, TrainingQueue, default_queue
from cnn_core.model import CNNConfig, MLPConfig, build_model
from cnn_core.preprocess import normalise
from cnn_core.samples import load_samples
from cnn_core.train import TrainConfig
from ui.state import (
    MODEL_KEY,
    OWN_MODELS_KEY,
    PICKER_KEY,
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
HOSTILE_NAME = "**Bob** [click](http://evil.example) `x` :red[y] $z$"


pytestmark = pytest.mark.usefixtures("no_job_outlives_its_test")


# --- helpers -------------------------------------------------------------------------------------------


def new_page(page: str = TRAIN, models: dict[str, LoadedModel] | None = None, selected: str | None = None,
             digit: Digit | None = None) -> AppTest:
    return helpers.new_page(page, models, selected, digit)


def shown(markdown: str) -> str:
    """What a reader sees of a Markdown text as far as escapes go: CommonMark's backslash escapes removed."""
    return re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", markdown)


def texts(elements) -> str:
    return "\n".join(shown(e.value) for e in elements)


def everything_said(at: AppTest) -> list[str]:
    """The raw bodies of every Markdown-rendering element on the page (alerts, markdown, captions, headers)."""
    kinds = ("markdown", "caption", "success", "info", "warning", "error", "header", "subheader", "title")
    return [e.value for kind in kinds for e in at.get(kind)]


def random_model(config, name: str, seed: int = 0) -> LoadedModel:
    """An untrained model with a card like the app gives its own models (the sha256 is the weights')."""
    return session_model(config, name, seed=seed, scale=0.1)


def own_models_of(at: AppTest) -> dict:
    return at.session_state[OWN_MODELS_KEY] if OWN_MODELS_KEY in at.session_state else {}


def sample_digit(i: int = 0) -> Digit:
    s = load_samples()[i]
    return Digit(s.pixels, f"sample {s.label}")


def write_idx(path: Path, magic: int, array: np.ndarray) -> None:
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def idx_folder(folder: Path, split: MnistSplit) -> Path:
    """A folder of MNIST-style training files holding ``split``."""
    folder.mkdir(parents=True, exist_ok=True)
    write_idx(folder / "train-gen-images-idx3-ubyte.gz", IMAGES_MAGIC, split.images.numpy())
    write_idx(folder / "train-gen-labels-idx1-ubyte.gz", LABELS_MAGIC, split.labels.numpy())
    return folder


@pytest.fixture
def training_folder(tmp_path, monkeypatch) -> Path:
    """The server's training folder, set as the server sets it: CNN_EXPLORER_DATA."""
    folder = idx_folder(tmp_path / "train-data", generated_digits(1000, seed=1))
    monkeypatch.setenv(paths.DATA_ENV, str(folder))
    return folder


def small_design(at: AppTest, **train) -> AppTest:
    """A quick network and budget in the widgets (the page's smallest training size)."""
    for key, value in (("own_conv1", 8), ("own_conv2", 8), ("own_kernel", 5), ("own_padding", 2),
                       ("own_train_size", 500), ("own_epochs", 1), *train.items()):
        at.get_by_key(key).set_value(value)
    return at


@pytest.fixture
def one_slot_taken(monkeypatch, training_folder):
    """A server with one training slot, held by another session's run that goes on until the test lets it finish."""
    gated = GatedTraining()
    monkeypatch.setattr(jobs, "train_model", gated)
    monkeypatch.setattr(jobs, "_default_queue", TrainingQueue())  # the server's queue, fresh: no pace from before
    monkeypatch.setattr(jobs, "MAX_RUNNING_JOBS", 1)
    other_session = Owner()
    blocker = TrainingJob(MLPConfig(hidden=(8,)), generated_digits(64), None,
                          TrainConfig(epochs=1, seed=1, train_size=64), name="someone else's")
    blocker.start(other_session)
    assert blocker.status == "running"
    yield gated, blocker
    blocker.cancel()
    blocker.wait(10)


# --- design --------------------------------------------------------------------------------------------------


def test_the_design_table_follows_the_settings():
    at = ok(new_page())
    shipped_rows = layer_table(build_model(CNNConfig()))
    table = at.dataframe[0].value
    assert list(table["name"]) == [r.name for r in shipped_rows]  # the defaults are the shipped network
    for key, value in (("own_conv1", 16), ("own_conv2", 24), ("own_kernel", 5), ("own_padding", 0),
                       ("own_pool", "avg"), ("own_dropout", 0.1), ("own_hidden_relu", True)):
        at.get_by_key(key).set_value(value)
    ok(at)
    rows = layer_table(build_model(VARIANT))
    table = at.dataframe[0].value
    assert list(table["name"]) == [r.name for r in rows]
    assert list(table["type"]) == [r.kind for r in rows]
    assert list(table["parameters"]) == [r.parameters for r in rows]
    assert list(table["output shape"]) == [" × ".join(map(str, r.output_shape)) for r in rows]
    assert list(table["output size"]) == [r.size.formula() if r.size is not None else "" for r in rows]
    assert "relu3" in list(table["name"]) and "AvgPool2d" in list(table["type"])
    assert [m.value for m in at.metric if m.label == "Parameters"] == [f"{total_parameters(rows):,}"]


def test_the_epoch_limit_is_said_as_the_slider_allows(training_folder):
    at = ok(new_page())
    limit = int(at.slider(key="own_epochs").max)
    most_digits = int(at.slider(key="own_train_size").max)
    intro = texts(at.markdown)
    assert f"up to {most_digits:,} digits and {limit} epochs" in intro
    assert not re.search(r"\b(?!%d\b)\d+ epochs" % limit, intro), intro  # no other epoch count is stated
    assert limit <= jobs.MAX_EPOCHS


# --- the training folder is the server's setting ----------------------------------------------------------------


def test_without_a_training_folder_the_page_says_so_in_a_sentence(monkeypatch):
    monkeypatch.setattr(paths, "training_data_dir", lambda: None)  # a fresh clone: no CNN_EXPLORER_DATA, no ../shared
    at = ok(new_page())
    assert not at.error and not at.warning
    assert "needs the server's MNIST training folder (CNN_EXPLORER_DATA)" in texts(at.info)
    assert at.button(key="own_train").disabled and "training_job" not in at.session_state
    assert at.dataframe, "the design table is gone"


def test_an_unusable_training_folder_is_a_sentence_too(tmp_path, monkeypatch):
    monkeypatch.setenv(paths.DATA_ENV, str(tmp_path))  # configured, but holds no MNIST files
    at = ok(new_page())
    assert not at.error
    warning = texts(at.warning)
    assert "cannot be used" in warning and "no MNIST train images file" in warning and str(tmp_path) in warning
    assert at.button(key="own_train").disabled


def test_the_training_folder_is_shown_read_only(training_folder):
    at = ok(new_page())
    captions = texts(at.caption)
    assert f"1,000 in {training_folder}" in captions and "CNN_EXPLORER_DATA" in captions
    assert not [w for w in at.text_input if w.key != "own_name"], "a visitor can type a server path"


# --- training on the page -------------------------------------------------------------------------------------


def test_training_on_the_page_registers_a_model_every_page_explores(training_folder):
    digit = sample_digit(3)
    at = small_design(ok(new_page(digit=digit)), own_epochs=2, own_name="page test")
    at.button(key="own_train").click()
    ok(at)
    job = at.session_state["training_job"]
    assert job.config.train_size == 500 and job.config.epochs == 2 and job.config.batch_size == 32
    assert job.model_config == CNNConfig(8, 8, 5, 2, "max", 0.25, 128, False)
    assert job.owner is at.session_state["training_owner"]  # dropped with the session
    assert at.get("progress"), "no progress bar while training"
    assert job.wait(180), "the training run did not finish"
    ok(at)  # the page sees the finished job: the model goes into the picker, selected

    model_id = at.session_state[MODEL_KEY]
    assert model_id.startswith("own:") and at.selectbox(key=PICKER_KEY).value == model_id
    trained = at.session_state[OWN_MODELS_KEY][model_id]
    accuracy = trained.card["metrics"]["test_accuracy"]
    assert trained.name == "page test" and trained.identity == model_id.removeprefix("own:")
    assert f"**page test** is trained ({accuracy:.1%} of 2,000 test digits right)" in texts(at.success)
    assert list(at.dataframe[1].value["name"]) == [r.name for r in layer_table(trained.model)]
    assert len(trained.card["history"]) == 2 and "--epochs 2" in trained.card["command"]
    assert not at.button(key="own_train").disabled  # finished: another run may start

    # Epoch by epoch: what each epoch's network says about the current digit, and its conv1 filters.
    views = job.snapshot().epoch_views
    assert [v.epoch for v in views] == [1, 2]
    probabilities = decode(chart(at, "epoch_probabilities")["data"][0]["z"])
    expected = np.stack([trace(v.model, normalise(digit.pixels)).probabilities.numpy() for v in views])
    assert np.allclose(probabilities, expected, atol=1e-6)
    assert np.allclose(expected[-1], trace(trained.model, normalise(digit.pixels)).probabilities, atol=1e-6)
    w1, w2 = (v.conv1[:, 0].numpy() for v in views)
    moved = np.abs(w2 - w1).mean() / np.abs(w1).mean()
    assert f"from epoch 1 to 2 they moved by {moved:.0%} of their average size" in texts(at.caption)
    for v in views:
        z = decode(chart(at, f"epoch_filters_{v.epoch}")["data"][0]["z"])
        tiles = v.conv1[:, 0].numpy()
        assert np.allclose(z[:5, :5], tiles[0], atol=1e-6) and np.allclose(z[:5, 6:11], tiles[1], atol=1e-6)

    # Other pages of the same session now explore the trained network.
    expected_trace = trace(trained.model, normalise(digit.pixels))
    fm = ok(new_page(FEATURE_MAPS, at.session_state[OWN_MODELS_KEY], model_id, digit))
    assert [m.value for m in fm.metric if m.label == "Prediction"] == [str(expected_trace.prediction)]
    arch = ok(new_page(ARCHITECTURE, at.session_state[OWN_MODELS_KEY], model_id))
    assert list(arch.dataframe[0].value["parameters"]) == [r.parameters for r in layer_table(trained.model)]


def test_a_run_that_finishes_on_another_page_is_not_lost(training_folder):
    at = small_design(ok(new_page()), own_name="left behind")
    at.button(key="own_train").click()
    ok(at)
    job = at.session_state["training_job"]
    other = new_page(COMPARE)  # the user went on to another page of the same session
    other.session_state["training_job"] = job
    assert job.wait(180)
    ok(other)
    model_id = other.session_state[MODEL_KEY]
    assert model_id.startswith("own:") and other.session_state[OWN_MODELS_KEY][model_id].name == "left behind"
    ok(other)  # registered once: a rerun does not add it again
    assert list(other.session_state[OWN_MODELS_KEY]) == [model_id]


def test_cancel_on_the_page_keeps_no_model(one_slot_taken):
    gated, blocker = one_slot_taken
    gated.finish(blocker)  # the slot is free: the page's run starts at once
    at = small_design(ok(new_page()))
    at.button(key="own_train").click()
    ok(at)
    job = at.session_state["training_job"]
    assert job.status == "running"
    assert at.button(key="own_train").disabled, "a second run could start while one runs"
    at.button(key="own_cancel").click()
    ok(at)
    assert job.wait(10), "cancel did not stop the run"
    ok(at)
    assert job.snapshot().status == "cancelled"
    assert "cancelled" in texts(at.info)
    assert not own_models_of(at)
    assert at.selectbox(key=PICKER_KEY).value == default_model_id()


def test_the_training_name_is_shown_as_typed(training_folder):
    at = small_design(ok(new_page()), own_name="*a* [b](http://c.example)")
    at.button(key="own_train").click()
    ok(at)
    assert at.session_state["training_job"].wait(180)
    ok(at)
    assert "***a* [b](http://c.example)** is trained" in texts(at.success)  # the name, in the page's bold
    for body in everything_said(at):
        assert "[b](" not in body and "*a*" not in body, body


# --- the queue ------------------------------------------------------------------------------------------------


def test_a_busy_server_puts_the_run_in_a_visible_queue(one_slot_taken):
    gated, blocker = one_slot_taken
    at = small_design(ok(new_page()))
    at.button(key="own_train").click()
    ok(at)
    job = at.session_state["training_job"]
    assert job.status == "queued"
    notice = texts(at.info)
    assert "waits in the queue, next in line" in notice
    assert "Estimated start: as soon as the runs ahead show their pace" in notice
    assert at.button(key="own_train").disabled and not at.get("progress")
    assert "1 training, 1 waiting" in texts(at.caption)

    gated.step(1)  # the run ahead shows its pace: a quarter done
    while blocker.snapshot().fraction < 0.25:
        blocker.wait(0.01)
    ok(at)
    estimate = job.snapshot().place.estimated_start
    assert estimate is not None and estimate > 0
    assert re.search(r"Estimated start: in (a few seconds|about \d+ s|about \d+ minutes?)\.", texts(at.info))

    gated.finish(blocker)  # the slot is free: the queued run starts on its own
    gated.finish(job)
    ok(at)
    assert "is trained" in texts(at.success) and "in the queue" not in texts(at.info)


def test_a_queued_run_can_be_cancelled(one_slot_taken):
    at = small_design(ok(new_page()))
    at.button(key="own_train").click()
    ok(at)
    job = at.session_state["training_job"]
    assert job.status == "queued" and default_queue().counts() == (1, 1)
    at.button(key="own_cancel").click()
    ok(at)
    assert job.status == "cancelled" and default_queue().counts() == (1, 0)
    assert "in the queue" not in texts(at.info) and not at.button(key="own_train").disabled


def test_a_full_queue_says_so(training_folder, monkeypatch):
    monkeypatch.setattr(jobs, "MAX_RUNNING_JOBS", 0)
    monkeypatch.setattr(jobs, "MAX_QUEUED_JOBS", 0)
    at = ok(new_page())
    at.button(key="own_train").click()
    ok(at)
    warning = texts(at.warning)
    assert "busy training" in warning and "the queue holds at most 0" in warning
    assert "training_job" not in at.session_state and not at.error


def test_a_queued_run_is_dropped_when_its_session_goes(one_slot_taken):
    at = small_design(ok(new_page()))
    at.button(key="own_train").click()
    ok(at)
    job = at.session_state["training_job"]
    assert job.status == "queued" and job.owner is not None
    del at  # the session ends: its state, and the owner token in it, go
    gc.collect()
    assert job.owner is None
    assert default_queue().counts() == (1, 0)  # the next look at the queue skips it
    assert job.wait(1) and job.status == "dropped"


# --- bring your own weights ------------------------------------------------------------------------------------


def upload(at: AppTest, weights: tuple[str, bytes] | None, card: tuple[str, bytes] | None) -> AppTest:
    if weights is not None:
        at.file_uploader(key="upload_weights").set_value((weights[0], weights[1], "application/octet-stream"))
    if card is not None:
        at.file_uploader(key="upload_card").set_value((card[0], card[1], "application/json"))
    return ok(at)


@pytest.fixture
def saved(tmp_path) -> tuple[bytes, bytes, LoadedModel]:
    loaded = random_model(VARIANT, "ignored", seed=3)
    card = save_checkpoint(loaded.model, VARIANT, tmp_path / "uploaded.pt",
                           {"name": "uploaded net", "metrics": {"test_accuracy": 0.991, "test_examples": 5000}})
    assert card["sha256"]
    return (tmp_path / "uploaded.pt").read_bytes(), (tmp_path / "uploaded.json").read_bytes(), loaded


def test_a_good_weights_file_is_loaded_and_selected(saved):
    weights, card, original = saved
    at = upload(ok(new_page()), ("uploaded.pt", weights), ("uploaded.json", card))
    assert not at.error
    assert "Loaded **uploaded net**" in texts(at.success)
    model_id = "own:" + original.identity
    assert at.session_state[MODEL_KEY] == model_id and at.selectbox(key=PICKER_KEY).value == model_id
    loaded = at.session_state[OWN_MODELS_KEY][model_id]
    assert loaded.card["origin"] == "uploaded" and loaded.config == VARIANT
    x = normalise(sample_digit().pixels)
    assert torch.equal(trace(loaded.model, x).probabilities, trace(original.model, x).probabilities)
    ok(at)  # a rerun with the same files does not load them again or change the selection
    assert list(at.session_state[OWN_MODELS_KEY]) == [model_id]


def test_an_uploaded_cards_accuracy_is_a_claim(saved):
    weights, card, original = saved
    at = upload(ok(new_page()), ("uploaded.pt", weights), ("uploaded.json", card))
    said = texts(at.success) + texts(at.caption)
    assert "its card claims 99.1% test accuracy, not measured here" in said
    assert f"{sum(p.numel() for p in original.model.parameters()):,} parameters" in said
    loaded = next(iter(own_models_of(at).values()))
    assert loaded.card["metrics"] == {} and loaded.card["claimed_metrics"]["test_accuracy"] == 0.991


def test_a_card_claiming_another_architecture_for_the_shipped_weights_counts_its_own_parameters():
    # The shipped weights with a card that says average pooling and a ReLU after fc1 (same shapes, same sha256).
    card = json.loads(card_path_for(SHIPPED_WEIGHTS).read_text())
    card["architecture"].update(pool="avg", hidden_relu=True)
    at = upload(ok(new_page()), ("mnist_cnn.pt", SHIPPED_WEIGHTS.read_bytes()),
                ("mnist_cnn.json", json.dumps(card).encode()))
    loaded = next(iter(own_models_of(at).values()))
    assert loaded.config.pool == "avg" and loaded.config.hidden_relu
    said = texts(at.success)
    claimed = card["metrics"]["test_accuracy"]
    assert "421,642 parameters" in said and f"its card claims {claimed:.1%} test accuracy, not measured here" in said


def test_an_mlp_can_be_uploaded(tmp_path):
    mlp = random_model(MLPConfig(hidden=(32,)), "x")
    save_checkpoint(mlp.model, mlp.config, tmp_path / "mlp.pt", {"name": "an MLP"})
    at = upload(ok(new_page()), ("mlp.pt", (tmp_path / "mlp.pt").read_bytes()),
                ("mlp.json", (tmp_path / "mlp.json").read_bytes()))
    assert not at.error and "MLP" in texts(at.success)


def _with(card: bytes, **changes) -> bytes:
    d = json.loads(card)
    d.update(changes)
    return json.dumps(d).encode()


def _pickled_module() -> bytes:
    buf = io.BytesIO()
    torch.save({"model": torch.nn.Linear(2, 2)}, buf)
    return buf.getvalue()


@pytest.mark.parametrize("case, expected", [
    ("garbage weights", "sha256"),
    ("tampered sha", "sha256"),
    ("garbage card", "not valid JSON"),
    ("wrong architecture", "shape"),
    ("pickled code", "not a plain PyTorch state_dict"),
    ("deeply nested card", "nested too deeply"),
    ("huge card", "a model card is at most"),
    ("NaN dropout", "dropout must be a finite number"),
    ("not a card", "must be a JSON object"),
])
def test_bad_files_get_the_reason_and_no_traceback(saved, case, expected):
    weights, card, _ = saved
    if case == "garbage weights":
        weights = b"\x80\x02 this is not a checkpoint" * 10
    elif case == "tampered sha":
        card = _with(card, sha256="0" * 64)
    elif case == "garbage card":
        card = b"{not json"
    elif case == "wrong architecture":  # a valid card for other shapes, with the right sha256
        card = _with(card, architecture=CNNConfig(conv1_channels=8).to_dict())
    elif case == "pickled code":  # a pickle that is not a state_dict: weights_only refuses it
        weights = _pickled_module()
        card = _with(card, sha256=sha256_bytes(weights))
    elif case == "deeply nested card":
        card = b"[" * 200_000 + b"]" * 200_000
    elif case == "huge card":
        card = _with(card, padding="x" * 2_000_000)
    elif case == "NaN dropout":
        card = card.replace(b'"dropout": 0.1', b'"dropout": NaN')
    elif case == "not a card":
        card = b"[1, 2, 3]"
    at = upload(ok(new_page()), ("bad.pt", weights), ("bad.json", card))
    errors = texts(at.error)
    assert "bad.pt was not loaded" in errors and expected in errors, errors
    assert "Traceback" not in errors and "\x1b" not in errors and len(errors) < 400
    assert not own_models_of(at)
    assert at.selectbox(key=PICKER_KEY).value == default_model_id()


def test_names_a_visitor_chooses_are_shown_as_text_not_markdown(saved):
    weights, card, _ = saved
    file_name = "[evil](http://x.example) **w**.pt"
    loaded = upload(ok(new_page()), (file_name, weights), ("c.json", _with(card, name=HOSTILE_NAME)))
    assert f"Loaded **{HOSTILE_NAME}**" in texts(loaded.success)
    assert HOSTILE_NAME in texts(loaded.markdown)  # the session's models list
    refused = upload(ok(new_page()), (file_name, weights), ("c.json", _with(card, sha256="f" * 64)))
    assert f"{file_name} was not loaded" in texts(refused.error)
    for page in (loaded, refused):
        for body in everything_said(page):
            for syntax in ("**Bob**", "](http", "`x`", ":red[", "$z$", "**w**"):
                assert syntax not in body, body


def test_one_file_alone_asks_for_the_other(saved):
    weights, _, _ = saved
    at = upload(ok(new_page()), ("w.pt", weights), None)
    assert "Add the other file" in texts(at.info) and not at.error


def test_each_session_sees_only_its_own_models(saved):
    weights, card, _ = saved
    mine = upload(ok(new_page()), ("uploaded.pt", weights), ("uploaded.json", card))
    theirs = ok(new_page())
    assert len(mine.selectbox(key=PICKER_KEY).options) == len(shipped_model_paths()) + 1
    assert len(theirs.selectbox(key=PICKER_KEY).options) == len(shipped_model_paths())
    assert theirs.selectbox(key=PICKER_KEY).value == default_model_id()
