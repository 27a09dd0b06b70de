"""Compare: two inputs through one network, layer by layer; one input through two networks; export."""

from __future__ import annotations

import math
import re

import numpy as np
import plotly.graph_objects as go
import streamlit as st
from streamlit_drawable_canvas import st_canvas

from cnn_core.checkpoint import LoadedModel
from cnn_core.compare import LayerDifference, layer_differences, map_layers
from cnn_core.export import feature_maps_png, trace_to_npz
from cnn_core.introspect import Trace
from cnn_core.model import count_parameters
from cnn_core.preprocess import preprocess
from ui import explain_figures as xf
from ui.figures import DIVERGING, PROB_COLOUR, TOP_COLOUR, image_heatmap
from ui.state import (
    SHIPPED_ID,
    Digit,
    available_model_ids,
    digit_or_sample_picker,
    get_model,
    get_model_by_id,
    get_samples,
    get_trace,
    model_label,
    model_label_md,
    sample_label,
    selected_model_id,
)
from ui.text import plain

st.set_page_config(page_title="Compare · CNN Explorer", page_icon="🔢", layout="wide")

PLOT_CONFIG = {"displayModeBar": False}
MAP_HEIGHT = 300
MODEL_COLOURS = (PROB_COLOUR, TOP_COLOUR)
DRAW_B = "Draw B yourself (canvas below)"
DRAWN_B = "compare_drawn_b"  # this session's drawing for B (a Digit), kept across reruns and page visits
CANVAS_ROUND = "compare_canvas_round"  # bumped by "Clear": a new canvas key gives an empty canvas
CANVAS_PX = 168
STROKE_PX = 12  # the home page's 20 px on 280 px, scaled: the same stroke once the digit fills its 20x20 box
PNG_MIN_WIDTH = 1600  # px: wide enough for a slide


def one_line(text: str, limit: int = 60) -> str:
    """Visitor text for a widget option (shown as plain text there): one line, at most ``limit`` characters."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def file_stem(text: str, limit: int = 40) -> str:
    """A safe piece of a download's file name: lower-case letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9]+", "-", str(text).lower()).strip("-")[:limit].strip("-") or "digit"


# --- B drawn by hand ------------------------------------------------------------------------------------


def clear_drawing() -> None:
    """The "Clear B" button: forget the drawing and give the canvas a new key (an empty canvas)."""
    st.session_state.pop(DRAWN_B, None)
    st.session_state[CANVAS_ROUND] = st.session_state.get(CANVAS_ROUND, 0) + 1


def drawn_b() -> Digit | None:
    """A small canvas for B; its drawing, preprocessed like the home page's, or the last one drawn."""
    canvas = st_canvas(stroke_width=STROKE_PX, stroke_color="#FFFFFF", background_color="#000000",
                       height=CANVAS_PX, width=CANVAS_PX, drawing_mode="freedraw", return_image_data=True,
                       key=f"compare_canvas_{st.session_state.get(CANVAS_ROUND, 0)}")
    if canvas.image_data is not None and (canvas.json_data or {}).get("objects"):
        result = preprocess(canvas.image_data)
        if not result.blank:
            st.session_state[DRAWN_B] = Digit(result.pixels, "your drawing for B")
    st.button("✕ Clear B", key="compare_clear_b", on_click=clear_drawing,
              disabled=DRAWN_B not in st.session_state)
    return st.session_state.get(DRAWN_B)


# --- figures --------------------------------------------------------------------------------------------


def difference_bars(differences: list[LayerDifference], height: int = 300) -> go.Figure:
    """Mean absolute difference per layer, the relative difference in the hover."""
    fig = go.Figure(go.Bar(x=[d.name for d in differences], y=[d.mean_absolute for d in differences],
                           marker_color=PROB_COLOUR, customdata=[d.relative for d in differences],
                           hovertemplate="%{x}: mean |A − B| = %{y:.4f}<br>relative to the values: "
                                         "%{customdata:.0%}<extra></extra>"))
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=10, b=10), dragmode=False,
                      xaxis=dict(type="category", fixedrange=True), yaxis=dict(title="mean |A − B|", fixedrange=True))
    return fig


