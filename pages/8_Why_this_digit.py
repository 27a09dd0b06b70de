"""Why this digit: which pixels made the prediction, and what happens when the drawing moves or thickens."""

from __future__ import annotations

import numpy as np
import streamlit as st
import torch

from cnn_core.data import MnistDataError, load_mnist, take
from cnn_core.explain import (Saliency, ShiftAccuracy, ShiftSensitivity, probabilities, saliency,
                              shift_accuracy_curve, shift_images, shift_sensitivity, thicken)
from cnn_core.samples import data_dir
from ui import explain_figures as xf
from ui import figures
from ui.state import Digit, digit_or_sample_picker, get_model, get_trace

st.set_page_config(page_title="Why this digit · CNN Explorer", page_icon="🔢", layout="wide")

PLOT_CONFIG = {"displayModeBar": False}
SHIFTS = range(-4, 5)
THICKNESS = (0, 1, 2)
TEST_DIGITS = 1000  # test digits measured per shift: 17 passes over them, once per process
METHODS = {"Integrated gradients": "integrated_gradients", "Gradient × input": "gradient_x_input"}


@st.cache_resource(max_entries=256, show_spinner=False)
def cached_saliency(weights_sha: str, key: str, method: str, target: int, _pixels: np.ndarray) -> Saliency:
    """Saliency of one digit, computed once per (weights, digit, method, class)."""
    return saliency(get_model().model, _pixels, target, method)  # type: ignore[arg-type]


@st.cache_resource(max_entries=256, show_spinner=False)
def cached_shifts(weights_sha: str, key: str, _pixels: np.ndarray) -> ShiftSensitivity:
    """Probabilities of one digit moved and thickened, computed once per (weights, digit)."""
    return shift_sensitivity(get_model().model, _pixels, SHIFTS, THICKNESS)


@st.cache_resource(show_spinner=f"Measuring the network on {TEST_DIGITS:,} shifted test digits (once for the app)...")
def test_split_curve(weights_sha: str, folder: str) -> ShiftAccuracy | str:
    """Accuracy on moved test digits, once per weights and folder; the reason as text when there is no data."""
    try:
        split = take(load_mnist(folder, "test"), TEST_DIGITS)
    except MnistDataError as e:
        return str(e)
    return shift_accuracy_curve(get_model().model, split.images, split.labels, SHIFTS)


def saliency_section(digit: Digit, predicted: int) -> None:
    st.header(f"Which pixels made it a {predicted}")
    a, b = st.columns([2, 1])
    method = a.radio("Method", list(METHODS), horizontal=True, key="why_method",
                     help="Integrated gradients averages the gradient along the way from a black image to yours; "
                          "gradient × input uses the gradient at your image only (faster, noisier).")
    options = list(range(10))
    target = b.selectbox("Explain the score of", options, index=predicted, key="why_target",
                         format_func=lambda d: f"{d} (the prediction)" if d == predicted else str(d))
    sal = cached_saliency(weights_sha, digit.key, METHODS[method], target, digit.pixels)
    left, right = st.columns(2, gap="medium")
    with left:
        st.plotly_chart(xf.saliency_overlay(digit.pixels, sal.attributions, f"Pixels for (red) and against "
                                            f"(blue) a {target}"), key="why_overlay", config=PLOT_CONFIG)
    with right:
        st.plotly_chart(figures.image_heatmap(digit.pixels, "The input", height=380), key="why_input",
                        config=PLOT_CONFIG)
    total = float(sal.attributions.sum())
    st.markdown(
        f"Red pixels raised the network's score (logit) for **{target}**, blue ones lowered it; black background "
        "gets no colour because a blank pixel has nothing to give. "
        + (f"The attributions add up to **{total:+.2f}**, the difference between the score of your digit "
           f"({sal.logit:+.2f}) and of a black image ({sal.baseline_logit:+.2f}): integrated gradients splits "
           "exactly that difference among the pixels."
           if sal.method == "integrated_gradients" else
           f"Gradient × input is a first-order guess: its attributions add up to {total:+.2f}, while the score "
           f"of your digit is {sal.logit:+.2f} against {sal.baseline_logit:+.2f} for a black image.")
    )


