"""ANN vs CNN: how many parameters a fully connected network needs next to this CNN, counted, never typed in."""

from __future__ import annotations

import re

import pandas as pd
import streamlit as st
from torch import nn

from cnn_core.architecture import layer_table
from cnn_core.checkpoint import LoadedModel
from cnn_core.measure import Measurements
from cnn_core.model import MLPConfig, count_parameters
from cnn_core.params import cnn_param_count_for_input, mlp_layers, mlp_param_count, share, widths_for_share
from ui.charts import param_bars, shift_comparison
from ui.state import (
    SHIPPED_ID,
    SHIPPED_MLP_ID,
    get_model_by_id,
    is_cnn,
    measurements,
    model_label_md,
    model_picker,
    selected_model_id,
    shipped_model_paths,
)

st.set_page_config(page_title="ANN vs CNN · CNN Explorer", page_icon="🔢", layout="wide")

# Input shapes as height × width × channels, the way the comparison is usually told.
MNIST = (28, 28, 1)
COLOUR = (64, 64, 3)
INPUTS = {MNIST: "MNIST digit", COLOUR: "colour photo"}
QUOTED_SHARE = 0.07  # the share of the MLP's parameters the article says the CNN needs
MAX_HIDDEN_LAYERS = 3
MAX_WIDTH = 100_000  # enough for any sensible comparison; far more would only show absurd numbers


def parse_widths(text: str) -> tuple[int, ...]:
    """Hidden-layer widths from text like "512, 256"; ValueError with a message a reader can act on."""
    parts = [p for p in re.split(r"[,;\s]+", text.strip()) if p]
    if not parts:
        raise ValueError("Enter at least one hidden-layer width, e.g. 128 or 512, 256.")
    if len(parts) > MAX_HIDDEN_LAYERS:
        raise ValueError(f"Enter at most {MAX_HIDDEN_LAYERS} hidden-layer widths (you entered {len(parts)}).")
    widths = []
    for p in parts:
        p = p.replace("_", "")
        if p.startswith("-") and p[1:].isdigit():
            raise ValueError(f"'{p[:12]}' is negative: a layer has at least 1 unit.")
        if not p.isdigit():
            raise ValueError(f"'{p[:12]}' is not a whole number: enter widths like 512, 256.")
        if len(p.lstrip("0")) > len(str(MAX_WIDTH)):  # before int(): Python refuses 4,300+ digit strings
            raise ValueError(f"Each width must be between 1 and {MAX_WIDTH:,} ({p[:12]}... is far more).")
        w = int(p)
        if not 1 <= w <= MAX_WIDTH:
            raise ValueError(f"Each width must be between 1 and {MAX_WIDTH:,} (got {w:,}).")
        widths.append(w)
    return tuple(widths)


def shape_text(hwc: tuple[int, ...]) -> str:
    """A shape as 28×28×1."""
    return "×".join(str(d) for d in hwc)