def grouped_probabilities(names: list[str], probabilities: list, height: int = 320) -> go.Figure:
    """The ten probabilities of several models side by side (``names`` are shown as plain text)."""
    fig = go.Figure()
    for name, p, colour in zip(names, probabilities, MODEL_COLOURS):
        values = np.asarray(p, dtype=float)
        shown = xf.plotly_text(name)
        fig.add_trace(go.Bar(x=[str(d) for d in range(10)], y=values, name=shown, marker_color=colour,
                             text=[f"{v:.0%}" if v >= 0.01 else "" for v in values], textposition="outside",
                             cliponaxis=False, hovertemplate=f"{shown}, digit %{{x}}: %{{y:.2%}}<extra></extra>"))
    fig.update_layout(height=height, barmode="group", margin=dict(l=10, r=10, t=10, b=10), dragmode=False,
                      legend=dict(orientation="h", y=-0.3, yanchor="top", x=0.5, xanchor="center"),
                      yaxis=dict(range=[0, 1.15], tickformat=".0%", title="probability", fixedrange=True),
                      xaxis=dict(title="digit", type="category", fixedrange=True))
    return fig


def kind_of(tr: Trace, layer: str) -> str:
    """The kind of layer ("Conv2d", "ReLU"...) that output ``layer`` of the trace; "Input" for the input."""
    return "Input" if layer == "input" else next(la.kind for la in tr.layers if la.name == layer)


def ab_maps(a: np.ndarray, b: np.ndarray, layer: str, channel: int, kind: str) -> None:
    """A, B and A − B of one channel, A and B on one colour scale (the pages' convention for the layer)."""
    if kind == "Input":
        scale = dict(colorscale="gray", zmin=float(min(a.min(), b.min())), zmax=float(max(a.max(), b.max())))
    else:
        colorscale, zmid = xf.map_colours(kind)
        if zmid is not None:  # blue-white-red: white is exactly zero in both
            lim = float(max(np.abs(a).max(), np.abs(b).max())) or 1.0
            scale = dict(colorscale=colorscale, zmin=-lim, zmax=lim)
        else:
            scale = dict(colorscale=colorscale, zmin=float(min(a.min(), b.min())), zmax=float(max(a.max(), b.max())))
    limit = float(np.abs(a - b).max()) or 1.0
    col_a, col_b, col_d = st.columns(3, gap="small")
    for column, title, values, kwargs, key in (
            (col_a, f"A: {layer}, channel {channel}", a, scale, "compare_map_a"),
            (col_b, f"B: {layer}, channel {channel}", b, scale, "compare_map_b"),
            (col_d, "A − B", a - b, dict(colorscale=DIVERGING, zmin=-limit, zmax=limit), "compare_map_diff")):
        with column:
            st.markdown(f"**{title}**")
            st.plotly_chart(image_heatmap(values, height=MAP_HEIGHT, showscale=True, **kwargs), key=key,
                            config=PLOT_CONFIG)
    st.caption("One colour scale for A and B. In A − B, red is where A is stronger, blue where B is.")


@st.cache_data(max_entries=32, show_spinner=False)
def maps_png(maps: np.ndarray, labels: tuple[str, ...], title: str) -> bytes:
    """A layer's maps as a labelled PNG wide enough for a slide; pure in its (hashed) arguments."""
    cols = min(8, maps.shape[0])
    scale = max(4, math.ceil(PNG_MIN_WIDTH / (cols * maps.shape[-1])))
    return feature_maps_png(maps, cols=cols, scale=scale, labels=labels, title=title)


# --- the sections -----------------------------------------------------------------------------------------


