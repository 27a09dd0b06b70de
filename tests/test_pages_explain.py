"""The explanation pages (Convolution, Receptive field, Filters, Why this digit), run headless with AppTest."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from streamlit.testing.v1 import AppTest

from apptest_helpers import chart, decode

from cnn_core.architecture import receptive_field
from cnn_core.checkpoint import LoadedModel
from cnn_core.data import take
from cnn_core.evaluate import accuracy
from cnn_core.explain import cells_in_padding, top_activating
from cnn_core.introspect import trace
from cnn_core.model import CNNConfig, MLPConfig, build_model
from cnn_core.preprocess import normalise
from ui import explain_figures as xf
from ui.state import DIGIT_KEY, MODEL_KEY, OWN_MODELS_KEY, Digit, model_id_of

PAGES = Path(__file__).resolve().parent.parent / "pages"
EXPLAIN_PAGES = ["5_Convolution.py", "6_Receptive_field.py", "7_Filters.py", "8_Why_this_digit.py"]


def run_page(name: str, pixels: np.ndarray | None = None, source: str = "test digit",
             model: LoadedModel | None = None, state: dict | None = None) -> AppTest:
    """Run a page once; ``model`` becomes this session's own model, selected in the sidebar; ``state`` is
    set in session state before the run (widget values included)."""
    at = AppTest.from_file(str(PAGES / name), default_timeout=180)
    for key, value in (state or {}).items():
        at.session_state[key] = value
    if pixels is not None:
        at.session_state[DIGIT_KEY] = Digit(pixels, source)
    if model is not None:
        model_id = model_id_of(model)
        at.session_state[OWN_MODELS_KEY] = {model_id: model}
        at.session_state[MODEL_KEY] = model_id
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def random_model(config, name: str) -> LoadedModel:
    """An eval-mode model with random weights, as a session's own model would be."""
    torch.manual_seed(0)
    model = build_model(config).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return LoadedModel(model=model, config=config, card={"name": name, "sha256": f"test-{name}"})


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


def test_convolution_shows_the_padded_window(test_split):
    at = run_page("5_Convolution.py", mnist_pixels(test_split, 2))
    fig = chart(at, "cv_window")
    image = decode(fig["data"][0]["z"])
    assert image.shape == (30, 30)  # 28x28 and a border of padding 1
    assert np.isnan(image[0]).all() and np.isnan(image[:, -1]).all()  # the border is drawn apart, as padding
    window = fig["layout"]["shapes"][-1]  # drawn last: at position (0, 0) the window starts in the padding
    assert (window["x0"], window["x1"], window["y0"], window["y1"]) == (-1.5, 1.5, -1.5, 1.5)
    assert any("5 of the 9 window cells lie in the zero padding" in c.value for c in at.caption)


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


# --------------------------------------------------------------------------- 7: filters


def test_filters_page_shows_the_top_test_digits(shipped, test_split):
    at = run_page("7_Filters.py", mnist_pixels(test_split, 4))
    at.slider(key="fl_filter_conv1").set_value(9).run()
    assert_no_errors(at)
    top = top_activating(shipped.model, test_split.images, "conv1", 10)
    fig = chart(at, "fl_gallery_conv1")
    captions = fig["data"][1]["text"]
    expected = [f"{int(test_split.labels[i])} · {v:.2f}" for i, v in zip(top.indices[9].tolist(),
                                                                         top.values[9].tolist())]
    assert captions == expected
    assert "filter 9" in fig["layout"]["title"]["text"]


def test_filters_page_without_data_ranks_the_samples(monkeypatch, tmp_path, test_split):
    monkeypatch.setenv("CNN_EXPLORER_DATA", str(tmp_path))
    at = run_page("7_Filters.py", mnist_pixels(test_split, 4))
    assert_no_errors(at)
    assert any("No MNIST test digits found" in i.value for i in at.info)


# --------------------------------------------------------------------------- 8: why this digit


def test_why_page_matches_the_trace(shipped, test_split):
    pixels = mnist_pixels(test_split, 6)
    tr = trace(shipped.model, normalise(pixels))
    at = run_page("8_Why_this_digit.py", pixels)
    assert_no_errors(at)
    assert metric(at, "Prediction") == str(tr.prediction)
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