def compare(model: nn.Module, hidden: tuple[int, ...]) -> None:
    """The CNN against an MLP with these hidden widths, for each input shape: numbers, chart and the MLP's layers."""
    counts = {hwc: (cnn_param_count_for_input(model, hwc), mlp_param_count(hwc, hidden)) for hwc in INPUTS}
    st.caption(f"MLP: input → {' → '.join(f'{w:,}' for w in hidden)} → 10. CNN: the network of this app, with "
               "conv1 taking as many channels as the image has and fc1 as many inputs as the last maps hold.")
    for hwc, (cnn, mlp) in counts.items():
        cols = st.columns(3)
        cols[0].metric(f"CNN, {shape_text(hwc)}", f"{cnn:,}", help=f"Parameters for a {INPUTS[hwc]}.")
        cols[1].metric(f"MLP, {shape_text(hwc)}", f"{mlp:,}", help=f"Parameters for a {INPUTS[hwc]}.")
        cols[2].metric(f"CNN ÷ MLP, {shape_text(hwc)}", f"{share(cnn, mlp):.1%}",
                       help="CNN parameters as a share of the MLP's. Over 100%: the CNN is the bigger network.")

    (cnn_mnist, _), (cnn_colour, _) = counts[MNIST], counts[COLOUR]
    per_neuron = [mlp_layers(hwc, hidden)[0].weights_per_neuron for hwc in (MNIST, COLOUR)]
    kernel = "×".join(str(k) for k in dict(model.named_children())["conv1"].kernel_size)
    chart, words = st.columns([3, 2], gap="large")
    with chart:
        st.plotly_chart(param_bars([f"{shape_text(h)} ({INPUTS[h]})" for h in counts],
                                   [cnn for cnn, _ in counts.values()], [mlp for _, mlp in counts.values()]),
                        key="param_bars", config={"displayModeBar": False})
    with words:
        st.write(
            f"Going from {shape_text(MNIST)} to {shape_text(COLOUR)} multiplies the weights of every neuron in the "
            f"MLP's first layer by {per_neuron[1] / per_neuron[0]:.1f} ({per_neuron[0]:,} → {per_neuron[1]:,}): "
            f"one weight per input value. The CNN's filters stay {kernel} and only conv1's gain channels; its growth "
            f"from {cnn_mnist:,} to {cnn_colour:,} is in fc1, which still reads every value of the last feature "
            "maps. Deeper CNNs pool further, or average each map, to keep that last step small."
        )
    st.markdown("**The MLP, layer by layer**")
    st.dataframe(
        [{"input": shape_text(hwc), "layer": f"fc{i}", "inputs": d.inputs, "outputs": d.outputs,
          "weights": d.weights, "biases": d.outputs, "parameters": d.parameters}
         for hwc in INPUTS for i, d in enumerate(mlp_layers(hwc, hidden), start=1)],
        hide_index=True, width="content", key="mlp_table",
        column_config={k: st.column_config.NumberColumn(format="localized", width=110)
                       for k in ("inputs", "outputs", "weights", "biases", "parameters")},
    )


def trained_comparison(cnn: LoadedModel, mlp: LoadedModel, cnn_m: Measurements, mlp_m: Measurements) -> None:
    """The shipped CNN and MLP, measured side by side on the bundled test digits, plain and shifted."""
    far = max(cnn_m.shifts.shifts)
    zero = cnn_m.shifts.shifts.index(0)
    n_all, n_shift = cnn_m.mnist.n, cnn_m.shifts.n_images
    table = [{"network": f"{name} ({count_parameters(m.model):,} parameters)", "parameters": count_parameters(m.model),
              f"accuracy, all {n_all:,} test digits": r.mnist.accuracy,
              f"accuracy, first {n_shift:,} test digits shifted {far} px right": r.shifts.horizontal[-1]}
             for name, m, r in (("CNN", cnn, cnn_m), ("MLP", mlp, mlp_m))]
    # A Styler shows every accuracy with one decimal (the "percent" column format drops trailing zeros,
    # "97%" next to "97.3%") while the table keeps the plain fractions.
    accuracies = [k for k in table[0] if k.startswith("accuracy")]
    st.dataframe(pd.DataFrame(table).style.format("{:.1%}", subset=accuracies), hide_index=True,
                 key="trained_table", column_config={"parameters": st.column_config.NumberColumn(format="localized")})
    left, right = st.columns([3, 2], gap="large")
    names = {"CNN": table[0]["network"], "MLP": table[1]["network"]}
    with left:
        st.plotly_chart(shift_comparison(cnn_m.shifts.shifts, {names["CNN"]: cnn_m.shifts.horizontal,
                                                               names["MLP"]: mlp_m.shifts.horizontal}),
                        key="shift_comparison", config={"displayModeBar": False})
        st.caption(f"Each point: the first {n_shift:,} test digits, all moved by the same number of pixels.")
    with right:
        st.write(
            f"{training_sentence(cnn, mlp)} On the first {n_shift:,} test digits, unshifted, the CNN gets "
            f"{cnn_m.shifts.horizontal[zero]:.1%} right and the MLP {mlp_m.shifts.horizontal[zero]:.1%}. Moved {far} px "
            f"to the right, the CNN still gets {cnn_m.shifts.horizontal[-1]:.1%} and the MLP "
            f"{mlp_m.shifts.horizontal[-1]:.1%}: the CNN's filters find a stroke wherever it is, while each MLP "
            "weight belongs to one pixel position."
        )


