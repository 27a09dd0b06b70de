"""The Overview page (pages/0_Overview.py) run headless with AppTest, and its pictures (ui/overview.py).

Expected values come from cnn_core (layer_table, trace, unit_sources) on the same models the page shows,
including variants put into the session the way the app keeps a visitor's own models.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import apptest_helpers as helpers
import numpy as np
import pytest
import torch
from apptest_helpers import decode
from PIL import Image
from streamlit.testing.v1 import AppTest

from cnn_core.architecture import layer_table
from cnn_core.checkpoint import LoadedModel, sha256_bytes, state_dict_bytes
from cnn_core.introspect import trace
from cnn_core.model import CNNConfig, MLPConfig, build_model
from cnn_core.preprocess import normalise
from cnn_core.samples import load_samples
from cnn_core.unit_sources import shown_layers, unit_sources
from ui import overview as ov
from ui.state import SHIPPED_ID, Digit

PAGE = str(Path(__file__).resolve().parent.parent / "pages" / "0_Overview.py")
SELECTED = "ov_selected"
LAPTOP_CONTENT = 820  # pixels of page width beside the sidebar at 1280x800 (measured in chromium)
VARIANTS = {
    "kernel 5": CNNConfig(kernel_size=5),
    "padding 0": CNNConfig(padding=0),
    "average pooling": CNNConfig(pool="avg"),
    "ReLU after fc1": CNNConfig(hidden_relu=True),
    "other channels": CNNConfig(conv1_channels=8, conv2_channels=24, kernel_size=5, padding=2),
    "MLP": MLPConfig(hidden=(128,)),
    "deep MLP": MLPConfig(hidden=(256, 64, 32)),
}


# --- helpers ---------------------------------------------------------------------------------------------


def own_model(config, seed: int = 0) -> LoadedModel:
    """An untrained model with a card like the app gives a visitor's own models."""
    torch.manual_seed(seed)
    model = build_model(config).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    card = {"name": "variant", "architecture": config.to_dict(), "sha256": sha256_bytes(state_dict_bytes(model))}
    return LoadedModel(model, config, card)


def run_page(loaded: LoadedModel | None = None, digit: Digit | None = None, selected: dict | None = None) -> AppTest:
    return helpers.run_page(PAGE, model=loaded, digit=digit, state={SELECTED: selected} if selected else None,
                            select=SHIPPED_ID, timeout=120)  # without a variant: the `shipped` fixture's model


def sample_digit(i: int = 3) -> Digit:
    s = load_samples()[i]
    return Digit(s.pixels, f"sample {s.label}")


def figures(at: AppTest) -> dict[str, dict]:
    """The strip's charts, by key."""
    return {c.key: json.loads(c.proto.spec) for c in at.get("plotly_chart") if c.key.startswith("ov_chart_")}


def layer_titles(fig: dict) -> list[tuple[str, str]]:
    """(name, shape) written above each picture of a chart."""
    out = []
    for a in fig["layout"].get("annotations", []):
        name, shape = a["text"].split("<br>")
        out.append((name.replace("<b>", "").replace("</b>", ""), shape.split(">")[1].split("<")[0]))
    return out


def traces(fig: dict, name: str) -> list[dict]:
    return [t for t in fig["data"] if t.get("name") == name]


def rectangles(fig: dict, style: str) -> list[tuple[float, float, float, float]]:
    """The rectangles of the marks trace ``style`` (outlines joined by None breaks)."""
    found = traces(fig, style)
    if not found:
        return []
    xs, ys = list(found[0]["x"]), list(found[0]["y"])
    rects = []
    for i in range(0, len(xs), 6):
        x, y = xs[i: i + 5], ys[i: i + 5]
        rects.append((min(x), min(y), max(x), max(y)))
    return rects


def target_at(fig: dict, point: tuple[float, float]) -> list[int]:
    """The [layer, block] of the click target nearest to a point: what a click there selects."""
    targets = traces(fig, "targets")  # one trace per layer of the chart
    xs = np.concatenate([decode(t["x"]) for t in targets])
    ys = np.concatenate([decode(t["y"]) for t in targets])
    custom = np.concatenate([decode(t["customdata"]).reshape(-1, 3) for t in targets])
    nearest = int(np.argmin((xs - point[0]) ** 2 + (ys - point[1]) ** 2))
    return [int(v) for v in custom[nearest][:2]]


