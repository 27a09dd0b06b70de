"""Overview: the current digit through every layer at once, side by side; click a unit to see what it is computed from."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping

import numpy as np
import streamlit as st
from streamlit.errors import StreamlitAPIException
from streamlit_drawable_canvas import st_canvas

from cnn_core.architecture import LayerRow, Region, layer_table
from cnn_core.checkpoint import LoadedModel
from cnn_core.introspect import Trace
from cnn_core.linear_collapse import last_linear_pair
from cnn_core.preprocess import preprocess
from cnn_core.unit_sources import UnitSources, shown_layers, unit_sources
from ui import explain_figures as xf
from ui import overview as ov
from ui.state import Digit, current_digit, digit_or_sample_picker, get_model, get_trace, set_digit
from ui.text import plain

st.set_page_config(page_title="Overview · CNN Explorer", page_icon="🔢", layout="wide")

PLOT_CONFIG = {"displayModeBar": False}
SELECTED = "ov_selected"  # {"layer": name, "block": int, "index": tuple | None}: the unit the user clicked
CANVAS, CANVAS_SEEN, CANVAS_ROUND = "ov_canvas", "ov_canvas_seen", "ov_canvas_round"
CANVAS_SIZE, STROKE_WIDTH = 100, 8  # stroke/size about as on the home page (20 on 280): the same ink once scaled
INPUT_COLUMN = CANVAS_SIZE + 4  # the canvas and the input picture above it
SOURCE = "drawn on the Overview"  # not "your drawing": the home page forgets those when its own canvas is empty
TOP_SHOWN = 8  # strongest sources listed for a unit
PAGES = {  # the pages that explain each kind of layer (file, title)
    "feature_maps": ("pages/1_Feature_maps.py", "Feature maps"),
    "architecture": ("pages/2_Architecture.py", "Architecture"),
    "convolution": ("pages/5_Convolution.py", "Convolution"),
    "receptive_field": ("pages/6_Receptive_field.py", "Receptive field"),
    "filters": ("pages/7_Filters.py", "Filters"),
    "why": ("pages/8_Why_this_digit.py", "Why this digit"),
}
KIND_WORDS = {"Conv2d": "convolution", "ReLU": "ReLU", "MaxPool2d": "max pooling", "AvgPool2d": "average pooling",
              "Flatten": "flatten", "Linear": "fully connected"}


# --- cached pictures ----------------------------------------------------------------------------------------


@st.cache_resource(max_entries=64, show_spinner=False)
def layer_pictures(model_identity: str, digit_key: str, _panels: tuple[ov.Panel, ...],
                   _values: tuple) -> dict[str, bytes]:
    """Each panel's PNG, rendered once per (model, digit, layout)."""
    return {p.name: ov.render_png(p, v) for p, v in zip(_panels, _values)}


def layout_key(panels: tuple[ov.Panel, ...]) -> str:
    """What the pictures' layout depends on (shapes and strip height), for the cache key."""
    return ";".join(f"{p.name}:{p.shape}:{p.height}" for p in panels)


# --- drawing on this page ---------------------------------------------------------------------------------


def clear_canvas() -> None:
    """The Clear button: a new canvas key gives an empty canvas (the digit stays until something new is drawn)."""
    st.session_state[CANVAS_ROUND] = st.session_state.get(CANVAS_ROUND, 0) + 1
    st.session_state.pop(CANVAS_SEEN, None)


def take_drawing(canvas) -> None:
    """Make a new drawing on this page's canvas the current digit (an empty or unchanged canvas changes nothing)."""
    objects = (getattr(canvas, "json_data", None) or {}).get("objects")
    drawn = getattr(canvas, "image_data", None)
    if not objects or drawn is None:
        return  # nothing drawn here (yet): keep the digit the session has, e.g. from the home page
    seen = hashlib.sha256(json.dumps(objects, sort_keys=True, default=str).encode()).hexdigest()
    if st.session_state.get(CANVAS_SEEN) == seen:
        return  # the same strokes as on the last run: the visitor may have picked a sample since
    st.session_state[CANVAS_SEEN] = seen
    result = preprocess(drawn)
    if not result.blank:
        set_digit(result.pixels, SOURCE, marks=result.marks, message=result.message)


