"""What the pages share: the models, the selected model, the current digit, cached traces and measurements.

Isolation between visitors rests on two rules:

- Anything cached across sessions is a pure function of its key, and the key names everything the
  result depends on: a model's ``identity`` (its architecture and every weight, see
  :class:`cnn_core.checkpoint.LoadedModel`), never a name or a hash a card merely claims.
- What a visitor brings (a model trained here or uploaded, a digit) lives in that visitor's own
  ``st.session_state``, where no other session can see it.

Every process-wide cache has a ``max_entries``.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import streamlit as st

from cnn_core.checkpoint import LoadedModel, WeightsError, load_checkpoint
from cnn_core.convolution import conv_layer_names
from cnn_core.export import trace_to_npz
from cnn_core.introspect import Trace, trace
from cnn_core.measure import Measurements, TestSets, load_stored, load_test_sets, measure
from cnn_core.paths import MODELS_DIR
from cnn_core.preprocess import normalise
from cnn_core.samples import Sample, load_samples
from ui.text import plain
from ui.uploads import install_upload_limit

DIGIT_KEY = "digit"
MODEL_KEY = "model_id"  # the selected model's id; not a widget key, so it survives pages without the picker
PICKER_KEY = "model_picker"  # the sidebar selectbox
OWN_MODELS_KEY = "own_models"  # this session's models: {id: LoadedModel}
OWN_PREFIX = "own:"
MAX_OWN_MODELS = 5  # per session: each variant holds up to a few MB of weights
TRAINING_JOB_KEY = "training_job"  # this session's latest cnn_core.jobs.TrainingJob (see pages/9_Train_your_own.py)
REGISTERED_JOB_KEY = "training_job_registered"  # the job whose model is already among the session's models
TRAINED_ID_KEY = "training_job_model_id"  # ...and that model's id
MAX_MEASURED_MODELS = 16  # models whose measurements the process keeps (each about 100 KB)


@dataclass(frozen=True)
class ShippedModel:
    """A model that ships with the app: its id in the picker, its weights file and how the picker names it."""

    id: str
    file: Path
    label: str


SHIPPED_PEN_ID = "shipped:pen-cnn"
SHIPPED_ID = "shipped:cnn"  # the article's network, trained on MNIST only
SHIPPED_MLP_ID = "shipped:mlp"
SHIPPED_MODELS = (
    ShippedModel(SHIPPED_PEN_ID, MODELS_DIR / "mnist_pen_cnn.pt", "CNN trained on MNIST + pen-drawn digits"),
    ShippedModel(SHIPPED_ID, MODELS_DIR / "mnist_cnn.pt", "CNN trained on MNIST only (the article's)"),
    ShippedModel(SHIPPED_MLP_ID, MODELS_DIR / "mnist_mlp.pt", "MLP (no convolutions)"),
)


@dataclass(frozen=True)
class Digit:
    """The 28x28 input the pages explore, and where it came from."""

    pixels: np.ndarray  # (28, 28) float32 in [0, 1]
    source: str  # may hold a visitor's file name: show it with ui.text.plain
    marks: int = 1  # separate ink marks of digit size the preprocessing found (more than 1: several digits?)
    message: str | None = None  # what the preprocessing had to say about the input, in words

    @property
    def key(self) -> str:
        """A content hash: the cache key of everything computed from this digit."""
        return hashlib.sha256(np.ascontiguousarray(self.pixels, dtype=np.float32).tobytes()).hexdigest()


@lru_cache(maxsize=8)
def load_shipped(path: str) -> LoadedModel:
    """A shipped weights file, loaded once per process (read only: the model is never changed).

    A plain process-wide cache rather than st.cache_resource, so that ui/server.py can fill it before the
    server takes its first visitor.
    """
    return load_checkpoint(path)


def _load_or_stop(path: str) -> LoadedModel:
    try:
        return load_shipped(path)
    except WeightsError as e:
        st.error(f"The network could not be loaded: {e}")
        st.stop()
        raise  # unreachable: st.stop() ends the script run


# --- which models there are, and which one is selected ----------------------------------------------------


def shipped_model_paths() -> dict[str, str]:
    """The models that ship with the app and whose weights are present, by id, the default first."""
    return {m.id: str(m.file) for m in SHIPPED_MODELS if m.file.is_file()}


def default_model_id() -> str:
    """The model the pages explore until a visitor picks another: the first shipped model present."""
    return next(iter(shipped_model_paths()), SHIPPED_ID)


def own_models() -> dict[str, LoadedModel]:
    """This session's own models (trained here or uploaded), oldest first; never shared with other sessions.

    Read only: change them with :func:`register_model` and :func:`forget_model`.
    """
    return st.session_state.get(OWN_MODELS_KEY) or {}


def model_id_of(loaded: LoadedModel) -> str:
    """The picker id of a session model: its identity (the same architecture and weights are the same model)."""
    return OWN_PREFIX + loaded.identity


def register_model(loaded: LoadedModel, select: bool = True) -> str:
    """Add a model to this session's models (at most MAX_OWN_MODELS: the oldest unselected one goes) and return its id.

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
    """Remove one of this session's models (the default model is selected again if it was the selected one)."""
    st.session_state[OWN_MODELS_KEY] = {k: v for k, v in own_models().items() if k != model_id}
    if st.session_state.get(MODEL_KEY) == model_id:
        select_model(default_model_id())


