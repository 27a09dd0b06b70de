"""Why this digit: which pixels made the prediction, and what happens when the drawing moves or thickens."""

from __future__ import annotations

import numpy as np
import streamlit as st
import torch
from torch import nn

from cnn_core.checkpoint import LoadedModel
from cnn_core.convolution import conv_layer_names
from cnn_core.explain import (
    IG_TOLERANCE,
    Saliency,
    ShiftSensitivity,
    integrated_gradients,
    probabilities,
    saliency,
    shift_images,
    shift_sensitivity,
    thicken,
)
from cnn_core.measure import SHIFTS, ShiftCurve
from ui import explain_figures as xf
from ui import figures
from ui.charts import accuracy_floor
from ui.state import Digit, digit_or_sample_picker, get_model, get_trace, measurements, selected_model_id

st.set_page_config(page_title="Why this digit · CNN Explorer", page_icon="🔢", layout="wide")

PLOT_CONFIG = {"displayModeBar": False}
THICKNESS = (0, 1, 2)
METHODS = {"Integrated gradients": "integrated_gradients", "Gradient × input": "gradient_x_input"}


# Process-wide caches: each is a pure function of its arguments. The model is passed as ``_model`` (not
# hashed) and named in the key by its identity (architecture and every weight), the digit by its content hash.


@st.cache_resource(max_entries=256, show_spinner="Working out which pixels count...")
def cached_saliency(identity: str, digit_key: str, method: str, target: int, _model: nn.Module,
                    _pixels: np.ndarray) -> Saliency:
    """Saliency of one digit for one class, once per (model identity, digit, method, class)."""
    if method == "integrated_gradients":
        return integrated_gradients(_model, _pixels, target)
    return saliency(_model, _pixels, target, "gradient_x_input")


@st.cache_resource(max_entries=256, show_spinner=False)
def cached_shifts(identity: str, digit_key: str, _model: nn.Module, _pixels: np.ndarray) -> ShiftSensitivity:
    """Probabilities of one digit moved and thickened, once per (model identity, digit)."""
    return shift_sensitivity(_model, _pixels, SHIFTS, THICKNESS)


def completeness(sal: Saliency) -> str:
    """What the sum of the attributions is, and how close it comes to the difference it should equal."""
    total, difference = float(sal.attributions.sum()), sal.logit - sal.baseline_logit
    if sal.method != "integrated_gradients":
        return (f"Gradient × input is a first-order guess: its attributions add up to {total:+.2f}, while the "
                f"score of your digit is {sal.logit:+.2f} against {sal.baseline_logit:+.2f} for a black image.")
    gap = abs(sal.completeness_gap)
    split = (f"Integrated gradients splits the difference between the score of your digit ({sal.logit:+.3f}) and "
             f"of a black image ({sal.baseline_logit:+.3f}), **{difference:+.3f}**, among the pixels; they add "
             f"up to **{total:+.3f}**. ")
    if gap <= IG_TOLERANCE:
        return split + (f"With {sal.steps:,} steps along the way from black to your digit, the split is exact to "
                        f"within {gap:.4f} (the page takes more steps until it is within {IG_TOLERANCE}).")
    return split + (f"Even after {sal.steps:,} steps the sum misses the difference by {gap:.3f}, more than the "
                    f"{IG_TOLERANCE} aimed for: read the map as approximate.")


def saliency_section(loaded: LoadedModel, digit: Digit, predicted: int) -> None:
    """The pixels for and against a class, and how well the attributions add up."""
    st.header(f"Which pixels made it a {predicted}")
    a, b = st.columns([2, 1])
    method = a.radio("Method", list(METHODS), horizontal=True, key="why_method",
                     help="Integrated gradients averages the gradient along the way from a black image to yours; "
                          "gradient × input uses the gradient at your image only (faster, noisier).")
    target = b.selectbox("Explain the score of", list(range(10)), index=predicted, key="why_target",
                         format_func=lambda d: f"{d} (the prediction)" if d == predicted else str(d))
    sal = cached_saliency(loaded.identity, digit.key, METHODS[method], target, loaded.model, digit.pixels)
    left, right = st.columns(2, gap="medium")
    with left:
        st.markdown(f"**Pixels for (red) and against (blue) a {target}**")
        st.plotly_chart(xf.saliency_overlay(digit.pixels, sal.attributions), key="why_overlay", config=PLOT_CONFIG)
    with right:
        st.markdown("**The input**")
        st.plotly_chart(figures.image_heatmap(digit.pixels, height=380), key="why_input", config=PLOT_CONFIG)
    st.markdown(f"Red pixels raised the network's score (logit) for **{target}**, blue ones lowered it; black "
                "background gets no colour because a blank pixel has nothing to give. " + completeness(sal))
    if sal.method == "integrated_gradients":
        m1, m2, m3 = st.columns(3)
        m1.metric("Sum of the attributions", f"{float(sal.attributions.sum()):+.3f}")
        m2.metric("Score of your digit − score of black", f"{sal.logit - sal.baseline_logit:+.3f}")
        m3.metric("Completeness error", f"{abs(sal.completeness_gap):.4f}",
                  help=f"|sum of the attributions − score difference|, after {sal.steps:,} steps.")