# --- the selected unit ------------------------------------------------------------------------------------


def on_picture_click(chart_key: str, names: tuple[str, ...]) -> None:
    """Callback of a chart of the strip: select the block (map, vector row or unit) that was clicked."""
    event = st.session_state.get(chart_key)
    target = ov.target_from_selection(event["selection"] if event else None)
    if target is not None and 0 <= target[0] < len(names):
        st.session_state[SELECTED] = {"layer": names[target[0]], "block": target[1], "index": None}


def on_detail_click() -> None:
    """Callback of the large map: move the selected unit to the clicked cell of the same map."""
    event = st.session_state.get("ov_detail_map")
    cell = xf.cell_from_selection(event["selection"] if event else None)
    chosen = st.session_state.get(SELECTED)
    if cell is not None and chosen is not None:
        st.session_state[SELECTED] = {**chosen, "index": (chosen["block"], *cell)}


def selected_unit(panels: Mapping[str, ov.Panel], tr: Trace) -> tuple[ov.Panel, tuple[int, ...]]:
    """The selected layer and unit; the predicted output when nothing valid for this model is selected.

    A click on a tile selects the strongest unit of that map for the current digit (so it follows the digit);
    a click on the large map fixes the position.
    """
    chosen = st.session_state.get(SELECTED) or {}
    panel = panels.get(chosen.get("layer", ""))
    if panel is None or panel.role == "input" or not 0 <= int(chosen.get("block", -1)) < len(panel.blocks):
        output = list(panels.values())[-1]
        return output, (tr.prediction,)
    block = int(chosen["block"])
    index = chosen.get("index")
    if index is not None and len(index) == len(panel.shape) and panel.block_of(index) == block and \
            all(0 <= i < n for i, n in zip(index, panel.shape)):
        return panel, tuple(int(i) for i in index)
    return panel, strongest_in_block(panel, values_of(panel.name, tr), block)


def strongest_in_block(panel: ov.Panel, values, block: int) -> tuple[int, ...]:
    """The unit of ``block`` with the largest value for this digit."""
    flat = values.reshape(-1)
    start = block * panel.per_block
    best = start + int(flat[start: start + panel.per_block].argmax())
    return tuple(int(i) for i in np.unravel_index(best, panel.shape))


def values_of(name: str, tr: Trace):
    """What a panel shows: the digit's pixels for the input (not normalised: what was drawn), else the layer's output."""
    return digit.pixels if name == "input" else tr[name].numpy()


# --- links to the pages that explain a unit ---------------------------------------------------------------


def open_page(page: str, key: str, label: str | None = None, presets: Mapping[str, object] | None = None) -> None:
    """A button that opens one of the app's pages, first setting some of its widgets (e.g. the same unit).

    Run on its own (not through the app's navigation) a page cannot switch pages: it then says where to go.
    """
    path, title = PAGES[page]
    if st.button(label or f"{title} →", key=f"ov_go_{key}"):
        for name, value in (presets or {}).items():
            if value is None:
                st.session_state.pop(name, None)
            else:
                st.session_state[name] = value
        try:
            st.switch_page(path)
        except StreamlitAPIException:
            st.info(f"Open **{title}** in the sidebar.")


def unit_name(name: str, index: tuple[int, ...]) -> str:
    return f"{name}[{', '.join(str(i) for i in index)}]"


def conv_before(model_rows: list[LayerRow], name: str) -> str | None:
    """The convolution whose channels a ReLU or pooling layer carries (its Feature maps slider)."""
    names = [r.name for r in model_rows]
    for r in reversed(model_rows[: names.index(name) + 1]):
        if r.kind == "Conv2d":
            return r.name
    return None


# --- what the detail panel says ---------------------------------------------------------------------------


def region_words(r: Region) -> str:
    return (f"rows {r.top}–{r.bottom}, columns {r.left}–{r.right}" if r.height > 1 or r.width > 1
            else f"row {r.top}, column {r.left}")


