"""The Feature maps page, run headless with Streamlit's AppTest on real MNIST digits."""

from __future__ import annotations

import re
from pathlib import Path

import apptest_helpers as helpers
import numpy as np
import pytest
from apptest_helpers import chart, decode
from streamlit.testing.v1 import AppTest

from cnn_core.architecture import layer_table
from cnn_core.introspect import dropout_mask, trace
from cnn_core.preprocess import normalise
from cnn_core.samples import load_samples
from ui.figures import (
    channel_from_selection,
    feature_map_grid,
    image_heatmap,
    mask_strip,
    mosaic_channel,
    panel_row,
    pool_winners,
    strip_stack,
    vector_strip,
)
from ui.state import SHIPPED_ID, Digit
from ui.text import plain

PAGE = str(Path(__file__).resolve().parent.parent / "pages" / "1_Feature_maps.py")
SHAPE_CAPTION = re.compile(r"^`(\w+)` (?:output )?shape \*\*\(([\d, ]+)\)\*\* · \*\*([\d,]+)\*\* parameters$")


def run_page(pixels: np.ndarray | None = None, source: str = "test digit") -> AppTest:
    """The page with the `shipped` fixture's model (the article's CNN) selected."""
    return helpers.run_page(PAGE, digit=None if pixels is None else Digit(pixels, source), select=SHIPPED_ID,
                            timeout=60)


def mnist_pixels(split, i: int) -> np.ndarray:
    return split.images[i].numpy().astype(np.float32) / 255


def heatmap_z(fig: dict) -> np.ndarray:
    """The z values of the figure's first trace."""
    return decode(fig["data"][0]["z"])


def metric_value(at: AppTest, label: str) -> str:
    values = [m.value for m in at.metric if m.label == label]
    assert len(values) == 1, f"no single metric {label!r}"
    return values[0]


def test_page_without_a_digit_falls_back_to_the_first_sample(shipped):
    at = run_page()
    assert any("showing a sample digit" in i.value for i in at.info)
    expected = trace(shipped.model, normalise(load_samples()[0].pixels))
    assert metric_value(at, "Prediction") == str(expected.prediction)


@pytest.mark.parametrize("index", [0, 7])
def test_page_shows_the_prediction_of_the_trace(shipped, test_split, index):
    pixels = mnist_pixels(test_split, index)
    expected = trace(shipped.model, normalise(pixels))
    at = run_page(pixels, f"MNIST test #{index}")
    assert not at.info, "a digit was set: the sample fallback must not show"
    assert metric_value(at, "Prediction") == str(expected.prediction)
    intro = at.markdown[0].value
    assert plain(f"MNIST test #{index}") in intro  # the source as plain text, never as Markdown
    assert f"as a **{expected.prediction}** (softmax {expected.confidence:.1%})" in intro
    shown = decode(chart(at, "fm_probs_fc2")["data"][0]["y"])
    np.testing.assert_allclose(shown, expected.probabilities.numpy(), rtol=1e-5)


def test_every_layer_has_a_header_in_network_order(shipped, test_split):
    at = run_page(mnist_pixels(test_split, 1))
    rows = layer_table(shipped.model)
    headers = [h.value for h in at.header]
    assert len(headers) == len(rows)
    assert headers[0].startswith("0. Input")
    for header, row in zip(headers[1:], rows[1:]):
        assert header.startswith(f"{row.index}. {row.name}:"), (header, row.name)


def test_shapes_parameters_and_formulas_match_the_layer_table(shipped, test_split):
    at = run_page(mnist_pixels(test_split, 2))
    rows = layer_table(shipped.model)
    shown = {}
    for caption in at.caption:
        m = SHAPE_CAPTION.match(caption.value)
        if m:
            shown[m.group(1)] = (tuple(int(d) for d in m.group(2).split(",")), int(m.group(3).replace(",", "")))
    assert shown == {r.name: (r.output_shape, r.parameters) for r in rows}
    text = "\n".join(m.value for m in at.markdown)
    for r in rows:
        if r.size is not None:
            assert r.size.formula() in text, r.name
    c, h, w = next(r.output_shape for r in rows if r.name == "pool2")
    assert f"{c} × {h} × {w} = **{c * h * w:,}**" in text


