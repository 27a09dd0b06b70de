"""One output value of a convolution, worked out by hand: window, weights, products, sum, bias.

Everything is read off the layer itself (kernel size, stride, padding, dilation) and the
layer's input as the trace recorded it, so the arithmetic holds for the shipped network
and for any variant of it. Nothing here touches the model: it only reads its weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .introspect import Trace


@dataclass(frozen=True)
class ConvGeometry:
    """How a convolution's window moves over its input (per dimension: (rows, columns))."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    in_size: tuple[int, int]  # height, width of the input before padding
    out_size: tuple[int, int]  # height, width of the feature map

    @property
    def positions(self) -> int:
        """How many places the window visits: one per output value of a channel."""
        return self.out_size[0] * self.out_size[1]

    @property
    def span(self) -> tuple[int, int]:
        """Rows and columns of the input the window covers (kernel spread out by the dilation)."""
        return tuple(d * (k - 1) + 1 for k, d in zip(self.kernel, self.dilation))  # type: ignore[return-value]


@dataclass(frozen=True)
class ConvStep:
    """Output value (row, col) of one filter, as the sum the layer computes.

    ``patch`` is the input under the window with the zero padding included, ``kernel`` the
    filter's weights, both (C_in, kh, kw); ``products`` is their element-wise product,
    ``per_channel`` its sum over each input channel, and ``total`` = sum of products + bias,
    which is the value of the feature map at (row, col).
    """

    layer: str
    filter: int
    row: int
    col: int
    top: int  # input row of the window's top-left cell (negative: in the padding)
    left: int  # input column of the window's top-left cell
    patch: torch.Tensor
    kernel: torch.Tensor
    products: torch.Tensor
    per_channel: torch.Tensor
    in_padding: torch.Tensor  # (kh, kw) bool: cells of the window that fall on the zero border
    bias: float
    total: float

    @property
    def weighted_sum(self) -> float:
        """The sum of all products, before the bias."""
        return float(self.per_channel.sum())


def _pair(v) -> tuple[int, int]:
    return (int(v[0]), int(v[1])) if isinstance(v, tuple) else (int(v), int(v))


def conv_layer_names(model: nn.Module) -> list[str]:
    """Names of the model's 2-D convolutions, in order."""
    return [name for name, layer in model.named_children() if isinstance(layer, nn.Conv2d)]


def conv_layer(model: nn.Module, name: str) -> nn.Conv2d:
    """The convolution called ``name``; KeyError if there is none, TypeError if it is another kind of layer."""
    layers = dict(model.named_children())
    if name not in layers:
        raise KeyError(f"no layer named {name!r}; layers: {list(layers)}")
    layer = layers[name]
    if not isinstance(layer, nn.Conv2d):
        raise TypeError(f"{name} is a {type(layer).__name__}, not a convolution")
    return layer


