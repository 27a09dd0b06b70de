"""Train your own: design a variant of the CNN, train it here on a small budget, watch it learn; or upload weights."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from cnn_core.architecture import LayerRow, layer_table, total_parameters
from cnn_core.checkpoint import MAX_WEIGHTS_BYTES, LoadedModel, WeightsError, load_checkpoint_bytes
from cnn_core.data import MnistDataError, MnistSplit, load_bundled_test, load_mnist, take
from cnn_core.export import model_files
from cnn_core.introspect import trace
from cnn_core.jobs import MAX_EPOCHS, JobLimitError, JobSnapshot, Owner, TrainingJob, default_queue
from cnn_core.model import CNNConfig, build_model, count_parameters
from cnn_core.paths import DATA_ENV, training_data_dir
from cnn_core.preprocess import normalise
from cnn_core.train import TrainConfig
from ui.figures import DIVERGING, PLOT_CONFIG, mosaic
from ui.state import (
    MAX_OWN_MODELS,
    SHIPPED_ID,
    TRAINING_JOB_KEY,
    Digit,
    current_digit,
    forget_model,
    get_model_by_id,
    get_samples,
    model_picker,
    own_models,
    register_finished_training,
    register_model,
    selected_model_id,
)
from ui.text import MAX_NAME, plain, shape_text

st.set_page_config(page_title="Train your own · CNN Explorer", page_icon="🔢", layout="wide")

# What a run on this page may be. Every widget, sentence and training run reads these: nothing is typed twice.
EPOCH_LIMIT = 3  # most epochs of a run here (a minute or two of CPU each at the largest size)
TRAIN_SIZES = (500, 5000)  # fewest and most training digits
TRAIN_SIZE_STEP = 500
TRAIN_SIZE_DEFAULT = 2000
CHANNELS = (8, 64, 8)  # filters of conv1 and conv2: fewest, most, step
KERNELS = (3, 5)
PADDINGS = (0, 2)
DROPOUTS = (0.0, 0.5, 0.05)
BATCH_SIZE = 32  # smaller than the CLI's 64: more steps from a small budget learn more
TEST_DIGITS = 2000  # bundled MNIST test digits measured after each epoch: a fair figure, quick to compute
assert EPOCH_LIMIT <= MAX_EPOCHS, "cnn_core.jobs keeps one snapshot per epoch up to MAX_EPOCHS"

UPLOAD_KEY = "weights_upload_checked"  # (file ids, model id or None, error or None) of the last checked pair
MESSAGE_KEY = "training_message"  # (kind, text) left by the Train button's callback
OWNER_KEY = "training_owner"  # this session's cnn_core.jobs.Owner: its jobs are dropped when it is gone
MAX_MESSAGE = 300  # characters of a refusal shown on the page
MAX_CARD_BYTES = 1_000_000  # a model card is a few kB; anything bigger is not one (and costs memory to parse)
DEFAULT_NAME = "my CNN"
FILTER_COLS = 8


# --- helpers --------------------------------------------------------------------------------------------


def sentence(text: object) -> str:
    """A message from a library (e.g. why a file was refused) as one plain line of at most MAX_MESSAGE characters.

    Terminal colour codes and control characters go, so does anything past the limit: some of torch's
    messages run to a page of advice meant for a programmer.
    """
    cleaned = re.sub(r"\x1b\[[0-9;]*[A-Za-z]|[\x00-\x1f\x7f]", " ", str(text))
    return plain(cleaned, limit=MAX_MESSAGE)


def clean_name(text: object, fallback: str) -> str:
    """A model name: whitespace collapsed, at most MAX_NAME characters, ``fallback`` when empty."""
    return " ".join(str(text).split())[:MAX_NAME] or fallback


def clamp(value: object, low: float, high: float) -> float:
    """``value`` as a number within [low, high] (a widget's value comes from the browser: never trust its range)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return low
    return min(max(float(value), low), high)


def in_words(seconds: float) -> str:
    """A rough duration from now, for the queue's estimated start."""
    if seconds < 10:
        return "in a few seconds"
    if seconds < 60:
        return f"in about {round(seconds / 10) * 10:.0f} s"
    minutes = math.ceil(seconds / 60)
    return f"in about {minutes} minute{'s' if minutes != 1 else ''}"


def session_owner() -> Owner:
    """This session's owner token. Only the session holds it: when the session goes, its queued or running job goes."""
    if not isinstance(st.session_state.get(OWNER_KEY), Owner):
        st.session_state[OWNER_KEY] = Owner()
    return st.session_state[OWNER_KEY]


@st.cache_resource(max_entries=2, show_spinner="Loading the MNIST digits...")
def training_splits(folder: str) -> tuple[MnistSplit, MnistSplit]:
    """The server's training digits in ``folder`` and the first TEST_DIGITS bundled test digits (once per process)."""
    return load_mnist(folder, "train"), take(load_bundled_test(), TEST_DIGITS)


def usable_training_data() -> tuple[Path, MnistSplit, MnistSplit] | None:
    """The training folder and its splits; when training cannot happen here, one sentence that says why, and None."""
    folder = training_data_dir()
    if folder is None:
        st.info(f"Training in the app needs the server's MNIST training folder ({DATA_ENV}), and this server has "
                "none, so the Train button is off. You can still design a network above and bring your own "
                "weights below, trained with the command line: `python -m cnn_core.train --download ~/mnist "
                "--out my_cnn.pt`.")
        return None
    try:
        train_split, test_split = training_splits(str(folder))
    except MnistDataError as e:
        st.warning(f"Training in the app is off: the server's MNIST training folder ({DATA_ENV}) cannot be "
                   f"used. {sentence(e)}")
        return None
    return folder, train_split, test_split


def architecture_table(rows: list[LayerRow], key: str) -> None:
    """The layer table of a model, with the output-size formula worked out on each window layer."""
    # No "#" column and tight widths: at laptop width the main column holds about 820 px, and the
    # details and the worked formula are what must not be cut off.
    st.dataframe(
        [{"name": r.name, "type": r.kind, "details": r.details,
          "output shape": shape_text(r.output_shape), "parameters": r.parameters,
          "output size": r.size.formula() if r.size is not None else ""} for r in rows],
        hide_index=True, key=key, height="content",  # every row visible: no scrolling inside the table
        column_config={"name": st.column_config.TextColumn(width=62),
                       "type": st.column_config.TextColumn(width=84),
                       "details": st.column_config.TextColumn(width=238),
                       "output shape": st.column_config.TextColumn(width=92),
                       "parameters": st.column_config.NumberColumn(width=78, format="localized"),
                       "output size": st.column_config.TextColumn(width=270)},
    )


# --- figures ----------------------------------------------------------------------------------------------


def live_curve(snap: JobSnapshot) -> go.Figure:
    """Running loss and training accuracy after every batch; the test accuracy after every epoch."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("Training loss", "Accuracy"), horizontal_spacing=0.12)
    x = [p.epochs_done for p in snap.curve]
    fig.add_trace(go.Scatter(x=x, y=[p.loss for p in snap.curve], mode="lines", name="loss",
                             line=dict(color="#4c78a8"), hovertemplate="epoch %{x:.2f}: %{y:.4f}<extra></extra>"),
                  row=1, col=1)
    fig.add_trace(go.Scatter(x=x, y=[p.accuracy for p in snap.curve], mode="lines", name="train accuracy",
                             line=dict(color="#72b7b2"), hovertemplate="epoch %{x:.2f}: %{y:.1%}<extra></extra>"),
                  row=1, col=2)
    tested = [h for h in snap.history if h.test_accuracy is not None]
    if tested:
        fig.add_trace(go.Scatter(x=[h.epoch for h in tested], y=[h.test_accuracy for h in tested],
                                 mode="markers", name="test accuracy", marker=dict(color="#e45756", size=10),
                                 hovertemplate="after epoch %{x}: %{y:.2%}<extra></extra>"), row=1, col=2)
    fig.update_xaxes(title="epochs", range=[0, snap.epochs], fixedrange=True)
    fig.update_yaxes(fixedrange=True)
    fig.update_yaxes(tickformat=".0%", range=[0, 1.02], row=1, col=2)
    fig.update_layout(height=280, margin=dict(l=10, r=10, t=40, b=10), dragmode=False,
                      legend=dict(orientation="h", y=-0.3))
    return fig


def probabilities_by_epoch(epochs: list[int], probabilities: np.ndarray) -> go.Figure:
    """One row per finished epoch: the network's ten probabilities for the digit, written in the cells."""
    rows = [f"epoch {e}" for e in epochs]
    fig = go.Figure(go.Heatmap(
        z=probabilities, x=[str(d) for d in range(10)], y=rows, zmin=0, zmax=1, colorscale="Blues",
        showscale=False, texttemplate="%{z:.0%}", textfont=dict(size=11),
        hovertemplate="after %{y}: digit %{x} at %{z:.1%}<extra></extra>"))
    fig.update_xaxes(title="probability of each digit", type="category",
                     fixedrange=True, side="top")
    fig.update_yaxes(autorange="reversed", fixedrange=True, type="category")
    fig.update_layout(height=70 + 38 * len(epochs), margin=dict(l=5, r=5, t=45, b=5), dragmode=False)
    return fig


def filter_grid(kernels: np.ndarray, limit: float, title: str) -> go.Figure:
    """conv1's kernels (C, k, k) tiled FILTER_COLS to a row, on the colour scale ±``limit`` shared by all epochs."""
    z = mosaic(kernels, FILTER_COLS)
    fig = go.Figure(go.Heatmap(z=z, colorscale=DIVERGING, zmin=-limit, zmax=limit, showscale=False,
                               hoverongaps=False, hovertemplate="weight %{z:.3f}<extra></extra>"))
    fig.update_yaxes(autorange="reversed", scaleanchor="x", constrain="domain", showticklabels=False,
                     ticks="", showgrid=False, zeroline=False, fixedrange=True)
    fig.update_xaxes(constrain="domain", showticklabels=False, ticks="", showgrid=False, zeroline=False,
                     fixedrange=True)
    rows = math.ceil(kernels.shape[0] / FILTER_COLS)
    fig.update_layout(height=60 + 34 * rows, margin=dict(l=5, r=5, t=30, b=5), title=title, dragmode=False)
    return fig


def relative_change(before: np.ndarray, after: np.ndarray) -> float:
    """Mean absolute change of the weights, as a share of their mean absolute size before."""
    size = float(np.abs(before).mean())
    return float(np.abs(after - before).mean()) / size if size > 0 else 0.0


def preview(pixels: np.ndarray) -> np.ndarray:
    """The 28x28 input as an 8-bit image scaled up with square pixels."""
    img = (np.clip(pixels, 0, 1) * 255).astype(np.uint8)
    return np.kron(img, np.ones((3, 3), dtype=np.uint8))


# --- training -----------------------------------------------------------------------------------------------


def chosen_settings() -> tuple[CNNConfig, TrainConfig, str]:
    """The network, the training budget and the name set by the Design and Train widgets, within this page's limits.

    Read from session state, so that a callback sees the values sent with the click (a name
    typed just before clicking Train arrives in the same rerun as the click).
    """
    s = st.session_state
    lo, hi, _ = CHANNELS
    config = CNNConfig(conv1_channels=int(clamp(s["own_conv1"], lo, hi)),
                       conv2_channels=int(clamp(s["own_conv2"], lo, hi)),
                       kernel_size=s["own_kernel"] if s["own_kernel"] in KERNELS else KERNELS[0],
                       padding=int(clamp(s["own_padding"], *PADDINGS)),
                       pool="avg" if s["own_pool"] == "avg" else "max",
                       dropout=round(clamp(s["own_dropout"], DROPOUTS[0], DROPOUTS[1]), 2),
                       hidden_relu=bool(s["own_hidden_relu"]))
    train = TrainConfig(epochs=int(clamp(s["own_epochs"], 1, EPOCH_LIMIT)), batch_size=BATCH_SIZE,
                        train_size=int(clamp(s["own_train_size"], *TRAIN_SIZES)), augment=bool(s["own_augment"]))
    return config, train, clean_name(s["own_name"], DEFAULT_NAME)


def start_training() -> None:
    """The Train button's callback: queue a run (it starts at once when the server has a free slot).

    One run per session; what could not be done is left in MESSAGE_KEY for the page to say.
    """
    previous: TrainingJob | None = st.session_state.get(TRAINING_JOB_KEY)
    if previous is not None and previous.snapshot().active:  # e.g. a second click before the page caught up
        st.session_state[MESSAGE_KEY] = ("warning", "Your training run is already waiting or running: wait for it "
                                                    "or cancel it.")
        return
    folder = training_data_dir()
    if folder is None:  # the button is off then; a click sent anyway gets the same sentence
        st.session_state[MESSAGE_KEY] = ("info", f"Training in the app needs the server's MNIST training folder "
                                                 f"({DATA_ENV}), and this server has none.")
        return
    try:
        train_split, test_split = training_splits(str(folder))
        config, train, name = chosen_settings()
        job = TrainingJob(config, train_split, test_split, train, name=name).start(owner=session_owner())
    except JobLimitError as e:
        st.session_state[MESSAGE_KEY] = ("warning", f"The server is busy training: {e}")
        return
    except (MnistDataError, ValueError) as e:
        st.session_state[MESSAGE_KEY] = ("warning", f"Training could not start: {sentence(e)}")
        return
    st.session_state[TRAINING_JOB_KEY] = job


def show_training_message() -> None:
    """What the last click on Train could not do, once."""
    message = st.session_state.pop(MESSAGE_KEY, None)
    if message is not None:
        kind, text = message
        (st.info if kind == "info" else st.warning)(text)


def queue_notice(job: TrainingJob, snap: JobSnapshot) -> None:
    """Where the session's waiting run stands in the server's queue, and a way out."""
    place = snap.place
    if place is None:  # between two looks at the queue: it is being started
        st.info("Your run is about to start.")
    else:
        when = (in_words(place.estimated_start) if place.estimated_start is not None
                else "as soon as the runs ahead show their pace")
        line = ("next in line" if place.position == 1
                else f"number {place.position} in line ({place.position - 1} ahead of it)")
        st.info(f"The server is busy training other networks: yours waits in the queue, {line}. Estimated "
                f"start: {when}. You can explore other pages meanwhile: it starts on its own. Leaving the app "
                "takes it out of the queue.")
    st.button("Cancel", key="own_cancel", on_click=job.cancel, help="Leave the queue.")


def epoch_by_epoch(snap: JobSnapshot, digit: Digit) -> None:
    """The network after each finished epoch: what it says about the current digit, and its first-layer filters."""
    st.subheader("Epoch by epoch")
    views = snap.epoch_views
    if not views:
        st.caption("After each epoch, what the network says about your digit and its first layer's filters "
                   "appear here.")
        return
    x = normalise(digit.pixels)
    epochs = [v.epoch for v in views]
    probabilities = np.stack([trace(v.model, x).probabilities.numpy() for v in views])
    digit_col, prob_col = st.columns([1, 5], vertical_alignment="center")
    digit_col.image(preview(digit.pixels), width=84)
    digit_col.text(f"Your digit: {digit.source}")
    prob_col.plotly_chart(probabilities_by_epoch(epochs, probabilities), key="epoch_probabilities",
                          config=PLOT_CONFIG)
    first, last = probabilities[0], probabilities[-1]
    said = f"After epoch {epochs[0]} the network read it as a {int(first.argmax())} ({float(first.max()):.0%} sure)"
    if len(epochs) > 1:
        said += f"; after epoch {epochs[-1]}, as a {int(last.argmax())} ({float(last.max()):.0%} sure)"
    st.write(said + ". Draw another digit on the home page to follow it instead.")

    with_filters = [v for v in views if v.conv1 is not None]
    if not with_filters:
        return
    kernels = [v.conv1[:, 0].numpy() for v in with_filters if v.conv1 is not None]
    limit = max(float(np.abs(k).max()) for k in kernels) or 1.0
    for col, view, k in zip(st.columns(len(with_filters)), with_filters, kernels, strict=True):
        col.plotly_chart(filter_grid(k, limit, f"conv1 after epoch {view.epoch}"), key=f"epoch_filters_{view.epoch}",
                         config=PLOT_CONFIG)
    c, size = kernels[0].shape[0], kernels[0].shape[-1]
    changes = [f"from epoch {a.epoch} to {b.epoch} they moved by {relative_change(ka, kb):.0%} of their average size"
               for a, b, ka, kb in zip(with_filters, with_filters[1:], kernels, kernels[1:])]
    st.caption(f"The {c} filters of conv1, {size}×{size} weights each, after each epoch, on one colour scale: blue "
               "negative, white zero, red positive" + (f"; {'; '.join(changes)}." if changes else "."))


# --- sections -------------------------------------------------------------------------------------------------


def own_models_section() -> None:
    """This session's models: what they are, and a button to forget each."""
    models = own_models()
    if not models:
        return
    st.subheader("Your models in this session")
    st.caption(f"Only you see them, and only until you close the tab (at most {MAX_OWN_MODELS}: "
               "the oldest goes first).")
    for model_id, loaded in models.items():
        text_col, button_col = st.columns([5, 1], vertical_alignment="center")
        text_col.markdown(f"**{plain(loaded.name)}**" + (" · selected" if model_id == selected_model_id() else ""))
        text_col.caption(model_facts(loaded))
        button_col.button("Forget", key=f"forget_{model_id}", on_click=forget_model, args=(model_id,))


def accuracy_phrase(loaded: LoadedModel) -> str:
    """The model's test accuracy as measured here, or what an uploaded card claims, said as a claim."""
    if loaded.card.get("origin") == "uploaded":
        claimed = (loaded.card.get("claimed_metrics") or {}).get("test_accuracy")
        if isinstance(claimed, (int, float)) and not isinstance(claimed, bool) and math.isfinite(claimed):
            return f"its card claims {claimed:.1%} test accuracy, not measured here"
        return "test accuracy not measured here"
    metrics = loaded.card.get("metrics") or {}
    measured, examples = metrics.get("test_accuracy"), metrics.get("test_examples")
    if not isinstance(measured, (int, float)):
        return "not tested"
    return (f"{measured:.1%} of {examples:,} test digits right" if isinstance(examples, int)
            else f"{measured:.1%} test accuracy")


def model_facts(loaded: LoadedModel) -> str:
    """Kind, where it comes from, parameters counted on the weights, and its accuracy."""
    origin = "uploaded" if loaded.card.get("origin") == "uploaded" else "trained here"
    return (f"{loaded.config.kind.upper()} · {origin} · {count_parameters(loaded.model):,} parameters · "
            f"{accuracy_phrase(loaded)}")


def trained_section(trained_id: str) -> None:
    """The model of this session's finished run: what it is, and its files to download."""
    trained = get_model_by_id(trained_id)
    st.success(f"**{plain(trained.name)}** is trained ({accuracy_phrase(trained)}). It is now the "
               "network in the sidebar's Model box: open **Feature maps** or any other page to explore it, or "
               "**Compare** to set it against the shipped one.")
    st.subheader("The architecture of your network")
    architecture_table(layer_table(trained.model), "trained_table")
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", trained.name).strip("_.") or "my_cnn"
    weights_bytes, card_bytes = model_files(trained, f"{slug}.pt")
    d1, d2 = st.columns(2)
    d1.download_button("Download the weights (.pt)", weights_bytes, f"{slug}.pt", mime="application/octet-stream",
                       key="download_weights", on_click="ignore")
    d2.download_button("Download the model card (.json)", card_bytes, f"{slug}.json", mime="application/json",
                       key="download_card", on_click="ignore")
    st.caption("Together they load back below, or into the command line's tools, like any checkpoint.")


def check_upload(weights_name: str, weights: bytes, card: bytes) -> tuple[str | None, str | None]:
    """Load an uploaded pair into this session's models: (model id, None), or (None, why it was refused)."""
    if len(card) > MAX_CARD_BYTES:
        return None, f"its model card is {len(card):,} bytes; a model card is at most {MAX_CARD_BYTES:,}"
    try:
        loaded = load_checkpoint_bytes(weights, card, where=weights_name)
    except WeightsError as e:
        return None, str(e)
    except RecursionError:  # json.loads on thousands of nested brackets
        return None, "its model card is nested too deeply to be a model card"
    except Exception as e:  # anything else a crafted file provokes: a sentence, never a traceback
        return None, f"it could not be read ({type(e).__name__})"
    card_dict = dict(loaded.card, origin="uploaded")
    card_dict["name"] = clean_name(card_dict.get("name") or Path(weights_name).stem, "uploaded model")
    # The card's figures were measured elsewhere, if at all: keep them as claims, and count what can be counted.
    card_dict["claimed_metrics"] = card_dict.pop("metrics", None) if isinstance(card_dict.get("metrics"), dict) else {}
    card_dict["metrics"] = {}
    card_dict["parameters"] = count_parameters(loaded.model)
    return register_model(LoadedModel(loaded.model, loaded.config, card_dict)), None


def upload_section() -> None:
    """Weights saved by the training CLI, checked against their model card before they are used."""
    st.header("Bring your own weights")
    limit_mb = st.get_option("server.maxUploadSize")
    st.write("Upload a network trained with `python -m cnn_core.train` (any architecture of the family, "
             "CNN or MLP): its weights file (`.pt`, a plain state_dict) and its model card (`.json`), "
             f"up to {limit_mb} MB each. The weights are checked against the card (sha256, every tensor's shape) "
             "and loaded without running any code from the file.")
    weights_col, card_col = st.columns(2)
    weights = weights_col.file_uploader("Weights (.pt)", type=["pt", "pth"], key="upload_weights")
    card = card_col.file_uploader("Model card (.json)", type=["json"], key="upload_card")
    if weights is None or card is None:
        if weights is not None or card is not None:
            st.info("Add the other file too: the weights and their model card go together.")
        return
    ids = (weights.file_id, card.file_id)
    checked = st.session_state.get(UPLOAD_KEY)
    if checked is None or checked[0] != ids:  # check each pair once, not on every rerun
        if weights.size > MAX_WEIGHTS_BYTES:
            checked = (ids, None, f"it is {weights.size:,} bytes; the limit is {MAX_WEIGHTS_BYTES:,}")
        else:
            checked = (ids, *check_upload(weights.name, weights.getvalue(), card.getvalue()))
        st.session_state[UPLOAD_KEY] = checked
        if checked[1] is not None:
            st.rerun()  # draw the sidebar's Model box again, now with the upload in it
    _, model_id, error = checked
    if error is not None:
        st.error(f"{plain(weights.name)} was not loaded: {sentence(error)}")
    elif model_id in own_models():
        loaded = get_model_by_id(model_id)
        st.success(f"Loaded **{plain(loaded.name)}** ({model_facts(loaded)}). Pick it in the sidebar's "
                   "Model box to explore it.")


# --- the page -------------------------------------------------------------------------------------------

model_picker()  # also puts the model of a finished training run in the picker

st.title("Train your own network")
st.write(
    "Change the network and train it yourself: more or fewer filters, bigger kernels, no padding, average "
    "pooling... The table below follows your settings as you change them. Training here is kept small "
    f"(up to {TRAIN_SIZES[1]:,} digits and {EPOCH_LIMIT} epochs) so that it takes a minute or two; you watch "
    "its filters and its answer for your digit change after each epoch. When it is done, your network is "
    "selected in the sidebar and every page explores it."
)

st.header("Design")
c1, c2, c3, c4 = st.columns(4, gap="medium")
c1.slider("Filters in conv1", CHANNELS[0], CHANNELS[1], 32, step=CHANNELS[2], key="own_conv1")
c1.slider("Filters in conv2", CHANNELS[0], CHANNELS[1], 64, step=CHANNELS[2], key="own_conv2")
c2.radio("Kernel size", list(KERNELS), horizontal=True, key="own_kernel", format_func=lambda k: f"{k}×{k}")
c2.slider("Padding", PADDINGS[0], PADDINGS[1], 1, key="own_padding",
          help="Zeros added around each input of a convolution, on every side.")
c3.radio("Pooling", ["max", "avg"], horizontal=True, key="own_pool",
         format_func=lambda p: {"max": "max", "avg": "average"}[p],
         help="Max keeps the largest value of each 2×2 block, average their mean.")
c3.slider("Dropout before fc1", DROPOUTS[0], DROPOUTS[1], 0.25, step=DROPOUTS[2], key="own_dropout")
c4.checkbox("ReLU after fc1", key="own_hidden_relu",
            help="A ReLU between fc1 and fc2. The shipped network has none: its fc1 and fc2 then act as one "
                 "linear map.")
st.session_state.setdefault("own_epochs", 1)
st.session_state.setdefault("own_train_size", TRAIN_SIZE_DEFAULT)
st.session_state.setdefault("own_augment", False)
st.session_state.setdefault("own_name", DEFAULT_NAME)
config, _, _ = chosen_settings()  # the network the Train button would train
try:
    rows = layer_table(build_model(config))
except ValueError as e:  # the bounds above make this unreachable; never show a traceback
    st.warning(f"These settings do not make a network: {sentence(e)}")
    st.stop()
total = total_parameters(rows)
shipped_total = total_parameters(layer_table(get_model_by_id(SHIPPED_ID).model))
c4.metric("Parameters", f"{total:,}", f"{total - shipped_total:+,} vs shipped" if total != shipped_total
          else "same as shipped", delta_color="off", delta_arrow="off" if total == shipped_total
          else "auto")
architecture_table(rows, "design_table")
st.caption("Output size of each convolution and pooling: (in + 2·padding − kernel) / stride + 1, rounded down.")

st.header("Train")
data = usable_training_data()
job: TrainingJob | None = st.session_state.get(TRAINING_JOB_KEY)
active = job is not None and job.snapshot().active
a, b, c = st.columns(3)
a.slider("Epochs", 1, EPOCH_LIMIT, key="own_epochs", help="Passes over the training digits.")
b.slider("Training digits", TRAIN_SIZES[0], TRAIN_SIZES[1], step=TRAIN_SIZE_STEP, key="own_train_size")
c.checkbox("Random distortions", key="own_augment",
           help="Rotate, shift and warp each digit a little at each step: better on drawings, "
                "slower to learn with a small budget.")
st.text_input("Name", max_chars=MAX_NAME, key="own_name")
queue = default_queue()
running_now, waiting_now = queue.counts()
if data is not None:
    folder, train_split, _ = data
    st.caption(f"Training digits: the first ones of the {len(train_split):,} in {plain(folder, limit=200)} (the "
               f"server's {DATA_ENV} setting). Test accuracy: measured after each epoch on {TEST_DIGITS:,} MNIST test "
               f"digits. The server trains at most {queue.max_running} network{'s' if queue.max_running != 1 else ''} "
               f"at once, sharing its CPU cores with every page; more runs wait in a queue (now: {running_now} "
               f"training, {waiting_now} waiting). For bigger runs use the command line: "
               "`python -m cnn_core.train --help`.")
reason = ("Training in the app needs the server's MNIST training folder." if data is None
          else "One run at a time: wait for it or cancel it." if active else None)
st.button("Train", type="primary", key="own_train", disabled=data is None or active, help=reason,
          on_click=start_training)
show_training_message()


@st.fragment(run_every=1.0 if active else None)
def progress_panel(job: TrainingJob, polling: bool) -> None:
    """The run's place in the queue, or its progress, live curves and epoch-by-epoch views, redrawn every second."""
    snap = job.snapshot()
    if snap.finished and polling:
        st.rerun()  # the whole page: register the model and stop polling
    if snap.waiting:
        queue_notice(job, snap)
        return
    label = {"running": f"Training {job.name}: epoch {max(snap.epoch, 1)} of {snap.epochs}",
             "done": f"{job.name} is trained", "cancelled": "Cancelled", "dropped": "Dropped",
             "failed": "Training failed", "created": "Starting", "queued": "Waiting"}[snap.status]
    st.progress(min(max(snap.fraction, 0.0), 1.0),
                text=f"{plain(label)} · {snap.fraction:.0%} · {snap.elapsed:.0f} s on {job.train_examples:,} digits")
    m1, m2, m3 = st.columns(3)
    m1.metric("Training loss", f"{snap.loss:.3f}" if snap.loss is not None else "–")
    m2.metric("Training accuracy", f"{snap.accuracy:.1%}" if snap.accuracy is not None else "–")
    tested = [h.test_accuracy for h in snap.history if h.test_accuracy is not None]
    m3.metric("Test accuracy", f"{tested[-1]:.1%}" if tested else "–",
              help=f"On {TEST_DIGITS:,} MNIST test digits, measured after each epoch.")
    st.plotly_chart(live_curve(snap), key="live_curve", config=PLOT_CONFIG)
    if snap.running:
        st.button("Cancel", key="own_cancel", on_click=job.cancel)
    elif snap.status == "cancelled":
        st.info(f"Training was cancelled after {snap.fraction:.0%} of it; the half-trained network was not kept.")
    elif snap.status == "failed":
        st.warning(f"Training failed: {sentence(snap.error)}")
    digit = current_digit()
    if digit is None:
        sample = get_samples()[0]
        digit = Digit(sample.pixels, f"sample {sample.label} ({sample.source})")
    epoch_by_epoch(snap, digit)


if job is not None:
    progress_panel(job, active)

trained_id = register_finished_training()
if trained_id is not None and trained_id in own_models():
    trained_section(trained_id)

own_models_section()
upload_section()