def available_model_ids() -> list[str]:
    """Every model this session can explore: the shipped ones, then its own."""
    return [*shipped_model_paths(), *own_models()]


def select_model(model_id: str) -> None:
    """Make ``model_id`` the model the pages explore (the sidebar picker follows on its next run)."""
    if model_id not in available_model_ids():
        raise KeyError(f"no model {model_id!r}")
    st.session_state[MODEL_KEY] = model_id


def selected_model_id() -> str:
    """The id of the model this session explores (the default model unless the visitor picked another)."""
    model_id = st.session_state.get(MODEL_KEY, default_model_id())
    return model_id if model_id in available_model_ids() else default_model_id()


def is_cnn(loaded: LoadedModel) -> bool:
    """True when the model has convolution layers (pages about filters and feature maps need them)."""
    return getattr(loaded.config, "kind", None) == "cnn"


def model_label(model_id: str) -> str:
    """How the picker names a model, as plain text (a session model's name comes from its card: see ui.text)."""
    for shipped in SHIPPED_MODELS:
        if shipped.id == model_id:
            return shipped.label
    loaded = own_models().get(model_id)
    if loaded is None:
        return model_id
    origin = "uploaded" if loaded.card.get("origin") == "uploaded" else "trained here"
    name = " ".join(str(loaded.name).split())[:40]
    return f"{name} ({origin})"


def model_label_md(model_id: str) -> str:
    """:func:`model_label` escaped for st.markdown, st.caption, st.write..."""
    return plain(model_label(model_id), limit=80)


def conv_layers_or_stop(model, missing: str) -> list[str]:
    """The model's convolution layers; when it has none, say so (``missing``: what the page cannot show) and stop."""
    names = conv_layer_names(model)
    if not names:
        st.info(f"The model picked in the sidebar ({model_label_md(selected_model_id())}) has no convolution "
                f"layers, so {missing}. Pick a CNN in the sidebar's Model box.")
        st.stop()
    return names


def get_model_by_id(model_id: str) -> LoadedModel:
    """The model with this id (a shipped one, or one of this session's); the default model for an unknown id."""
    own = own_models().get(model_id)
    if own is not None:
        return own
    paths = shipped_model_paths()
    if not paths:
        st.error("No shipped weights were found in models/: the app cannot run without them. "
                 "Train them with `python -m cnn_core.train` (see models/README.md).")
        st.stop()
    return _load_or_stop(paths.get(model_id, next(iter(paths.values()))))


