"""Learned filters: the weights each convolution learned, and the test digits that excite each filter most."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import streamlit as st
import torch
from torch import nn

from cnn_core.architecture import receptive_field
from cnn_core.convolution import conv_layer
from cnn_core.data import MnistDataError, load_mnist
from cnn_core.explain import TopActivations, top_activating
from cnn_core.samples import data_dir
from ui import explain_figures as xf
from ui import figures
from ui.state import conv_layers_or_stop, digit_or_sample_picker, get_model, get_samples, get_trace

st.set_page_config(page_title="Filters · CNN Explorer", page_icon="🔢", layout="wide")

PLOT_CONFIG = {"displayModeBar": False}
GRID_COLS = 8
TOP_K = 10  # digits shown per filter


@dataclass(frozen=True)
class Digits:
    """The digits filters are ranked on: uint8 MNIST test digits, or the sample digits as floats in [0, 1]."""

    images: torch.Tensor
    labels: list[int]
    description: str
    is_mnist: bool

    def pixels(self, i: int) -> np.ndarray:
        img = self.images[i]
        return (img.float() / 255 if img.dtype == torch.uint8 else img.float()).numpy()


@st.cache_resource(show_spinner=False)
def ranking_digits(folder: str) -> Digits:
    """The MNIST test split of ``folder``, or the sample digits when it has none (loaded once per process)."""
    try:
        split = load_mnist(folder, "test")
        return Digits(split.images, split.labels.tolist(), f"{len(split):,} MNIST test digits", True)
    except MnistDataError:
        samples = get_samples()
        images = torch.stack([torch.as_tensor(s.pixels, dtype=torch.float32) for s in samples])
        return Digits(images, [s.label for s in samples], f"the {len(samples)} sample digits", False)


@st.cache_resource(show_spinner="Finding the test digits each filter likes most (once for the whole app)...")
def ranking(weights_sha: str, folder: str, layer_name: str) -> TopActivations:
    """Top digits of every filter of ``layer_name``: computed once per weights, data and layer, shared by all."""
    return top_activating(get_model().model, ranking_digits(folder).images, layer_name, TOP_K)


def pick_kernel(chart_key: str, filter_key: str, shape: tuple[int, int, int]) -> None:
    """A click on the grid of kernels picks that filter."""
    event = st.session_state.get(chart_key)
    channel = figures.channel_from_selection(event["selection"] if event else None, shape, GRID_COLS)
    if channel is not None:
        st.session_state[filter_key] = channel


def pick_column(chart_key: str, filter_key: str) -> None:
    """A click on the weight-size map picks the filter of that column."""
    event = st.session_state.get(chart_key)
    cell = xf.cell_from_selection(event["selection"] if event else None)
    if cell is not None:
        st.session_state[filter_key] = cell[1]


def single_channel_filters(name: str, layer: nn.Conv2d, filter_key: str) -> int:
    """All kernels of a first-layer convolution as small images, the chosen one large. Returns the filter."""
    k = layer.kernel_size[0]
    kernels = layer.weight.detach()[:, 0]
    grid_col, big_col = st.columns([3, 2], gap="medium")
    with big_col:
        chosen = st.slider(f"Filter of {name}", 0, layer.out_channels - 1, key=filter_key,
                           help="Or click a kernel in the grid.")
        st.plotly_chart(figures.kernel_heatmap(kernels[chosen], f"Filter {chosen}: its {k}×{k} weights",
                                               height=260), key=f"fl_big_{name}", config=PLOT_CONFIG)
        st.caption(f"Red weights add the pixel under them, blue ones subtract it; bias "
                   f"{float(layer.bias[chosen]):+.3f}. A filter with red on one side and blue on the other "
                   "answers to an edge between dark and light in that direction.")
    with grid_col:
        chart_key = f"fl_grid_{name}"
        st.plotly_chart(figures.feature_map_grid(kernels, GRID_COLS, f"The {layer.out_channels} filters of {name}",
                                                 colorscale=figures.DIVERGING, zmid=0, selected=chosen,
                                                 clickable=True),
                        key=chart_key, config=PLOT_CONFIG, selection_mode="points",
                        on_select=lambda: pick_kernel(chart_key, filter_key, tuple(kernels.shape)))
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
        st.plotly_chart(xf.clickable_heatmap(norms, f"Size of each filter's {k}×{k} weights per input map",
                                             colorscale="Viridis", zmid=None, marked_column=chosen, height=360,
                                             hover="filter %{customdata[1]}, input map %{customdata[0]}: "
                                                   "%{customdata[2]:.3f}<br>click to pick"),
                        key=chart_key, config=PLOT_CONFIG, selection_mode="points",
                        on_select=lambda: pick_column(chart_key, filter_key))
        st.caption(f"Columns: the {c_out} filters; rows: the {c_in} input maps (from left to right, top to "
                   f"bottom). A cell is the length (L2 norm) of the {k * k} weights a filter gives one input map: "
                   "bright cells show which earlier patterns the filter combines.")
    with slices_col:
        st.plotly_chart(figures.feature_map_grid(weights[chosen], GRID_COLS,
                                                 f"Filter {chosen}: {c_in} slices of {k}×{k}",
                                                 colorscale=figures.DIVERGING, zmid=0),
                        key=f"fl_slices_{name}", config=PLOT_CONFIG)
        strongest = torch.argsort(norms[:, chosen], descending=True)[:3].tolist()
        st.caption(f"Filter {chosen} weighs input maps {', '.join(str(i) for i in strongest)} most; bias "
                   f"{float(layer.bias[chosen]):+.3f}.")
    return chosen


def top_digits(name: str, chosen: int, digits: Digits, top: TopActivations) -> None:
    """The digits that excite the chosen filter most, where they do, and the filter on the user's digit."""
    gallery_col, own_col = st.columns([3, 2], gap="medium")
    idx = top.indices[chosen].tolist()
    with gallery_col:
        regions = [receptive_field(model, name, int(r), int(c)) for r, c in top.positions[chosen].tolist()]
        captions = [f"{digits.labels[i]} · {v:.2f}" for i, v in zip(idx, top.values[chosen].tolist())]
        st.plotly_chart(xf.digit_gallery(np.stack([digits.pixels(i) for i in idx]), captions, regions, cols=5,
                                         title=f"The {len(idx)} digits of {digits.description} that excite "
                                               f"filter {chosen} most"),
                        key=f"fl_gallery_{name}", config=PLOT_CONFIG)
        st.caption("Each digit's true label and the filter's largest value on it. The red box is the part of the "
                   "digit that largest value saw (its receptive field): the pattern the filter looks for.")
    with own_col:
        own = tr[name][chosen]
        st.plotly_chart(figures.image_heatmap(own, f"Filter {chosen} on {digit.source}", colorscale=figures.DIVERGING,
                                              zmid=0, height=300, showscale=True),
                        key=f"fl_own_{name}", config=PLOT_CONFIG)
        best = float(top.values[chosen, -1])
        st.caption(f"Largest value on this digit: {float(own.max()):.2f}; the weakest of the digits on the left "
                   f"reaches {best:.2f}.")