def training_sentence(cnn: LoadedModel, mlp: LoadedModel) -> str:
    """How the two networks were trained, from their cards: what they share, said only when it is true."""
    def facts(card: dict) -> tuple:
        data = card.get("data") if isinstance(card.get("data"), dict) else {}
        return data.get("train_examples"), card.get("epochs")

    (n_cnn, epochs_cnn), (n_mlp, epochs_mlp) = facts(cnn.card), facts(mlp.card)
    if n_cnn == n_mlp and isinstance(n_cnn, int) and epochs_cnn == epochs_mlp and isinstance(epochs_cnn, int):
        return (f"Both networks were trained by the project's training script on the same {n_cnn:,} MNIST digits, "
                f"for {epochs_cnn} epochs each, with the same small random shifts, turns and scalings.")
    return "Their model cards record how each was trained (see the Model page)."


def widths_text(widths: tuple[int, ...]) -> str:
    """Equal hidden widths in words: "one hidden layer of 8,192 units"."""
    count = {1: "one hidden layer", 2: "two hidden layers", 3: "three hidden layers"}.get(len(widths))
    return f"{count or f'{len(widths)} hidden layers'} of {widths[0]:,} units"


selected = model_picker()
# The counts follow the network picked in the sidebar when it is a CNN; an MLP has nothing to compare.
cnn_id = selected_model_id() if is_cnn(selected) else SHIPPED_ID
loaded = selected if is_cnn(selected) else get_model_by_id(SHIPPED_ID)
model = loaded.model
cnn_params = count_parameters(model)
conv1 = dict(model.named_children())["conv1"]
conv1_row = next(r for r in layer_table(model) if r.name == "conv1")
shipped_mlp = get_model_by_id(SHIPPED_MLP_ID) if SHIPPED_MLP_ID in shipped_model_paths() else None
# The MLP the page starts from: the shipped one, as its card builds it (its widths, not a default).
start_hidden = (shipped_mlp.config.hidden if shipped_mlp is not None and isinstance(shipped_mlp.config, MLPConfig)
                else MLPConfig().hidden)

st.title("ANN vs CNN: counting parameters")
if not is_cnn(selected):
    st.info(f"The network picked in the sidebar ({model_label_md(selected_model_id())}) has no convolutions: the "
            f"counts below are those of {model_label_md(SHIPPED_ID)}.")
st.write(
    "A plain fully connected network (a multilayer perceptron, MLP, the classic 'ANN') connects every "
    "neuron of its first layer to every pixel. A convolutional layer instead learns small filters and "
    "slides the same filter over the whole image. This page counts what that difference costs."
)

st.header("What one neuron sees")
first_mnist = mlp_layers(MNIST, start_hidden)[0]
first_colour = mlp_layers(COLOUR, start_hidden)[0]
in_channels, kernel_h, kernel_w = conv1.weight.shape[1:]
filter_weights = conv1.weight[0].numel()
positions = conv1_row.output_shape[1] * conv1_row.output_shape[2]
a, b, c = st.columns(3)
a.metric(f"MLP neuron, {shape_text(MNIST)} input", f"{first_mnist.weights_per_neuron:,} weights",
         help="One weight per input value: " + " × ".join(map(str, MNIST)) + ", plus one bias.")
