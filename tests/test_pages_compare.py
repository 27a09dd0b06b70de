"""The Compare page, run headless with AppTest: B drawn by hand, one colour convention, downloads named by
what they hold, a labelled PNG large enough for a slide, visitor-chosen names shown as text.

(The page's first tests, on traces and two networks, live in tests/test_pages_own_model.py.)
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import pytest
import torch
from apptest_helpers import chart, decode
from PIL import Image
from streamlit.elements.widgets import button
from streamlit.testing.v1 import AppTest

from cnn_core.checkpoint import LoadedModel
from cnn_core.export import feature_maps_png
from cnn_core.introspect import trace
from cnn_core.model import CNNConfig, build_model
from cnn_core.preprocess import normalise
from ui.figures import DIVERGING
from ui.state import DIGIT_KEY, MODEL_KEY, OWN_MODELS_KEY, SHIPPED_ID, Digit, model_id_of

COMPARE = str(Path(__file__).resolve().parent.parent / "pages" / "10_Compare.py")
DRAW_B = "Draw B yourself (canvas below)"


@pytest.fixture
def downloads(monkeypatch) -> dict[str, object]:
    """The downloads the page offers, by file name (their data: bytes, or the callable that makes them)."""
    offered: dict[str, object] = {}
    original = button.marshall_file

    def record(coordinates, data, proto, mimetype, file_name=None, **kwargs):
        offered[file_name] = data
        return original(coordinates, data, proto, mimetype, file_name, **kwargs)

    monkeypatch.setattr(button, "marshall_file", record)
    return offered


def small_cnn(name: str = "small k5", config: CNNConfig | None = None) -> LoadedModel:
    config = config or CNNConfig(conv1_channels=4, conv2_channels=6, kernel_size=5, pool="avg", hidden=16)
    torch.manual_seed(3)
    model = build_model(config).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return LoadedModel(model, config, {"name": name, "sha256": "test"})


def page(digit: Digit | None = None, model: LoadedModel | None = None, state: dict | None = None) -> AppTest:
    at = AppTest.from_file(COMPARE, default_timeout=300)
    if digit is not None:
        at.session_state[DIGIT_KEY] = digit
    if model is not None:
        at.session_state[OWN_MODELS_KEY] = {model_id_of(model): model}
        at.session_state[MODEL_KEY] = model_id_of(model)
    else:
        at.session_state[MODEL_KEY] = SHIPPED_ID
    for key, value in (state or {}).items():
        at.session_state[key] = value
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    return at


def pixels_of(split, i: int) -> np.ndarray:
    return split.images[i].numpy().astype(np.float32) / 255


def texts(at: AppTest) -> str:
    return "\n".join(str(e.value) for kind in ("markdown", "caption", "info") for e in at.get(kind))


def colours_of(colorscale: str) -> list:
    return json.loads(go.Figure(go.Heatmap(z=[[0]], colorscale=colorscale)).to_json())["data"][0]["colorscale"]


def test_b_can_be_drawn_on_the_page(shipped, test_split):
    a, drawn = pixels_of(test_split, 0), pixels_of(test_split, 1)
    at = page(Digit(a, "MNIST test #0"), state={"compare_b": DRAW_B})
    assert "Draw a digit for B" in texts(at)  # nothing drawn yet: the page asks for it, and still offers A's export
    assert not [c for c in at.get("plotly_chart") if c.key == "compare_map_b"]
    # What the canvas leaves in the session once a digit is drawn (AppTest cannot draw on the canvas itself;
    # tests/test_browser_compare.py draws with the mouse).
    at = page(Digit(a, "MNIST test #0"), state={"compare_b": DRAW_B,
                                                "compare_drawn_b": Digit(drawn, "your drawing for B")})
    at.selectbox(key="compare_layer").set_value("conv2").run()
    at.number_input(key="compare_channel").set_value(9).run()
    assert not at.exception
    expected_b = trace(shipped.model, normalise(drawn))["conv2"][9].numpy()
    expected_a = trace(shipped.model, normalise(a))["conv2"][9].numpy()
    assert np.allclose(decode(chart(at, "compare_map_b")["data"][0]["z"]), expected_b, atol=1e-6)
    assert np.allclose(decode(chart(at, "compare_map_diff")["data"][0]["z"]), expected_a - expected_b, atol=1e-6)
    at.button(key="compare_clear_b").click().run()
    assert "compare_drawn_b" not in at.session_state and "Draw a digit for B" in texts(at)


def test_maps_follow_the_colour_convention_of_every_page(test_split):
    at = page(Digit(pixels_of(test_split, 0), "MNIST test #0"), state={"compare_layer": "conv1"})
    a, b = (chart(at, key)["data"][0] for key in ("compare_map_a", "compare_map_b"))
    assert a["colorscale"] == b["colorscale"] == colours_of(DIVERGING)
    assert a["zmin"] == b["zmin"] == -a["zmax"] == -b["zmax"]  # one symmetric scale: white is zero in both
    at = page(Digit(pixels_of(test_split, 0), "MNIST test #0"), state={"compare_layer": "relu1"})
    a = chart(at, "compare_map_a")["data"][0]
    assert a["colorscale"] == colours_of("Viridis")


def test_downloads_are_named_by_layer_and_digit_and_the_png_fits_a_slide(shipped, test_split, downloads):
    pixels = pixels_of(test_split, 0)
    digit = Digit(pixels, "upload My Seven!.png")
    at = page(digit, state={"compare_layer": "pool2"})
    names = set(downloads)
    assert "cnn_explorer_activations_upload-my-seven-png.npz" in names
    assert "cnn_explorer_pool2_maps_upload-my-seven-png.png" in names
    assert not any(digit.key[:8] in n for n in names)  # named by what they hold, not by a hash
    make_png = downloads["cnn_explorer_pool2_maps_upload-my-seven-png.png"]
    assert callable(make_png)  # built only when clicked: it weighs hundreds of kB
    png = make_png()
    image = Image.open(io.BytesIO(png))
    assert image.width >= 1600
    maps = trace(shipped.model, normalise(pixels))["pool2"].numpy()
    assert png == feature_maps_png(maps, cols=8, scale=image.width // (8 * 7),
                                   labels=[f"channel {i}" for i in range(64)],
                                   title="pool2 of CNN trained on MNIST only (the article's) · input: upload My "
                                         "Seven!.png")
    plain_tiles = Image.open(io.BytesIO(feature_maps_png(maps, cols=8, scale=image.width // (8 * 7))))
    assert image.height > plain_tiles.height  # the labels and the title take room of their own
    npz = downloads["cnn_explorer_activations_upload-my-seven-png.npz"]
    assert callable(npz)  # built only when clicked
    assert "numbered" in texts(at)


def test_labelled_png_keeps_the_tiles_and_adds_text(shipped, test_split):
    maps = trace(shipped.model, normalise(pixels_of(test_split, 0)))["conv1"].numpy()
    plain_png = np.asarray(Image.open(io.BytesIO(feature_maps_png(maps, cols=8, scale=6))))
    labelled = np.asarray(Image.open(io.BytesIO(feature_maps_png(maps, cols=8, scale=6, labels=[
        f"channel {i}" for i in range(32)], title="conv1"))))
    assert labelled.shape[1] == plain_png.shape[1] and labelled.shape[0] > plain_png.shape[0]
    tile = plain_png[:28 * 6, :28 * 6]  # map 0
    rows = [r for r in range(labelled.shape[0] - tile.shape[0]) if np.array_equal(labelled[r, :28 * 6], tile[0])]
    assert any(np.array_equal(labelled[r:r + tile.shape[0], :28 * 6], tile) for r in rows)  # the tile, unchanged
    band = labelled[:rows[0], :28 * 6]
    assert (band < 128).any()  # dark text above the first tile: its title and its label


def test_names_a_visitor_chose_are_shown_as_text(test_split):
    evil = small_cnn('<a href="http://x">[me](http://y)</a> **b**')
    at = page(Digit(pixels_of(test_split, 0), "upload [x](http://evil).png"), model=evil)
    words = texts(at)
    assert "[x](http" not in words and "[me](http" not in words
    labels = [m.label for m in at.metric]
    assert all("[me](http" not in label for label in labels)
    legend = [t["name"] for t in chart(at, "compare_models_bars")["data"]]
    assert all("<a" not in name and "&lt;a href" in name for name in legend[:1])


def test_a_drawn_b_through_a_variant(test_split):
    variant = small_cnn()
    drawn = pixels_of(test_split, 5)
    at = page(Digit(pixels_of(test_split, 0), "MNIST test #0"), model=variant,
              state={"compare_b": DRAW_B, "compare_drawn_b": Digit(drawn, "your drawing for B"),
                     "compare_layer": "conv2"})
    expected = trace(variant.model, normalise(drawn))["conv2"][0].numpy()
    assert np.allclose(decode(chart(at, "compare_map_b")["data"][0]["z"]), expected, atol=1e-6)
    bars = chart(at, "compare_layer_bars")["data"][0]
    assert list(bars["x"]) == ["input", *[n for n, _ in variant.model.named_children()]]
