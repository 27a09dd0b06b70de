"""What the pages share: the models, the selected model, the current digit, cached traces.

The shipped models are loaded once per process and never modified; traces are pure
functions of (model, input), so they are cached across sessions by (model, input).
Each session also keeps its own models (trained in the app or uploaded) in its own
``st.session_state``, where no other session can see them, and picks which model the
pages explore with the sidebar's "Model" box (:func:`model_picker`). The current
digit lives in the session's ``st.session_state`` too.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import streamlit as st

from cnn_core.convolution import conv_layer_names
from cnn_core.checkpoint import SHIPPED_MLP_WEIGHTS, SHIPPED_WEIGHTS, LoadedModel, WeightsError, load_checkpoint
from cnn_core.export import trace_to_npz
from cnn_core.introspect import Trace, trace
from cnn_core.preprocess import normalise
from cnn_core.samples import Sample, load_samples

DIGIT_KEY = "digit"
MODEL_KEY = "model_id"  # the selected model's id; not a widget key, so it survives pages without the picker
PICKER_KEY = "model_picker"  # the sidebar selectbox
OWN_MODELS_KEY = "own_models"  # this session's models: {id: LoadedModel}
SHIPPED_ID = "shipped:cnn"
SHIPPED_MLP_ID = "shipped:mlp"
OWN_PREFIX = "own:"
MAX_OWN_MODELS = 5  # per session: each variant holds up to a few MB of weights
TRAINING_JOB_KEY = "training_job"  # this session's latest cnn_core.jobs.TrainingJob (see pages/9_Train_your_own.py)
REGISTERED_JOB_KEY = "training_job_registered"  # the job whose model is already among the session's models
TRAINED_ID_KEY = "training_job_model_id"  # ...and that model's id


@dataclass(frozen=True)
class Digit:
    """The 28x28 input the pages explore, and where it came from."""

    pixels: np.ndarray  # (28, 28) float32 in [0, 1]
    source: str

    @property
    def key(self) -> str:
        """A short content hash: the cache key of everything computed from this digit."""
        return hashlib.sha1(np.ascontiguousarray(self.pixels, dtype=np.float32).tobytes()).hexdigest()[:16]


@st.cache_resource(show_spinner="Loading the pretrained network...")
def _load(path: str) -> LoadedModel:
    return load_checkpoint(path)


def _load_or_stop(path: str) -> LoadedModel:
    try:
        return _load(path)
    except WeightsError as e:
        st.error(f"The network could not be loaded: {e}")
        st.stop()
        raise  # unreachable: st.stop() ends the script run


# --- which models there are, and which one is selected ----------------------------------------------------


def shipped_model_paths() -> dict[str, str]:
    """The models that ship with the app, by id: the CNN, and the MLP when its weights file exists."""
    paths = {SHIPPED_ID: str(SHIPPED_WEIGHTS)}
    if SHIPPED_MLP_WEIGHTS.is_file():
        paths[SHIPPED_MLP_ID] = str(SHIPPED_MLP_WEIGHTS)
    return paths


def own_models() -> dict[str, LoadedModel]:
    """This session's own models (trained here or uploaded), oldest first; never shared with other sessions.

    Read only: change them with :func:`register_model` and :func:`forget_model`.
    """
    return st.session_state.get(OWN_MODELS_KEY) or {}


def model_id_of(loaded: LoadedModel) -> str:
    """The id of a session model: its weights' sha256 (the same weights are the same model)."""
    return OWN_PREFIX + str(loaded.card["sha256"])


def register_model(loaded: LoadedModel, select: bool = True) -> str:
    """Add a model to this session's models (at most MAX_OWN_MODELS: the oldest unselected one goes) and return its id.

    ``loaded.card`` must have a ``sha256`` (cnn_core.jobs and cnn_core.checkpoint give every card one).
    With ``select``, the pages explore it from now on.
    """
    models = dict(own_models())  # a new dict in session state: never change one a page is iterating over
    model_id = model_id_of(loaded)
    models[model_id] = loaded
    current = st.session_state.get(MODEL_KEY)
    while len(models) > MAX_OWN_MODELS:
        oldest = next(k for k in models if k not in (model_id, current))
        del models[oldest]
    st.session_state[OWN_MODELS_KEY] = models
    if select:
        select_model(model_id)
    return model_id