def input_name(src: UnitSources, i: int) -> str:
    """Input ``i`` of a fully connected unit; for the flattened maps, also the map value it is."""
    if src.previous == "flatten" and unrolled is not None:
        name, shape = unrolled
        return f"{i} = {unit_name(name, tuple(int(j) for j in np.unravel_index(i, shape)))}"
    return str(i)


def describe(panel: ov.Panel, src: UnitSources, loaded: LoadedModel) -> str:
    """What the selected unit is and what it is computed from, in numbers read off the model and the trace."""
    model = loaded.model
    layer = dict(model.named_children())[src.layer]
    head = f"**{unit_name(src.layer, src.index)} = {src.value:.3f}**"
    prev = src.previous
    if src.kind == "conv":
        c_in = len(src.channels)
        k = src.region.height if src.region else 0
        weights = c_in * k * k
        strongest = ", ".join(f"{c} ({float(src.contributions[c]):+.2f})" for c in src.strongest[:3])
        text = (f"{head}: filter {src.index[0]} of {src.layer} laid over a {k}×{k} window ({region_words(src.region)}) "
                f"of {'the input' if prev == 'input' else f'each of the {c_in} maps of {prev}'}: "
                f"{weights:,} weights × the values under them, summed, plus the bias {src.bias:+.3f}. ")
        if c_in > 1:
            text += (f"Every input map adds its own part; the ones that move it most are {strongest} "
                     f"(filled in orange on {prev}; the window is outlined on every map).")
        if src.in_padding:
            text += f" {src.in_padding} of the {k * k} cells of the window lie in the zero padding."
        return text
    if src.kind == "pool":
        cells = ", ".join(f"{float(v):.2f}" for v in src.contributions)
        rule = "keeps the largest" if src.pool == "max" else "takes their mean"
        return (f"{head}: {src.layer} reads the {src.region.height}×{src.region.width} window "
                f"({region_words(src.region)}) of map {src.channels[0]} of {prev}, values {cells}, and {rule}.")
    if src.kind == "elementwise":
        before = float(src.contributions[0])
        if type(layer).__name__ == "ReLU":
            return (f"{head}: ReLU keeps positive values and zeroes negative ones: "
                    f"max(0, {unit_name(prev, src.index)} = {before:.3f}) = {src.value:.3f}.")
        return f"{head}: {src.layer} ({type(layer).__name__}) applied to {unit_name(prev, src.index)} = {before:.3f}."
    if src.kind == "flatten":
        if src.region is not None and src.channels:
            where = unit_name(prev, (src.channels[0], src.region.top, src.region.left))
            c, h, w = src.previous_shape
            rows = "one map" if ov.flat_rows_are_maps(src.previous_shape) else "one row of a map"
            return (f"{head}: flatten computes nothing: it lays the {c} maps of {h}×{w} end to end, so value "
                    f"{src.index[0]} is {where}. Each row of the picture is {rows}.")
        return f"{head}: flatten lays its input out as one vector."
    # linear
    n_in = src.contributions.numel()
    listed = ", ".join(f"{input_name(src, i)} ({float(src.contributions[i]):+.2f})" for i in src.strongest[:5])
    total = float(src.contributions.sum())
    text = (f"{head}: every one of the {n_in:,} values of {prev} times its own weight, summed "
            f"({total:+.3f}), plus the bias {src.bias:+.3f}. The inputs that move it most "
            f"(filled in orange on {prev}): {listed}.")
    return text


