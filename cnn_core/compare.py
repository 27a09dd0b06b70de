"""Two traces of one network side by side: how far apart two inputs are, layer by layer."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .introspect import Trace


@dataclass(frozen=True)
class LayerDifference:
    """How much the outputs of one layer (or the input) differ between two traces."""

    name: str  # "input" or a layer name
    mean_absolute: float  # mean |A - B|, in the layer's own units
    relative: float  # mean |A - B| / mean of (mean |A|, mean |B|): 0 the same, 2 nothing in common; 0 if both are 0


def _difference(name: str, a: torch.Tensor, b: torch.Tensor) -> LayerDifference:
    gap = float((a - b).abs().mean())
    scale = float((a.abs().mean() + b.abs().mean()) / 2)
    return LayerDifference(name, gap, gap / scale if scale > 0 else 0.0)


def layer_differences(a: Trace, b: Trace) -> list[LayerDifference]:
    """The input and every layer, in order: how far the two traces are apart there.

    Both traces must come from one network (the same layers in the same order).
    """
    if a.names() != b.names():
        raise ValueError("the two traces come from different networks")
    return [_difference("input", a.input, b.input)] + [
        _difference(la.name, la.output, lb.output) for la, lb in zip(a.layers, b.layers, strict=True)]


def map_layers(tr: Trace) -> list[str]:
    """"input" and every layer of the trace whose output is a stack of 2-D maps (C, H, W)."""
    return ["input"] + [layer.name for layer in tr.layers if layer.output.dim() == 3]