def get_model(path: str | None = None) -> LoadedModel:
    """The model the session explores (the one picked in the sidebar; the default model otherwise).

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


@st.cache_resource(max_entries=1, show_spinner=False)
def _server_guards() -> bool:
    """Installed once per server process: the per-session bound on stored uploads (see ui/uploads.py)."""
    install_upload_limit()
    return True


def _run_through_the_navigation() -> None:
    """Make sure the page runs inside app.py's navigation (with its "Home" entry), not as a bare pages/ script.

    With a pages/ folder beside app.py, Streamlit runs a page opened by its URL directly, with its old
    automatic sidebar ("app" as the first entry), until app.py's st.navigation has run once in the process
    and switched that off. Only the very first run of a server can be such a run: switch it off here and run
    again, so the page comes through app.py like every later run.
    """
    from streamlit.runtime.pages_manager import PagesManager

    if PagesManager.uses_pages_directory:
        PagesManager.uses_pages_directory = False  # what st.navigation itself does
        st.rerun()


def model_picker() -> LoadedModel:
    """The sidebar's "Model" box; returns the selected model. Call it once per page run, before drawing the page."""
    _run_through_the_navigation()
    _server_guards()
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
        snap = job.snapshot() if job is not None else None
        if snap is not None and snap.running:
            st.caption(f"Training {plain(job.name)}: {snap.fraction:.0%} (it joins this list when it is done).")
        elif snap is not None and getattr(snap, "waiting", False) and snap.place is not None:
            st.caption(f"{plain(job.name)} waits to train ({snap.place.position} in line).")
    return get_model()


# --- traces ----------------------------------------------------------------------------------------------


@st.cache_resource(max_entries=512, show_spinner=False)
def _trace(identity: str, digit_key: str, _model, _pixels: np.ndarray) -> Trace:
    # The key names the model (architecture and weights) and the digit: the trace is a pure function of both.
    return trace(_model, normalise(_pixels))


def get_trace(digit: Digit, path: str | None = None, model_id: str | None = None) -> Trace:
    """The trace of ``digit`` through the selected model (or the model at ``path``, or with ``model_id``).

    Computed once per (model identity, input).
    """
    loaded = get_model(path) if path is not None else get_model_by_id(model_id or selected_model_id())
    return _trace(loaded.identity, digit.key, loaded.model, digit.pixels)


# --- measurements over the test digits --------------------------------------------------------------------


@lru_cache(maxsize=1)
def get_test_sets() -> TestSets:
    """The bundled test digits every page measures on (loaded once per process, read only)."""
    return load_test_sets()


_measured: OrderedDict[str, Measurements] = OrderedDict()  # by model identity, least recently used first
_measured_lock = threading.Lock()
_measuring: dict[str, threading.Lock] = {}  # one lock per identity being measured: no model is measured twice


def _remember(identity: str, result: Measurements) -> None:
    with _measured_lock:
        _measured[identity] = result
        _measured.move_to_end(identity)
        while len(_measured) > MAX_MEASURED_MODELS:
            _measured.popitem(last=False)


def _recall(identity: str) -> Measurements | None:
    with _measured_lock:
        found = _measured.get(identity)
        if found is not None:
            _measured.move_to_end(identity)
        return found


def measurements(loaded: LoadedModel, model_id: str | None = None) -> Measurements:
    """The model measured on the bundled test digits: read from its stored file (shipped models), else
    measured here once per process and model identity, with a progress bar.

    ``model_id`` says which picker entry ``loaded`` is (for the stored file of a shipped model).
    """
    found = _recall(loaded.identity)
    if found is not None:
        return found
    sets = get_test_sets()
    paths = shipped_model_paths()
    shipped_path = paths.get(model_id or "") or next(
        (p for p in paths.values() if load_shipped(p).identity == loaded.identity), None)
    if shipped_path is not None:
        stored = load_stored(shipped_path, loaded, sets)
        if stored is not None:
            _remember(loaded.identity, stored)
            return stored
    with _measured_lock:
        lock = _measuring.setdefault(loaded.identity, threading.Lock())
    with lock:  # a second session asking for the same model waits for the first one's result
        found = _recall(loaded.identity)
        if found is None:
            bar = st.progress(0.0, text="Measuring this network on the test digits (once per model)...")
            progress: Callable[[float, str], None] = lambda f, words: bar.progress(min(f, 1.0), text=words)  # noqa: E731
            found = measure(loaded, sets, progress)
            bar.empty()
            _remember(loaded.identity, found)
    with _measured_lock:
        _measuring.pop(loaded.identity, None)
    return found


