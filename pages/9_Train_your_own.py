"""Train your own: design a variant of the CNN, train it here on a small budget and explore it; or upload weights."""

from __future__ import annotations

import re
from pathlib import Path

import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from cnn_core.architecture import LayerRow, layer_table, total_parameters
from cnn_core.checkpoint import LoadedModel, WeightsError, load_checkpoint_bytes
from cnn_core.data import MnistDataError, MnistSplit, load_mnist, take
from cnn_core.export import model_files
from cnn_core.jobs import MAX_RUNNING_JOBS, JobLimitError, JobSnapshot, TrainingJob
from cnn_core.model import CNNConfig, build_model
from cnn_core.samples import data_dir
from cnn_core.train import TrainConfig
from ui.state import (
    MAX_OWN_MODELS,
    SHIPPED_ID,
    TRAINING_JOB_KEY,
    forget_model,
    get_model_by_id,
    model_label,
    model_picker,
    own_models,
    register_finished_training,
    register_model,
    selected_model_id,
)

st.set_page_config(page_title="Train your own · CNN Explorer", page_icon="🔢", layout="wide")

PLOT_CONFIG = {"displayModeBar": False}
UPLOAD_KEY = "weights_upload_checked"  # (file ids, model id or error) of the last checked upload pair
TEST_DIGITS = 2000  # test digits measured after each epoch: enough for a fair figure, quick to compute
TRAIN_SIZES = (500, 5000)
BATCH_SIZE = 32  # smaller than the CLI's 64: more steps from a small budget learn more
MESSAGE_KEY = "training_message"  # (kind, text) left by the Train button's callback
MAX_NAME = 40
DEFAULT_NAME = "my CNN"


@st.cache_resource(show_spinner="Loading the MNIST digits...")
def mnist_splits(folder: str) -> tuple[MnistSplit, MnistSplit]:
    """The training split and the first TEST_DIGITS test digits of ``folder`` (loaded once per process, read only)."""
    return load_mnist(folder, "train"), take(load_mnist(folder, "test"), TEST_DIGITS)


def shape_text(shape: tuple[int, ...]) -> str:
    return " × ".join(str(d) for d in shape)


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


def slug(name: str) -> str:
    """A file name from a model name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "my_cnn"


def chosen_settings() -> tuple[CNNConfig, TrainConfig, str]:
    """The network, the training budget and the name set by the Design and Train widgets.

    Read from session state, so that a callback sees the values sent with the click (a name
    typed just before clicking Train arrives in the same rerun as the click).
    """
    s = st.session_state
    config = CNNConfig(conv1_channels=int(s["own_conv1"]), conv2_channels=int(s["own_conv2"]),
                       kernel_size=int(s["own_kernel"]), padding=int(s["own_padding"]), pool=s["own_pool"],
                       dropout=round(float(s["own_dropout"]), 2), hidden_relu=bool(s["own_hidden_relu"]))
    train = TrainConfig(epochs=int(s["own_epochs"]), batch_size=BATCH_SIZE, train_size=int(s["own_train_size"]),
                        augment=bool(s["own_augment"]))
    return config, train, (s["own_name"].strip() or DEFAULT_NAME)[:MAX_NAME]


def start_training() -> None:
    """The Train button's callback: start a run in the background, before the page is drawn again.

    One run per session, at most MAX_RUNNING_JOBS on the server; what went wrong is left in
    MESSAGE_KEY for the page to show.
    """
    config, train, name = chosen_settings()
    previous: TrainingJob | None = st.session_state.get(TRAINING_JOB_KEY)
    if previous is not None and previous.snapshot().running:  # e.g. a second click before the page caught up
        st.session_state[MESSAGE_KEY] = ("warning", "A training run is already going on: wait for it or cancel it.")
        return
    try:
        train_split, test_split = mnist_splits(str(data_dir()))
    except MnistDataError as e:
        st.session_state[MESSAGE_KEY] = ("error", f"No MNIST digits to train on: {e}")
        return
    try:
        job = TrainingJob(config, train_split, test_split, train, name=name).start()
    except JobLimitError as e:
        st.session_state[MESSAGE_KEY] = ("warning", f"The server is busy training: {e}")
        return
    st.session_state[TRAINING_JOB_KEY] = job


def show_training_message() -> None:
    """What the last click on Train could not do, once."""
    message = st.session_state.pop(MESSAGE_KEY, None)
    if message is None:
        return
    kind, text = message
    if kind == "error":
        st.error(text)
        st.info("The app trains on a local folder of MNIST IDX files: set CNN_EXPLORER_DATA to one. "
                "The command line can download MNIST itself: "
                "`python -m cnn_core.train --download ~/mnist --out models/my_cnn.pt`.")
    else:
        st.warning(text)


def own_models_section() -> None:
    """This session's models: what they are, and a button to forget each."""
    models = own_models()
    if not models:
        return
    st.subheader("Your models in this session")
    st.caption(f"Only you see them, and only until you close the tab (at most {MAX_OWN_MODELS}: "
               "the oldest goes first).")
    for model_id, loaded in models.items():
        name_col, params_col, acc_col, button_col = st.columns([3, 1, 1, 1])
        name_col.markdown(f"**{model_label(model_id)}**" + (" · selected" if model_id == selected_model_id() else ""))
        params_col.write(f"{loaded.card.get('parameters', 0):,} parameters")
        accuracy = (loaded.card.get("metrics") or {}).get("test_accuracy")
        acc_col.write(f"test {accuracy:.1%}" if isinstance(accuracy, (int, float)) else "test accuracy unknown")
        button_col.button("Forget", key=f"forget_{model_id}", on_click=forget_model, args=(model_id,))