def links(panel: ov.Panel, src: UnitSources, rows: list[LayerRow], loaded: LoadedModel) -> None:
    """Buttons to the pages that explain this kind of unit, opened on the same unit where they can be."""
    name, kind, index = panel.name, panel.kind, src.index
    with st.container(horizontal=True, gap="small"):
        if kind == "Conv2d":
            c, r, k = index
            width = panel.shape[2]
            open_page("convolution", "conv", "Work it out step by step (Convolution) →",
                      {"cv_layer": name, "cv_filter": c, "cv_index": r * width + k, "cv_in_channel": None,
                       "cv_play": False})
            open_page("receptive_field", "rf", "What it sees of the digit (Receptive field) →",
                      {"rf_layer": name, "rf_channel": c, "rf_row": r, "rf_col": k, "rf_shown_shape": panel.shape})
            open_page("filters", "filters", "Its filter (Filters) →")
        elif panel.role == "maps":
            conv = conv_before(rows, name)
            if kind in ("MaxPool2d", "AvgPool2d"):
                c, r, k = index
                open_page("receptive_field", "rf", "What it sees of the digit (Receptive field) →",
                          {"rf_layer": name, "rf_channel": c, "rf_row": r, "rf_col": k,
                           "rf_shown_shape": panel.shape})
            open_page("feature_maps", "fm", "This map step by step (Feature maps) →",
                      {f"fm_channel_{conv}": index[0]} if conv else None)
        elif panel.role == "flat":
            open_page("feature_maps", "fm", "Flatten, step by step (Feature maps) →")
        elif panel.role == "output":
            open_page("why", "why", "Which pixels pushed this score (Why this digit) →")
        else:
            if kind == "Linear" and name in dict(loaded.model.named_children()):
                open_page("receptive_field", "rf", "Where it looks (Receptive field) →",
                          {"rf_layer": name, "rf_unit": index[0], "rf_shown_shape": panel.shape})
            open_page("feature_maps", "fm", "The layer step by step (Feature maps) →")
        pair = last_linear_pair(loaded.model)
        if pair is not None and name in (pair.first, pair.second) and pair.collapses:
            open_page("architecture", "arch", f"{pair.first} and {pair.second} are one matrix (Architecture) →")


def detail_figure(panel: ov.Panel, src: UnitSources, tr: Trace) -> None:
    """The selected map large (click a cell to move the unit) and the map it reads, or the strongest inputs."""
    if panel.role == "maps" and src.region is not None:
        c, r, k = src.index
        left, right = st.columns(2, gap="small")
        with left:
            st.plotly_chart(xf.clickable_heatmap(tr[panel.name][c], f"{panel.name}, map {c}: click to pick a unit",
                                                 colorscale="RdBu_r", marked=(r, k), height=300),
                            key="ov_detail_map", config=PLOT_CONFIG, on_select=on_detail_click,
                            selection_mode="points")
        with right:
            channel = src.strongest[0] if src.kind == "conv" else src.channels[0]
            source_values = values_of(src.previous, tr).reshape(src.previous_shape)[channel]
            title = ("the input" if src.previous == "input" else
                     f"{src.previous}, map {channel} (moves it most)" if src.kind == "conv" and len(src.channels) > 1
                     else f"{src.previous}, map {channel}")
            st.plotly_chart(ov.window_map(source_values, src.region, title, greyscale=src.previous == "input",
                                          height=300),
                            key="ov_detail_source", config=PLOT_CONFIG)
    elif src.kind == "linear":
        shown = src.strongest[:TOP_SHOWN]
        labels = [input_name(src, i) for i in shown]
        st.plotly_chart(ov.contribution_bars(labels, [float(src.contributions[i]) for i in shown],
                                             f"The {len(shown)} inputs of {src.previous} that move it most"),
                        key="ov_detail_bars", config=PLOT_CONFIG)


# --- the page ---------------------------------------------------------------------------------------------

st.title("The network at a glance")
intro = st.empty()  # written once the digit is known: a drawing on this page's canvas changes it
# One row that wraps on a narrow screen: the input and the canvas first, then the layers' charts (added below,
# once the digit is known, since a drawing on this canvas changes the digit).
strip = st.container(horizontal=True, gap="xxsmall", key="ov_strip", vertical_alignment="top")
with strip:
    with st.container(width=INPUT_COLUMN, gap="xxsmall", key="ov_input_column"):
        input_slot = st.empty()
        canvas = st_canvas(stroke_width=STROKE_WIDTH, stroke_color="#FFFFFF", background_color="#000000",
                           height=CANVAS_SIZE, width=CANVAS_SIZE, drawing_mode="freedraw", return_image_data=True,
                           key=f"{CANVAS}_{st.session_state.get(CANVAS_ROUND, 0)}")
        st.caption("Draw a digit here")
        st.button("✕ Clear", key="ov_clear", on_click=clear_canvas, width="stretch")
