"""A layer-by-layer trace of one image through a model, as a pure function.

The trace walks the model's layers in order and keeps each output. It adds no
hooks and changes nothing on the model, so many sessions can trace through one
shared model at the same time.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .model import INPUT_SHAPE


@dataclass(frozen=True)
class LayerOutput:
    """The output of one layer for one image (no batch dimension)."""

    index: int  # row of the architecture table: 1 = first layer after the input
    name: str  # e.g. "conv1"
    kind: str  # e.g. "Conv2d"
    output: torch.Tensor


@dataclass(frozen=True)
class Trace:
    """The input, every layer's output and the probabilities for one image."""

    input: torch.Tensor  # (1, 28, 28), normalised
    layers: tuple[LayerOutput, ...]
    probabilities: torch.Tensor  # (10,)

    @property
    def logits(self) -> torch.Tensor:
        return self.layers[-1].output

    @property
    def prediction(self) -> int:
        return int(self.probabilities.argmax())

    @property
    def confidence(self) -> float:
        return float(self.probabilities.max())

    def __getitem__(self, name: str) -> torch.Tensor:
        """The output of the layer called ``name`` ("input" for the input)."""
        if name == "input":
            return self.input
        for layer in self.layers:
            if layer.name == name:
                return layer.output
        raise KeyError(f"no layer named {name!r}; layers: {[l.name for l in self.layers]}")

    def names(self) -> list[str]:
        return [layer.name for layer in self.layers]


def trace(model: nn.Module, image: torch.Tensor) -> Trace:
    """Run one preprocessed image (1, 28, 28) through ``model`` and keep every layer's output.

    Dropout is applied as at inference (identity) whatever mode the model is in,
    so the result depends only on the weights and the image.
    """
    x = image.detach().to("cpu", torch.float32).reshape(1, *INPUT_SHAPE)
    outputs: list[LayerOutput] = []
    with torch.inference_mode():
        h = x
        for i, (name, layer) in enumerate(model.named_children(), start=1):
            if not isinstance(layer, nn.Dropout):
                h = layer(h)
            outputs.append(LayerOutput(i, name, type(layer).__name__, h[0].clone()))
        probs = torch.softmax(h[0], dim=0)
    return Trace(input=x[0].clone(), layers=tuple(outputs), probabilities=probs)


def dropout_mask(size: int, p: float, seed: int = 0) -> torch.Tensor:
    """A training-time dropout mask: 0 where a unit is dropped, 1/(1-p) where it is kept and scaled."""
    if not 0 <= p < 1:
        raise ValueError("p must be in [0, 1)")
    gen = torch.Generator().manual_seed(seed)
    keep = torch.rand(size, generator=gen) >= p
    return keep.float() / (1 - p)
