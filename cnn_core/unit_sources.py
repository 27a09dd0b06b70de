"""What one unit of a layer is computed from, in the layer just before it, for one traced image.

A unit is one number a layer outputs: ``(channel, row, col)`` of a feature map, or ``(i,)`` of a
vector. Its sources are the values of the previous layer it reads and how much each one moved it:

- a convolution reads a k×k window in *every* channel of the previous maps; each channel
  contributes the sum of its window times the filter's weights (:func:`cnn_core.convolution.conv_step`);
- a pooling layer reads a 2×2 (k×k) window of one channel: it keeps the largest value or the mean;
- an element-wise layer (ReLU) reads the same position; flatten reads the map value it unrolls;
- a fully connected unit reads every value of the previous layer: each contributes weight × value.

For convolutions and fully connected layers the contributions plus the bias add up to the unit's
value: the tests check that against the trace. Everything is read off the model and the trace,
so it holds for every variant; nothing changes the model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from .architecture import Region, window_back, window_of
from .convolution import conv_step
from .introspect import Trace
from .linear_collapse import IDENTITY_AT_INFERENCE

SourceKind = Literal["conv", "pool", "elementwise", "flatten", "linear"]


@dataclass(frozen=True)
class UnitSources:
    """One unit's value and what it is computed from in ``previous`` (the layer just before it, or "input").

    ``contributions[i]`` is how much source ``i`` added to the value: input channels for a convolution,
    input units for a fully connected layer, the window's values for pooling; ``strongest`` lists the
    sources that move the value most (largest absolute contribution first).
    """

    layer: str
    index: tuple[int, ...]  # (channel, row, col) or (unit,)
    value: float
    kind: SourceKind
    previous: str
    previous_shape: tuple[int, ...]
    region: Region | None  # rows and columns of the previous maps read (conv, pool, element-wise, flatten)
    channels: tuple[int, ...]  # channels of the previous maps read
    contributions: torch.Tensor  # (n,) float
    strongest: tuple[int, ...]
    bias: float = 0.0
    pool: Literal["max", "avg"] | None = None

    @property
    def in_padding(self) -> int:
        """How many cells of the window lie outside the previous maps, in the zero padding (conv only)."""
        if self.region is None or len(self.previous_shape) != 3:
            return 0
        inside = self.region.clipped(self.previous_shape[1], self.previous_shape[2])
        return self.region.height * self.region.width - max(inside.height, 0) * max(inside.width, 0)


def shown_layers(model: nn.Module) -> list[str]:
    """The model's layers a picture of the network shows: all but those that are the identity at inference."""
    return [name for name, layer in model.named_children() if not isinstance(layer, IDENTITY_AT_INFERENCE)]


def previous_shown(model: nn.Module, layer_name: str) -> str:
    """The shown layer just before ``layer_name`` ("input" for the first); its output is what the layer reads,
    since the layers skipped in between (dropout) are the identity at inference."""
    names = [name for name, _ in model.named_children()]
    if layer_name not in names:
        raise KeyError(f"no layer named {layer_name!r}; layers: {names}")
    shown = set(shown_layers(model))
    earlier = [n for n in names[: names.index(layer_name)] if n in shown]
    return earlier[-1] if earlier else "input"


def _strongest(contributions: torch.Tensor, top_k: int) -> tuple[int, ...]:
    order = torch.argsort(contributions.abs(), descending=True, stable=True)
    return tuple(int(i) for i in order[:top_k])


def _check_index(index: tuple[int, ...], shape: tuple[int, ...], layer: str) -> None:
    if len(index) != len(shape) or any(not 0 <= i < n for i, n in zip(index, shape)):
        raise IndexError(f"{layer} has shape {shape}; {index} is not one of its units")


