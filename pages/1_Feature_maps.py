"""Feature maps: follow the current digit through every layer of the network, top to bottom."""

from __future__ import annotations

from functools import partial
from typing import Callable

import plotly.graph_objects as go
import streamlit as st
import torch
from torch import nn

from cnn_core.architecture import LayerRow, layer_table, nonlinear_layers, total_parameters
from cnn_core.data import MNIST_MEAN, MNIST_STD
from cnn_core.introspect import Trace, dropout_mask
from ui import explain_figures as xf
from ui import figures
from ui.figures import PLOT_CONFIG
from ui.state import digit_or_sample_picker, get_model, get_trace
from ui.text import plain, shape_text

st.set_page_config(page_title="Feature maps · CNN Explorer", page_icon="🔢", layout="wide")

GRID_COLS = 8  # tiles per row in the feature-map grids
BIG = 300  # height of a single map shown large, in pixels
MAX_SEED = 2**31 - 1
# What each kind of layer is called in the headers.
KIND_WORDS = {"Conv2d": "convolution", "ReLU": "ReLU", "MaxPool2d": "max pooling", "AvgPool2d": "average pooling",
              "Flatten": "from maps to one vector", "Dropout": "dropout (training only)",
              "Linear": "fully connected"}


@st.cache_resource(max_entries=512, show_spinner=False)
def cached_figure(key: tuple, _build: Callable[[], go.Figure]) -> go.Figure:
    """The figure named by ``key`` (figure, model, digit, layer, channel...), built once and then reused.

    Figures are never modified after they are built, so sharing them across reruns and sessions is safe.
    """
    return _build()


def show(chart_key: str, fig_key: tuple, build: Callable[[], go.Figure]) -> None:
    """Draw the figure cached under ``fig_key`` as the chart ``chart_key``."""
    st.plotly_chart(cached_figure(fig_key, build), key=chart_key, config=PLOT_CONFIG)


def facts(row: LayerRow) -> None:
    """The layer's output shape and parameter count, as the architecture table has them."""
    what = "shape" if row.index == 0 else "output shape"
    st.caption(f"`{row.name}` {what} **{shape_text(row.output_shape, ', ', '()')}** · **{row.parameters:,}** "
               "parameters")


def formula(row: LayerRow) -> None:
    """The output-size formula with this layer's numbers filled in."""
    if row.size is not None:
        st.markdown(f"Output size per side = (input + 2·padding − kernel) / stride + 1: `{row.size.formula()}`")


def pick_from_grid(chart_key: str, channel_key: str, shape: tuple[int, int, int]) -> None:
    """Callback of a clickable grid: make the clicked tile the selected channel."""
    event = st.session_state.get(chart_key)
    channel = figures.channel_from_selection(event["selection"] if event else None, shape, GRID_COLS)
    if channel is not None:
        st.session_state[channel_key] = channel


def next_seed(seed_key: str) -> None:
    """Callback of the resample button: the next seed (wrapping round at the widget's maximum)."""
    st.session_state[seed_key] = (st.session_state[seed_key] + 1) % (MAX_SEED + 1)


# --- the sections, one per kind of layer -------------------------------------------------------------


def input_section(row: LayerRow, tr: Trace, ids: tuple) -> None:
    st.header("0. Input")
    text, image = st.columns([3, 2], gap="medium")
    with text:
        st.write(
            "The network reads a 28×28 greyscale image: your digit, centred and scaled like MNIST. "
            f"Each pixel in [0, 1] is normalised as (pixel − {MNIST_MEAN}) / {MNIST_STD}, so the background "
            f"becomes {(0 - MNIST_MEAN) / MNIST_STD:.2f} and full ink {(1 - MNIST_MEAN) / MNIST_STD:.2f}: "
            "values centred near zero make training easier."
        )
        facts(row)
    with image:
        show("fm_input", ("input",) + ids,
             lambda: figures.image_heatmap(tr.input[0], "Normalised input", height=BIG - 40, showscale=True))