def centre(rect: tuple[float, float, float, float]) -> tuple[float, float]:
    return (rect[0] + rect[2]) / 2, (rect[1] + rect[3]) / 2


def texts(at: AppTest) -> str:
    return "\n".join(m.value for m in at.markdown)


def _has_button(at: AppTest, key: str) -> bool:
    return any(b.key == key for b in at.button)


# --- the page on the shipped network ------------------------------------------------------------------------


def test_the_default_view_shows_every_layer_and_the_prediction(shipped):
    at = run_page()
    sample = load_samples()[0]  # the page's fallback digit
    tr = trace(shipped.model, normalise(sample.pixels))
    figs = figures(at)
    assert list(figs) == ["ov_chart_conv1", "ov_chart_conv2", "ov_chart_flatten"]
    rows = {r.name: r for r in layer_table(shipped.model)}
    shown = [t for f in figs.values() for t in layer_titles(f)]
    assert shown == [(n, "×".join(map(str, rows[n].output_shape))) for n in shown_layers(shipped.model)]
    # Each map's click target shows the map's largest value when the pointer is on it.
    names = ["input", *shown_layers(shipped.model)]
    for t in traces(figs["ov_chart_conv1"], "targets"):
        custom = decode(t["customdata"]).reshape(-1, 3)
        layer = names[int(custom[0, 0])]
        np.testing.assert_array_equal(custom[:, 1], np.arange(len(custom)))
        np.testing.assert_allclose(custom[:, 2], tr[layer].amax(dim=(1, 2)).numpy(), rtol=1e-6)
    intro = at.markdown[0].value
    assert "288 feature maps, then vectors of 3,136, 128 and 10 values" in intro
    assert f"reads a **{tr.prediction}** (softmax {tr.confidence:.1%})" in intro
    # Nothing selected yet: the answer, and the fc1 units that push it most.
    assert at.subheader[0].value == f"fc2[{tr.prediction}]: fully connected"
    src = unit_sources(shipped.model, tr, "fc2", (tr.prediction,))
    assert f"**fc2[{tr.prediction}] = {src.value:.3f}**" in texts(at)
    strong = rectangles(figs["ov_chart_flatten"], "strong")
    assert len(strong) == len(src.strongest) == 8
    assert sorted(target_at(figs["ov_chart_flatten"], centre(r))[1] for r in strong) == sorted(src.strongest)
    assert {target_at(figs["ov_chart_flatten"], centre(r))[0] for r in strong} == {names.index("fc1")}
    assert any("Nothing nonlinear sits between fc1 and fc2: together they are one 10×3,136 matrix" in c.value
               for c in at.caption)
    assert _has_button(at, "ov_go_arch")  # the fc lesson is one click away


def test_a_selected_convolution_unit_lights_up_its_window_in_every_input_map(shipped):
    digit = sample_digit(5)
    tr = trace(shipped.model, normalise(digit.pixels))
    at = run_page(digit=digit, selected={"layer": "conv2", "block": 5, "index": None})
    r, k = divmod(int(tr["conv2"][5].argmax()), tr["conv2"].shape[-1])
    assert at.subheader[0].value == f"conv2[5, {r}, {k}]: convolution"
    src = unit_sources(shipped.model, tr, "conv2", (5, r, k), top_k=8)
    text = texts(at)
    assert f"**conv2[5, {r}, {k}] = {src.value:.3f}**" in text
    for c in src.strongest[:3]:
        assert f"{c} ({float(src.contributions[c]):+.2f})" in text
    fig = figures(at)["ov_chart_conv1"]  # pool1, the layer conv2 reads, is drawn in the first chart
    names = ["input", *shown_layers(shipped.model)]
    windows = rectangles(fig, "source")
    assert len(windows) == 32  # the same window in each of the 32 maps of pool1
    assert sorted(target_at(fig, centre(w))[1] for w in windows) == list(range(32))
    assert {target_at(fig, centre(w))[0] for w in windows} == {names.index("pool1")}
    cell = ov.map_scale(14)  # pool1's maps are 14x14: pixels per cell
    for w in windows:
        assert w[2] - w[0] <= 3 * cell + 2  # at most 3x3 cells (fewer at the border), grown by 1 on each side
    strongest = rectangles(fig, "strong")
    assert sorted(target_at(fig, centre(w))[1] for w in strongest) == sorted(src.strongest[:3])
    # The unit itself is outlined in its own chart, with its tile.
    assert len(rectangles(figures(at)["ov_chart_conv2"], "selected")) == 2
    assert _has_button(at, "ov_go_conv") and _has_button(at, "ov_go_rf")