b.metric(f"MLP neuron, {shape_text(COLOUR)} input", f"{first_colour.weights_per_neuron:,} weights",
         help="One weight per input value: " + " × ".join(map(str, COLOUR)) + ", plus one bias.")
c.metric("conv1 filter", f"{filter_weights:,} weights",
         help="Kernel height × width × input channels, plus one bias.")
st.write(
    f"Each neuron in an MLP's first layer has its own {first_mnist.weights_per_neuron:,} weights on a "
    f"{shape_text(MNIST)} digit, and {first_colour.weights_per_neuron:,} on a {shape_text(COLOUR)} colour image. "
    f"A conv1 filter of this network has {filter_weights} weights ({kernel_h}×{kernel_w}×{in_channels}) and one "
    f"bias, and the same {filter_weights} weights are used at all {positions:,} positions of its "
    f"{conv1_row.output_shape[1]}×{conv1_row.output_shape[2]} output: a stroke detector learned in one corner "
    "works everywhere."
)

st.header("Whole networks")
text = st.text_input(
    f"Hidden-layer widths of the MLP (1 to {MAX_HIDDEN_LAYERS} numbers, separated by commas)",
    value=", ".join(str(w) for w in start_hidden), key="mlp_widths",
    help="For example 512, 256 builds input → 512 → 256 → 10.",
)
try:
    hidden = parse_widths(text)
except ValueError as e:
    st.error(str(e))
else:
    compare(model, hidden)

st.header("Is the CNN really 'about 7%' of the MLP?")
best_one = widths_for_share(QUOTED_SHARE, MNIST, cnn_params, depth=1)[0]
best_two = widths_for_share(QUOTED_SHARE, MNIST, cnn_params, depth=2)[0]
default_hidden = start_hidden
default_mlp = mlp_param_count(MNIST, default_hidden)
default_share = share(cnn_params, default_mlp)
verdict = "so the CNN is the bigger one" if default_share > 1 else "so the CNN is still the smaller one"
st.write(
    f"The article this app follows says a CNN needs about {QUOTED_SHARE:.0%} of an MLP's parameters. That "
    f"depends entirely on how wide the MLP is. For a {shape_text(MNIST)} digit, this CNN ({cnn_params:,} "
    f"parameters) has **{best_one[1]:.1%}** of the parameters of an MLP with {widths_text(best_one[0])} "
    f"({mlp_param_count(MNIST, best_one[0]):,}), and **{best_two[1]:.1%}** of one with {widths_text(best_two[0])} "
    f"({mlp_param_count(MNIST, best_two[0]):,}): those are the power-of-two widths closest to the quoted "
    f"{QUOTED_SHARE:.0%}. With the app's default MLP, {widths_text(default_hidden)}, the MLP has only "
    f"{default_mlp:,} parameters and the CNN has **{default_share:.0%}** of that, {verdict}."
)
st.caption(
    "Fewer parameters is not the CNN's only advantage: an MLP must learn a stroke separately at every position "
    "where it may appear, while the CNN's shared filters respond to it wherever it is."
)

st.header("ANN vs CNN, trained")
if shipped_mlp is None:
    st.info("The shipped MLP's weights (models/mnist_mlp.pt) are not here, so the two networks cannot be compared.")
else:
    article_cnn = get_model_by_id(SHIPPED_ID)
    st.write(
        f"Counting is half the argument. The app also ships an MLP, {widths_text(start_hidden)}, the starting MLP "
        f"above, with {count_parameters(shipped_mlp.model):,} parameters. Here it is measured next to "
        f"{model_label_md(SHIPPED_ID)} on test digits neither network trained on, as they are and shifted sideways."
    )
    trained_comparison(article_cnn, shipped_mlp, measurements(article_cnn, SHIPPED_ID),
                       measurements(shipped_mlp, SHIPPED_MLP_ID))