def conv_section(row: LayerRow, layer: nn.Conv2d, tr: Trace, ids: tuple) -> int:
    """Convolution: all maps, the formula, and one channel large beside its filter. Returns that channel."""
    c_in, c_out = layer.in_channels, layer.out_channels
    k = layer.kernel_size[0]
    first = c_in == 1
    st.write(
        f"{row.name} slides {c_out} small filters of {k}×{k} weights over "
        + ("the image" if first else f"all {c_in} maps of the layer before")
        + ". At each position a filter multiplies the pixels under it by its weights and adds them up, "
        "so its map is strongly positive (red) where the input looks like the filter: "
        + ("strokes and edges of one direction." if first else
           "combinations of the simple strokes found earlier, such as corners, curves and line ends.")
        + " The same few weights are reused at every position, which is why a convolution needs so few parameters."
    )
    channel_key, chart_key = f"fm_channel_{row.name}", f"fm_grid_{row.name}"
    maps = tr[row.name]
    grid_col, side_col = st.columns([3, 2], gap="medium")
    with side_col:
        facts(row)
        formula(row)
        weights, bias = layer.weight.shape.numel(), layer.bias.shape.numel() if layer.bias is not None else 0
        st.markdown(f"Parameters: {c_out} filters × ({c_in}×{k}×{k}) weights + {bias} biases = "
                    f"{weights:,} + {bias} = **{weights + bias:,}**")
        channel = st.slider(f"Channel of {row.name}", 0, c_out - 1, key=channel_key,
                            help="Or click a tile of the grid. The ReLU and pooling sections below follow "
                                 "the same channel.")
        st.caption(f"Showing channel **{channel}** of {c_out}: its largest value is "
                   f"{float(maps[channel].max()):.3f}, its smallest {float(maps[channel].min()):.3f}.")
    with grid_col:
        st.plotly_chart(
            cached_figure(("grid",) + ids + (row.name, channel),
                          lambda: figures.feature_map_grid(maps, GRID_COLS, f"All {c_out} maps of {row.name}",
                                                           colorscale=figures.DIVERGING, zmid=0,
                                                           selected=channel, clickable=True)),
            key=chart_key, config=PLOT_CONFIG, on_select=partial(pick_from_grid, chart_key, channel_key,
                                                                  tuple(maps.shape)),
            selection_mode="points",
        )
        st.caption("Blue is negative, red positive. Click a tile to look at that channel closer.")
    big_col, kernel_col = st.columns([1, 1], gap="medium")
    with big_col:
        show(f"fm_map_{row.name}", ("map",) + ids + (row.name, channel),
             lambda: figures.image_heatmap(maps[channel], f"{row.name}, channel {channel}",
                                           colorscale=figures.DIVERGING, zmid=0, height=BIG, showscale=True))
    with kernel_col:
        kernel = layer.weight[channel].detach()
        b = float(layer.bias[channel].detach()) if layer.bias is not None else 0.0
        if first:
            show(f"fm_kernel_{row.name}", ("kernel",) + ids[:1] + (row.name, channel),
                 lambda: figures.kernel_heatmap(kernel[0], f"Filter {channel}: its {k}×{k} weights", height=BIG))
            st.caption(f"Red weights add the pixel under them, blue ones subtract it; then the bias {b:+.3f} "
                       "is added.")
        else:
            show(f"fm_kernel_{row.name}", ("kernel",) + ids[:1] + (row.name, channel),
                 lambda: xf.tile_grid(kernel, GRID_COLS, cell_px=12 if k < 4 else 8).update_layout(
                     title=f"Filter {channel}: {c_in} slices of {k}×{k}"))
            st.caption(f"Filter {channel} has one {k}×{k} slice per input map (slice i reads map i of the layer "
                       f"before); the {c_in} results are summed and the bias {b:+.3f} is added.")
    return channel


def without_relus(model: nn.Module) -> str:
    """What the model would be without its ReLUs, from its own layers."""
    others = [name for name in nonlinear_layers(model) if not isinstance(dict(model.named_children())[name], nn.ReLU)]
    if not others:
        return ("Every other layer of this network is linear (convolutions, pooling by averages, flatten, fully "
                "connected): without the ReLUs the whole network would collapse into a single linear function of "
                "the pixels.")
    return (f"Without the ReLUs, only {', '.join(others)} would still bend the signal (max pooling keeps the largest "
            "of each window, which is not linear); everything between two such bends would collapse into one "
            "linear map.")