# --- the current digit ---------------------------------------------------------------------------------


@st.cache_resource(max_entries=1, show_spinner=False)
def get_samples() -> list[Sample]:
    """One bundled MNIST test digit of each class (shared, read only)."""
    return load_samples()


def current_digit() -> Digit | None:
    """This session's current digit, if any."""
    return st.session_state.get(DIGIT_KEY)


def set_digit(pixels: np.ndarray, source: str, marks: int = 1, message: str | None = None) -> Digit:
    """Make ``pixels`` this session's current digit (``marks`` and ``message`` as the preprocessing found)."""
    digit = Digit(np.asarray(pixels, dtype=np.float32), source, int(marks), message)
    st.session_state[DIGIT_KEY] = digit
    return digit


def clear_digit(only_source_prefix: str | None = None) -> None:
    """Forget the current digit (only if it came from a source starting with the prefix, when given)."""
    d = current_digit()
    if d is not None and (only_source_prefix is None or d.source.startswith(only_source_prefix)):
        del st.session_state[DIGIT_KEY]


SAMPLE_KEY = "sample_choice"
_NO_SAMPLE = "-"


def _sample_picked() -> None:
    """The sidebar's sample box changed: that sample becomes the current digit at once (before the page draws)."""
    choice = st.session_state.get(SAMPLE_KEY)
    samples = get_samples()
    labels = [sample_label(s) for s in samples]
    if choice in labels:
        s = samples[labels.index(choice)]
        set_digit(s.pixels, f"sample {choice}")


def sample_label(s: Sample) -> str:
    """How a sample digit is named in the pickers."""
    return f"{s.label} ({s.source})"


def digit_or_sample_picker() -> Digit:
    """The model picker, then the current digit or, when there is none, a picker of sample digits.

    For the explorer pages; the sidebar also offers the digit's trace through the model as a .npz file.
    """
    model_picker()
    samples = get_samples()
    with st.sidebar:
        st.markdown("**Input**")
        labels = [sample_label(s) for s in samples]
        st.selectbox("Or pick a sample digit", [_NO_SAMPLE, *labels], key=SAMPLE_KEY, on_change=_sample_picked,
                     help="Draw or upload your own digit on the home page.")
        digit = current_digit()
        if digit is not None:
            st.caption(f"Exploring: {plain(digit.source)}")
            st.image(preview(digit.pixels), width=84)
    if digit is None:
        st.info("You have not drawn anything yet: showing a sample digit. Draw your own on the home page, "
                "or pick another sample in the sidebar.")
        s = samples[0]
        digit = Digit(s.pixels, f"sample {sample_label(s)}")
    with st.sidebar:
        trace_download_button(digit)
    return digit


def trace_download_button(digit: Digit, key: str = "sidebar_trace_npz") -> None:
    """A button that downloads the digit's trace through the selected model as .npz (built only when clicked)."""
    model = get_model().model

    def npz() -> bytes:  # runs outside the script when the user clicks: no Streamlit calls in here
        return trace_to_npz(trace(model, normalise(digit.pixels)))

    st.download_button("Download activations (.npz)", data=npz, file_name="cnn_explorer_activations.npz",
                       mime="application/octet-stream", key=key, on_click="ignore",
                       help="Every layer's output for this digit, keyed by layer name, with the input and "
                            "the probabilities: open it with numpy.load.")


def preview(pixels: np.ndarray) -> np.ndarray:
    """The 28x28 input as an 8-bit image scaled up with square pixels."""
    img = (np.clip(pixels, 0, 1) * 255).astype(np.uint8)
    return np.kron(img, np.ones((3, 3), dtype=np.uint8))
