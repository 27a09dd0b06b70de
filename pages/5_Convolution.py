"""Convolution, step by step: one value of a feature map worked out from the pixels and the weights."""

from __future__ import annotations

import streamlit as st
from torch import nn

from cnn_core.architecture import layer_table
from cnn_core.convolution import (
    ConvGeometry,
    ConvStep,
    conv_layer,
    conv_step,
    filled_map,
    geometry,
    index_of,
    layer_input,
    pad_input,
    position_at,
    top_channels,
)
from cnn_core.data import MNIST_MEAN, MNIST_STD
from cnn_core.introspect import Trace
from ui import explain_figures as xf
from ui.state import conv_layers_or_stop, digit_or_sample_picker, get_model, get_trace
from ui.text import plain

st.set_page_config(page_title="Convolution · CNN Explorer", page_icon="🔢", layout="wide")

PLOT_CONFIG = {"displayModeBar": False}
PLAY_SECONDS = 0.6  # one step of the animation
TOP_SHOWN = 3  # input channels of a deep layer worked out in full
# Session keys: the position is kept in INDEX; the slider and the row/column inputs mirror it.
LAYER, FILTER, INDEX, SLIDER, ROW, COL = "cv_layer", "cv_filter", "cv_index", "cv_slider", "cv_row", "cv_col"
PLAY, SPEED, STOP, IN_CHANNEL, MAP = "cv_play", "cv_speed", "cv_stop_play", "cv_in_channel", "cv_output_map"
SPEEDS = {"1 position": 1, "4 positions": 4, "1 row": 0}  # 0: a whole row per step


def geometry_of(model: nn.Module, layer_name: str) -> ConvGeometry:
    """The window geometry of ``layer_name`` on its input (whose size the layer table gives)."""
    rows = layer_table(model)
    i = [r.name for r in rows].index(layer_name)
    in_shape = rows[i - 1].output_shape
    return geometry(conv_layer(model, layer_name), (in_shape[-2], in_shape[-1]))


# --- callbacks: they run before the script, so they may set any widget's value. The model comes in their
# arguments (the one the widgets were drawn for), never from a module global of an earlier run. -------------


def on_layer_change(model: nn.Module) -> None:
    """A new layer: keep the filter and the position inside its ranges."""
    name = st.session_state[LAYER]
    st.session_state[FILTER] = min(st.session_state.get(FILTER, 0), conv_layer(model, name).out_channels - 1)
    st.session_state[INDEX] = min(st.session_state.get(INDEX, 0), geometry_of(model, name).positions - 1)
    st.session_state.pop(IN_CHANNEL, None)


def go_to(model: nn.Module, index: int) -> None:
    """Move the window to raster position ``index`` (kept inside the layer's positions)."""
    st.session_state[INDEX] = max(0, min(index, geometry_of(model, st.session_state[LAYER]).positions - 1))


def on_slider(model: nn.Module) -> None:
    """The position slider moved."""
    go_to(model, st.session_state[SLIDER])


def on_row_col(model: nn.Module) -> None:
    """The output row or column box changed."""
    g = geometry_of(model, st.session_state[LAYER])
    go_to(model, index_of(g, st.session_state[ROW], st.session_state[COL]))


def step(model: nn.Module, by: int) -> None:
    """Back, Step and Next row: move the window ``by`` positions."""
    go_to(model, st.session_state[INDEX] + by)


def on_map_click(model: nn.Module) -> None:
    """A click on the output map moves the window there."""
    event = st.session_state.get(MAP)
    cell = xf.cell_from_selection(event["selection"] if event else None)
    if cell is not None:
        go_to(model, index_of(geometry_of(model, st.session_state[LAYER]), *cell))


# --- the parts of the step view --------------------------------------------------------------------------


def position_controls(model: nn.Module, g: ConvGeometry, index: int) -> None:
    """The slider over all positions, row and column inputs, and single-step buttons."""
    row, col = position_at(g, index)
    st.session_state[SLIDER], st.session_state[ROW], st.session_state[COL] = index, row, col
    st.slider(f"Window position (0 to {g.positions - 1}: left to right, then top to bottom)", 0, g.positions - 1,
              key=SLIDER, on_change=on_slider, args=(model,), format="%d")
    a, b, c, d, e = st.columns([1, 1, 1, 1, 1.2], vertical_alignment="bottom")
    a.number_input("Output row", 0, g.out_size[0] - 1, key=ROW, on_change=on_row_col, args=(model,))
    b.number_input("Output column", 0, g.out_size[1] - 1, key=COL, on_change=on_row_col, args=(model,))
    c.button("◀ Back", key="cv_back", on_click=step, args=(model, -1), width="stretch")
    d.button("Step ▶", key="cv_next", on_click=step, args=(model, 1), width="stretch")
    e.button("Next row ↓", key="cv_next_row", on_click=step, args=(model, g.out_size[1]), width="stretch")