def forget_model(model_id: str) -> None:
    """Remove one of this session's models (the shipped CNN is selected again if it was the selected one)."""
    st.session_state[OWN_MODELS_KEY] = {k: v for k, v in own_models().items() if k != model_id}
    if st.session_state.get(MODEL_KEY) == model_id:
        select_model(SHIPPED_ID)


def available_model_ids() -> list[str]:
    """Every model this session can explore: the shipped ones, then its own."""
    return [*shipped_model_paths(), *own_models()]


def select_model(model_id: str) -> None:
    """Make ``model_id`` the model the pages explore (the sidebar picker follows on its next run)."""
    if model_id not in available_model_ids():
        raise KeyError(f"no model {model_id!r}")
    st.session_state[MODEL_KEY] = model_id


def selected_model_id() -> str:
    """The id of the model this session explores (the shipped CNN unless the user picked another)."""
    model_id = st.session_state.get(MODEL_KEY, SHIPPED_ID)
    return model_id if model_id in available_model_ids() else SHIPPED_ID


def is_cnn(loaded: LoadedModel) -> bool:
    """True when the model has convolution layers (pages about filters and feature maps need them)."""
    return getattr(loaded.config, "kind", None) == "cnn"


def model_label(model_id: str) -> str:
    """How the picker names a model."""
    if model_id == SHIPPED_ID:
        return "Shipped CNN"
    if model_id == SHIPPED_MLP_ID:
        return "Shipped MLP (no convolutions)"
    loaded = own_models().get(model_id)
    if loaded is None:
        return model_id
    accuracy = (loaded.card.get("metrics") or {}).get("test_accuracy")
    origin = "uploaded" if loaded.card.get("origin") == "uploaded" else "yours"
    return f"{loaded.name} ({origin}" + (f", {accuracy:.1%})" if isinstance(accuracy, (int, float)) else ")")


def conv_layers_or_stop(model, missing: str) -> list[str]:
    """The model's convolution layers; when it has none, say so (``missing``: what the page cannot show) and stop."""
    names = conv_layer_names(model)
    if not names:
        st.info(f"The model picked in the sidebar ({model_label(selected_model_id())}) has no convolution layers, "
                f"so {missing}. Pick a CNN in the sidebar's Model box.")
        st.stop()
    return names


def get_model_by_id(model_id: str) -> LoadedModel:
    """The model with this id (a shipped one, or one of this session's); the shipped CNN for an unknown id."""
    own = own_models().get(model_id)
    if own is not None:
        return own
    paths = shipped_model_paths()
    return _load_or_stop(paths.get(model_id, paths[SHIPPED_ID]))


def get_model(path: str | None = None) -> LoadedModel:
    """The model the session explores (the one picked in the sidebar; the shipped CNN by default).

    With ``path``, the model saved at that path instead. Stops the page with a clear message if the
    weights are unusable.
    """
    if path is not None:
        return _load_or_stop(path)
    return get_model_by_id(selected_model_id())


def register_finished_training() -> str | None:
    """Put the model of this session's training run among its models (and select it) once the run is done.

    Called by the picker on every page, so a run finished while the user was on another page
    is not lost. Returns the trained model's id, or None when no finished run's model is kept.
    """
    job = st.session_state.get(TRAINING_JOB_KEY)
    if job is None:
        return None
    if st.session_state.get(REGISTERED_JOB_KEY) is not job and job.snapshot().status == "done":
        st.session_state[TRAINED_ID_KEY] = register_model(job.loaded_model())
        st.session_state[REGISTERED_JOB_KEY] = job
    return st.session_state.get(TRAINED_ID_KEY) if st.session_state.get(REGISTERED_JOB_KEY) is job else None


def _picked() -> None:
    st.session_state[MODEL_KEY] = st.session_state[PICKER_KEY]


def model_picker() -> LoadedModel:
    """The sidebar's "Model" box; returns the selected model. Call it once per page run, before drawing the page."""
    register_finished_training()
    options = available_model_ids()
    selected = selected_model_id()
    # Set on every run, even when unchanged: the value then goes to the browser with the widget. Otherwise a
    # page switch shows the browser's default (the first option) while the pages explore the selected model.
    st.session_state[PICKER_KEY] = selected
    with st.sidebar:
        labels = {model_id: model_label(model_id) for model_id in options}  # a plain mapping: no state needed later
        st.selectbox("Model", options, key=PICKER_KEY, format_func=labels.__getitem__, on_change=_picked,
                     help="The network every page explores. Train your own variant, or upload weights, "
                          "on the **Train your own** page.")
        job = st.session_state.get(TRAINING_JOB_KEY)
        if job is not None and job.snapshot().running:
            st.caption(f"Training {job.name}: {job.snapshot().fraction:.0%} (it joins this list when it is done).")
    return get_model()