def what_if_section(digit: Digit, predicted: int) -> None:
    st.header("What if the drawing moved, or were thicker")
    s = cached_shifts(weights_sha, digit.key, digit.pixels)
    st.write(f"The same digit moved up to {max(SHIFTS)} pixels in each direction (what leaves the frame is lost, "
             "blank comes in), and drawn with thicker strokes. The convolutions find a stroke wherever it is, and "
             "pooling forgives a pixel or two; but the fully connected layers read fixed positions, so far enough "
             "from where training digits sat, the answer can change.")
    left, middle, right = st.columns([4, 3, 2], gap="medium")
    with left:
        st.plotly_chart(xf.shift_curves(s.shifts, s.horizontal[:, predicted], s.vertical[:, predicted], predicted,
                                        title=f"Probability of {predicted} as the digit moves"),
                        key="why_shift_curves", config=PLOT_CONFIG)
    with middle:
        st.plotly_chart(xf.shift_grid(s.shifts, s.grid[:, :, predicted], predicted,
                                      title=f"Probability of {predicted}, moved by (dx, dy)"),
                        key="why_shift_grid", config=PLOT_CONFIG)
    with right:
        for t, p in zip(s.thickness, s.thickened):
            label = "as drawn" if t == 0 else f"{t} px thicker"
            st.metric(f"{label}: prediction", str(int(p.argmax())), f"{float(p[predicted]):.1%} for {predicted}",
                      delta_color="off", delta_arrow="off")
    changed = [(dx, dy) for i, dy in enumerate(s.shifts) for j, dx in enumerate(s.shifts)
               if int(s.grid[i, j].argmax()) != predicted]
    st.caption(f"The prediction stays {predicted} for {len(s.shifts) ** 2 - len(changed)} of the "
               f"{len(s.shifts) ** 2} shifts in the grid." + (f" It changes for example at dx {changed[0][0]:+d}, "
                                                              f"dy {changed[0][1]:+d}." if changed else ""))
    try_it(digit)


def try_it(digit: Digit) -> None:
    """Move and thicken the digit by hand and see the network's answer."""
    st.subheader("Try it")
    a, b, c = st.columns(3)
    dx = a.slider("Move right (+) / left (−)", -8, 8, 0, key="why_dx")
    dy = b.slider("Move down (+) / up (−)", -8, 8, 0, key="why_dy")
    t = c.slider("Thicker strokes (px)", 0, 3, 0, key="why_thick")
    moved = thicken(shift_images(torch.as_tensor(digit.pixels), dx, dy), t)
    probs = probabilities(model, moved[None])[0]
    left, right = st.columns([1, 2], gap="medium")
    with left:
        st.plotly_chart(figures.image_heatmap(moved, f"Moved ({dx:+d}, {dy:+d}), {t} px thicker", height=300),
                        key="why_moved", config=PLOT_CONFIG)
    with right:
        st.plotly_chart(figures.probability_bars(probs), key="why_moved_probs", config=PLOT_CONFIG)


def worst_accuracy(curve: ShiftAccuracy, k: int) -> float:
    """The lowest accuracy among the moves by k px (left, right, up, down)."""
    at = [i for i, s in enumerate(curve.shifts) if abs(s) == k]
    return min([curve.horizontal[i] for i in at] + [curve.vertical[i] for i in at])


def test_split_section() -> None:
    st.header("Measured on test digits")
    curve = test_split_curve(weights_sha, str(data_dir()))
    if isinstance(curve, str):
        st.info(f"No MNIST test digits to measure on ({curve}). Set CNN_EXPLORER_DATA to a folder of MNIST IDX "
                "files to see how accuracy changes when every test digit is moved.")
        return
    left, right = st.columns([3, 2], gap="medium")
    with left:
        st.plotly_chart(xf.accuracy_curve(curve.shifts, curve.horizontal, curve.vertical,
                                          title=f"Accuracy on {curve.n_images:,} test digits, all moved"),
                        key="why_accuracy", config=PLOT_CONFIG)
    with right:
        far = max(abs(s) for s in curve.shifts)
        st.metric("Accuracy, digits where they were", f"{worst_accuracy(curve, 0):.1%}")
        if far >= 1:
            st.metric("Moved 1 px (worst direction)", f"{worst_accuracy(curve, 1):.1%}")
        if far > 1:
            st.metric(f"Moved {far} px (worst direction)", f"{worst_accuracy(curve, far):.1%}")
        st.caption("A CNN finds a pattern wherever it appears, in the sense that its convolutions slide the same "
                   "filters everywhere; whether the whole network still answers correctly after a shift is what "
                   "this curve measures.")


# --- the page ---------------------------------------------------------------------------------------------

st.title("Why this digit?")
digit = digit_or_sample_picker()
loaded = get_model()
model = loaded.model
weights_sha = str(loaded.card.get("sha256", ""))
tr = get_trace(digit)
st.metric("Prediction", str(tr.prediction), f"{tr.confidence:.1%} confident", delta_color="off", delta_arrow="off")
saliency_section(digit, tr.prediction)
what_if_section(digit, tr.prediction)
test_split_section()
