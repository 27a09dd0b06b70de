"""What one unit is computed from (cnn_core.unit_sources), checked against the trace and against PyTorch's functional ops."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cnn_core.architecture import Region, layer_table
from cnn_core.explain import cells_in_padding
from cnn_core.introspect import trace
from cnn_core.model import CNNConfig, MLPConfig, build_model
from cnn_core.preprocess import normalise
from cnn_core.samples import load_samples
from cnn_core.unit_sources import default_unit, previous_shown, shown_layers, strongest_position, unit_sources


def random_model(config, seed: int = 0):
    torch.manual_seed(seed)
    model = build_model(config).eval()
    for p in model.parameters():
        p.requires_grad_(False)  # as the app's models: the oracles below then mix freely with traced tensors
    return model


def digit(i: int = 3) -> torch.Tensor:
    return normalise(load_samples()[i].pixels)


def units_of(shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    """A few units of a layer: its corners and its middle (edges meet the padding)."""
    if len(shape) == 3:
        c, h, w = shape
        return [(0, 0, 0), (c - 1, h - 1, w - 1), (c // 2, h // 2, w // 2), (1 % c, 0, w - 1)]
    return [(0,), (shape[0] - 1,), (shape[0] // 2,)]


def test_shown_layers_leave_out_dropout_and_read_through_it(shipped):
    names = shown_layers(shipped.model)
    assert "dropout" not in names and names[0] == "conv1" and names[-1] == "fc2"
    assert previous_shown(shipped.model, "conv1") == "input"
    assert previous_shown(shipped.model, "fc1") == "flatten"  # dropout between them is the identity


@pytest.mark.parametrize("config", [CNNConfig(), CNNConfig(kernel_size=5, padding=0), CNNConfig(padding=2),
                                    CNNConfig(pool="avg", hidden_relu=True), MLPConfig(hidden=(32, 16))],
                         ids=["shipped-shape", "k5p0", "p2", "avg-relu3", "mlp"])
def test_every_unit_is_its_sources_by_the_layers_own_rule(shipped, config):
    model = shipped.model if config == CNNConfig() else random_model(config)
    tr = trace(model, digit())
    modules = dict(model.named_children())
    for row in layer_table(model)[1:]:
        if row.name not in shown_layers(model):
            continue
        for index in units_of(row.output_shape):
            s = unit_sources(model, tr, row.name, index)
            assert s.value == pytest.approx(float(tr[row.name][index]), abs=1e-6)
            x = tr[s.previous]
            layer = modules[row.name]
            if s.kind == "conv":
                c, r, k = index
                # Oracle: each input channel's part as PyTorch's conv2d computes it, one channel at a time.
                for ci in range(layer.in_channels):
                    part = F.conv2d(x[ci][None, None], layer.weight[c, ci][None, None], padding=layer.padding)
                    assert float(s.contributions[ci]) == pytest.approx(float(part[0, 0, r, k]), abs=1e-4)
                assert float(s.contributions.sum()) + s.bias == pytest.approx(s.value, abs=1e-4)
                assert s.in_padding == cells_in_padding(s.region, x.shape[-2], x.shape[-1])
                order = s.contributions.abs()[list(s.strongest)]
                assert torch.all(order[:-1] >= order[1:])
            elif s.kind == "pool":
                c, r, k = index
                window = x[c, 2 * r: 2 * r + 2, 2 * k: 2 * k + 2]
                expected = window.max() if s.pool == "max" else window.mean()
                assert s.value == pytest.approx(float(expected), abs=1e-6)
                assert s.region == Region(2 * r, 2 * r + 1, 2 * k, 2 * k + 1)
                assert s.pool == ("max" if type(layer).__name__ == "MaxPool2d" else "avg")
            elif s.kind == "elementwise":
                assert s.value == pytest.approx(max(0.0, float(x.reshape(tr[row.name].shape)[index])))
            elif s.kind == "flatten":
                assert s.value == pytest.approx(float(x.reshape(-1)[index[0]]))
            elif s.kind == "linear":
                expected = layer.weight[index[0]] * x.reshape(-1)
                torch.testing.assert_close(s.contributions, expected.detach())
                assert float(s.contributions.sum()) + s.bias == pytest.approx(s.value, abs=1e-4)


def test_a_corner_unit_of_a_padded_convolution_reads_padding(shipped):
    tr = trace(shipped.model, digit())
    s = unit_sources(shipped.model, tr, "conv2", (0, 0, 0))
    assert s.region == Region(-1, 1, -1, 1)
    assert s.in_padding == 5  # a 3x3 window at the corner with padding 1: one row and one column outside
    assert s.channels == tuple(range(32)) and s.previous == "pool1"


def test_flatten_points_at_the_map_value_it_unrolls(shipped):
    tr = trace(shipped.model, digit())
    c, h, w = tr["pool2"].shape
    i = 5 * h * w + 3 * w + 2
    s = unit_sources(shipped.model, tr, "flatten", (i,))
    assert s.channels == (5,) and s.region == Region(3, 3, 2, 2)


def test_bad_units_and_layers_are_refused(shipped):
    tr = trace(shipped.model, digit())
    with pytest.raises(KeyError):
        unit_sources(shipped.model, tr, "conv9", (0, 0, 0))
    with pytest.raises(IndexError):
        unit_sources(shipped.model, tr, "conv1", (32, 0, 0))
    with pytest.raises(IndexError):
        unit_sources(shipped.model, tr, "fc2", (0, 0))
    with pytest.raises(ValueError, match="unchanged"):
        unit_sources(shipped.model, tr, "dropout", (0,))


def test_starting_points_are_the_strongest_units(shipped):
    tr = trace(shipped.model, digit())
    assert default_unit(tr, "fc2") == (tr.prediction,)
    c, r, k = default_unit(tr, "conv2")
    assert float(tr["conv2"][c, r, k]) == float(tr["conv2"].max())
    r, k = strongest_position(tr, "pool1", 7)
    assert float(tr["pool1"][7, r, k]) == float(tr["pool1"][7].max())
