"""Compare: two drawings through one network, layer by layer; one drawing through two networks; export."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from cnn_core.export import feature_maps_png, trace_to_npz
from cnn_core.introspect import Trace
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
    selected_model_id,
)

st.set_page_config(page_title="Compare · CNN Explorer", page_icon="🔢", layout="wide")

PLOT_CONFIG = {"displayModeBar": False}
MAP_HEIGHT = 300
MODEL_COLOURS = (PROB_COLOUR, TOP_COLOUR)


def array(x) -> np.ndarray:
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def map_layers(tr: Trace) -> list[str]:
    """The input and every layer whose output is a stack of 2-D maps (C, H, W)."""
    return ["input"] + [layer.name for layer in tr.layers if layer.output.dim() == 3]


def mean_abs_differences(a: Trace, b: Trace) -> dict[str, float]:
    """Mean |A − B| of the input and of every layer's output."""
    out = {"input": float((a.input - b.input).abs().mean())}
    for la, lb in zip(a.layers, b.layers, strict=True):
        out[la.name] = float((la.output - lb.output).abs().mean())
    return out


def relative_differences(a: Trace, b: Trace) -> dict[str, float]:
    """Mean |A − B| divided by the mean of |A| and |B|: 0 same, 2 nothing in common (scale-free)."""
    out = {}
    for name, x, y in [("input", a.input, b.input)] + [(la.name, la.output, lb.output)
                                                         for la, lb in zip(a.layers, b.layers, strict=True)]:
        scale = float((x.abs().mean() + y.abs().mean()) / 2)
        out[name] = float((x - y).abs().mean()) / scale if scale > 0 else 0.0
    return out


def difference_bars(absolute: dict[str, float], relative: dict[str, float], height: int = 300) -> go.Figure:
    """Mean absolute difference per layer, the relative difference in the hover."""
    names = list(absolute)
    fig = go.Figure(go.Bar(x=names, y=[absolute[n] for n in names], marker_color=PROB_COLOUR,
                           customdata=[relative[n] for n in names],
                           hovertemplate="%{x}: mean |A − B| = %{y:.4f}<br>relative to the values: "
                                         "%{customdata:.0%}<extra></extra>"))
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=40, b=10), dragmode=False,
                      title="Mean absolute difference |A − B|, layer by layer",
                      xaxis=dict(type="category", fixedrange=True), yaxis=dict(title="mean |A − B|", fixedrange=True))
    return fig


def grouped_probabilities(names: list[str], probabilities: list, height: int = 320) -> go.Figure:
    """The ten probabilities of several models side by side."""
    fig = go.Figure()
    for name, p, colour in zip(names, probabilities, MODEL_COLOURS):
        values = array(p).astype(float)
        fig.add_trace(go.Bar(x=[str(d) for d in range(10)], y=values, name=name, marker_color=colour,
                             text=[f"{v:.0%}" if v >= 0.01 else "" for v in values], textposition="outside",
                             cliponaxis=False, hovertemplate=f"{name}, digit %{{x}}: %{{y:.2%}}<extra></extra>"))
    fig.update_layout(height=height, barmode="group", margin=dict(l=10, r=10, t=40, b=10), dragmode=False,
                      title="Output probabilities",
                      legend=dict(orientation="h", y=-0.3, yanchor="top", x=0.5, xanchor="center"),
                      yaxis=dict(range=[0, 1.15], tickformat=".0%", title="probability", fixedrange=True),
                      xaxis=dict(title="digit", type="category", fixedrange=True))
    return fig


@st.cache_data(max_entries=64, show_spinner=False)
def grid_png(model_id: str, digit_key: str, layer: str, _maps: np.ndarray) -> bytes:
    """The maps of one layer as a tiled PNG, once per (model, digit, layer)."""
    return feature_maps_png(_maps)


# --- the page -------------------------------------------------------------------------------------------

st.title("Compare")
digit = digit_or_sample_picker()
loaded = get_model()
model_id = selected_model_id()
model_name = model_label(model_id)  # as the sidebar names it
samples = get_samples()
st.write(
    f"Set two inputs side by side in **{model_name}** (the network picked in the sidebar) and see in which layers "
    "they part ways; or give one input to two networks and compare their answers."
)

# (a) two drawings, one network
st.header("Two drawings, one network")
choices = {f"Current: {digit.source}": digit}
choices.update({f"sample {s.label} ({s.source})": Digit(s.pixels, f"sample {s.label} ({s.source})") for s in samples})
labels = list(choices)
tr_first = get_trace(digit)
# B: by default a sample that is not A and is another digit than A reads, so that the layers have something to show.
others = [i for i in range(1, len(labels)) if choices[labels[i]].key != digit.key]
default_b = next((i for i in others if samples[i - 1].label != tr_first.prediction), others[0] if others else 0)
pick_a, pick_b = st.columns(2)
label_a = pick_a.selectbox("Input A", labels, index=0, key="compare_a")
label_b = pick_b.selectbox("Input B", labels, index=default_b, key="compare_b")
digit_a, digit_b = choices[label_a], choices[label_b]
tr_a, tr_b = get_trace(digit_a), get_trace(digit_b)
if digit_a.key == digit_b.key:
    st.info("A and B are the same input: every difference below is zero. Pick another input for B.")

