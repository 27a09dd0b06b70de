"""Learned filters: the weights each convolution learned, and the test digits that excite each filter most."""

from __future__ import annotations

import streamlit as st
import torch
from torch import nn

from cnn_core.architecture import receptive_field
from cnn_core.convolution import conv_layer
from cnn_core.data import MnistSplit
from cnn_core.introspect import Trace
from cnn_core.measure import FilterRanking
from ui import explain_figures as xf
from ui import figures
from ui.state import (
    Digit,
    conv_layers_or_stop,
    digit_or_sample_picker,
    get_model,
    get_test_sets,
    get_trace,
    measurements,
    selected_model_id,
)
from ui.text import plain

st.set_page_config(page_title="Filters · CNN Explorer", page_icon="🔢", layout="wide")

PLOT_CONFIG = {"displayModeBar": False}
GRID_COLS = 8
GALLERY_PX = 84  # each top digit: 28 px x 3


def pick_tile(chart_key: str, filter_key: str) -> None:
    """A click on a grid of kernels (or on a column of the weight-size map) picks that filter."""
    event = st.session_state.get(chart_key)
    chosen = xf.tile_from_selection(event["selection"] if event else None)
    if chosen is not None:
        st.session_state[filter_key] = chosen


def single_channel_filters(name: str, layer: nn.Conv2d, filter_key: str) -> int:
    """All kernels of a first-layer convolution as small tiles, the chosen one large. Returns the filter."""
    k = layer.kernel_size[0]
    kernels = layer.weight.detach()[:, 0]
    grid_col, big_col = st.columns([3, 2], gap="medium")
    with big_col:
        chosen = st.slider(f"Filter of {name}", 0, layer.out_channels - 1, key=filter_key,
                           help="Or click a kernel in the grid.")
        st.markdown(f"**Filter {chosen}: its {k}×{k} weights**")
        st.plotly_chart(figures.kernel_heatmap(kernels[chosen], height=260), key=f"fl_big_{name}",
                        config=PLOT_CONFIG)
        st.caption(f"Red weights add the pixel under them, blue ones subtract it; bias "
                   f"{float(layer.bias.detach()[chosen]):+.3f}. A filter with red on one side and blue on the other "
                   "answers to an edge between dark and light in that direction.")
    with grid_col:
        chart_key = f"fl_grid_{name}"
        st.markdown(f"**The {layer.out_channels} filters of {name}**: click one")
        st.plotly_chart(xf.tile_grid(kernels, GRID_COLS, selected=chosen, clickable=True),
                        key=chart_key, config=PLOT_CONFIG, selection_mode="points",
                        on_select=lambda: pick_tile(chart_key, filter_key))
        st.caption("One colour scale for all the filters: blue negative, white zero, red positive.")
    return chosen


def deep_filters(name: str, layer: nn.Conv2d, filter_key: str) -> int:
    """A deeper convolution: the size of each filter's weights per input map, and the chosen filter's slices."""
    weights = layer.weight.detach()
    c_out, c_in, k, _ = weights.shape
    norms = weights.flatten(start_dim=2).norm(dim=2).T  # (C_in, C_out): one column per filter
    chosen = st.slider(f"Filter of {name}", 0, c_out - 1, key=filter_key, help="Or click a column of the map.")
    map_col, slices_col = st.columns([3, 2], gap="medium")
    with map_col:
        chart_key = f"fl_norms_{name}"
        st.markdown(f"**Size of each filter's {k}×{k} weights per input map**: click a column")
        st.plotly_chart(xf.column_heatmap(norms, marked_column=chosen, height=360,
                                          hover="filter %{customdata}: click to pick"),
                        key=chart_key, config=PLOT_CONFIG, selection_mode="points",
                        on_select=lambda: pick_tile(chart_key, filter_key))
        st.caption(f"Columns: the {c_out} filters; rows: the {c_in} input maps (from left to right, top to "
                   f"bottom). A cell is the length (L2 norm) of the {k * k} weights a filter gives one input map: "
                   "yellow cells (long) show which earlier patterns the filter combines, dark blue ones (short) "
                   "what it ignores.")
    with slices_col:
        st.markdown(f"**Filter {chosen}: {c_in} slices of {k}×{k}**")
        st.plotly_chart(xf.tile_grid(weights[chosen], GRID_COLS, cell_px=12 if k < 4 else 8),
                        key=f"fl_slices_{name}", config=PLOT_CONFIG)
        strongest = torch.argsort(norms[:, chosen], descending=True)[:3].tolist()
        st.caption(f"Filter {chosen} weighs input maps {', '.join(str(i) for i in strongest)} most; bias "
                   f"{float(layer.bias.detach()[chosen]):+.3f}. Blue negative, white zero, red positive.")
    return chosen