# --- the page ---------------------------------------------------------------------------------------------

st.title("Learned filters")
digit = digit_or_sample_picker()
loaded = get_model()
model = loaded.model
tr = get_trace(digit)
names = conv_layers_or_stop(model, "it has no filters to show")

st.write(
    "Nobody designed these filters: they started as random numbers and training adjusted them until the network "
    "recognised digits. Looking at the weights, and at the digits that make each filter fire hardest, shows "
    "what each one has learned to look for."
)
folder = str(data_dir())
digits = ranking_digits(folder)
if not digits.is_mnist:
    st.info(f"No MNIST test digits found in {folder} (set CNN_EXPLORER_DATA to a folder of MNIST IDX files): "
            f"the filters are ranked on {digits.description} instead.")
weights_sha = str(loaded.card.get("sha256", ""))

for name in names:
    layer = conv_layer(model, name)
    st.header(f"{name}: {layer.out_channels} filters of {layer.in_channels}×"
              f"{layer.kernel_size[0]}×{layer.kernel_size[1]}")
    filter_key = f"fl_filter_{name}"
    st.session_state[filter_key] = min(st.session_state.get(filter_key, 0), layer.out_channels - 1)
    if layer.in_channels == 1:
        chosen = single_channel_filters(name, layer, filter_key)
    else:
        chosen = deep_filters(name, layer, filter_key)
    top_digits(name, chosen, digits, ranking(weights_sha, folder, name))