# --- traces ----------------------------------------------------------------------------------------------


@st.cache_resource(max_entries=512, show_spinner=False)
def _trace(path: str, key: str, _pixels: np.ndarray) -> Trace:
    return trace(_load(path).model, normalise(_pixels))


@st.cache_resource(max_entries=128, show_spinner=False)
def _own_trace(model_id: str, key: str, _model, _pixels: np.ndarray) -> Trace:
    # Keyed by the weights' sha256: only a session holding these very weights can ask for these traces.
    return trace(_model, normalise(_pixels))


def get_trace(digit: Digit, path: str | None = None, model_id: str | None = None) -> Trace:
    """The trace of ``digit`` through the selected model (or the model at ``path``, or with ``model_id``).

    Computed once per (model, input).
    """
    if path is None:
        model_id = model_id or selected_model_id()
        own = own_models().get(model_id)
        if own is not None:
            return _own_trace(model_id, digit.key, own.model, digit.pixels)
        paths = shipped_model_paths()
        path = paths.get(model_id, paths[SHIPPED_ID])
    get_model(path)
    return _trace(path, digit.key, digit.pixels)


@st.cache_resource(show_spinner=False)
def get_samples() -> list[Sample]:
    """Sample digits (MNIST test digits when the data folder is there, else typed digits)."""
    return load_samples()


def current_digit() -> Digit | None:
    """This session's current digit, if any."""
    return st.session_state.get(DIGIT_KEY)


def set_digit(pixels: np.ndarray, source: str) -> Digit:
    """Make ``pixels`` this session's current digit."""
    digit = Digit(np.asarray(pixels, dtype=np.float32), source)
    st.session_state[DIGIT_KEY] = digit
    return digit


def clear_digit(only_source_prefix: str | None = None) -> None:
    """Forget the current digit (only if it came from a source starting with the prefix, when given)."""
    d = current_digit()
    if d is not None and (only_source_prefix is None or d.source.startswith(only_source_prefix)):
        del st.session_state[DIGIT_KEY]


def digit_or_sample_picker() -> Digit:
    """The model picker, then the current digit or, when there is none, a picker of sample digits.

    For the explorer pages; the sidebar also offers the digit's trace through the model as a .npz file.
    """
    model_picker()
    digit = current_digit()
    samples = get_samples()
    with st.sidebar:
        st.markdown("**Input**")
        if digit is not None:
            st.caption(f"Exploring: {digit.source}")
            st.image(_preview(digit.pixels), width=84)
        labels = [f"{s.label} ({s.source})" for s in samples]
        choice = st.selectbox("Or pick a sample digit", ["-"] + labels, key="sample_choice",
                              help="Draw or upload your own digit on the home page.")
        if choice != "-":
            s = samples[labels.index(choice)]
            if digit is None or digit.source != f"sample {choice}":
                digit = set_digit(s.pixels, f"sample {choice}")
    if digit is None:
        st.info("You have not drawn anything yet: showing a sample digit. Draw your own on the home page, "
                "or pick another sample in the sidebar.")
        s = samples[0]
        digit = Digit(s.pixels, f"sample {s.label} ({s.source})")
    with st.sidebar:
        trace_download_button(digit)
    return digit


def trace_download_button(digit: Digit, key: str = "sidebar_trace_npz") -> None:
    """A button that downloads the digit's trace through the selected model as .npz (built only when clicked)."""
    model = get_model().model

    def npz() -> bytes:  # runs outside the script when the user clicks: no Streamlit calls in here
        return trace_to_npz(trace(model, normalise(digit.pixels)))

    st.download_button("Download activations (.npz)", data=npz, file_name=f"trace_{digit.key}.npz",
                       mime="application/octet-stream", key=key, on_click="ignore",
                       help="Every layer's output for this digit, keyed by layer name, with the input and "
                            "the probabilities: open it with numpy.load.")


def _preview(pixels: np.ndarray) -> np.ndarray:
    """The 28x28 input as an 8-bit image scaled up with square pixels."""
    img = (np.clip(pixels, 0, 1) * 255).astype(np.uint8)
    return np.kron(img, np.ones((3, 3), dtype=np.uint8))
