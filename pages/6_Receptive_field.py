"""Receptive field: which pixels of the input one unit of a layer can see, and why the window grows."""

from __future__ import annotations

import streamlit as st
from torch import nn

from cnn_core.architecture import LayerRow, Region, layer_table, receptive_field, total_parameters, window_of
from cnn_core.convolution import conv_layer_names
from cnn_core.explain import cells_in_padding, linear_weight_map, receptive_chain
from cnn_core.introspect import Trace
from cnn_core.model import INPUT_SHAPE
from ui import explain_figures as xf
from ui.state import Digit, digit_or_sample_picker, get_model, get_trace, model_label_md, selected_model_id

st.set_page_config(page_title="Receptive field · CNN Explorer", page_icon="🔢", layout="wide")

PLOT_CONFIG = {"displayModeBar": False}
LAYER, CHANNEL, ROW, COL, UNIT = "rf_layer", "rf_channel", "rf_row", "rf_col", "rf_unit"
MAP, BARS, SHOWN_SHAPE = "rf_map", "rf_bars", "rf_shown_shape"
SIDE = INPUT_SHAPE[1]  # the input is SIDE x SIDE pixels


def pickable_layers(rows: list[LayerRow]) -> list[LayerRow]:
    """Layers whose units have a position (feature maps) and fully connected layers."""
    return [r for r in rows[1:] if len(r.output_shape) == 3 or r.kind == "Linear"]


def region_text(r: Region) -> str:
    """A region in words: its rows and columns."""
    return f"rows {r.top} to {r.bottom}, columns {r.left} to {r.right}"


# --- callbacks: they run before the script; what they need comes in their arguments ---------------------