def relu_maps_section(model: nn.Module, row: LayerRow, before_name: str, tr: Trace, channel: int,
                      ids: tuple) -> None:
    """ReLU on feature maps: the chosen channel before and after, the zeroed negatives marked."""
    st.write(
        f"{row.name} replaces every negative value by zero and keeps the positive ones: a map now says only "
        f"where its pattern is present, not where it is absent. {without_relus(model)}"
    )
    facts(row)
    before, after = tr[before_name], tr[row.name]
    negatives = int((before[channel] < 0).sum())
    all_negatives = int((before < 0).sum())
    show(f"fm_relu_{row.name}", ("relu",) + ids + (row.name, channel),
         lambda: figures.panel_row([
             figures.image_heatmap(before[channel], f"Before ({before_name}, channel {channel})",
                                   colorscale=figures.DIVERGING, zmid=0, showscale=True),
             figures.zeroed_mask(before[channel], "Zeroed by ReLU (red)"),
             figures.image_heatmap(after[channel], f"After ({row.name}, channel {channel})", colorscale="Viridis",
                                   showscale=True),
         ], height=BIG - 20))
    st.caption(f"Channel {channel}: ReLU zeroed **{negatives}** of {before[channel].numel()} values "
               f"({negatives / before[channel].numel():.0%}); over all {before.shape[0]} maps "
               f"{all_negatives:,} of {before.numel():,} ({all_negatives / before.numel():.0%}).")


def pool_section(row: LayerRow, layer: nn.Module, before_name: str, tr: Trace, channel: int, ids: tuple) -> None:
    """Pooling: the chosen channel before and after, with the kept cells marked."""
    k = row.size.kernel if row.size is not None else 2
    how = "largest" if isinstance(layer, nn.MaxPool2d) else "average"
    st.write(
        f"{row.name} cuts every map into {k}×{k} blocks and keeps the {how} value of each: the maps get "
        f"{k * k} times smaller, the strongest responses survive, and a digit drawn a pixel to the side "
        "gives nearly the same result."
    )
    facts(row)
    formula(row)
    before, after = tr[before_name][channel], tr[row.name][channel]
    lo, hi = float(before.min()), float(before.max())  # one colour range: the kept values read the same
    title = f"Before: {before_name}, channel {channel} ({before.shape[0]}×{before.shape[1]})"
    max_pool = isinstance(layer, nn.MaxPool2d)

    def build() -> go.Figure:
        before_panel = (figures.pool_winners(before, k, title, zmin=lo, zmax=hi) if max_pool else
                        figures.image_heatmap(before, title, colorscale="Viridis", showscale=True, zmin=lo, zmax=hi))
        after_panel = figures.image_heatmap(after, f"After: {row.name}, channel {channel} "
                                            f"({after.shape[0]}×{after.shape[1]})", colorscale="Viridis",
                                            showscale=True, zmin=lo, zmax=hi)
        return figures.panel_row([before_panel, after_panel], height=BIG)

    show(f"fm_pool_{row.name}", ("pool",) + ids + (row.name, channel), build)
    if max_pool:
        st.caption(f"The dots mark the cell kept from each {k}×{k} block (none where a block is flat).")


def flatten_section(row: LayerRow, before: LayerRow, tr: Trace, channel: int | None, ids: tuple) -> None:
    """Flatten: the maps laid end to end as one vector."""
    c, h, w = before.output_shape
    n = c * h * w
    st.write(
        f"{row.name} lays the {c} maps of {h}×{w} end to end as one list of numbers, "
        f"{c} × {h} × {w} = **{n:,}**, because the fully connected layers that follow take a plain vector. "
        "Nothing is computed; the values stay the same, only their arrangement changes."
    )
    facts(row)
    span = (channel * h * w, (channel + 1) * h * w) if channel is not None else None
    show(f"fm_flatten_{row.name}", ("flatten",) + ids + (row.name, channel),
         lambda: figures.vector_strip(tr[row.name], f"The {n:,} values of {row.name}", height=130,
                                      highlight=span))
    if span is not None:
        st.caption(f"Outlined: units {span[0]:,} to {span[1] - 1:,}, the {h * w} values of channel {channel} "
                   f"of {before.name}, row after row.")