def two_inputs(digit: Digit, model_name: str) -> tuple[Digit, Trace, str]:
    """Two inputs through the selected network. Returns input A, its trace and the layer shown (for the
    export: the input itself while B still has to be drawn)."""
    st.header("Two inputs, one network")
    samples = get_samples()
    choices = {f"Current: {one_line(digit.source)}": digit}
    choices.update({f"sample {sample_label(s)}": Digit(s.pixels, f"sample {sample_label(s)}") for s in samples})
    labels = list(choices)
    tr_current = get_trace(digit)
    # B: by default a sample that is not A and is another digit than A reads, so that the layers have something to show.
    others = [i for i in range(1, len(labels)) if choices[labels[i]].key != digit.key]
    default_b = next((i for i in others if samples[i - 1].label != tr_current.prediction), others[0] if others else 0)
    pick_a, pick_b = st.columns(2)
    label_a = pick_a.selectbox("Input A", labels, index=0, key="compare_a")
    label_b = pick_b.selectbox("Input B", [*labels, DRAW_B], index=default_b, key="compare_b",
                               help="A sample digit, your current digit, or one you draw here.")
    digit_a = choices[label_a]
    pick_a.image(xf.digit_with_box(digit_a.pixels, scale=3), caption="A as the network sees it (28×28)")
    if label_b == DRAW_B:
        with pick_b:
            digit_b = drawn_b()
        if digit_b is None:
            st.info("Draw a digit for B on the black canvas: the comparison appears as soon as you lift the pen.")
            return digit_a, get_trace(digit_a), "input"
    else:
        digit_b = choices[label_b]
    pick_b.image(xf.digit_with_box(digit_b.pixels, scale=3), caption="B as the network sees it (28×28)")
    tr_a, tr_b = get_trace(digit_a), get_trace(digit_b)
    if digit_a.key == digit_b.key:
        st.info("A and B are the same input: every difference below is zero. Pick another input for B.")

    layers = map_layers(tr_a)
    layer_col, channel_col, answer_col = st.columns([1, 1, 2])
    layer = layer_col.selectbox("Layer", layers, index=min(1, len(layers) - 1), key="compare_layer",
                                help="Layers whose output is a stack of maps. Fully connected layers show in the "
                                     "bar chart below.")
    maps_a, maps_b = tr_a[layer].numpy(), tr_b[layer].numpy()
    channels = maps_a.shape[0]
    channel = channel_col.number_input("Channel", 0, channels - 1, 0, key="compare_channel") if channels > 1 else 0
    channel = min(int(channel), channels - 1)
    answer_col.markdown(f"**A** reads **{tr_a.prediction}** ({tr_a.confidence:.0%}) · "
                        f"**B** reads **{tr_b.prediction}** ({tr_b.confidence:.0%})")
    if len(layers) == 1:
        st.info(f"{model_name} has no convolution, so its only maps are the inputs themselves. The bar chart "
                "below still compares every layer.")
    ab_maps(maps_a[channel], maps_b[channel], layer, channel, kind_of(tr_a, layer))

    differences = layer_differences(tr_a, tr_b)
    st.markdown("**Mean absolute difference |A − B|, layer by layer**")
    st.plotly_chart(difference_bars(differences), key="compare_layer_bars", config=PLOT_CONFIG)
    deeper = [d for d in differences if d.name != "input"]
    if deeper and digit_a.key != digit_b.key:
        most = max(deeper, key=lambda d: d.relative)
        st.caption(f"Bars in each layer's own units (hover for the difference relative to the values). Relative to "
                   f"its values, **{most.name}** differs most ({most.relative:.0%}); the input differs by "
                   f"{differences[0].relative:.0%}.")
    return digit_a, tr_a, layer


