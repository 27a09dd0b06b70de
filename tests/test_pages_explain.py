"""The explanation pages (Convolution, Receptive field, Filters, Why this digit), run headless with AppTest.

Expected values come from cnn_core on the same model (trace, receptive_field, top_activating,
shift_accuracy_curve, forward passes), never from the page's own helpers. Every sentence checked here
is checked for the shipped CNN and for variants a visitor can train or upload: kernel 5 with average
pooling, padding 0 with a ReLU after fc1, and a deep MLP.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import apptest_helpers as helpers
import numpy as np
import plotly.graph_objects as go
import pytest
import torch
from apptest_helpers import chart, decode, session_model
from streamlit.testing.v1 import AppTest

from cnn_core import explain, measure
from cnn_core.architecture import receptive_field
from cnn_core.checkpoint import LoadedModel
from cnn_core.convolution import conv_layer_names
from cnn_core.data import take
from cnn_core.explain import IG_MAX_STEPS, IG_TOLERANCE, cells_in_padding, integrated_gradients, top_activating
from cnn_core.introspect import forward_layers, trace
from cnn_core.model import CNNConfig, MLPConfig, count_parameters
from cnn_core.preprocess import normalise
from ui import explain_figures as xf
from ui.figures import DIVERGING
from ui.state import SHIPPED_ID, Digit

PAGES = Path(__file__).resolve().parent.parent / "pages"
EXPLAIN_PAGES = ["5_Convolution.py", "6_Receptive_field.py", "7_Filters.py", "8_Why_this_digit.py"]

# Variants a visitor can build on the Train page, small so that measuring them takes seconds. Together with the
# shipped CNN (kernel 3, padding 1, max pooling, no ReLU after fc1) they cover each setting the pages talk about.
VARIANTS = {
    "k5-avg": CNNConfig(conv1_channels=4, conv2_channels=6, kernel_size=5, padding=1, pool="avg", hidden=16),
    "p0-relu": CNNConfig(conv1_channels=4, conv2_channels=6, kernel_size=3, padding=0, hidden=16, hidden_relu=True),
    "mlp": MLPConfig(hidden=(32, 16, 16)),
}
CNN_VARIANTS = ["k5-avg", "p0-relu"]


def run_page(name: str, pixels: np.ndarray | None = None, source: str = "test digit",
             model: LoadedModel | None = None, state: dict | None = None) -> AppTest:
    """Run a page once with ``model`` as this session's own selected model (else the shipped CNN)."""
    return helpers.run_page(PAGES / name, model=model, digit=None if pixels is None else Digit(pixels, source),
                            state=state, select=SHIPPED_ID)


def random_model(config, name: str) -> LoadedModel:
    """An eval-mode model with random weights (seeded), as a session's own model would be."""
    return session_model(config, name, scale=0.3)


def variant(name: str) -> LoadedModel:
    return random_model(VARIANTS[name], name)


def mnist_pixels(split, i: int) -> np.ndarray:
    return split.images[i].numpy().astype(np.float32) / 255


def metric(at: AppTest, label: str) -> str:
    values = [m.value for m in at.metric if m.label == label]
    assert len(values) == 1, f"no single metric {label!r}: {[m.label for m in at.metric]}"
    return values[0]


def metric_starting(at: AppTest, prefix: str):
    found = [m for m in at.metric if m.label.startswith(prefix)]
    assert len(found) == 1, f"no single metric starting {prefix!r}: {[m.label for m in at.metric]}"
    return found[0]


def texts(at: AppTest) -> str:
    """Everything the page wrote (markdown, captions, info boxes, headers), as one string."""
    parts = [e.value for kind in ("markdown", "caption", "info", "header", "subheader") for e in at.get(kind)]
    return "\n".join(str(p) for p in parts)