def dropout_section(row: LayerRow, layer: nn.Dropout, before_name: str, next_name: str, tr: Trace,
                    ids: tuple) -> None:
    """Dropout: what a random mask does during training, and that it does nothing here."""
    p = float(layer.p)
    x = tr[before_name]
    n = x.numel()
    st.write(
        f"During training, {row.name} switches off a random {p:.0%} of the {n:,} values at every step and "
        f"scales the rest by 1/(1 − {p:g}) = {1 / (1 - p):.2f}, so the network cannot lean on any single unit. "
        "When the network is used, as here, it does nothing: every value passes unchanged."
    )
    facts(row)
    seed_key = "fm_dropout_seed"
    st.session_state.setdefault(seed_key, 0)
    controls, stats = st.columns([1, 2])
    with controls:
        st.number_input("Random seed of the training-time mask", min_value=0, max_value=MAX_SEED, step=1,
                        key=seed_key)
        st.button("Resample the mask", key="fm_dropout_resample",
                  on_click=next_seed, args=(seed_key,))
    seed = int(st.session_state[seed_key])
    mask = dropout_mask(n, p, seed)
    dropped = mask == 0
    lost = int((dropped & (x != 0)).sum())
    with stats:
        a, b = st.columns(2)
        a.metric("Dropped by this mask", f"{int(dropped.sum()):,} of {n:,}", f"{int(dropped.sum()) / n:.1%}",
                 delta_color="off", delta_arrow="off")
        b.metric("Non-zero values lost", f"{lost:,}", f"of {int((x != 0).sum()):,} non-zero",
                 delta_color="off", delta_arrow="off")
    trained = x * mask
    # One colour range for both vectors, whatever the seed: kept values grow by at most 1/(1-p).
    lo, hi = min(float(x.min()) / (1 - p), 0.0), max(float(x.max()) / (1 - p), 1e-6)
    show(f"fm_dropout_{row.name}", ("dropout",) + ids + (row.name, seed),
         lambda: figures.strip_stack([
             figures.mask_strip(dropped, f"Training: the mask (seed {seed}), dropped units in red"),
             figures.vector_strip(trained, f"Training: what {next_name} would receive (kept values × "
                                  f"{1 / (1 - p):.2f})", zmin=lo, zmax=hi),
             figures.vector_strip(tr[row.name], f"Inference: what {next_name} receives here", zmin=lo, zmax=hi),
         ]))
    if torch.equal(tr[row.name], x):
        st.caption(f"At inference the output of {row.name} equals the output of {before_name} exactly.")
    else:
        st.warning(f"The output of {row.name} differs from its input: the model is not in inference mode.")


def linear_section(model: nn.Module, row: LayerRow, layer: nn.Linear, before_name: str, next_row: LayerRow | None,
                   tr: Trace, ids: tuple) -> None:
    """A hidden fully connected layer: its activations as bars."""
    n_in, n_out = layer.in_features, layer.out_features
    values = tr[row.name]
    total = total_parameters(layer_table(model))
    held = row.parameters / total
    where = ("most of the network's weights are here" if held > 0.5 else "it holds a sizeable part of the weights")
    st.write(
        f"{row.name} connects every one of the {n_in:,} values to each of its {n_out} units: each unit is a "
        "weighted sum of all of them plus a bias, so it can combine evidence from anywhere in the image. "
        f"That takes {row.parameters:,} of the network's {total:,} parameters ({held:.1%}): {where}."
        + ("" if next_row is not None and next_row.kind == "ReLU" else
           f" This network puts no ReLU after {row.name}, so negative values go on to the next layer as they are, "
           f"and {row.name} and the layer after it compose into a single linear map: the **Architecture** page "
           "works out what that means.")
    )
    facts(row)
    st.markdown(f"Parameters: {n_in:,} × {n_out} weights + {n_out} biases = **{row.parameters:,}**")
    strongest = int(values.argmax())
    show(f"fm_bars_{row.name}", ("bars",) + ids + (row.name,),
         lambda: figures.activation_bars(values, f"The {n_out} units of {row.name}", highlight=strongest))
    st.caption(f"{int((values > 0).sum())} units are positive and {int((values < 0).sum())} negative; "
               f"the strongest is unit {strongest} ({float(values[strongest]):.2f}).")