def upload_section() -> None:
    """Weights saved by the training CLI, checked against their model card before they are used."""
    st.header("Bring your own weights")
    st.write("Upload a network trained with `python -m cnn_core.train` (any architecture of the family, "
             "CNN or MLP): its weights file (`.pt`, a plain state_dict) and its model card (`.json`). "
             "The weights are checked against the card (sha256, every tensor's shape) and loaded without "
             "running any code from the file.")
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
        try:
            loaded = load_checkpoint_bytes(weights.getvalue(), card.getvalue(), where=weights.name)
        except WeightsError as e:
            checked = (ids, None, str(e))
        else:
            card_dict = dict(loaded.card, origin="uploaded")
            card_dict["name"] = str(card_dict.get("name") or Path(weights.name).stem)[:MAX_NAME]
            model_id = register_model(LoadedModel(loaded.model, loaded.config, card_dict))
            checked = (ids, model_id, None)
        st.session_state[UPLOAD_KEY] = checked
        if checked[1] is not None:
            st.rerun()  # draw the sidebar's Model box again, now with the upload in it
    _, model_id, error = checked
    if error is not None:
        st.error(f"{weights.name} was not loaded: {error}")
    elif model_id in own_models():
        loaded = get_model_by_id(model_id)
        st.success(f"Loaded **{loaded.name}** ({loaded.card.get('parameters', 0):,} parameters, "
                   f"{loaded.config.kind.upper()}). Pick it in the sidebar's Model box to explore it.")


# --- the page -------------------------------------------------------------------------------------------

model_picker()  # also puts the model of a finished training run in the picker

st.title("Train your own network")
st.write(
    "Change the network and train it yourself: more or fewer filters, bigger kernels, no padding, average "
    "pooling... The table below follows your settings as you change them. Training here is kept small "
    f"(up to {TRAIN_SIZES[1]:,} digits, 3 epochs) so that it takes a minute or two; when it is done, your "
    "network is selected in the sidebar and every page explores it."
)

st.header("Design")
c1, c2, c3, c4 = st.columns(4, gap="medium")
conv1 = c1.slider("Filters in conv1", 8, 64, 32, step=8, key="own_conv1")
conv2 = c1.slider("Filters in conv2", 8, 64, 64, step=8, key="own_conv2")
kernel = c2.radio("Kernel size", [3, 5], horizontal=True, key="own_kernel", format_func=lambda k: f"{k}×{k}")
padding = c2.slider("Padding", 0, 2, 1, key="own_padding",
                    help="Zeros added around each input of a convolution, on every side.")
pool = c3.radio("Pooling", ["max", "avg"], horizontal=True, key="own_pool",
                format_func=lambda p: {"max": "max", "avg": "average"}[p],
                help="Max keeps the largest value of each 2×2 block, average their mean.")
dropout = c3.slider("Dropout before fc1", 0.0, 0.5, 0.25, step=0.05, key="own_dropout")
hidden_relu = c4.checkbox("ReLU after fc1", key="own_hidden_relu",
                          help="A ReLU between fc1 and fc2. The shipped network has none: its fc1 and fc2 then "
                               "act as one linear map.")