def test_a_button_opens_the_explaining_page_on_the_same_unit(shipped):
    digit = sample_digit(2)
    tr = trace(shipped.model, normalise(digit.pixels))
    at = run_page(digit=digit, selected={"layer": "conv1", "block": 7, "index": (7, 4, 9)})
    assert at.subheader[0].value == "conv1[7, 4, 9]: convolution"
    assert f"= {float(tr['conv1'][7, 4, 9]):.3f}**" in texts(at)
    at.button(key="ov_go_rf").click().run()
    # Run on its own the page cannot switch pages: it says where to go, with the unit already set there.
    assert any("Receptive field" in i.value for i in at.info)
    assert (at.session_state["rf_layer"], at.session_state["rf_channel"], at.session_state["rf_row"],
            at.session_state["rf_col"]) == ("conv1", 7, 4, 9)


def test_a_stale_selection_falls_back_to_the_answer(shipped):
    at = run_page(selected={"layer": "relu3", "block": 0, "index": None})  # no relu3 in the shipped network
    tr = trace(shipped.model, normalise(load_samples()[0].pixels))
    assert at.subheader[0].value == f"fc2[{tr.prediction}]: fully connected"


# --- variants ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", VARIANTS)
def test_every_variant_is_drawn_from_its_own_layers(name):
    loaded = own_model(VARIANTS[name])
    digit = sample_digit(7)
    at = run_page(loaded, digit)
    model = loaded.model
    rows = {r.name: r for r in layer_table(model)}
    figs = figures(at)
    shown = [t for f in figs.values() for t in layer_titles(f)]
    assert shown == [(n, "×".join(map(str, rows[n].output_shape))) for n in shown_layers(model)]
    maps = [rows[n].output_shape for n in shown_layers(model) if len(rows[n].output_shape) == 3]
    tr = trace(model, normalise(digit.pixels))
    intro = at.markdown[0].value
    assert f"reads a **{tr.prediction}** (softmax {tr.confidence:.1%})" in intro
    if maps:
        assert f"{sum(s[0] for s in maps):,} feature maps" in intro
        assert not at.info
    else:
        assert "no convolution layers" in at.info[0].value and "feature maps" not in intro
    # Every picture decodes to the size the figure gives it.
    for fig in figs.values():
        for image in (t for t in fig["data"] if t["type"] == "image"):
            png = Image.open(io.BytesIO(base64.b64decode(image["source"].split(",", 1)[1])))
            assert png.mode == "P" and png.height <= fig["layout"]["height"]


def test_average_pooling_takes_the_mean_of_the_window():
    loaded = own_model(CNNConfig(pool="avg"))
    digit = sample_digit(1)
    tr = trace(loaded.model, normalise(digit.pixels))
    at = run_page(loaded, digit, {"layer": "pool1", "block": 3, "index": (3, 5, 6)})
    window = tr["relu1"][3, 10:12, 12:14]
    assert f"**pool1[3, 5, 6] = {float(window.mean()):.3f}**" in texts(at)
    assert "takes their mean" in texts(at) and "keeps the largest" not in texts(at)


def test_a_relu_after_fc1_is_a_layer_of_its_own_and_no_matrix_is_claimed():
    loaded = own_model(CNNConfig(hidden_relu=True))
    digit = sample_digit(4)
    tr = trace(loaded.model, normalise(digit.pixels))
    at = run_page(loaded, digit)
    assert at.subheader[0].value == f"fc2[{tr.prediction}]: fully connected"
    assert "128 values of relu3" in texts(at)
    assert not any("one 10×" in c.value for c in at.caption)
    assert not _has_button(at, "ov_go_arch")