@pytest.mark.parametrize("conv, after", [("conv1", ["relu1", "pool1"]), ("conv2", ["relu2", "pool2"])])
def test_the_channel_widget_changes_what_is_shown(shipped, test_split, conv, after):
    pixels = mnist_pixels(test_split, 3)
    tr = trace(shipped.model, normalise(pixels))
    at = run_page(pixels)
    n_channels = tr[conv].shape[0]
    for channel in (0, n_channels - 1):
        at.slider(key=f"fm_channel_{conv}").set_value(channel).run()
        assert not at.exception
        assert any(f"Showing channel **{channel}** of {n_channels}" in c.value for c in at.caption)
        np.testing.assert_allclose(heatmap_z(chart(at, f"fm_map_{conv}")), tr[conv][channel].numpy(), rtol=1e-5,
                                   atol=1e-6)
        relu, pool = after
        # The ReLU and pooling figures end with the "after" panel.
        relu_fig, pool_fig = chart(at, f"fm_relu_{relu}"), chart(at, f"fm_pool_{pool}")
        np.testing.assert_allclose(decode(relu_fig["data"][0]["z"]), tr[conv][channel].numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(decode(relu_fig["data"][-1]["z"]), tr[relu][channel].numpy(), rtol=1e-5,
                                   atol=1e-6)
        np.testing.assert_allclose(decode(pool_fig["data"][0]["z"]), tr[relu][channel].numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(decode(pool_fig["data"][-1]["z"]), tr[pool][channel].numpy(), rtol=1e-5,
                                   atol=1e-6)
        zeroed = int((tr[conv][channel] < 0).sum())
        assert any(f"Channel {channel}: ReLU zeroed **{zeroed}** of" in c.value for c in at.caption)
        kernel = chart(at, f"fm_kernel_{conv}")
        assert f"Filter {channel}" in kernel["layout"]["title"]["text"]


def test_dropout_counts_follow_the_seed(shipped, test_split):
    pixels = mnist_pixels(test_split, 4)
    tr = trace(shipped.model, normalise(pixels))
    at = run_page(pixels)
    n = next(r.output_shape[0] for r in layer_table(shipped.model) if r.name == "flatten")
    p = shipped.model.dropout.p
    for seed in (0, 1):
        mask = dropout_mask(n, p, seed)
        dropped = int((mask == 0).sum())
        assert metric_value(at, "Dropped by this mask") == f"{dropped:,} of {n:,}"
        mask_z, train_z, eval_z = (decode(t["z"]).ravel() for t in chart(at, "fm_dropout_dropout")["data"])
        np.testing.assert_array_equal(mask_z, (mask == 0).numpy().astype(np.float32))
        np.testing.assert_allclose(train_z, (tr["flatten"] * mask).numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(eval_z, tr["dropout"].numpy(), rtol=1e-5, atol=1e-6)
        at.button(key="fm_dropout_resample").click().run()
        assert not at.exception
    assert at.number_input(key="fm_dropout_seed").value == 2


@pytest.mark.parametrize("value", [0.0, 1.0])
def test_blank_and_full_inputs_render(value):
    at = run_page(np.full((28, 28), value, dtype=np.float32), "flat image")
    assert len(at.header) > 10


@pytest.mark.parametrize("shape", [(32, 28, 28), (64, 7, 7), (10, 5, 5)])
def test_a_click_on_any_tile_picks_that_tile(shape):
    fig = feature_map_grid(np.random.default_rng(0).normal(size=shape), clickable=True, selected=1)
    points = fig.data[-1]  # the invisible click targets, one per tile
    assert len(points.x) == shape[0]
    for channel, (x, y) in enumerate(zip(points.x, points.y)):
        assert channel_from_selection({"points": [{"x": x, "y": y}]}, shape) == channel
        # A click on any cell of the tile (as a heatmap cell would report it) gives the same channel.
        assert mosaic_channel(int(y), int(x), shape) == channel
    assert channel_from_selection({"points": []}, shape) is None
    assert channel_from_selection(None, shape) is None
    gap_col = shape[2]  # the NaN column between the first two tiles
    assert channel_from_selection({"points": [{"x": gap_col, "y": 0}]}, shape) is None


def test_pool_dots_mark_the_maximum_of_each_block():
    values = np.random.default_rng(1).normal(size=(8, 8))
    values[:2, :2] = 0.0  # a flat block has no winner to mark
    dots = pool_winners(values, 2).data[1]
    marked = set(zip(dots.y, dots.x))
    assert len(marked) == 15
    for r in range(0, 8, 2):
        for c in range(0, 8, 2):
            block = values[r:r + 2, c:c + 2]
            dy, dx = np.unravel_index(block.argmax(), block.shape)
            assert ((r + dy, c + dx) in marked) == (block.max() > block.min())


def test_panels_in_one_figure_keep_their_data_scales_and_squares():
    rng = np.random.default_rng(2)
    before, after = rng.normal(size=(8, 8)), rng.random((4, 4))
    panels = [pool_winners(before, 2, "before", zmin=-1, zmax=1), image_heatmap(after, "after", showscale=True)]
    fig = panel_row(panels)
    assert [a.text for a in fig.layout.annotations] == ["before", "after"]
    # Every trace of every panel, in order, on its own pair of axes.
    assert [(t.type, t.xaxis, t.yaxis) for t in fig.data] == [("heatmap", "x", "y"), ("scatter", "x", "y"),
                                                              ("heatmap", "x2", "y2")]
    np.testing.assert_allclose(fig.data[0].z, before)
    np.testing.assert_allclose(fig.data[2].z, after)
    assert (fig.data[0].zmin, fig.data[0].zmax) == (-1, 1)
    # Each map stays square on its own axes, rows top down, and its colour bar sits beside its own panel.
    assert fig.layout.yaxis.scaleanchor == "x" and fig.layout.yaxis2.scaleanchor == "x2"
    assert list(fig.layout.yaxis.range) == [7.5, -0.5] and fig.layout.yaxis2.autorange == "reversed"
    for heatmap, x_axis in ((fig.data[0], fig.layout.xaxis), (fig.data[2], fig.layout.xaxis2)):
        assert x_axis.domain[1] < heatmap.colorbar.x < x_axis.domain[1] + 0.05


def test_stacked_strips_share_units_and_keep_their_outline():
    values = np.arange(50, dtype=np.float32)
    strips = [mask_strip(values % 3 == 0, "mask"), vector_strip(values, "values", highlight=(10, 20))]
    fig = strip_stack(strips)
    assert [a.text for a in fig.layout.annotations] == ["mask", "values"]
    np.testing.assert_array_equal(np.ravel(fig.data[1].z), values)
    assert fig.layout.xaxis.domain == fig.layout.xaxis2.domain  # unit i of one strip above unit i of the next
    assert fig.data[0].colorbar.ticktext == ("kept", "dropped")
    (outline,) = fig.layout.shapes
    assert (outline.x0, outline.x1, outline.xref) == (9.5, 19.5, "x2")
    # Each colour bar as tall as its own strip, centred on it.
    for heatmap, y_axis in ((fig.data[0], fig.layout.yaxis), (fig.data[1], fig.layout.yaxis2)):
        assert heatmap.colorbar.y == pytest.approx(sum(y_axis.domain) / 2)
        assert heatmap.colorbar.len == pytest.approx(y_axis.domain[1] - y_axis.domain[0])
