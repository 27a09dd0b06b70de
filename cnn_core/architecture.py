"""The architecture read off a model: the layer table, the output-size formula, receptive fields.

Everything here is computed from the layers' own kernel, stride and padding, so
it holds for the shipped network and for any variant of it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import nn

from .model import INPUT_SHAPE, count_parameters


@dataclass(frozen=True)
class OutputSize:
    """``(size_in + 2*padding - kernel) / stride + 1`` worked out for one dimension."""

    size_in: int
    kernel: int
    padding: int
    stride: int

    @property
    def numerator(self) -> int:
        return self.size_in + 2 * self.padding - self.kernel

    @property
    def exact(self) -> bool:
        """True when the stride divides evenly: the window fits the padded input exactly."""
        return self.numerator >= 0 and self.numerator % self.stride == 0

    @property
    def size(self) -> int:
        """The output size, rounded down as PyTorch does (0 or less means the layer is impossible)."""
        return self.numerator // self.stride + 1

    def formula(self) -> str:
        """The formula with the numbers filled in, e.g. ``(28 + 2*1 - 3) / 1 + 1 = 28``."""
        exact = "" if self.exact else f" (rounded down from {self.numerator / self.stride + 1:.2f})"
        return (f"({self.size_in} + 2*{self.padding} - {self.kernel}) / {self.stride} + 1 "
                f"= {self.numerator} / {self.stride} + 1 = {self.size}{exact}")


def output_size(size_in: int, kernel: int, padding: int = 0, stride: int = 1) -> OutputSize:
    """The output size of a convolution or pooling window along one dimension."""
    if size_in < 1 or kernel < 1 or padding < 0 or stride < 1:
        raise ValueError("need size_in >= 1, kernel >= 1, padding >= 0, stride >= 1")
    return OutputSize(size_in, kernel, padding, stride)


def _pair(v: object) -> int:
    """The first of a (height, width) pair, or the value itself (string paddings such as 'same' are not used)."""
    if isinstance(v, tuple):
        return int(v[0])
    if isinstance(v, int):
        return v
    raise ValueError(f"unsupported window setting {v!r}")


def window_of(layer: nn.Module) -> tuple[int, int, int] | None:
    """(kernel, stride, padding) of a convolution or pooling layer; None for other layers."""
    if isinstance(layer, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
        stride = layer.stride if layer.stride is not None else layer.kernel_size
        return _pair(layer.kernel_size), _pair(stride), _pair(layer.padding)
    return None


# Layers whose output is an affine function of their input (dropout: at inference, where it is the identity).
_AFFINE = (nn.Conv2d, nn.Linear, nn.AvgPool2d, nn.Flatten, nn.Dropout, nn.Identity)


def nonlinear_layers(model: nn.Module) -> list[str]:
    """Names of the model's layers that are not affine maps (ReLU, max pooling...), in order.

    Between two of them, consecutive layers compose into one affine map: with none at all, the whole
    network would be a single linear function of its input (plus a constant).
    """
    return [name for name, layer in model.named_children() if not isinstance(layer, _AFFINE)]


def describe(layer: nn.Module) -> str:
    """A short human description of a layer's settings."""
    window = window_of(layer)
    if isinstance(layer, nn.Conv2d) and window is not None:
        k, s, p = window
        return f"{layer.in_channels}->{layer.out_channels}, kernel {k}, stride {s}, padding {p}"
    if window is not None:
        k, s, _ = window
        return f"kernel {k}, stride {s}"
    if isinstance(layer, nn.Flatten):
        return f"start_dim {layer.start_dim}"
    if isinstance(layer, nn.Dropout):
        return f"p {layer.p}"
    if isinstance(layer, nn.Linear):
        return f"{layer.in_features}->{layer.out_features}"
    return ""


@dataclass(frozen=True)
class LayerRow:
    """One row of the architecture table."""

    index: int
    name: str
    kind: str
    details: str
    output_shape: tuple[int, ...]
    parameters: int
    size: OutputSize | None = None  # the formula for conv and pooling layers


def layer_table(model: nn.Module, input_shape: tuple[int, int, int] = INPUT_SHAPE) -> list[LayerRow]:
    """The architecture table of a sequential model, row 0 being the input."""
    rows = [LayerRow(0, "input", "Input", f"greyscale {input_shape[1]}x{input_shape[2]}", input_shape, 0)]
    shape: tuple[int, ...] = input_shape
    for i, (name, layer) in enumerate(model.named_children(), start=1):
        size = None
        window = window_of(layer)
        if window is not None:
            k, s, p = window
            size = output_size(shape[-1], k, p, s)
            channels = layer.out_channels if isinstance(layer, nn.Conv2d) else shape[0]
            shape = (channels, size.size, size.size)
        elif isinstance(layer, nn.Flatten):
            shape = (math.prod(shape),)
        elif isinstance(layer, nn.Linear):
            shape = (layer.out_features,)
        params = count_parameters(layer)
        rows.append(LayerRow(i, name, type(layer).__name__, describe(layer), shape, params, size))
    return rows


def total_parameters(rows: list[LayerRow]) -> int:
    """Sum of the table's parameter column."""
    return sum(r.parameters for r in rows)


@dataclass(frozen=True)
class Region:
    """A rectangle of the input, rows [top, bottom] and columns [left, right], inclusive."""

    top: int
    bottom: int
    left: int
    right: int

    @property
    def height(self) -> int:
        return self.bottom - self.top + 1

    @property
    def width(self) -> int:
        return self.right - self.left + 1

    def clipped(self, height: int = INPUT_SHAPE[1], width: int = INPUT_SHAPE[2]) -> "Region":
        """The part of the region that lies inside the image (the rest is padding)."""
        return Region(max(self.top, 0), min(self.bottom, height - 1), max(self.left, 0), min(self.right, width - 1))


def window_back(region: Region, window: tuple[int, int, int]) -> Region:
    """The input rows and columns a window layer reads for the output ``region``.

    A window of kernel k, stride s and padding p maps output rows [a, b] to input rows
    [a*s - p, b*s - p + k - 1] (the same for columns); negative or too large values lie in the padding.
    """
    k, s, p = window
    return Region(region.top * s - p, region.bottom * s - p + k - 1, region.left * s - p, region.right * s - p + k - 1)


def receptive_field(model: nn.Module, layer_name: str, row: int = 0, col: int = 0) -> Region:
    """The input region that unit (row, col) of ``layer_name`` can see, before clipping to the image.

    Walks back from the layer to the input with :func:`window_back` through every convolution
    and pooling layer; any unit after Flatten sees the whole image.
    """
    names = [n for n, _ in model.named_children()]
    if layer_name not in names:
        raise KeyError(f"no layer named {layer_name!r}")
    layers = list(model.named_children())[: names.index(layer_name) + 1]
    if any(isinstance(layer, (nn.Flatten, nn.Linear)) for _, layer in layers):
        return Region(0, INPUT_SHAPE[1] - 1, 0, INPUT_SHAPE[2] - 1)
    region = Region(row, row, col, col)
    for _, layer in reversed(layers):
        window = window_of(layer)
        if window is not None:  # ReLU and friends keep positions
            region = window_back(region, window)
    return region
