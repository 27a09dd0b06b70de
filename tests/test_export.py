"""Exports (cnn_core.export): traces as .npz, feature maps as a tiled PNG, a model as weights + card."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from cnn_core.checkpoint import LoadedModel, WeightsError, load_checkpoint_bytes
from cnn_core.export import GAP_COLOUR, feature_maps_png, grid_shape, model_files, trace_to_npz
from cnn_core.introspect import trace
from cnn_core.model import CNNConfig, MLPConfig, build_model
from cnn_core.preprocess import normalise


def digit(test_split, i: int = 0) -> np.ndarray:
    return test_split.images[i].numpy().astype(np.float32) / 255


def fresh(config) -> LoadedModel:
    torch.manual_seed(0)
    model = build_model(config).eval()
    return LoadedModel(model, config, {"name": "fresh"})


@pytest.mark.parametrize("which", ["shipped", "variant", "mlp"])
def test_npz_holds_every_layer_exactly(which, shipped, test_split):
    loaded = {"shipped": shipped, "variant": fresh(CNNConfig(16, 8, 5, 2, "avg", 0.1, 64, True)),
              "mlp": fresh(MLPConfig(hidden=(64, 32)))}[which]
    tr = trace(loaded.model, normalise(digit(test_split, 3)))
    with np.load(io.BytesIO(trace_to_npz(tr)), allow_pickle=False) as npz:
        assert npz.files == ["input", *tr.names(), "probabilities"]  # in the network's order
        assert np.array_equal(npz["input"], tr.input.numpy()) and npz["input"].shape == (1, 28, 28)
        for layer in tr.layers:
            got = npz[layer.name]
            assert got.dtype == np.float32 and got.shape == tuple(layer.output.shape), layer.name
            assert np.array_equal(got, layer.output.numpy()), layer.name
        assert np.array_equal(npz["probabilities"], tr.probabilities.numpy())
        assert int(npz["probabilities"].argmax()) == tr.prediction


def png_pixels(data: bytes) -> np.ndarray:
    img = Image.open(io.BytesIO(data))
    assert img.format == "PNG" and img.mode == "RGB"
    return np.asarray(img)


def test_png_of_a_layer_has_the_size_of_its_tiling(shipped, test_split):
    tr = trace(shipped.model, normalise(digit(test_split)))
    for name, cols, scale, gap in (("conv1", 8, 4, 2), ("pool2", 16, 3, 1), ("conv2", 5, 1, 0)):
        c, h, w = tr[name].shape
        rows = -(-c // cols)
        img = png_pixels(feature_maps_png(tr[name], cols=cols, scale=scale, gap=gap))
        assert img.shape == (rows * h * scale + (rows - 1) * gap, cols * w * scale + (cols - 1) * gap, 3), name
    assert grid_shape(3, 8) == (1, 3)  # fewer maps than columns: one short row
    one = png_pixels(feature_maps_png(tr.input[0], scale=2))  # a single (H, W) map
    assert one.shape == (56, 56, 3)


def test_png_colours_follow_the_values():
    maps = np.zeros((3, 2, 2), dtype=np.float32)
    maps[0, 0, 0] = 2.0  # the largest positive value: full red
    maps[1, 1, 1] = -2.0  # the most negative: full blue
    img = png_pixels(feature_maps_png(maps, cols=2, scale=3, gap=1))
    assert img.shape == (13, 13, 3)
    red, blue, zero = img[0, 0], img[4, 11], img[2, 4]  # tile 0 cell (0,0); tile 1 cell (1,1); tile 0 cell (0,1)
    assert red[0] > 150 and red[1] < 60 and red[2] < 60
    assert blue[2] > 150 and blue[0] < 60
    assert tuple(zero) == (247, 247, 247)
    assert (img[0:3, 0:3] == red).all()  # each value is a 3x3 block of one colour
    assert tuple(img[6, 0]) == GAP_COLOUR and tuple(img[0, 6]) == GAP_COLOUR  # gaps between tiles
    assert (img[7:, 7:] == GAP_COLOUR).all()  # the empty last slot of the grid
    assert (img[7:, :6] == 247).all()  # map 2 is all zero


def test_png_of_non_negative_maps_is_grey_from_black_to_white():
    maps = np.array([[[0.0, 1.0], [3.0, 4.0]]])
    img = png_pixels(feature_maps_png(maps, scale=1, gap=0))
    assert img.shape == (2, 2, 3)
    assert (img[..., 0] == img[..., 1]).all() and (img[..., 1] == img[..., 2]).all()
    assert img[0, 0, 0] == 0 and img[1, 1, 0] == 255 and img[0, 1, 0] == 64 and img[1, 0, 0] == 191


@pytest.mark.parametrize("bad", [np.zeros((2, 2, 2, 2)), np.zeros(5), np.zeros((0, 3, 3)),
                                 np.array([[np.nan, 1.0]])])
def test_png_refuses_what_is_not_a_stack_of_maps(bad):
    with pytest.raises(ValueError):
        feature_maps_png(bad)


def test_model_files_load_back_and_detect_tampering(test_split):
    loaded = fresh(CNNConfig(8, 16, 3, 1, "max", 0.0, 32, False))
    weights, card = model_files(loaded, "fresh.pt")
    again = load_checkpoint_bytes(weights, card)
    assert json.loads(card)["weights_file"] == "fresh.pt"
    x = normalise(digit(test_split))
    assert torch.equal(trace(again.model, x).probabilities, trace(loaded.model, x).probabilities)
    tampered = bytearray(weights)
    tampered[-100] ^= 0xFF
    with pytest.raises(WeightsError, match="sha256"):
        load_checkpoint_bytes(bytes(tampered), card)