take_drawing(canvas)
picked: Digit = digit_or_sample_picker()
digit = current_digit() or picked
loaded = get_model()
model = loaded.model
tr = get_trace(digit)
rows = layer_table(model)
row_of = {r.name: r for r in rows}
names = ("input", *shown_layers(model))
shapes = [tuple(row_of[n].output_shape) for n in names]
height = ov.strip_height(shapes)
panels: dict[str, ov.Panel] = {}
for i, (name, shape) in enumerate(zip(names, shapes)):
    panels[name] = ov.layout_panel(name, row_of[name].kind, shape, height, is_output=i == len(names) - 1,
                                   flat_from=shapes[i - 1] if i else None)
has_maps = any(len(s) == 3 for s in shapes[1:])
# The maps that flatten unrolls (layer name, shape), so that fc1's inputs can be named by map and position.
unrolled = next(((names[i - 1], shapes[i - 1]) for i, n in enumerate(names)
                 if row_of[n].kind == "Flatten" and i > 1 and len(shapes[i - 1]) == 3), None)

n_maps = sum(s[0] for s in shapes[1:] if len(s) == 3)
vectors = [f"{s[0]:,}" for s in shapes[1:] if len(s) == 1]
intro.write(
    f"**{plain(digit.source)}** through every layer at once, left to right"
    + (f": {n_maps:,} feature maps, then vectors of " if has_maps else ": vectors of ")
    + (", ".join(vectors[:-1]) + f" and {vectors[-1]}" if len(vectors) > 1 else vectors[0])
    + f" values; the network reads a **{tr.prediction}** (softmax {tr.confidence:.1%}). Click a map or a unit to light "
    "up, in orange, what it is computed from."
)

panel, index = selected_unit(panels, tr)
src = unit_sources(model, tr, panel.name, index, top_k=TOP_SHOWN)
marks: dict[str, list[ov.Mark]] = {panel.name: ov.selected_marks(panel, index),
                                   src.previous: ov.source_marks(panels[src.previous], src)}

values = tuple(values_of(n, tr) for n in names)
pictures = layer_pictures(loaded.identity, digit.key + layout_key(tuple(panels.values())), tuple(panels.values()),
                          values)
first = panels["input"]
input_slot.image(ov.draw_marks(pictures["input"], marks.get("input", ())),
                 caption=f"input {ov.shape_label(first.shape)}", width=first.width)
with strip:
    for group in ov.stage_groups([panels[n] for n in names[1:]]):
        chart_key = f"ov_chart_{group[0].name}"
        drawn = [ov.Drawn(p, ov.data_uri(pictures[p.name]), values[names.index(p.name)], tuple(marks.get(p.name, ())),
                          names.index(p.name)) for p in group]
        st.plotly_chart(ov.group_figure(drawn, tr.probabilities), key=chart_key, config=PLOT_CONFIG,
                        width="content", on_select=lambda k=chart_key: on_picture_click(k, names),
                        selection_mode="points")
pair = last_linear_pair(model)
st.caption("Blue is negative, white zero, red positive; the maps of one layer share one colour scale (the full "
           "colour is the layer's largest value). Dropout is left out: it changes nothing at inference."
           + (f" Nothing nonlinear sits between {pair.first} and {pair.second}: together they are one "
              f"{panels[pair.second].shape[0]}×{dict(model.named_children())[pair.first].in_features:,} matrix "
              "(the Architecture page shows it)." if pair is not None and pair.collapses else ""))
if not has_maps:
    st.info("This network has no convolution layers, so there are no feature maps to show: the input is "
            "flattened straight into a vector, and the overview shows its vectors.")

st.subheader(f"{unit_name(panel.name, index)}: {KIND_WORDS.get(panel.kind, panel.kind)}")
st.markdown(describe(panel, src, loaded))
links(panel, src, rows, loaded)
detail_figure(panel, src, tr)
