"""What the pages share: the cached model, the current digit, cached traces.

The model is loaded once per process and never modified; traces are pure
functions of (model, input), so they are cached across sessions by input.
The current digit lives in each session's own ``st.session_state``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import streamlit as st

from cnn_core.checkpoint import SHIPPED_WEIGHTS, LoadedModel, WeightsError, load_checkpoint
from cnn_core.introspect import Trace, trace
from cnn_core.preprocess import normalise
from cnn_core.samples import Sample, load_samples

DIGIT_KEY = "digit"


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


def get_model(path: str = str(SHIPPED_WEIGHTS)) -> LoadedModel:
    """The shared eval-mode model; stops the page with a clear message if the weights are unusable."""
    try:
        return _load(path)
    except WeightsError as e:
        st.error(f"The network could not be loaded: {e}")
        st.stop()
        raise  # unreachable: st.stop() ends the script run


@st.cache_resource(max_entries=512, show_spinner=False)
def _trace(path: str, key: str, _pixels: np.ndarray) -> Trace:
    return trace(_load(path).model, normalise(_pixels))


def get_trace(digit: Digit, path: str = str(SHIPPED_WEIGHTS)) -> Trace:
    """The trace of ``digit`` through the model at ``path``, computed once per input."""
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
    """The current digit, or, when there is none, a picker of sample digits (for the explorer pages)."""
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
    return digit


def _preview(pixels: np.ndarray) -> np.ndarray:
    """The 28x28 input as an 8-bit image scaled up with square pixels."""
    img = (np.clip(pixels, 0, 1) * 255).astype(np.uint8)
    return np.kron(img, np.ones((3, 3), dtype=np.uint8))
