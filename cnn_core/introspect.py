"""A layer-by-layer trace of one image through a model, as a pure function.

The trace walks the model's layers in order and keeps each output. It adds no
hooks and changes nothing on the model, so many sessions can trace through one
shared model at the same time.
"""

from __future__ import annotations

from collections.abc import Iterator
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
        raise KeyError(f"no layer named {name!r}; layers: {[layer.name for layer in self.layers]}")

    def names(self) -> list[str]:
        return [layer.name for layer in self.layers]


def inference_steps(model: nn.Module, x: torch.Tensor) -> Iterator[tuple[str, nn.Module, torch.Tensor]]:
    """Run a batch through the model's layers in order, as at inference, yielding (name, layer, output) per layer.

    Dropout is the identity here whatever mode the model is in, so outputs depend only on the
    weights and the input. This is the one walk every trace, saliency map and measurement uses.
    """
    h = x
    for name, layer in model.named_children():
        if not isinstance(layer, nn.Dropout):
            h = layer(h)
        yield name, layer, h


def forward_layers(model: nn.Module, x: torch.Tensor, until: str | None = None) -> torch.Tensor:
    """The output of layer ``until`` (of the last layer when None) for a batch, as at inference."""
    names = [n for n, _ in model.named_children()]
    if until is not None and until not in names:
        raise KeyError(f"no layer named {until!r}; layers: {names}")
    out = x
    for name, _, out in inference_steps(model, x):  # noqa: B007 - the last output is the answer
        if name == until:
            break
    return out


def trace(model: nn.Module, image: torch.Tensor) -> Trace:
    """Run one preprocessed image (1, 28, 28) through ``model`` and keep every layer's output.

    Dropout is applied as at inference (identity) whatever mode the model is in,
    so the result depends only on the weights and the image.
    """
    x = image.detach().to("cpu", torch.float32).reshape(1, *INPUT_SHAPE)
    outputs: list[LayerOutput] = []
    with torch.inference_mode():
        h = x
        for i, (name, layer, h) in enumerate(inference_steps(model, x), start=1):
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