def unit_sources(model: nn.Module, tr: Trace, layer_name: str, index: tuple[int, ...],
                 top_k: int = 8) -> UnitSources:
    """What unit ``index`` of ``layer_name`` is computed from, for the image ``tr`` traced through ``model``.

    Raises KeyError for an unknown layer, IndexError for a unit outside the layer, and ValueError for a
    layer kind this module does not know (or a layer skipped at inference, such as dropout).
    """
    layers = dict(model.named_children())
    if layer_name not in layers:
        raise KeyError(f"no layer named {layer_name!r}; layers: {list(layers)}")
    layer = layers[layer_name]
    out = tr[layer_name]
    index = tuple(int(i) for i in index)
    _check_index(index, tuple(out.shape), layer_name)
    value = float(out[index])
    previous = previous_shown(model, layer_name)
    x = tr[previous]
    prev_shape = tuple(int(d) for d in x.shape)

    if isinstance(layer, nn.Conv2d):
        c, r, k = index
        step = conv_step(model, tr, layer_name, c, r, k)
        kh, kw = step.kernel.shape[-2:]
        region = Region(step.top, step.top + kh - 1, step.left, step.left + kw - 1)
        contributions = step.per_channel.detach().float()
        return UnitSources(layer_name, index, value, "conv", previous, prev_shape, region,
                           tuple(range(layer.in_channels)), contributions, _strongest(contributions, top_k),
                           bias=step.bias)
    if isinstance(layer, (nn.MaxPool2d, nn.AvgPool2d)):
        c, r, k = index
        window = window_of(layer)
        assert window is not None  # pooling layers always have one
        region = window_back(Region(r, r, k, k), window)
        inside = region.clipped(prev_shape[1], prev_shape[2])
        cells = x[c, inside.top: inside.bottom + 1, inside.left: inside.right + 1].reshape(-1).float()
        kind: Literal["max", "avg"] = "max" if isinstance(layer, nn.MaxPool2d) else "avg"
        # The winner of a max-pool is the cell the output copies; an average reads every cell equally.
        strongest = (int(cells.argmax()),) if kind == "max" else tuple(range(cells.numel()))
        return UnitSources(layer_name, index, value, "pool", previous, prev_shape, region, (c,), cells,
                           strongest, pool=kind)
    if isinstance(layer, nn.Flatten):
        if len(prev_shape) != 3:
            return UnitSources(layer_name, index, value, "flatten", previous, prev_shape, None, (),
                               x.reshape(-1)[index[0]: index[0] + 1].float(), (0,))
        c, rest = divmod(index[0], prev_shape[1] * prev_shape[2])
        r, k = divmod(rest, prev_shape[2])
        return UnitSources(layer_name, index, value, "flatten", previous, prev_shape, Region(r, r, k, k), (c,),
                           x[c, r, k].reshape(1).float(), (0,))
    if isinstance(layer, nn.Linear):
        (unit,) = index
        inputs = x.reshape(-1).float()
        if inputs.numel() != layer.in_features:
            raise ValueError(f"{layer_name} reads {layer.in_features} values but {previous} outputs "
                             f"{inputs.numel()}")
        contributions = layer.weight[unit].detach().float() * inputs
        bias = float(layer.bias[unit].detach()) if layer.bias is not None else 0.0
        return UnitSources(layer_name, index, value, "linear", previous, prev_shape, None, (),
                           contributions, _strongest(contributions, top_k), bias=bias)
    if isinstance(layer, IDENTITY_AT_INFERENCE):
        raise ValueError(f"{layer_name} ({type(layer).__name__}) passes its input on unchanged at inference")
    if math.prod(prev_shape) == math.prod(out.shape):
        # ReLU and other element-wise layers: the unit reads the same position of the layer before.
        source = x.reshape(out.shape)[index]
        same: Region | None = Region(index[1], index[1], index[2], index[2]) if len(index) == 3 else None
        channels = (index[0],) if len(index) == 3 else ()
        return UnitSources(layer_name, index, value, "elementwise", previous, prev_shape, same, channels,
                           source.reshape(1).float(), (0,))
    raise ValueError(f"{layer_name} is a {type(layer).__name__}: no rule for what its units read")


def default_unit(tr: Trace, layer_name: str) -> tuple[int, ...]:
    """The unit of ``layer_name`` with the largest value for this image: where to start looking."""
    out = tr[layer_name]
    flat = int(out.reshape(-1).argmax())
    return tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), tuple(out.shape)))


def strongest_position(tr: Trace, layer_name: str, channel: int) -> tuple[int, int]:
    """(row, col) of the largest value of one channel of a feature-map layer."""
    plane = tr[layer_name][channel]
    flat = int(plane.reshape(-1).argmax())
    return divmod(flat, int(plane.shape[-1]))
