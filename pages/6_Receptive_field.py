"""Receptive field: which pixels of the input one unit of a layer can see, and why the window grows."""

from __future__ import annotations

import streamlit as st

from cnn_core.architecture import LayerRow, Region, layer_table, receptive_field
from cnn_core.explain import cells_in_padding, linear_weight_map, receptive_chain
from ui import explain_figures as xf
from ui.state import digit_or_sample_picker, get_model, get_trace, model_label, selected_model_id

st.set_page_config(page_title="Receptive field · CNN Explorer", page_icon="🔢", layout="wide")

PLOT_CONFIG = {"displayModeBar": False}
LAYER, CHANNEL, ROW, COL, UNIT = "rf_layer", "rf_channel", "rf_row", "rf_col", "rf_unit"
MAP, BARS = "rf_map", "rf_bars"


def pickable_layers(rows: list[LayerRow]) -> list[LayerRow]:
    """Layers whose units have a position (feature maps) and fully connected layers."""
    return [r for r in rows[1:] if len(r.output_shape) == 3 or r.kind == "Linear"]


def region_text(r: Region) -> str:
    return f"rows {r.top} to {r.bottom}, columns {r.left} to {r.right}"


# --- callbacks ---------------------------------------------------------------------------------------------


def on_layer_change() -> None:
    """Keep the unit in the same part of the picture when the new layer's maps have another size."""
    old = st.session_state.get("rf_shown_shape")
    new = by_name[st.session_state[LAYER]].output_shape
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
    event = st.session_state.get(MAP)
    cell = xf.cell_from_selection(event["selection"] if event else None)
    if cell is not None:
        st.session_state[ROW], st.session_state[COL] = cell


def on_bar_click() -> None:
    event = st.session_state.get(BARS)
    unit = xf.bar_from_selection(event["selection"] if event else None)
    if unit is not None:
        st.session_state[UNIT] = unit


# --- the two kinds of unit ---------------------------------------------------------------------------------


def map_unit(row: LayerRow, controls: list) -> None:
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

    left, right = st.columns(2, gap="medium")
    with left:
        st.plotly_chart(xf.clickable_heatmap(tr[row.name][channel], f"{row.name}, channel {channel} "
                                             f"({h}×{w}): click a unit", colorscale="Viridis", zmid=None,
                                             marked=(r, col), height=380),
                        key=MAP, config=PLOT_CONFIG, on_select=on_map_click, selection_mode="points")
    with right:
        st.plotly_chart(xf.receptive_field_view(digit.pixels, region, f"What {row.name}[{channel}, {r}, {col}] "
                                                f"sees: {region.height}×{region.width}", margin=3),
                        key="rf_input", config=PLOT_CONFIG)

    st.markdown(f"Unit ({r}, {col}) of **{row.name}** depends on a **{region.height}×{region.width}** window of "
                f"the 28×28 input: {region_text(region)}. Nothing outside it can change this value, whatever is "
                "drawn there. Every channel of a layer has the same window at the same position: the channel "
                "decides *what* the unit looks for, the position *where*.")
    if padded:
        st.info(f"{padded} of the {region.height * region.width} cells of this window lie outside the image "
                f"(the paper-coloured border): there the layers read the zero padding, so this unit near the edge "
                f"sees only {inside.height}×{inside.width} real pixels ({region_text(inside)}).")
    chain_table(row.name, r, col)


def chain_table(layer_name: str, r: int, col: int) -> None:
    """How the window grows from the unit back to the input, layer by layer."""
    chain = receptive_chain(model, layer_name, r, col)
    st.subheader("Why that size: walking back to the input")
    st.write("Each convolution or pooling layer reads a small window of the layer before it, so going back one "
             "layer the window grows: a convolution adds kernel − 1 rows and columns (2 for a 3×3 kernel), and a "
             "2×2 pooling of stride 2 doubles it. ReLU works pixel by pixel and keeps the window as it is.")
    st.dataframe([{"reads from": w.layer, "window": f"{w.region.height}×{w.region.width}",
                   "rows": f"{w.region.top}..{w.region.bottom}", "columns": f"{w.region.left}..{w.region.right}",
                   "in padding": cells_in_padding(w.region, *w.size)} for w in chain[1:]],
                 hide_index=True, key="rf_chain")


def vector_unit(row: LayerRow, controls: list) -> None:
    """A unit of a fully connected layer (picked in the first of the ``controls`` columns): it sees the whole
    image."""
    n = row.output_shape[0]
    st.session_state[UNIT] = min(st.session_state.get(UNIT, 0), n - 1)
    unit = controls[0].number_input(f"Unit (0 to {n - 1})", 0, n - 1, key=UNIT, help="Or click a bar.")
    region = receptive_field(model, row.name)
    m1, m2 = st.columns(2)
    m1.metric("Unit", f"{row.name}[{unit}]")
    m2.metric("Receptive field", f"{region.height} × {region.width} px")
    st.plotly_chart(xf.unit_bars(tr[row.name], unit, f"The {n} units of {row.name} for this digit: click one"),
                    key=BARS, config=PLOT_CONFIG, on_select=on_bar_click, selection_mode="points")
    left, right = st.columns(2, gap="medium")
    with left:
        st.plotly_chart(xf.receptive_field_view(digit.pixels, region, f"What {row.name}[{unit}] sees: everything"),
                        key="rf_input", config=PLOT_CONFIG)
    with right:
        try:
            weights = linear_weight_map(model, row.name, unit)
        except ValueError:
            weights = None  # a later fully connected layer: it reads units, not positions
        if weights is not None:
            st.plotly_chart(xf.clickable_heatmap(weights, f"Where {row.name}[{unit}] looks: size of its weights per "
                                                 f"position of the last maps", colorscale="Viridis", zmid=None,
                                                 height=380, hover="position (%{customdata[0]}, "
                                                 "%{customdata[1]}): %{customdata[2]:.3f}"),
                            key="rf_weights", config=PLOT_CONFIG)
    st.markdown(f"**{row.name}** is fully connected: each of its units has a weight for every value of the "
                f"layer before, so unit {unit} can combine evidence from the whole **{region.height}×{region.width}** "
                "image at once. The price is in the weights: this is where most of the network's parameters are.")


# --- the page ---------------------------------------------------------------------------------------------

st.title("Receptive field")
digit = digit_or_sample_picker()
loaded = get_model()
model = loaded.model
tr = get_trace(digit)
rows = pickable_layers(layer_table(model))
by_name = {r.name: r for r in rows}
if not rows:
    st.info(f"The model picked in the sidebar ({model_label(selected_model_id())}) has no layer to pick a unit from.")
    st.stop()

st.write(
    "A unit of a convolutional layer does not look at the whole image: it sees a small square of it, its "
    "**receptive field**. Layer after layer the square grows, so the first layers find small strokes and later "
    "ones larger shapes. Pick a layer and click a unit of its map to see the pixels it depends on."
)

default = "conv2" if "conv2" in by_name else rows[0].name
if st.session_state.get(LAYER) not in by_name:
    st.session_state[LAYER] = default
layer_column, *controls = st.columns([2, 2, 1, 1], vertical_alignment="bottom")
layer_name = layer_column.selectbox("Layer", list(by_name), key=LAYER, on_change=on_layer_change,
                          format_func=lambda n: f"{n} ({by_name[n].kind}, output "
                                                f"{'×'.join(str(d) for d in by_name[n].output_shape)})")
chosen = by_name[layer_name]
st.session_state["rf_shown_shape"] = chosen.output_shape
if len(chosen.output_shape) == 3:
    map_unit(chosen, controls)
else:
    vector_unit(chosen, controls)