def test_why_page_accuracy_curve_on_the_test_split(shipped, test_split):
    at = run_page("8_Why_this_digit.py", mnist_pixels(test_split, 6))
    fig = chart(at, "why_accuracy")
    n = int(re.search(r"Accuracy on ([\d,]+) test digits", fig["layout"]["title"]["text"]).group(1).replace(",", ""))
    first = take(test_split, n)
    plain = accuracy(shipped.model, first)
    assert metric(at, "Accuracy, digits where they were") == f"{plain:.1%}"
    sideways, updown = (decode(t["y"]) for t in fig["data"])
    assert sideways[len(sideways) // 2] == pytest.approx(plain) == updown[len(updown) // 2]


def test_why_page_without_data(monkeypatch, tmp_path, test_split):
    monkeypatch.setenv("CNN_EXPLORER_DATA", str(tmp_path))
    at = run_page("8_Why_this_digit.py", mnist_pixels(test_split, 6))
    assert_no_errors(at)
    assert any("No MNIST test digits to measure on" in i.value for i in at.info)


# --------------------------------------------------------------------------- other models


# With a session's own model selected, AppTest cannot rerun a page: the sidebar's Model box names own models
# from session state, which AppTest's widget replay cannot read. So each case here is one run, its widget
# values set beforehand.
VARIANT = CNNConfig(kernel_size=5, padding=0, conv1_channels=4, conv2_channels=6, hidden=16)


@pytest.mark.parametrize("name", EXPLAIN_PAGES)
def test_pages_follow_a_variant_cnn(name, test_split):
    variant = random_model(VARIANT, "k5p0-variant")
    at = run_page(name, mnist_pixels(test_split, 8), model=variant)
    assert_no_errors(at)


def test_convolution_of_a_variant_cnn(test_split):
    variant = random_model(VARIANT, "k5p0-variant")
    pixels = mnist_pixels(test_split, 8)
    expected = float(trace(variant.model, normalise(pixels))["conv2"][5, 3, 7])
    # conv2 of this variant: 12x12 pool1 input, kernel 5, no padding -> 8x8 maps; (3, 7) is position 3*8 + 7.
    at = run_page("5_Convolution.py", pixels, model=variant,
                  state={"cv_layer": "conv2", "cv_filter": 5, "cv_index": 3 * 8 + 7})
    assert_no_errors(at)
    assert float(metric(at, "Sum of products + bias")) == pytest.approx(expected, abs=6e-5)
    metric_starting(at, "conv2[5, 3, 7]")
    assert at.slider(key="cv_slider").max == 8 * 8 - 1
    assert any("no padding" in c.value for c in at.caption)


def test_receptive_field_of_a_variant_cnn(test_split):
    variant = random_model(VARIANT, "k5p0-variant")
    at = run_page("6_Receptive_field.py", mnist_pixels(test_split, 8), model=variant,
                  state={"rf_layer": "pool2", "rf_row": 1, "rf_col": 2})
    assert_no_errors(at)
    region = receptive_field(variant.model, "pool2", 1, 2)
    # Back from pool2: 2 rows of conv2, + (5 - 1) of pool1, x2 through pool1, + (5 - 1) of the input = 16.
    assert region.height == (2 + 5 - 1) * 2 + 5 - 1
    assert metric(at, "Receptive field") == f"{region.height} × {region.width} px"
    assert metric(at, "Unit") == "pool2[0, 1, 2]"


@pytest.mark.parametrize("name", EXPLAIN_PAGES)
def test_pages_with_a_model_without_convolutions(name, test_split):
    mlp = random_model(MLPConfig(hidden=(32,)), "mlp")
    at = run_page(name, mnist_pixels(test_split, 8), model=mlp)
    assert_no_errors(at)
    if name in ("5_Convolution.py", "7_Filters.py"):
        assert any("has no convolution layers" in i.value for i in at.info)
    if name == "6_Receptive_field.py":
        assert metric(at, "Receptive field") == "28 × 28 px"
    if name == "8_Why_this_digit.py":
        expected = trace(mlp.model, normalise(mnist_pixels(test_split, 8))).prediction
        assert metric(at, "Prediction") == str(expected)
