"""cnn_core.convolution: one feature-map value worked out by hand equals what the layer computes."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torch import nn

from cnn_core.convolution import (
    conv_layer,
    conv_layer_names,
    conv_step,
    filled_map,
    geometry,
    index_of,
    layer_input,
    pad_input,
    position_at,
    top_channels,
    window_origin,
    window_positions,
)
from cnn_core.introspect import trace
from cnn_core.model import CNNConfig, MnistCNN
from cnn_core.preprocess import normalise


def corners_and_centre(h: int, w: int) -> list[tuple[int, int]]:
    """Every corner, the middle of every edge and the centre: the padding matters on the border."""
    return sorted({(r, c) for r in (0, h // 2, h - 1) for c in (0, w // 2, w - 1)})


def check_every_position(model: nn.Module, tr, layer_name: str, filters: list[int]) -> int:
    """Assert conv_step equals the trace at the border positions and the centre; returns how many were checked."""
    out = tr[layer_name]
    checked = 0
    for f in filters:
        for r, c in corners_and_centre(out.shape[1], out.shape[2]):
            step = conv_step(model, tr, layer_name, f, r, c)
            assert step.total == pytest.approx(float(out[f, r, c]), abs=1e-5), (layer_name, f, r, c)
            # The parts add up: products -> per channel -> sum + bias.
            assert float(step.products.sum()) == pytest.approx(step.weighted_sum, abs=1e-5)
            assert step.weighted_sum + step.bias == pytest.approx(step.total, abs=1e-6)
            checked += 1
    return checked


@pytest.fixture(scope="module")
def digit_trace(shipped, test_split):
    pixels = test_split.images[0].numpy().astype("float32") / 255
    return trace(shipped.model, normalise(pixels))


@pytest.mark.parametrize("layer_name", ["conv1", "conv2"])
def test_step_total_equals_the_shipped_feature_map(shipped, digit_trace, layer_name):
    n_filters = conv_layer(shipped.model, layer_name).out_channels
    assert check_every_position(shipped.model, digit_trace, layer_name, [0, 5, n_filters - 1]) == 27


@pytest.mark.parametrize("config", [CNNConfig(kernel_size=5, padding=0), CNNConfig(kernel_size=5, padding=2),
                                    CNNConfig(kernel_size=3, padding=0, conv1_channels=4, conv2_channels=6)],
                         ids=["k5p0", "k5p2", "k3p0"])
def test_step_total_equals_the_feature_map_of_variants(config):
    torch.manual_seed(0)
    model = MnistCNN(config).eval()
    tr = trace(model, torch.randn(1, 28, 28))
    for name in conv_layer_names(model):
        step = conv_step(model, tr, name, 0, 0, 0)
        assert step.patch.shape == (conv_layer(model, name).in_channels, config.kernel_size, config.kernel_size)
        check_every_position(model, tr, name, [0, conv_layer(model, name).out_channels - 1])


def test_strided_dilated_and_rectangular_kernels_are_worked_out_too():
    torch.manual_seed(1)
    model = nn.Sequential(OrderedDict(
        conv1=nn.Conv2d(1, 4, 3, stride=2, padding=2, dilation=2),
        relu1=nn.ReLU(),
        conv2=nn.Conv2d(4, 3, (3, 5), stride=(1, 2), padding=(2, 1)),
    ))
    tr = trace(model, torch.randn(1, 28, 28))
    assert check_every_position(model, tr, "conv1", [0, 3]) == 18
    assert check_every_position(model, tr, "conv2", [0, 2]) == 18


def test_patch_holds_zero_padding_and_flags_it(shipped, digit_trace):
    step = conv_step(shipped.model, digit_trace, "conv1", 3, 0, 0)
    # Top-left corner with padding 1: the first row and the first column of the window are padding.
    expected = torch.zeros(3, 3, dtype=torch.bool)
    expected[0, :] = True
    expected[:, 0] = True
    assert torch.equal(step.in_padding, expected)
    assert (step.patch[0][expected] == 0).all()
    assert (step.products[0][expected] == 0).all()
    # Inside the image the patch is the input itself (normalised background is not zero).
    assert torch.equal(step.patch[0, 1:, 1:], digit_trace.input[0, :2, :2])
    assert (step.top, step.left) == (-1, -1)
    centre = conv_step(shipped.model, digit_trace, "conv1", 3, 14, 14)
    assert not centre.in_padding.any()


def test_conv2_reads_the_previous_layers_output(shipped, digit_trace):
    assert torch.equal(layer_input(shipped.model, digit_trace, "conv2"), digit_trace["pool1"])
    assert torch.equal(layer_input(shipped.model, digit_trace, "conv1"), digit_trace.input)
    step = conv_step(shipped.model, digit_trace, "conv2", 0, 13, 13)
    assert step.patch.shape == (32, 3, 3)
    assert step.per_channel.shape == (32,)
    assert torch.equal(step.in_padding[2, :], torch.ones(3, dtype=torch.bool))
    strongest = top_channels(step, 5)
    sizes = step.per_channel.abs()[strongest]
    assert sizes.tolist() == sorted(sizes.tolist(), reverse=True)
    assert sizes[0] == step.per_channel.abs().max()


def test_the_window_visits_positions_in_raster_order(shipped):
    layer = conv_layer(shipped.model, "conv1")
    g = geometry(layer, (28, 28))
    positions = window_positions(g)
    assert len(positions) == g.positions == 28 * 28
    assert positions == sorted(positions)  # row first, then column: left to right, top to bottom
    for index, (r, c) in enumerate(positions):
        assert position_at(g, index) == (r, c)
        assert index_of(g, r, c) == index
    # Consecutive windows move one stride right, and back to the left edge one stride down at a row's end.
    origins = [window_origin(g, r, c) for r, c in positions]
    assert origins[0] == (-1, -1)
    assert origins[1] == (-1, 0)
    assert origins[27] == (-1, 26)
    assert origins[28] == (0, -1)
    assert origins[-1] == (26, 26)


def test_strided_geometry_and_bounds():
    layer = nn.Conv2d(1, 1, 3, stride=2, padding=1)
    g = geometry(layer, (28, 28))
    assert g.out_size == (14, 14)
    assert window_origin(g, 1, 2) == (1, 3)
    with pytest.raises(IndexError):
        position_at(g, g.positions)
    with pytest.raises(IndexError):
        index_of(g, 14, 0)
    with pytest.raises(ValueError):
        geometry(nn.Conv2d(1, 1, 5), (3, 3))


def test_filled_map_keeps_the_visited_positions_only(digit_trace, shipped):
    g = geometry(conv_layer(shipped.model, "conv1"), (28, 28))
    full = digit_trace["conv1"][2]
    filled = filled_map(full, g, 30)
    flat = filled.flatten()
    assert torch.equal(flat[:31], full.flatten()[:31])
    assert torch.isnan(flat[31:]).all()
    assert torch.equal(filled_map(full, g, g.positions - 1), full)


def test_pad_input_adds_a_zero_border():
    x = torch.ones(2, 4, 5)
    p = pad_input(x, (1, 2))
    assert p.shape == (2, 6, 9)
    assert p.sum() == x.sum()
    assert (p[:, 0] == 0).all() and (p[:, :, :2] == 0).all()


def test_bad_requests_are_refused(shipped, digit_trace):
    with pytest.raises(TypeError):
        conv_layer(shipped.model, "relu1")
    with pytest.raises(KeyError):
        conv_layer(shipped.model, "conv9")
    with pytest.raises(IndexError):
        conv_step(shipped.model, digit_trace, "conv1", 32, 0, 0)
    with pytest.raises(IndexError):
        conv_step(shipped.model, digit_trace, "conv2", 0, 14, 0)