def output_section(row: LayerRow, layer: nn.Linear, tr: Trace, ids: tuple) -> None:
    """The last layer: ten scores, softmax, the prediction."""
    st.write(
        f"{row.name} turns the {layer.in_features} values into {layer.out_features} scores (logits), one per "
        "digit. Softmax then makes them positive and scales them to add up to 1: these are the network's "
        "probabilities, and the largest one is its answer."
    )
    facts(row)
    st.markdown(f"Parameters: {layer.in_features} × {layer.out_features} weights + {layer.out_features} biases "
                f"= **{row.parameters:,}**")
    logits_col, probs_col, answer_col = st.columns([2, 2, 1], gap="medium")
    with logits_col:
        show(f"fm_logits_{row.name}", ("logits",) + ids + (row.name,),
             lambda: figures.activation_bars(tr.logits, "Logits (scores before softmax)", highlight=tr.prediction,
                                             x_title="digit", y_title="score"))
    with probs_col:
        show(f"fm_probs_{row.name}", ("probs",) + ids + (row.name,),
             lambda: figures.probability_bars(tr.probabilities))
    with answer_col:
        st.metric("Prediction", str(tr.prediction), f"softmax {tr.confidence:.1%}", delta_color="off",
                  delta_arrow="off")


def other_section(row: LayerRow, tr: Trace, ids: tuple) -> None:
    """Any other layer (in variants of the network): its output as a vector."""
    st.write(f"{row.name} is a {row.kind} layer ({row.details or 'no settings'}).")
    facts(row)
    show(f"fm_other_{row.name}", ("other",) + ids + (row.name,),
         lambda: figures.vector_strip(tr[row.name].flatten(), height=110))


# --- the page ------------------------------------------------------------------------------------------

st.title("Feature maps")
digit = digit_or_sample_picker()
loaded = get_model()
tr = get_trace(digit)
rows = layer_table(loaded.model)
modules = dict(loaded.model.named_children())
ids = (loaded.identity, digit.key)  # what every figure depends on: the model (architecture and weights), the digit

st.write(
    f"Follow **{plain(digit.source)}** through the network, one layer at a time, in the order the network "
    f"computes them. It reads this digit as a **{tr.prediction}** (softmax {tr.confidence:.1%}). "
    "Pick a channel in a convolution section, or click its tile, and the sections after it follow that channel."
)

input_section(rows[0], tr, ids)
channel: int | None = None  # the channel picked in the latest convolution, followed by its ReLU and pooling
for i, row in enumerate(rows[1:], start=1):
    previous, layer = rows[i - 1], modules[row.name]
    following = rows[i + 1] if i + 1 < len(rows) else None
    st.header(f"{row.index}. {row.name}: {KIND_WORDS.get(row.kind, row.kind)}")
    if isinstance(layer, nn.Conv2d):
        channel = conv_section(row, layer, tr, ids)
    elif isinstance(layer, nn.ReLU) and len(row.output_shape) == 3 and channel is not None:
        relu_maps_section(loaded.model, row, previous.name, tr, channel, ids)
    elif isinstance(layer, (nn.MaxPool2d, nn.AvgPool2d)) and channel is not None:
        pool_section(row, layer, previous.name, tr, channel, ids)
    elif isinstance(layer, nn.Flatten) and len(previous.output_shape) == 3:
        flatten_section(row, previous, tr, channel, ids)
    elif isinstance(layer, nn.Dropout):
        dropout_section(row, layer, previous.name, following.name if following else "the next layer", tr, ids)
    elif isinstance(layer, nn.Linear) and following is None:
        output_section(row, layer, tr, ids)
    elif isinstance(layer, nn.Linear):
        linear_section(loaded.model, row, layer, previous.name, following, tr, ids)
    else:
        other_section(row, tr, ids)