def top_digits(model: nn.Module, name: str, chosen: int, ranking: FilterRanking, digits: MnistSplit,
               tr: Trace, digit: Digit) -> None:
    """The test digits that excite the chosen filter most, where they do, and the filter on the user's digit."""
    gallery_col, own_col = st.columns([3, 2], gap="medium")
    indices, values, positions = ranking.indices[chosen], ranking.values[chosen], ranking.positions[chosen]
    with gallery_col:
        st.markdown(f"**The {len(indices)} of {ranking.n_images:,} MNIST test digits that excite filter {chosen} "
                    "most**")
        images = [xf.digit_with_box(digits.images[i].numpy() / 255, receptive_field(model, name, r, c), scale=3)
                  for i, (r, c) in zip(indices, positions)]
        captions = [f"{int(digits.labels[i])} · {v:.2f}" for i, v in zip(indices, values)]
        st.image(images, caption=captions, width=GALLERY_PX)
        st.caption("Under each digit: its true label and the filter's largest value on it. The red box is the part "
                   "of the digit that largest value saw (its receptive field): the pattern the filter looks for.")
    with own_col:
        own = tr[name][chosen]
        st.markdown(f"**Filter {chosen} on {plain(digit.source)}**")
        st.plotly_chart(figures.image_heatmap(own, colorscale=figures.DIVERGING, zmid=0, height=300, showscale=True),
                        key=f"fl_own_{name}", config=PLOT_CONFIG)
        st.caption(f"Largest value on this digit: {float(own.max()):.2f}; the weakest of the digits on the left "
                   f"reaches {values[-1]:.2f}. Blue negative, white zero, red positive.")


# --- the page ---------------------------------------------------------------------------------------------

st.title("Learned filters")
digit = digit_or_sample_picker()
loaded = get_model()
names = conv_layers_or_stop(loaded.model, "it has no filters to show")
tr = get_trace(digit)

st.write(
    "Nobody designed these filters: they started as random numbers and training adjusted them until the network "
    "recognised digits. Looking at the weights, and at the digits that make each filter fire hardest, shows "
    "what each one has learned to look for."
)
# Ranked once per model on the bundled test digits (stored beside a shipped model): nothing is ranked here.
rankings = measurements(loaded, selected_model_id()).filters
test_digits = get_test_sets().mnist

for name in names:
    layer = conv_layer(loaded.model, name)
    st.header(f"{name}: {layer.out_channels} filters of {layer.in_channels}×"
              f"{layer.kernel_size[0]}×{layer.kernel_size[1]}")
    filter_key = f"fl_filter_{name}"
    st.session_state[filter_key] = min(st.session_state.get(filter_key, 0), layer.out_channels - 1)
    if layer.in_channels == 1:
        chosen = single_channel_filters(name, layer, filter_key)
    else:
        chosen = deep_filters(name, layer, filter_key)
    if name in rankings:
        top_digits(loaded.model, name, chosen, rankings[name], test_digits, tr, digit)
    else:  # measurements made before this layer existed cannot happen for a stored file (its identity matches)
        st.info(f"The test digits have not been ranked for {name}.")