layers = map_layers(tr_a)
layer_col, channel_col, answer_col = st.columns([1, 1, 2])
layer = layer_col.selectbox("Layer", layers, index=min(1, len(layers) - 1), key="compare_layer",
                            help="Layers whose output is a stack of maps. Fully connected layers show in the bar "
                                 "chart below.")
maps_a, maps_b = array(tr_a[layer]), array(tr_b[layer])
channels = maps_a.shape[0]
channel = channel_col.number_input("Channel", 0, channels - 1, 0, key="compare_channel") if channels > 1 else 0
channel = min(int(channel), channels - 1)
answer_col.markdown(f"**A** reads **{tr_a.prediction}** ({tr_a.confidence:.0%}) · "
                    f"**B** reads **{tr_b.prediction}** ({tr_b.confidence:.0%})")
if len(layers) == 1:
    st.info(f"{model_name} has no convolution, so its only maps are the inputs themselves. The bar chart "
            "below still compares every layer.")

a, b = maps_a[channel], maps_b[channel]
lo, hi = float(min(a.min(), b.min())), float(max(a.max(), b.max()))  # one colour range: A and B read alike
diff = a - b
limit = float(np.abs(diff).max()) or 1.0
col_a, col_b, col_d = st.columns(3, gap="small")
with col_a:
    st.plotly_chart(image_heatmap(a, f"A: {layer}, channel {channel}", colorscale="Viridis", height=MAP_HEIGHT,
                                  showscale=True, zmin=lo, zmax=hi), key="compare_map_a", config=PLOT_CONFIG)
with col_b:
    st.plotly_chart(image_heatmap(b, f"B: {layer}, channel {channel}", colorscale="Viridis", height=MAP_HEIGHT,
                                  showscale=True, zmin=lo, zmax=hi), key="compare_map_b", config=PLOT_CONFIG)
with col_d:
    st.plotly_chart(image_heatmap(diff, "A − B", colorscale=DIVERGING,
                                  height=MAP_HEIGHT, showscale=True, zmin=-limit, zmax=limit),
                    key="compare_map_diff", config=PLOT_CONFIG)

st.caption("One colour range for A and B. In A − B, red is where A is stronger, blue where B is.")
absolute, relative = mean_abs_differences(tr_a, tr_b), relative_differences(tr_a, tr_b)
st.plotly_chart(difference_bars(absolute, relative), key="compare_layer_bars", config=PLOT_CONFIG)
deepest = [n for n in relative if n != "input"]
if deepest and digit_a.key != digit_b.key:
    most = max(deepest, key=relative.get)
    st.caption(f"Bars in each layer's own units (hover for the difference relative to the values). Relative to "
               f"its values, **{most}** differs most ({relative[most]:.0%}); the input differs by "
               f"{relative['input']:.0%}.")

# (b) one drawing, two networks
st.header("One drawing, two networks")
ids = available_model_ids()
if len(ids) < 2:
    st.info("There is only one network to compare so far. Train a variant, or upload weights, on the "
            "**Train your own** page, and compare it here with the shipped one.")
else:
    first = model_id
    second = SHIPPED_ID if first != SHIPPED_ID else next(i for i in ids if i != first)
    m1, m2 = st.columns(2)
    labels = {i: model_label(i) for i in ids}
    x_id = m1.selectbox("Network 1", ids, index=ids.index(first), format_func=labels.__getitem__,
                        key="compare_model_1")
    y_id = m2.selectbox("Network 2", ids, index=ids.index(second), format_func=labels.__getitem__,
                        key="compare_model_2")
    tr_x, tr_y = get_trace(digit_a, model_id=x_id), get_trace(digit_a, model_id=y_id)
    names = [f"1: {model_label(x_id)}", f"2: {model_label(y_id)}"]
    if x_id == y_id:
        names = [model_label(x_id)]
    r1, r2 = st.columns(2)
    for column, name, tr, mid in ((r1, names[0], tr_x, x_id), (r2, names[-1], tr_y, y_id)):
        params = sum(p.numel() for p in get_model_by_id(mid).model.parameters())
        column.metric(f"Prediction of {name}", str(tr.prediction), f"{tr.confidence:.1%} confident, "
                      f"{params:,} parameters", delta_color="off", delta_arrow="off")
    shown = [tr_x.probabilities] if x_id == y_id else [tr_x.probabilities, tr_y.probabilities]
    st.plotly_chart(grouped_probabilities(names, shown), key="compare_models_bars", config=PLOT_CONFIG)
    st.caption(f"Input A ({digit_a.source}) through both networks.")

# export
st.header("Take it with you")
npz_col, png_col = st.columns(2)
with npz_col:
    st.download_button("Activations of A (.npz)", data=lambda: trace_to_npz(tr_a), file_name=f"trace_{digit_a.key}.npz",
                       mime="application/octet-stream", key="compare_trace_npz", on_click="ignore")
    st.caption(f"Every layer's output for input A through {model_name}, keyed by layer name "
               f"({', '.join(['input'] + tr_a.names() + ['probabilities'])}): `numpy.load` opens it.")
with png_col:
    png = grid_png(model_id, digit_a.key, layer, maps_a)
    st.download_button(f"Maps of {layer} for A (.png)", data=png, file_name=f"{layer}_{digit_a.key}.png",
                       mime="image/png", key="compare_maps_png", on_click="ignore")
    st.caption(f"All {channels} maps of {layer}, tiled, one colour scale for all.")
    with st.expander("Preview the PNG"):
        st.image(png)