def two_networks(digit_a: Digit, model_id: str) -> None:
    """Input A through two networks of this session."""
    st.header("One input, two networks")
    ids = available_model_ids()
    if len(ids) < 2:
        st.info("There is only one network to compare so far. Train a variant, or upload weights, on the "
                "**Train your own** page, and compare it here with the shipped one.")
        return
    second = SHIPPED_ID if model_id != SHIPPED_ID and SHIPPED_ID in ids else next(i for i in ids if i != model_id)
    m1, m2 = st.columns(2)
    labels = {i: model_label(i) for i in ids}  # widget options are shown as plain text
    x_id = m1.selectbox("Network 1", ids, index=ids.index(model_id), format_func=labels.__getitem__,
                        key="compare_model_1")
    y_id = m2.selectbox("Network 2", ids, index=ids.index(second), format_func=labels.__getitem__,
                        key="compare_model_2")
    tr_x, tr_y = get_trace(digit_a, model_id=x_id), get_trace(digit_a, model_id=y_id)
    names = [f"1: {labels[x_id]}", f"2: {labels[y_id]}"] if x_id != y_id else [labels[x_id]]
    r1, r2 = st.columns(2)
    for column, name, tr, mid in ((r1, names[0], tr_x, x_id), (r2, names[-1], tr_y, y_id)):
        params = count_parameters(get_model_by_id(mid).model)
        column.metric(f"Prediction of {plain(name)}", str(tr.prediction), f"softmax {tr.confidence:.1%}, "
                      f"{params:,} parameters", delta_color="off", delta_arrow="off")
    shown = [tr_x.probabilities] if x_id == y_id else [tr_x.probabilities, tr_y.probabilities]
    st.markdown("**Output probabilities**")
    st.plotly_chart(grouped_probabilities(names, shown), key="compare_models_bars", config=PLOT_CONFIG)
    st.caption(f"Input A ({plain(digit_a.source)}) through both networks.")


def export(loaded: LoadedModel, model_id: str, digit_a: Digit, tr_a: Trace, layer: str) -> None:
    """Input A's activations (.npz) and the maps of the layer shown (.png), named by what they hold."""
    st.header("Take it with you")
    stem = file_stem(digit_a.source)
    maps = tr_a[layer].numpy()
    npz_col, png_col = st.columns(2)
    with npz_col:
        st.download_button("Activations of A (.npz)", data=lambda: trace_to_npz(tr_a),
                           file_name=f"cnn_explorer_activations_{stem}.npz", mime="application/octet-stream",
                           key="compare_trace_npz", on_click="ignore")
        st.caption(f"Every layer's output for input A through {model_label_md(model_id)}, keyed by layer name "
                   f"({', '.join(['input'] + tr_a.names() + ['probabilities'])}): `numpy.load` opens it.")
    with png_col:
        title = f"{layer} of {one_line(model_label(model_id), 50)} · input: {one_line(digit_a.source, 50)}"
        labels = tuple(["input"] if layer == "input" else [f"channel {i}" for i in range(maps.shape[0])])
        # Built when the button is clicked (a callable), not on every run: the PNG weighs hundreds of kB.
        st.download_button(f"Maps of {layer} for A (.png)", data=lambda: maps_png(maps, labels, title),
                           file_name=f"cnn_explorer_{layer}_maps_{stem}.png", mime="image/png",
                           key="compare_maps_png", on_click="ignore")
        scale = "blue negative, white zero, red positive" if (maps < 0).any() else "black zero to white largest"
        st.caption(f"All {maps.shape[0]} maps of {layer}, tiled and numbered, at least {PNG_MIN_WIDTH:,} px wide, "
                   f"one colour scale for all ({scale}).")
        if st.toggle("Preview the PNG", key="compare_preview_png"):  # sent only when asked for
            st.image(maps_png(maps, labels, title))


# --- the page -------------------------------------------------------------------------------------------

st.title("Compare")
digit = digit_or_sample_picker()
loaded = get_model()
model_id = selected_model_id()
st.write(
    f"Set two inputs side by side in **{model_label_md(model_id)}** (the network picked in the sidebar) and see in "
    "which layers they part ways; or give one input to two networks and compare their answers."
)
digit_a, tr_a, layer = two_inputs(digit, model_label_md(model_id))
two_networks(digit_a, model_id)
export(loaded, model_id, digit_a, tr_a, layer)