config = CNNConfig(conv1_channels=conv1, conv2_channels=conv2, kernel_size=kernel, padding=padding, pool=pool,
                   dropout=round(dropout, 2), hidden_relu=hidden_relu)  # as chosen_settings() reads them
try:
    rows = layer_table(build_model(config))
except ValueError as e:  # the bounds above make this unreachable; never show a traceback
    st.error(f"These settings do not make a network: {e}")
    st.stop()
total = total_parameters(rows)
shipped_total = total_parameters(layer_table(get_model_by_id(SHIPPED_ID).model))
c4.metric("Parameters", f"{total:,}", f"{total - shipped_total:+,} vs shipped" if total != shipped_total
          else "same as shipped", delta_color="off", delta_arrow="off" if total == shipped_total
          else "auto")
architecture_table(rows, "design_table")
st.caption("Output size of each convolution and pooling: (in + 2·padding − kernel) / stride + 1, rounded down.")

st.header("Train")
job: TrainingJob | None = st.session_state.get(TRAINING_JOB_KEY)
running = job is not None and job.snapshot().running
a, b, c = st.columns(3)
a.slider("Epochs", 1, 3, 1, key="own_epochs", help="Passes over the training digits.")
b.slider("Training digits", TRAIN_SIZES[0], TRAIN_SIZES[1], 2000, step=500, key="own_train_size")
c.checkbox("Random distortions", key="own_augment",
                     help="Rotate, shift and warp each digit a little at each step: better on drawings, "
                          "slower to learn with a small budget.")
st.text_input("Name", value=DEFAULT_NAME, max_chars=MAX_NAME, key="own_name")
st.caption(f"Training shares the server's CPU cores with every page (at most {MAX_RUNNING_JOBS} runs at once on "
           f"the server). Test accuracy is measured on {TEST_DIGITS:,} MNIST test digits after each epoch. "
           "For bigger runs use the command line: `python -m cnn_core.train --help`.")
st.button("Train", type="primary", key="own_train", disabled=running,
          help="One run at a time: wait for it or cancel it." if running else None, on_click=start_training)
show_training_message()


@st.fragment(run_every=1.0 if running else None)
def progress_panel(job: TrainingJob, polling: bool) -> None:
    """Progress bar, live curves and Cancel, redrawn every second while the run goes on."""
    snap = job.snapshot()
    if snap.finished and polling:
        st.rerun()  # the whole page: register the model and stop polling
    label = {"running": f"Training {job.name}: epoch {max(snap.epoch, 1)} of {snap.epochs}",
             "done": f"{job.name} is trained", "cancelled": "Cancelled",
             "failed": "Training failed", "created": "Starting"}[snap.status]
    st.progress(min(max(snap.fraction, 0.0), 1.0), text=f"{label} · {snap.fraction:.0%} · {snap.elapsed:.0f} s")
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
        st.error(f"Training failed: {snap.error}")


if job is not None:
    progress_panel(job, running)

trained_id = register_finished_training()
if trained_id is not None and trained_id in own_models():
    trained = get_model_by_id(trained_id)
    accuracy = (trained.card.get("metrics") or {}).get("test_accuracy")
    score = f"{accuracy:.1%} of {TEST_DIGITS:,} test digits right" if isinstance(accuracy, float) else "not tested"
    st.success(f"**{trained.name}** is trained ({score}). It is now the network in the sidebar's Model box: open "
               "**Feature maps** or any other page to explore it, or **Compare** to set it against the shipped one.")
    st.subheader(f"{trained.name}: the architecture")
    architecture_table(layer_table(trained.model), "trained_table")
    weights_bytes, card_bytes = model_files(trained, f"{slug(trained.name)}.pt")
    d1, d2, _ = st.columns([1, 1, 2])
    d1.download_button("Download the weights (.pt)", weights_bytes, f"{slug(trained.name)}.pt",
                       mime="application/octet-stream", key="download_weights", on_click="ignore")
    d2.download_button("Download the model card (.json)", card_bytes, f"{slug(trained.name)}.json",
                       mime="application/json", key="download_card", on_click="ignore")
    st.caption("Together they load back below, or into the command line's tools, like any checkpoint.")

own_models_section()
upload_section()