def input_channel_to_show(s: ConvStep) -> int:
    """For a deep layer, which input map the window is drawn on (by default the one this filter weights most)."""
    c_in = s.kernel.shape[0]
    if c_in == 1:
        return 0
    if IN_CHANNEL not in st.session_state:
        st.session_state[IN_CHANNEL] = int(s.kernel.flatten(start_dim=1).norm(dim=1).argmax())
    column, _ = st.columns([1, 3])
    return column.number_input(f"Input map drawn below (0 to {c_in - 1})", 0, c_in - 1, key=IN_CHANNEL,
                               help="The filter reads all input maps at once; this picks which one is drawn. "
                                    "It starts on the map this filter weighs most.")


def padding_note(g: ConvGeometry, single_channel: bool) -> str:
    """What the border around the input is (said before the picture that shows it)."""
    if not any(g.padding):
        return "This layer has no padding: the window stays inside the input, so the map is smaller than the input."
    return ("Around the input, the paper-coloured border is the padding: the convolution reads zeros there, so "
            "that the window can be centred on the edge pixels too"
            + (" and the map keeps the input's size" if g.out_size == g.in_size else "")
            + (f". Zero is not blank: in normalised units the blank background is {-MNIST_MEAN / MNIST_STD:.2f}."
               if single_channel else "."))


def window_figures(model: nn.Module, tr: Trace, g: ConvGeometry, s: ConvStep, channel: int, out_map) -> None:
    """Left: the padded input with the window. Middle: the output map filled up to here."""
    x = layer_input(model, tr, s.layer)
    single = x.shape[0] == 1
    st.caption(padding_note(g, single) + " Click a cell of the output map to move the window there.")
    before = previous_layer(model, s.layer)
    left, middle = st.columns(2, gap="medium")
    with left:
        st.markdown("**The window on the input**" if single else f"**The window on input map {channel} "
                    f"({before[0]})**")
        colorscale = "gray" if single else xf.map_colours(before[1])[0]
        st.plotly_chart(xf.sliding_window(pad_input(x, g.padding)[channel], g.padding, s.top, s.left, g.span,
                                          colorscale=colorscale),
                        key="cv_window", config=PLOT_CONFIG)
    with middle:
        lim = float(out_map.abs().max()) or 1.0  # fixed range: colours do not change as the map fills up
        index = index_of(g, s.row, s.col)
        st.markdown(f"**{s.layer}, filter {s.filter}: filled up to ({s.row}, {s.col})**")
        st.plotly_chart(xf.clickable_heatmap(filled_map(out_map, g, index), zmin=-lim, zmax=lim, zmid=None,
                                             marked=(s.row, s.col)),
                        key=MAP, config=PLOT_CONFIG, on_select=lambda: on_map_click(model),
                        selection_mode="points")


def previous_layer(model: nn.Module, layer_name: str) -> tuple[str, str]:
    """(name, kind) of the layer whose output ``layer_name`` reads: ("input", "Input") for the first."""
    children = list(model.named_children())
    i = [n for n, _ in children].index(layer_name)
    return (children[i - 1][0], type(children[i - 1][1]).__name__) if i else ("input", "Input")


def value_range(model: nn.Module, tr: Trace, layer_name: str) -> tuple[float, float]:
    """The range of the whole input of ``layer_name``: the patches are coloured like the big picture."""
    x = layer_input(model, tr, layer_name)
    return float(x.min()), float(x.max())


def number_grids(key: str, titles: tuple[str, str, str], patch, kernel, products, in_padding, colorscale: str,
                 zrange: tuple[float, float], height: int = 230) -> None:
    """Patch × kernel = products, three number grids side by side, each titled above (titles wrap on a phone)."""
    a, b, c = st.columns(3, gap="small")
    for column, title, values, kwargs, part in (
            (a, titles[0], patch, dict(colorscale=colorscale, in_padding=in_padding, zrange=zrange), "patch"),
            (b, titles[1], kernel, {}, "kernel"),
            (c, titles[2], products, dict(in_padding=in_padding), "products")):
        with column:
            st.markdown(f"**{title}**")
            st.plotly_chart(xf.number_grid(values, height=height, **kwargs), key=f"cv_{part}_{key}",
                            config=PLOT_CONFIG)


def arithmetic_single(model: nn.Module, tr: Trace, s: ConvStep) -> None:
    """A one-channel layer: patch × kernel = products, cell by cell."""
    number_grids("0", ("Input under the window", f"× weights of filter {s.filter}", "= products, cell by cell"),
                 s.patch[0], s.kernel[0], s.products[0], s.in_padding, "gray", value_range(model, tr, s.layer))