def geometry(layer: nn.Conv2d, in_size: tuple[int, int]) -> ConvGeometry:
    """The window geometry of ``layer`` on an input of ``in_size`` (height, width).

    Only what the worked sum can show is accepted: zero padding given as numbers and one group.
    """
    if isinstance(layer.padding, str):
        raise ValueError(f"padding={layer.padding!r} is not supported: give the padding as numbers")
    if layer.padding_mode != "zeros" or layer.groups != 1:
        raise ValueError("only zero-padded convolutions with groups=1 are supported")
    k, s, p, d = (_pair(layer.kernel_size), _pair(layer.stride), _pair(layer.padding), _pair(layer.dilation))
    out = tuple((n + 2 * pi - di * (ki - 1) - 1) // si + 1 for n, ki, si, pi, di in zip(in_size, k, s, p, d))
    if min(out) < 1:
        raise ValueError(f"the window does not fit an input of {in_size}")
    return ConvGeometry(k, s, p, d, (int(in_size[0]), int(in_size[1])), out)  # type: ignore[arg-type]


def layer_input(model: nn.Module, tr: Trace, name: str) -> torch.Tensor:
    """What layer ``name`` received for the traced image: the previous layer's output, or the input."""
    names = [n for n, _ in model.named_children()]
    if name not in names:
        raise KeyError(f"no layer named {name!r}")
    i = names.index(name)
    return tr.input if i == 0 else tr[names[i - 1]]


def pad_input(x: torch.Tensor, padding: tuple[int, int]) -> torch.Tensor:
    """(C, H, W) -> (C, H + 2*pad_rows, W + 2*pad_cols) with a border of zeros, as the convolution sees it."""
    return F.pad(x, (padding[1], padding[1], padding[0], padding[0]))


def window_origin(g: ConvGeometry, row: int, col: int) -> tuple[int, int]:
    """Input (row, column) of the window's top-left cell for output (row, col); negative inside the padding."""
    return row * g.stride[0] - g.padding[0], col * g.stride[1] - g.padding[1]


def window_positions(g: ConvGeometry) -> list[tuple[int, int]]:
    """Every output position in the order the window visits them: left to right, top to bottom."""
    return [(r, c) for r in range(g.out_size[0]) for c in range(g.out_size[1])]


def position_at(g: ConvGeometry, index: int) -> tuple[int, int]:
    """The (row, col) of the ``index``-th window position in raster order."""
    if not 0 <= index < g.positions:
        raise IndexError(f"position {index} is outside 0..{g.positions - 1}")
    return divmod(index, g.out_size[1])


def index_of(g: ConvGeometry, row: int, col: int) -> int:
    """The raster index of output position (row, col): the inverse of :func:`position_at`."""
    if not (0 <= row < g.out_size[0] and 0 <= col < g.out_size[1]):
        raise IndexError(f"({row}, {col}) is outside the {g.out_size[0]}x{g.out_size[1]} feature map")
    return row * g.out_size[1] + col


def conv_step(model: nn.Module, tr: Trace, layer_name: str, filter_index: int, row: int, col: int) -> ConvStep:
    """Work out output (row, col) of filter ``filter_index`` of ``layer_name`` for the traced image."""
    layer = conv_layer(model, layer_name)
    x = layer_input(model, tr, layer_name).detach().float()
    g = geometry(layer, (x.shape[-2], x.shape[-1]))
    if not 0 <= filter_index < layer.out_channels:
        raise IndexError(f"{layer_name} has filters 0..{layer.out_channels - 1}, not {filter_index}")
    index_of(g, row, col)  # validates the position
    top, left = window_origin(g, row, col)
    padded = pad_input(x, g.padding)
    # In padded coordinates the window starts padding cells further down and right.
    r0, c0 = top + g.padding[0], left + g.padding[1]
    span_r, span_c = g.span
    patch = padded[:, r0: r0 + span_r: g.dilation[0], c0: c0 + span_c: g.dilation[1]]
    kernel = layer.weight[filter_index].detach().float()
    products = patch * kernel
    per_channel = products.sum(dim=(1, 2))
    bias = float(layer.bias[filter_index].detach()) if layer.bias is not None else 0.0
    rows = top + torch.arange(g.kernel[0]) * g.dilation[0]
    cols = left + torch.arange(g.kernel[1]) * g.dilation[1]
    outside_r = (rows < 0) | (rows >= g.in_size[0])
    outside_c = (cols < 0) | (cols >= g.in_size[1])
    in_padding = outside_r[:, None] | outside_c[None, :]
    # Sum in float64: the page shows this number beside the layer's own result.
    total = float(products.double().sum()) + bias
    return ConvStep(layer_name, filter_index, row, col, top, left, patch.clone(), kernel.clone(), products,
                    per_channel, in_padding, bias, total)


def top_channels(step: ConvStep, n: int = 4) -> list[int]:
    """The input channels that move the sum the most (largest absolute contribution first)."""
    order = torch.argsort(step.per_channel.abs(), descending=True)
    return [int(i) for i in order[:n]]


def filled_map(feature_map: torch.Tensor, g: ConvGeometry, upto: int) -> torch.Tensor:
    """A copy of one channel's map (H, W) with only the first ``upto`` + 1 raster positions kept, NaN after.

    This is the map as the sliding window has filled it so far.
    """
    flat = feature_map.detach().float().flatten().clone()
    flat[upto + 1:] = float("nan")
    return flat.reshape(g.out_size)