def why_moving_matters(model: nn.Module) -> str:
    """Why a moved digit may get another answer, for this model's layers."""
    if not conv_layer_names(model):
        return ("This network has no convolutions: its first layer has one weight for every pixel position, so a "
                "digit moved by even one pixel meets other weights, and the answer can change quickly.")
    pools = [layer for layer in model.children() if isinstance(layer, (nn.MaxPool2d, nn.AvgPool2d))]
    first_fc = next((name for name, layer in model.named_children() if isinstance(layer, nn.Linear)), "the next layer")
    text = "The convolutions slide the same filters over every position, so a moved stroke gives the same values, moved"
    if pools:
        k = pools[0].kernel_size if isinstance(pools[0].kernel_size, int) else pools[0].kernel_size[0]
        text += (f"; max pooling keeps the largest value of each {k}×{k} block, so a move inside a block can change "
                 "nothing" if isinstance(pools[0], nn.MaxPool2d) else
                 f"; average pooling averages each {k}×{k} block, which softens a one-pixel move without undoing it")
    return (text + f". But {first_fc}, the first fully connected layer, has its own weight for every position of the "
            "maps it reads, so far enough from where the training digits sat, the answer can change.")


def what_if_section(loaded: LoadedModel, digit: Digit, predicted: int) -> None:
    """The digit moved and thickened: probabilities of the prediction."""
    st.header("What if the drawing moved, or were thicker")
    s = cached_shifts(loaded.identity, digit.key, loaded.model, digit.pixels)
    st.write(f"The same digit moved up to {max(SHIFTS)} pixels in each direction (what leaves the frame is lost, "
             "blank comes in), and drawn with thicker strokes. " + why_moving_matters(loaded.model))
    left, middle, right = st.columns([4, 3, 2], gap="medium")
    with left:
        st.markdown(f"**Probability of {predicted} as the digit moves**")
        st.plotly_chart(xf.shift_curves(s.shifts, s.horizontal[:, predicted], s.vertical[:, predicted], predicted),
                        key="why_shift_curves", config=PLOT_CONFIG)
    with middle:
        st.markdown(f"**Probability of {predicted}, moved by (dx, dy)**")
        st.plotly_chart(xf.shift_grid(s.shifts, s.grid[:, :, predicted], predicted),
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
    try_it(loaded.model, digit)


def try_it(model: nn.Module, digit: Digit) -> None:
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
        st.markdown(f"**Moved ({dx:+d}, {dy:+d}), {t} px thicker**")
        st.plotly_chart(figures.image_heatmap(moved, height=300), key="why_moved", config=PLOT_CONFIG)
    with right:
        st.plotly_chart(figures.probability_bars(probs), key="why_moved_probs", config=PLOT_CONFIG)


def worst_accuracy(curve: ShiftCurve, k: int) -> float:
    """The lowest accuracy among the moves by k px (left, right, up, down)."""
    at = [i for i, s in enumerate(curve.shifts) if abs(s) == k]
    return min([curve.horizontal[i] for i in at] + [curve.vertical[i] for i in at])


def test_digits_section(loaded: LoadedModel, model_id: str) -> None:
    """Accuracy on moved test digits, as measured once for this model (stored beside a shipped model)."""
    st.header("Measured on test digits")
    curve = measurements(loaded, model_id).shifts
    left, right = st.columns([3, 2], gap="medium")
    with left:
        floor = accuracy_floor([*curve.horizontal, *curve.vertical])
        st.markdown(f"**Accuracy on {curve.n_images:,} MNIST test digits, all moved** (the axis starts at {floor:.0%})")
        st.plotly_chart(xf.accuracy_curve(curve.shifts, curve.horizontal, curve.vertical),
                        key="why_accuracy", config=PLOT_CONFIG)
    with right:
        far = max(abs(s) for s in curve.shifts)
        st.metric("Accuracy, digits where they were", f"{worst_accuracy(curve, 0):.1%}")
        if far >= 1:
            st.metric("Moved 1 px (worst direction)", f"{worst_accuracy(curve, 1):.1%}")
        if far > 1:
            st.metric(f"Moved {far} px (worst direction)", f"{worst_accuracy(curve, far):.1%}")
        if conv_layer_names(loaded.model):
            st.caption("A CNN finds a pattern wherever it appears, in the sense that its convolutions slide the same "
                       "filters everywhere; whether the whole network still answers correctly after a shift is what "
                       "this curve measures.")
        else:
            st.caption("A network without convolutions has a weight for each pixel position: this curve shows what "
                       "that costs when the digits move.")


# --- the page ---------------------------------------------------------------------------------------------

st.title("Why this digit?")
digit = digit_or_sample_picker()
loaded = get_model()
trace = get_trace(digit)
st.metric("Prediction", str(trace.prediction), f"softmax {trace.confidence:.1%}", delta_color="off",
          delta_arrow="off")
saliency_section(loaded, digit, trace.prediction)
what_if_section(loaded, digit, trace.prediction)
test_digits_section(loaded, selected_model_id())