def arithmetic_deep(model: nn.Module, tr: Trace, s: ConvStep) -> None:
    """A many-channel layer: what each input map adds, then the strongest few in full."""
    c_in = s.kernel.shape[0]
    products = s.kernel[0].numel()
    strongest = top_channels(s, TOP_SHOWN)
    st.markdown(f"**What each of the {c_in} input maps adds to the sum**")
    st.plotly_chart(xf.channel_contributions(s.per_channel, strongest, products=products),
                    key="cv_contributions", config=PLOT_CONFIG)
    st.caption(f"Each bar is the sum of the {products} products of one input map. "
               f"The {TOP_SHOWN} outlined ones move the total most; here they are in full:")
    colorscale = xf.map_colours(previous_layer(model, s.layer)[1])[0]
    for ch in strongest:
        number_grids(str(ch), (f"Map {ch} under the window", f"× slice {ch} of filter {s.filter}",
                               f"= products, sum {float(s.per_channel[ch]):+.4f}"),
                     s.patch[ch], s.kernel[ch], s.products[ch], s.in_padding, colorscale,
                     value_range(model, tr, s.layer), height=200)


def the_sum(s: ConvStep, value: float) -> None:
    """Sum of products + bias, beside the value the layer itself computed."""
    terms = "the 9 products" if s.kernel.numel() == 9 else f"all {s.kernel.numel()} products"
    st.markdown(f"Sum of {terms}: **{s.weighted_sum:+.4f}** · bias of filter {s.filter}: **{s.bias:+.4f}**")
    a, b = st.columns(2)
    a.metric("Sum of products + bias", f"{s.total:.4f}")
    b.metric(f"{s.layer}[{s.filter}, {s.row}, {s.col}] in the feature map", f"{value:.4f}")
    padded = int(s.in_padding.sum())
    if padded:
        st.caption(f"{padded} of the {s.in_padding.numel()} window cells lie in the zero padding: their products "
                   "are 0, so near the border only part of the filter counts.")


# --- the page ---------------------------------------------------------------------------------------------

st.title("Convolution, step by step")
digit = digit_or_sample_picker()
loaded = get_model()
model = loaded.model
tr = get_trace(digit)
names = conv_layers_or_stop(model, "there is no sliding window to show")

st.write(
    "Every number in a feature map is one small sum: lay the filter's weights over a window of the input, "
    "multiply each weight by the value under it, add everything up, add the bias. Then the window moves one "
    f"step and does it again. Follow it here on **{plain(digit.source)}**."
)

if st.session_state.get(LAYER) not in names:
    st.session_state[LAYER] = names[0]
controls = st.columns([1, 2, 1, 1], vertical_alignment="bottom")
layer_name = controls[0].selectbox("Layer", names, key=LAYER, on_change=on_layer_change, args=(model,))
layer = conv_layer(model, layer_name)
st.session_state.setdefault(FILTER, 0)
filter_index = controls[1].slider(f"Filter (0 to {layer.out_channels - 1})", 0, layer.out_channels - 1,
                                  key=FILTER, on_change=lambda: st.session_state.pop(IN_CHANNEL, None))
if st.session_state.pop(STOP, False):
    st.session_state[PLAY] = False
playing = controls[2].toggle("▶ Play", key=PLAY, help="Step the window along by itself.")
controls[3].selectbox("Speed", list(SPEEDS), key=SPEED, disabled=not playing)
g = geometry_of(model, layer_name)
st.caption(f"{layer_name}: {layer.in_channels} input map(s) of {g.in_size[0]}×{g.in_size[1]}, kernel "
           f"{g.kernel[0]}×{g.kernel[1]}, stride {g.stride[0]}, padding {g.padding[0]} → "
           f"{layer.out_channels} maps of {g.out_size[0]}×{g.out_size[1]}.")


@st.fragment(run_every=PLAY_SECONDS if playing else None)
def step_view(model: nn.Module, tr: Trace, layer_name: str, filter_index: int) -> None:
    """The window, the output map and the sum; reruns on its own (and, while playing, on a timer) with the
    arguments of the last full run."""
    g = geometry_of(model, layer_name)
    index = min(st.session_state.get(INDEX, 0), g.positions - 1)
    if st.session_state.get(PLAY):
        by = SPEEDS[st.session_state.get(SPEED, "1 position")] or g.out_size[1]
        if index >= g.positions - 1:
            st.session_state[STOP] = True  # the end: switch the toggle off with a full rerun
            st.rerun()
        index = min(index + by, g.positions - 1)
    st.session_state[INDEX] = index
    position_controls(model, g, index)
    row, col = position_at(g, index)
    s = conv_step(model, tr, layer_name, filter_index, row, col)
    out_map = tr[layer_name][filter_index]
    channel = input_channel_to_show(s)
    window_figures(model, tr, g, s, channel, out_map)
    st.subheader(f"Output ({row}, {col}) of filter {filter_index}, worked out")
    if s.kernel.shape[0] == 1:
        arithmetic_single(model, tr, s)
    else:
        arithmetic_deep(model, tr, s)
    the_sum(s, float(out_map[row, col]))


step_view(model, tr, layer_name, filter_index)