# --- the pictures ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape, kwargs", [((32, 28, 28), {}), ((64, 7, 7), {}), ((10, 5, 5), {}),
                                           ((3136,), {"flat_from": (64, 7, 7)}), ((784,), {"flat_from": (1, 28, 28)}),
                                           ((128,), {}), ((1024,), {}), ((10,), {"is_output": True})])
def test_each_unit_owns_its_pixels_and_shows_its_value(shape, kwargs):
    panel = ov.layout_panel("layer", "Test", shape, ov.strip_height([(64, 14, 14)]), **kwargs)
    units = panel.pixel_units()
    assert units.shape == (panel.height, panel.width)
    values = np.random.default_rng(0).normal(size=shape)
    png = Image.open(io.BytesIO(ov.render_png(panel, values)))
    assert png.size == (panel.width, panel.height)
    indices = np.asarray(png)
    limit = np.abs(values).max()
    flat = values.reshape(-1)
    for i in np.random.default_rng(1).choice(flat.size, size=min(50, flat.size), replace=False):
        x0, y0, x1, y1 = panel.unit_rect(np.unravel_index(i, shape))
        assert x1 - x0 >= 1 and y1 - y0 >= 1
        assert np.all(units[y0:y1, x0:x1] == i)  # every pixel of the unit's rectangle shows that unit
        expected = round((flat[i] / limit + 1) / 2 * (ov.LEVELS - 1))
        assert np.all(indices[y0:y1, x0:x1] == expected)  # and its colour is its value on the shared scale
    shown = units[units >= 0]
    assert np.array_equal(np.unique(shown), np.arange(flat.size))  # every unit is drawn, none twice elsewhere
    assert png.info.get("transparency") == ov.EMPTY_INDEX


def test_blocks_lie_inside_their_panel_without_overlap():
    panel = ov.layout_panel("conv2", "Conv2d", (64, 14, 14), ov.strip_height([(64, 14, 14)]))
    covered = np.zeros((panel.height, panel.width), dtype=int)
    for b in panel.blocks:
        assert 0 < b.left and b.right < panel.width and 0 < b.top and b.bottom < panel.height  # room for the frame
        covered[b.top: b.bottom, b.left: b.right] += 1
    assert covered.max() == 1


def test_the_shipped_network_fits_one_laptop_screen(shipped):
    """The strip's width at 1280x800, as the page lays it out: input column, then one chart per stage."""
    rows = {r.name: r for r in layer_table(shipped.model)}
    names = shown_layers(shipped.model)
    shapes = [rows[n].output_shape for n in names]
    height = ov.strip_height(shapes)
    panels = [ov.layout_panel(n, rows[n].kind, s, height, is_output=i == len(names) - 1,
                              flat_from=shapes[i - 1] if i else None) for i, (n, s) in enumerate(zip(names, shapes))]
    groups = ov.stage_groups(panels)
    assert [[p.name for p in g] for g in groups] == [["conv1", "relu1", "pool1"], ["conv2", "relu2", "pool2"],
                                                     ["flatten", "fc1", "fc2"]]
    gap = 4  # the strip's "xxsmall" gap
    width = 104 + sum(ov.group_width(g) + gap for g in groups)
    assert width <= LAPTOP_CONTENT
    assert height + ov.TITLE_HEIGHT <= 500  # leaves the title and the intro above it on an 800-pixel screen


def test_a_click_is_read_back_as_layer_and_block():
    assert ov.target_from_selection({"points": [{"customdata": [3, 17], "x": 1, "y": 2}]}) == (3, 17)
    # What chromium sends for a row of a numeric customdata array (seen in the browser test).
    assert ov.target_from_selection({"points": [{"customdata": {"0": 4, "1": 9, "2": 2.35}}]}) == (4, 9)
    assert ov.target_from_selection({"points": [{"x": 1, "y": 2}]}) is None
    assert ov.target_from_selection({"points": []}) is None
    assert ov.target_from_selection(None) is None
