"""Parameter counts for the ANN (MLP) versus CNN comparison, computed, never typed in."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from .architecture import layer_table, window_of
from .model import NUM_CLASSES, CNNConfig, MnistCNN, count_parameters


@dataclass(frozen=True)
class DenseLayerCount:
    """One fully connected layer: weights, biases and the weights each neuron has."""

    inputs: int
    outputs: int

    @property
    def weights(self) -> int:
        return self.inputs * self.outputs

    @property
    def parameters(self) -> int:
        return self.weights + self.outputs

    @property
    def weights_per_neuron(self) -> int:
        return self.inputs


def mlp_layers(input_shape: Sequence[int], hidden: Sequence[int], classes: int = NUM_CLASSES) -> list[DenseLayerCount]:
    """The dense layers of an MLP on a flattened input of ``input_shape`` (e.g. (28, 28, 1))."""
    if any(h < 1 for h in hidden) or any(d < 1 for d in input_shape):
        raise ValueError("widths and input dimensions must be at least 1")
    widths = [math.prod(input_shape), *hidden, classes]
    return [DenseLayerCount(a, b) for a, b in zip(widths[:-1], widths[1:])]


def mlp_param_count(input_shape: Sequence[int], hidden: Sequence[int], classes: int = NUM_CLASSES) -> int:
    """Total parameters (weights and biases) of that MLP."""
    return sum(layer.parameters for layer in mlp_layers(input_shape, hidden, classes))


def cnn_param_count(config: CNNConfig = CNNConfig()) -> int:
    """Total parameters of the CNN built from ``config`` (421,642 for the classic one)."""
    return count_parameters(MnistCNN(config))


def cnn_param_count_for_input(model: nn.Module, hwc: Sequence[int]) -> int:
    """Parameters of ``model``'s layers if it were fed an H×W×C image: conv1 sees C channels, fc1 the flattened maps.

    The convolutions keep their kernels; only the first layer's channel count and fc1's inputs change.
    Counted on PyTorch layers built on the meta device (no memory, no initialisation).
    """
    h, w, c = hwc
    rows = layer_table(model, (c, h, w))
    total = 0
    for before, layer in zip(rows, model.children()):  # rows[i] is the input of child i
        window = window_of(layer)
        if isinstance(layer, nn.Conv2d) and window is not None:
            kernel, stride, padding = window
            layer = nn.Conv2d(before.output_shape[0], layer.out_channels, kernel, stride, padding,
                              bias=layer.bias is not None, device="meta")
        elif isinstance(layer, nn.Linear):
            layer = nn.Linear(math.prod(before.output_shape), layer.out_features, bias=layer.bias is not None,
                              device="meta")
        total += count_parameters(layer)
    return total


def share(part: int, whole: int) -> float:
    """``part`` as a fraction of ``whole``."""
    return part / whole


POWER_OF_TWO_WIDTHS: tuple[int, ...] = tuple(2**k for k in range(4, 15))  # 16 ... 16,384


def widths_for_share(target: float, input_shape: Sequence[int], cnn_params: int, depth: int = 1,
                     candidates: Sequence[int] = POWER_OF_TWO_WIDTHS) -> list[tuple[tuple[int, ...], float]]:
    """Equal-width MLPs of ``depth`` hidden layers, with the CNN's share of each, closest to ``target`` first."""
    rows = []
    for w in candidates:
        hidden = (w,) * depth
        rows.append((hidden, share(cnn_params, mlp_param_count(input_shape, hidden))))
    return sorted(rows, key=lambda r: abs(r[1] - target))