def on_layer_change(shapes: dict[str, tuple[int, ...]]) -> None:
    """Keep the unit in the same part of the picture when the new layer's maps have another size."""
    old = st.session_state.get(SHOWN_SHAPE)
    new = shapes[st.session_state[LAYER]]
    if len(new) == 3:
        st.session_state[CHANNEL] = min(st.session_state.get(CHANNEL, 0), new[0] - 1)
        if old is not None and len(old) == 3 and ROW in st.session_state and COL in st.session_state:
            st.session_state[ROW] = min(st.session_state[ROW] * new[1] // old[1], new[1] - 1)
            st.session_state[COL] = min(st.session_state[COL] * new[2] // old[2], new[2] - 1)
        else:
            st.session_state[ROW], st.session_state[COL] = new[1] // 2, new[2] // 2
    else:
        st.session_state[UNIT] = min(st.session_state.get(UNIT, 0), new[0] - 1)


def on_map_click() -> None:
    """A click on the feature map picks that unit."""
    event = st.session_state.get(MAP)
    cell = xf.cell_from_selection(event["selection"] if event else None)
    if cell is not None:
        st.session_state[ROW], st.session_state[COL] = cell


def on_bar_click() -> None:
    """A click on a bar picks that unit of a fully connected layer."""
    event = st.session_state.get(BARS)
    unit = xf.bar_from_selection(event["selection"] if event else None)
    if unit is not None:
        st.session_state[UNIT] = unit


# --- the two kinds of unit ---------------------------------------------------------------------------------


def border_width(model: nn.Module, layer_name: str) -> int:
    """How far outside the image the windows of this layer's units reach (0 without padding)."""
    corner = receptive_field(model, layer_name, 0, 0)
    return max(0, -corner.top, -corner.left)


def map_unit(model: nn.Module, tr: Trace, digit: Digit, row: LayerRow, controls: list) -> None:
    """A unit of a feature map: pick it (in the three ``controls`` columns), then show the window it sees
    on the input and how it grew."""
    c, h, w = row.output_shape
    st.session_state.setdefault(ROW, h // 2)
    st.session_state.setdefault(COL, w // 2)
    st.session_state[ROW], st.session_state[COL] = min(st.session_state[ROW], h - 1), min(st.session_state[COL], w - 1)
    a, b, d = controls
    channel = a.slider(f"Channel (0 to {c - 1})", 0, c - 1, key=CHANNEL)
    r = b.number_input(f"Row (0 to {h - 1})", 0, h - 1, key=ROW)
    col = d.number_input(f"Column (0 to {w - 1})", 0, w - 1, key=COL)

    region = receptive_field(model, row.name, r, col)
    inside = region.clipped()
    padded = cells_in_padding(region)
    m1, m2, m3 = st.columns(3)
    m1.metric("Unit", f"{row.name}[{channel}, {r}, {col}]")
    m2.metric("Receptive field", f"{region.height} × {region.width} px")
    m3.metric("Real pixels in it", f"{inside.height} × {inside.width} = {inside.height * inside.width}")

    border = border_width(model, row.name)
    if border:  # said before the pictures that show it
        st.caption(f"Around the {SIDE}×{SIDE} input, the paper-coloured border is the zero padding: the layers read "
                   f"zeros there, so windows near the edge reach up to {border} px outside the image.")
    colorscale, zmid = xf.map_colours(row.kind)  # as on the Feature maps page: one map, one look
    left, right = st.columns(2, gap="medium")
    with left:
        st.markdown(f"**{row.name}, channel {channel} ({h}×{w})**: click a unit")
        st.plotly_chart(xf.clickable_heatmap(tr[row.name][channel], colorscale=colorscale, zmid=zmid,
                                             marked=(r, col), height=380),
                        key=MAP, config=PLOT_CONFIG, on_select=on_map_click, selection_mode="points")
    with right:
        st.markdown(f"**What {row.name}[{channel}, {r}, {col}] sees: {region.height}×{region.width}**")
        st.plotly_chart(xf.receptive_field_view(digit.pixels, region, margin=border), key="rf_input",
                        config=PLOT_CONFIG)

    st.markdown(f"Unit ({r}, {col}) of **{row.name}** depends on a **{region.height}×{region.width}** window of "
                f"the {SIDE}×{SIDE} input: {region_text(region)}. Nothing outside it can change this value, whatever "
                "is drawn there. Every channel of a layer has the same window at the same position: the channel "
                "decides *what* the unit looks for, the position *where*.")
    if padded:
        st.info(f"{padded} of the {region.height * region.width} cells of this window lie outside the image "
                f"(in the paper-coloured border): there the layers read the zero padding, so this unit near the edge "
                f"sees only {inside.height}×{inside.width} real pixels ({region_text(inside)}).")
    chain_table(model, row.name, r, col)


def growth_rules(model: nn.Module, layer_name: str) -> str:
    """How each kind of layer on the way back from ``layer_name`` grows the window, for this model's layers."""
    names = [n for n, _ in model.named_children()]
    layers = list(model.children())[: names.index(layer_name) + 1]
    rules: list[str] = []
    for layer in layers:
        window = window_of(layer)
        if window is None:
            continue
        k, s, _ = window
        if isinstance(layer, nn.Conv2d):
            rule = f"a convolution with a {k}×{k} kernel adds {k - 1} rows and columns"
        elif s == k:
            rule = f"a {k}×{k} pooling of stride {s} multiplies it by {s}"
        else:
            rule = f"a {k}×{k} pooling of stride {s} turns n rows into (n − 1)×{s} + {k}"
        if rule not in rules:
            rules.append(rule)
    text = ("Each convolution or pooling layer reads a small window of the layer before it, so going back one layer "
            "the window grows: " + ", and ".join(rules) + ".")
    if any(isinstance(layer, nn.ReLU) for layer in layers):
        text += " ReLU works pixel by pixel and keeps the window as it is."
    return text


def chain_table(model: nn.Module, layer_name: str, r: int, col: int) -> None:
    """How the window grows from the unit back to the input, layer by layer."""
    chain = receptive_chain(model, layer_name, r, col)
    st.subheader("Why that size: walking back to the input")
    st.write(growth_rules(model, layer_name))
    st.dataframe([{"reads from": w.layer, "window": f"{w.region.height}×{w.region.width}",
                   "rows": f"{w.region.top}..{w.region.bottom}", "columns": f"{w.region.left}..{w.region.right}",
                   "in padding": cells_in_padding(w.region, *w.size)} for w in chain[1:]],
                 hide_index=True, key="rf_chain")


def parameter_share(rows: list[LayerRow], row: LayerRow) -> str:
    """What share of the network's parameters ``row`` holds, and how that ranks among the layers."""
    total = total_parameters(rows)
    largest = max(rows, key=lambda r: r.parameters)
    share = row.parameters / total
    text = f"**{row.parameters:,}** parameters, {share:.1%} of the network's {total:,}"
    if share > 0.5:
        return text + ": more than all its other layers together."
    if largest is row:
        return text + ": more than any other layer."
    return text + f". The layer with the most is {largest.name}, with {largest.parameters / total:.1%}."


def vector_unit(model: nn.Module, tr: Trace, digit: Digit, rows: list[LayerRow], row: LayerRow,
                controls: list) -> None:
    """A unit of a fully connected layer (picked in the first of the ``controls`` columns): it sees the whole
    image."""
    n = row.output_shape[0]
    st.session_state[UNIT] = min(st.session_state.get(UNIT, 0), n - 1)
    unit = controls[0].number_input(f"Unit (0 to {n - 1})", 0, n - 1, key=UNIT, help="Or click a bar.")
    region = receptive_field(model, row.name)
    m1, m2 = st.columns(2)
    m1.metric("Unit", f"{row.name}[{unit}]")
    m2.metric("Receptive field", f"{region.height} × {region.width} px")
    st.markdown(f"**The {n} units of {row.name} for this digit**: click one")
    st.plotly_chart(xf.unit_bars(tr[row.name], unit), key=BARS, config=PLOT_CONFIG, on_select=on_bar_click,
                    selection_mode="points")
    left, right = st.columns(2, gap="medium")
    with left:
        st.markdown(f"**What {row.name}[{unit}] sees: everything**")
        st.plotly_chart(xf.receptive_field_view(digit.pixels, region), key="rf_input", config=PLOT_CONFIG)
    with right:
        try:
            weights = linear_weight_map(model, row.name, unit)
        except ValueError:
            weights = None  # a later fully connected layer (or one on the raw pixels): no maps to place weights on
        if weights is not None:
            st.markdown(f"**Where {row.name}[{unit}] looks**: size of its weights at each position of the last maps")
            st.plotly_chart(xf.clickable_heatmap(weights, colorscale="Viridis", zmid=None, height=380,
                                                 hover="position (%{customdata[0]}, %{customdata[1]}): "
                                                       "%{customdata[2]:.3f}"),
                            key="rf_weights", config=PLOT_CONFIG)
            st.caption("The length (L2 norm) of the unit's weights over all channels at each position: yellow where "
                       "it weighs what the maps found there, dark where it hardly looks.")
    layer = dict(model.named_children())[row.name]
    inputs = layer.in_features if isinstance(layer, nn.Linear) else 0
    st.markdown(f"**{row.name}** is fully connected: each of its {n:,} units has a weight for every one of the "
                f"{inputs:,} values of the layer before it, plus a bias, so unit {unit} can combine evidence from the "
                f"whole **{region.height}×{region.width}** image at once. That costs {n:,} × ({inputs:,} + 1) = "
                + parameter_share(rows, row))


# --- the page ---------------------------------------------------------------------------------------------

st.title("Receptive field")
digit = digit_or_sample_picker()
loaded = get_model()
tr = get_trace(digit)
table = layer_table(loaded.model)
pickable = pickable_layers(table)
by_name = {r.name: r for r in pickable}
if not pickable:
    st.info(f"The model picked in the sidebar ({model_label_md(selected_model_id())}) has no layer to pick a unit "
            "from.")
    st.stop()

if conv_layer_names(loaded.model):
    st.write(
        "A unit of a convolutional layer does not look at the whole image: it sees a small square of it, its "
        "**receptive field**. Layer after layer the square grows, so the first layers find small strokes and later "
        "ones larger shapes. Pick a layer and click a unit of its map to see the pixels it depends on."
    )
else:
    st.write(
        f"The model picked in the sidebar ({model_label_md(selected_model_id())}) has no convolutions: every unit of "
        f"its first layer already has a weight for each of the {SIDE}×{SIDE} pixels, so every unit's **receptive "
        "field** is the whole image. A CNN's units start from small squares instead: pick a CNN in the sidebar to "
        "see them grow."
    )

default = "conv2" if "conv2" in by_name else pickable[0].name
if st.session_state.get(LAYER) not in by_name:
    st.session_state[LAYER] = default
layer_column, *controls = st.columns([2, 2, 1, 1], vertical_alignment="bottom")
layer_name = layer_column.selectbox("Layer", list(by_name), key=LAYER, on_change=on_layer_change,
                                    args=({n: r.output_shape for n, r in by_name.items()},),
                                    format_func=lambda n: f"{n} ({by_name[n].kind}, output "
                                                          f"{'×'.join(str(d) for d in by_name[n].output_shape)})")
chosen = by_name[layer_name]
st.session_state[SHOWN_SHAPE] = chosen.output_shape
if len(chosen.output_shape) == 3:
    map_unit(loaded.model, tr, digit, chosen, controls)
else:
    vector_unit(loaded.model, tr, digit, table, chosen, controls)