def in_order(node) -> list:
    """The elements under a block, in the order the page shows them (top to bottom, columns left to right)."""
    children = getattr(node, "children", None)
    if children is None:
        return [node]
    return [e for _, child in sorted(children.items()) for e in in_order(child)]


def assert_no_errors(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


@pytest.mark.parametrize("name", EXPLAIN_PAGES)
def test_pages_render_without_a_digit(name):
    at = run_page(name)
    assert_no_errors(at)
    assert any("showing a sample digit" in i.value for i in at.info)
    assert at.title


@pytest.mark.parametrize("name", EXPLAIN_PAGES)
def test_pages_render_with_a_digit(name, test_split):
    at = run_page(name, mnist_pixels(test_split, 11), "MNIST test #11")
    assert_no_errors(at)
    assert not any("showing a sample digit" in i.value for i in at.info)


def test_clickable_heatmap_reads_back_the_clicked_cell():
    values = np.arange(6 * 9, dtype=float).reshape(6, 9)
    fig = json.loads(xf.clickable_heatmap(values, marked=(2, 3)).to_json())
    points = fig["data"][1]
    custom = decode(points["customdata"])
    assert custom.shape == (6 * 9, 3)  # one clickable point per cell, on the cell's centre
    assert np.array_equal(decode(points["x"]), custom[:, 1]) and np.array_equal(decode(points["y"]), custom[:, 0])
    assert np.array_equal(custom[:, 2], values[custom[:, 0].astype(int), custom[:, 1].astype(int)])
    assert xf.cell_from_selection({"points": [{"x": 4, "y": 5, "customdata": [5, 4, 49.0]}]}) == (5, 4)
    assert xf.cell_from_selection({"points": [{"x": 7.0, "y": 1.0}]}) == (1, 7)
    assert xf.cell_from_selection({"points": []}) is None and xf.cell_from_selection(None) is None
    assert xf.bar_from_selection({"points": [{"x": 12, "y": 0.3}]}) == 12


def test_tile_grid_numbers_every_tile_and_reads_back_the_click():
    maps = np.arange(10 * 3 * 3, dtype=float).reshape(10, 3, 3) - 40
    fig = json.loads(xf.tile_grid(maps, cols=4, selected=6, clickable=True).to_json())
    z = decode(fig["data"][0]["z"])
    labels, points = fig["data"][1], fig["data"][2]
    assert labels["text"] == [str(i) for i in range(10)] and labels["textfont"]["size"] >= 12
    for i, (x, y) in enumerate(zip(decode(points["x"]), decode(points["y"]))):  # each point on its tile's centre
        assert z[int(y), int(x)] == maps[i, 1, 1]
    assert list(decode(points["customdata"])) == list(range(10))
    assert xf.tile_from_selection({"points": [{"x": 9, "y": 3, "customdata": 7}]}) == 7
    assert xf.tile_from_selection({"points": []}) is None
    # Labels never cover a cell: each label's row (just above its tile) holds no value.
    for x, y in zip(labels["x"], labels["y"]):
        assert np.isnan(z[int(y - 0.5), int(x + 0.5)])


def test_digit_with_box_outlines_the_region():
    from cnn_core.architecture import Region

    pixels = np.zeros((28, 28), dtype=np.float32)
    img = xf.digit_with_box(pixels, Region(2, 5, 10, 12), scale=3)
    assert img.shape == (84, 84, 3) and img.dtype == np.uint8
    red = (img[..., 0] > 200) & (img[..., 1] < 120)
    rows, cols = np.nonzero(red)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (2 * 3, 6 * 3 - 1, 10 * 3, 13 * 3 - 1)
    assert not red[9:15, 33:36].any()  # the inside of the box shows the digit


def test_plotly_text_shows_tags_as_text():
    assert xf.plotly_text('<a href="http://x">me</a>  \n two') == '&lt;a href="http://x"&gt;me&lt;/a&gt; two'
    assert len(xf.plotly_text("x" * 500, limit=40)) == 40


# --------------------------------------------------------------------------- 5: convolution


@pytest.mark.parametrize("layer, filter_index, row, col", [("conv1", 0, 0, 0), ("conv1", 17, 27, 13),
                                                           ("conv2", 7, 0, 13), ("conv2", 63, 6, 6)])
def test_convolution_sum_equals_the_traced_value(shipped, test_split, layer, filter_index, row, col):
    pixels = mnist_pixels(test_split, 2)
    expected = float(trace(shipped.model, normalise(pixels))[layer][filter_index, row, col])
    at = run_page("5_Convolution.py", pixels)
    at.selectbox(key="cv_layer").set_value(layer).run()
    at.slider(key="cv_filter").set_value(filter_index).run()
    at.number_input(key="cv_row").set_value(row).run()
    at.number_input(key="cv_col").set_value(col).run()
    assert_no_errors(at)
    assert float(metric(at, "Sum of products + bias")) == pytest.approx(expected, abs=6e-5)
    shown = metric_starting(at, f"{layer}[{filter_index}, {row}, {col}]")
    assert float(shown.value) == pytest.approx(expected, abs=6e-5)


def test_convolution_steps_left_to_right_then_down(shipped, test_split):
    at = run_page("5_Convolution.py", mnist_pixels(test_split, 2))
    at.number_input(key="cv_col").set_value(26).run()
    at.button(key="cv_next").click().run()
    metric_starting(at, "conv1[0, 0, 27]")
    at.button(key="cv_next").click().run()  # the end of a row: on to the start of the next one
    metric_starting(at, "conv1[0, 1, 0]")
    assert at.slider(key="cv_slider").value == 28
    at.button(key="cv_back").click().run()
    metric_starting(at, "conv1[0, 0, 27]")
    at.button(key="cv_next_row").click().run()
    metric_starting(at, "conv1[0, 1, 27]")
    at.slider(key="cv_slider").set_value(28 * 5 + 3).run()
    metric_starting(at, "conv1[0, 5, 3]")
    assert (at.number_input(key="cv_row").value, at.number_input(key="cv_col").value) == (5, 3)
    assert_no_errors(at)


def test_convolution_play_steps_and_stops_at_the_end(test_split):
    at = run_page("5_Convolution.py", mnist_pixels(test_split, 2))
    at.slider(key="cv_slider").set_value(10).run()
    at.toggle(key="cv_play").set_value(True).run()
    assert at.slider(key="cv_slider").value == 11  # each run of the playing view is one step
    at.selectbox(key="cv_speed").set_value("1 row").run()
    assert at.slider(key="cv_slider").value == 11 + 28
    at.slider(key="cv_slider").set_value(28 * 28 - 1).run()
    assert_no_errors(at)
    assert at.toggle(key="cv_play").value is False  # the window reached the end: playing stops
    metric_starting(at, "conv1[0, 27, 27]")


def test_convolution_layer_switch_keeps_position_in_range(test_split):
    at = run_page("5_Convolution.py", mnist_pixels(test_split, 2))
    at.slider(key="cv_slider").set_value(28 * 28 - 1).run()
    at.selectbox(key="cv_layer").set_value("conv2").run()
    assert_no_errors(at)
    metric_starting(at, "conv2[0, 13, 13]")  # the last position of the smaller conv2 map
    at.slider(key="cv_filter").set_value(60).run()
    at.selectbox(key="cv_layer").set_value("conv1").run()
    assert_no_errors(at)
    assert at.slider(key="cv_filter").value == 31


def test_convolution_explains_the_padding_before_showing_it(test_split):
    at = run_page("5_Convolution.py", mnist_pixels(test_split, 2))
    fig = chart(at, "cv_window")
    image = decode(fig["data"][0]["z"])
    assert image.shape == (30, 30)  # 28x28 and a border of padding 1
    assert np.isnan(image[0]).all() and np.isnan(image[:, -1]).all()  # the border is drawn apart, as padding
    window = fig["layout"]["shapes"][-1]  # drawn last: at position (0, 0) the window starts in the padding
    assert (window["x0"], window["x1"], window["y0"], window["y1"]) == (-1.5, 1.5, -1.5, 1.5)
    assert any("5 of the 9 window cells lie in the zero padding" in c.value for c in at.caption)
    # The sentence about the border comes before the picture of it.
    order = in_order(at.main)
    note = next(i for i, e in enumerate(order) if "paper-coloured border is the padding" in str(getattr(e, "value", "")))
    picture = next(i for i, e in enumerate(order) if getattr(e, "key", None) == "cv_window")
    assert note < picture


@pytest.mark.parametrize("name", CNN_VARIANTS)
def test_convolution_of_a_variant_follows_its_kernel_and_padding(name, test_split):
    loaded = variant(name)
    config = VARIANTS[name]
    k, pad = config.kernel_size, config.padding
    pixels = mnist_pixels(test_split, 8)
    tr = trace(loaded.model, normalise(pixels))
    _, h, w = tr["conv2"].shape
    row, col = h // 2, w - 1
    at = run_page("5_Convolution.py", pixels, model=loaded,
                  state={"cv_layer": "conv2", "cv_filter": 5, "cv_index": row * w + col})
    assert_no_errors(at)
    assert float(metric(at, "Sum of products + bias")) == pytest.approx(float(tr["conv2"][5, row, col]), abs=6e-5)
    metric_starting(at, f"conv2[5, {row}, {col}]")
    assert at.slider(key="cv_slider").max == h * w - 1
    assert chart(at, "cv_contributions")["layout"]["yaxis"]["title"]["text"] == f"sum of its {k * k} products"
    assert f"Each bar is the sum of the {k * k} products of one input map" in texts(at)
    if pad == 0:
        assert "This layer has no padding" in texts(at) and "paper-coloured border" not in texts(at)
    else:
        assert "paper-coloured border is the padding" in texts(at)
    at = run_page("5_Convolution.py", pixels, model=loaded, state={"cv_layer": "conv1", "cv_index": 0})
    assert (f"Sum of all {k * k} products" if k != 3 else "Sum of the 9 products") in texts(at)
    assert len(decode(chart(at, "cv_kernel_0")["data"][0]["z"])) == k  # the weights grid is k x k


# --------------------------------------------------------------------------- 6: receptive field


@pytest.mark.parametrize("layer", ["conv1", "relu1", "pool1", "conv2", "relu2", "pool2", "fc1"])
def test_receptive_field_size_of_each_layer(shipped, test_split, layer):
    at = run_page("6_Receptive_field.py", mnist_pixels(test_split, 3))
    at.selectbox(key="rf_layer").set_value(layer).run()
    assert_no_errors(at)
    if layer.startswith("fc"):
        region = receptive_field(shipped.model, layer)
        assert metric(at, "Unit") == f"{layer}[{at.number_input(key='rf_unit').value}]"
    else:
        row, col = at.number_input(key="rf_row").value, at.number_input(key="rf_col").value
        region = receptive_field(shipped.model, layer, row, col)
        assert metric(at, "Unit") == f"{layer}[{at.slider(key='rf_channel').value}, {row}, {col}]"
    assert metric(at, "Receptive field") == f"{region.height} × {region.width} px"
    if shipped.config == CNNConfig():  # the classic network: the sizes the article gives
        classic = {"conv1": 3, "relu1": 3, "pool1": 4, "conv2": 8, "relu2": 8, "pool2": 10, "fc1": 28}
        assert region.height == region.width == classic[layer]


def test_receptive_field_at_the_border_explains_the_padding(shipped, test_split):
    at = run_page("6_Receptive_field.py", mnist_pixels(test_split, 3))
    at.selectbox(key="rf_layer").set_value("pool2").run()
    at.number_input(key="rf_row").set_value(0).run()
    at.number_input(key="rf_col").set_value(6).run()
    assert_no_errors(at)
    region = receptive_field(shipped.model, "pool2", 0, 6)
    inside = region.clipped()
    padded = cells_in_padding(region)
    assert padded > 0
    assert metric(at, "Real pixels in it") == f"{inside.height} × {inside.width} = {inside.height * inside.width}"
    assert any(f"{padded} of the {region.height * region.width} cells" in i.value for i in at.info)
    # The table walks back to the input and ends with the receptive field itself.
    assert len(at.dataframe) == 1
    table = at.dataframe[0].value
    assert table.iloc[-1]["reads from"] == "input"
    assert table.iloc[-1]["window"] == f"{region.height}×{region.width}"


def test_receptive_field_layer_switch_keeps_the_unit_in_place(test_split):
    at = run_page("6_Receptive_field.py", mnist_pixels(test_split, 3))
    at.selectbox(key="rf_layer").set_value("conv1").run()
    at.number_input(key="rf_row").set_value(27).run()
    at.number_input(key="rf_col").set_value(8).run()
    at.selectbox(key="rf_layer").set_value("pool2").run()
    assert_no_errors(at)
    assert (at.number_input(key="rf_row").value, at.number_input(key="rf_col").value) == (6, 2)
    at.selectbox(key="rf_layer").set_value("fc1").run()
    at.selectbox(key="rf_layer").set_value("conv2").run()
    assert_no_errors(at)


def colours_of(colorscale: str) -> list:
    """A named Plotly colour scale as a figure's JSON spells it out."""
    return json.loads(go.Figure(go.Heatmap(z=[[0]], colorscale=colorscale)).to_json())["data"][0]["colorscale"]


def test_receptive_field_maps_use_the_feature_maps_colours(test_split):
    """A convolution's map is blue-white-red around zero (as on Feature maps), a map after ReLU Viridis."""
    at = run_page("6_Receptive_field.py", mnist_pixels(test_split, 3), state={"rf_layer": "conv2"})
    heatmap = chart(at, "rf_map")["data"][0]
    assert heatmap["colorscale"] == colours_of(DIVERGING) and heatmap["zmin"] == -heatmap["zmax"]
    at = run_page("6_Receptive_field.py", mnist_pixels(test_split, 3), state={"rf_layer": "relu2"})
    assert chart(at, "rf_map")["data"][0]["colorscale"] == colours_of("Viridis")


def fc_sentence_expected(model: torch.nn.Module, layer: str) -> tuple[str, bool]:
    """The share of the parameters ``layer`` holds, computed here from the modules, and whether it is the most."""
    counts = {name: sum(p.numel() for p in m.parameters()) for name, m in model.named_children()}
    total = count_parameters(model)
    return f"{counts[layer]:,}** parameters, {counts[layer] / total:.1%} of the network's {total:,}", \
        counts[layer] == max(counts.values())


@pytest.mark.parametrize("name", ["shipped", *VARIANTS])
def test_receptive_field_states_what_each_fully_connected_layer_costs(name, shipped, test_split):
    loaded = shipped if name == "shipped" else variant(name)
    fcs = [n for n, m in loaded.model.named_children() if isinstance(m, torch.nn.Linear)]
    for layer in (fcs[0], fcs[-1]):
        at = run_page("6_Receptive_field.py", mnist_pixels(test_split, 5), model=None if name == "shipped" else loaded,
                      state={"rf_layer": layer})
        assert_no_errors(at)
        words = texts(at)
        share, most = fc_sentence_expected(loaded.model, layer)
        assert share in words
        assert "most of the network's parameters" not in words
        assert ("more than any other layer" in words or "more than all its other layers together" in words) == most
        assert metric(at, "Receptive field") == "28 × 28 px"


@pytest.mark.parametrize("name", CNN_VARIANTS)
def test_receptive_field_of_a_variant(name, test_split):
    loaded = variant(name)
    k, pad = VARIANTS[name].kernel_size, VARIANTS[name].padding
    at = run_page("6_Receptive_field.py", mnist_pixels(test_split, 8), model=loaded,
                  state={"rf_layer": "pool2", "rf_row": 1, "rf_col": 2})
    assert_no_errors(at)
    region = receptive_field(loaded.model, "pool2", 1, 2)
    # Back from pool2 (2x2, stride 2): 2 rows of conv2, + (k - 1), x2 through pool1, + (k - 1) = the input window.
    assert region.height == (2 + k - 1) * 2 + k - 1
    assert metric(at, "Receptive field") == f"{region.height} × {region.width} px"
    assert metric(at, "Unit") == "pool2[0, 1, 2]"
    words = texts(at)
    assert f"a convolution with a {k}×{k} kernel adds {k - 1} rows and columns" in words
    assert ("paper-coloured border is the zero padding" in words) == (pad > 0)
    if pad == 0:  # no padding: the input picture has no border at all
        x_range = chart(at, "rf_input")["layout"]["xaxis"]["range"]
        assert x_range == [-0.5, 27.5]


def test_receptive_field_of_an_mlp_says_it_has_no_convolutions(test_split):
    at = run_page("6_Receptive_field.py", mnist_pixels(test_split, 8), model=variant("mlp"))
    assert_no_errors(at)
    assert "has no convolutions" in texts(at)
    assert metric(at, "Receptive field") == "28 × 28 px"


# --------------------------------------------------------------------------- 7: filters


def gallery_captions(at: AppTest) -> list[str]:
    assert len(at.image) >= 1
    return list(at.image[0].captions)


def test_filters_page_shows_the_top_test_digits(shipped, test_split):
    at = run_page("7_Filters.py", mnist_pixels(test_split, 4))
    at.slider(key="fl_filter_conv1").set_value(9).run()
    assert_no_errors(at)
    top = top_activating(shipped.model, test_split.images, "conv1", 10)
    expected = [f"{int(test_split.labels[i])} · {v:.2f}" for i, v in zip(top.indices[9].tolist(),
                                                                         top.values[9].tolist())]
    assert gallery_captions(at) == expected
    assert "excite filter 9 most" in texts(at)


def test_filters_second_visit_ranks_nothing(monkeypatch, test_split):
    """The ranking is computed once per model (measurements), never at page load."""
    run_page("7_Filters.py", mnist_pixels(test_split, 4))  # measured now, or read from the stored file

    def refuse(*args, **kwargs):
        raise AssertionError("the Filters page ranked digits at page load")

    monkeypatch.setattr(explain, "top_activating", refuse)
    monkeypatch.setattr(measure, "top_activating", refuse)
    at = run_page("7_Filters.py", mnist_pixels(test_split, 5))
    assert_no_errors(at)
    assert len(gallery_captions(at)) == 10


@pytest.mark.parametrize("name", CNN_VARIANTS)
def test_filters_of_a_variant(name, test_split):
    loaded = variant(name)
    k = VARIANTS[name].kernel_size
    at = run_page("7_Filters.py", mnist_pixels(test_split, 4), model=loaded, state={"fl_filter_conv1": 2})
    assert_no_errors(at)
    headers = [h.value for h in at.header]
    assert headers == [f"conv1: 4 filters of 1×{k}×{k}", f"conv2: 6 filters of 4×{k}×{k}"]
    top = top_activating(loaded.model, test_split.images, "conv1", 10)
    assert gallery_captions(at) == [f"{int(test_split.labels[i])} · {v:.2f}"
                                    for i, v in zip(top.indices[2].tolist(), top.values[2].tolist())]
    assert len(decode(chart(at, "fl_big_conv1")["data"][0]["z"])) == k


def test_filters_of_an_mlp_stops_with_a_sentence(test_split):
    at = run_page("7_Filters.py", mnist_pixels(test_split, 4), model=variant("mlp"))
    assert_no_errors(at)
    assert "has no convolution layers" in texts(at)
    assert not at.image or not any(i.captions for i in at.image[1:])


# --------------------------------------------------------------------------- 8: why this digit


def test_why_page_matches_the_trace(shipped, test_split):
    pixels = mnist_pixels(test_split, 6)
    tr = trace(shipped.model, normalise(pixels))
    at = run_page("8_Why_this_digit.py", pixels)
    assert_no_errors(at)
    assert metric(at, "Prediction") == str(tr.prediction)
    # the raw softmax, named so (the home page shows calibrated probabilities)
    assert [m.proto.delta for m in at.metric if m.label == "Prediction"] == [f"softmax {tr.confidence:.1%}"]
    assert metric(at, "as drawn: prediction") == str(tr.prediction)
    assert at.selectbox(key="why_target").value == tr.prediction
    # The "try it" view: moved 3 px right, the bars are the network's probabilities for that image.
    at.slider(key="why_dx").set_value(3).run()
    assert_no_errors(at)
    moved = np.zeros_like(pixels)
    moved[:, 3:] = pixels[:, :-3]
    expected = trace(shipped.model, normalise(moved)).probabilities.numpy()
    bars = decode(chart(at, "why_moved_probs")["data"][0]["y"])
    assert np.allclose(bars, expected, atol=1e-5)
    at.radio(key="why_method").set_value("Gradient × input").run()
    at.selectbox(key="why_target").set_value((tr.prediction + 1) % 10).run()
    assert_no_errors(at)


def shown_completeness(at: AppTest, model: torch.nn.Module, pixels: np.ndarray, target: int) -> float:
    """Check the page's integrated-gradients numbers against a forward pass; returns the error it shows."""
    with torch.inference_mode():
        logits = forward_layers(model, torch.stack([normalise(pixels), normalise(np.zeros_like(pixels))]))
    difference = float(logits[0, target] - logits[1, target])
    attributions = decode(chart(at, "why_overlay")["data"][1]["z"])
    assert float(metric(at, "Score of your digit − score of black")) == pytest.approx(difference, abs=1e-3)
    assert float(metric(at, "Sum of the attributions")) == pytest.approx(attributions.sum(), abs=1e-3)
    error = float(metric(at, "Completeness error"))
    assert error == pytest.approx(abs(attributions.sum() - difference), abs=2e-4)
    return error


def test_integrated_gradients_add_up_within_the_stated_tolerance(shipped, test_split):
    for i in (0, 1, 2, 3):
        pixels = mnist_pixels(test_split, i)
        sal = integrated_gradients(shipped.model, pixels)
        assert abs(sal.completeness_gap) <= IG_TOLERANCE, (i, sal.steps, sal.completeness_gap)
        with torch.inference_mode():
            logits = forward_layers(shipped.model, torch.stack([normalise(pixels), normalise(np.zeros_like(pixels))]))
        assert float(sal.attributions.sum()) == pytest.approx(float(logits[0, sal.target] - logits[1, sal.target]),
                                                              abs=IG_TOLERANCE + 1e-4)
    hard = integrated_gradients(shipped.model, mnist_pixels(test_split, 3), tolerance=1e-9, max_steps=64)
    assert hard.steps == 64 and abs(hard.completeness_gap) > 1e-9  # capped: it says how far off it still is


def test_why_page_states_the_completeness_error(shipped, test_split):
    pixels = mnist_pixels(test_split, 3)
    at = run_page("8_Why_this_digit.py", pixels)
    target = trace(shipped.model, normalise(pixels)).prediction
    error = shown_completeness(at, shipped.model, pixels, target)
    assert error <= IG_TOLERANCE
    assert "exactly" not in texts(at) and f"exact to within {error:.4f}" in texts(at)


def expected_shift_curve(model: torch.nn.Module, split):
    part = take(split, measure.SHIFT_DIGITS)
    return explain.shift_accuracy_curve(model, part.images, part.labels, measure.SHIFTS)


def test_why_page_accuracy_curve_on_the_test_digits(shipped, test_split):
    at = run_page("8_Why_this_digit.py", mnist_pixels(test_split, 6))
    fig = chart(at, "why_accuracy")
    n = int(re.search(r"Accuracy on ([\d,]+) MNIST test digits", texts(at)).group(1).replace(",", ""))
    assert n == measure.SHIFT_DIGITS
    curve = expected_shift_curve(shipped.model, test_split)
    sideways, updown = (decode(t["y"]) for t in fig["data"])
    assert np.allclose(sideways, curve.horizontal) and np.allclose(updown, curve.vertical)
    assert metric(at, "Accuracy, digits where they were") == f"{curve.horizontal[len(curve.shifts) // 2]:.1%}"
    assert "CNN_EXPLORER_DATA" not in texts(at)


@pytest.mark.parametrize("name", [*VARIANTS])
def test_why_page_follows_a_variant(name, test_split):
    loaded = variant(name)
    pixels = mnist_pixels(test_split, 7)
    tr = trace(loaded.model, normalise(pixels))
    at = run_page("8_Why_this_digit.py", pixels, model=loaded)
    assert_no_errors(at)
    assert metric(at, "Prediction") == str(tr.prediction)
    words = texts(at)
    config = VARIANTS[name]
    if isinstance(config, MLPConfig):
        assert "has no convolutions" in words and "pooling" not in words
    elif config.pool == "avg":
        assert "average pooling averages each 2×2 block" in words and "max pooling" not in words
    else:
        assert "max pooling keeps the largest value of each 2×2 block" in words
    if conv_layer_names(loaded.model):
        assert "But fc1, the first fully connected layer" in words
    error = shown_completeness(at, loaded.model, pixels, tr.prediction)
    steps = int(re.search(r"([\d,]+) steps", words).group(1).replace(",", ""))
    assert error <= IG_TOLERANCE or steps == IG_MAX_STEPS
    curve = expected_shift_curve(loaded.model, test_split)
    sideways, updown = (decode(t["y"]) for t in chart(at, "why_accuracy")["data"])
    assert np.allclose(sideways, curve.horizontal) and np.allclose(updown, curve.vertical)


# --------------------------------------------------------------------------- other models


@pytest.mark.parametrize("name", EXPLAIN_PAGES)
def test_pages_with_a_model_without_convolutions(name, test_split):
    mlp = variant("mlp")
    at = run_page(name, mnist_pixels(test_split, 8), model=mlp)
    assert_no_errors(at)
    if name in ("5_Convolution.py", "7_Filters.py"):
        assert any("has no convolution layers" in i.value for i in at.info)
    if name == "6_Receptive_field.py":
        assert metric(at, "Receptive field") == "28 × 28 px"
    if name == "8_Why_this_digit.py":
        expected = trace(mlp.model, normalise(mnist_pixels(test_split, 8))).prediction
        assert metric(at, "Prediction") == str(expected)


def test_a_visitor_named_model_and_digit_are_shown_as_text(test_split):
    at = run_page("5_Convolution.py", mnist_pixels(test_split, 8), source="upload [x](http://evil) *y*.png",
                  model=variant("k5-avg"))
    words = texts(at)
    assert "Follow it here on **upload \\[x\\]\\(http" in words and "[x](http" not in words and "*y*" not in words
    mlp = random_model(VARIANTS["mlp"], "[click me](http://example.com) **bold**")
    for page in ("5_Convolution.py", "7_Filters.py", "6_Receptive_field.py"):
        words = texts(run_page(page, mnist_pixels(test_split, 8), model=mlp))
        assert "\\[click me\\]\\(http" in words and "[click me](http" not in words, page
