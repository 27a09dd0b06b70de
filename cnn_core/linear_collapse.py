"""Two fully connected layers with nothing nonlinear between them are one linear map.

The classic network ends ``fc1 (3136 -> 128) -> fc2 (128 -> 10)`` with no activation between them,
so for every input ``x``::

    fc2(fc1(x)) = W2 (W1 x + b1) + b2 = (W2 W1) x + (W2 b1 + b2)

one 3136 -> 10 matrix and ten biases (31,370 parameters) compute exactly what the two layers
(402,826 parameters) compute. This module finds such a pair in a model, multiplies it out, and
compares the logits of both paths, so a page can show the fact on the model it explores (and
say when a nonlinearity between the layers, e.g. a ReLU after fc1, makes the fact false).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .introspect import forward_layers
from .model import INPUT_SHAPE, count_parameters

# Layers that change nothing at inference: dropout only drops units while training.
IDENTITY_AT_INFERENCE: tuple[type[nn.Module], ...] = (nn.Dropout, nn.Identity)


@dataclass(frozen=True)
class LinearPair:
    """The model's last two fully connected layers and the layers between them."""

    first: str
    second: str
    between: tuple[tuple[str, str], ...]  # (name, kind) of each layer between, in order

    @property
    def blockers(self) -> tuple[str, ...]:
        """Names of the layers between the two that are not the identity at inference (e.g. a ReLU)."""
        return tuple(name for name, kind in self.between if kind not in _IDENTITY_KINDS)

    @property
    def collapses(self) -> bool:
        """True when the two layers compose into one linear map (nothing but identities between them)."""
        return not self.blockers


_IDENTITY_KINDS = frozenset(cls.__name__ for cls in IDENTITY_AT_INFERENCE)


def last_linear_pair(model: nn.Module) -> LinearPair | None:
    """The last two ``nn.Linear`` layers of a sequential model, with what lies between them (None if fewer than two)."""
    children = list(model.named_children())
    linear = [i for i, (_, layer) in enumerate(children) if isinstance(layer, nn.Linear)]
    if len(linear) < 2:
        return None
    i, j = linear[-2], linear[-1]
    between = tuple((name, type(layer).__name__) for name, layer in children[i + 1: j])
    return LinearPair(children[i][0], children[j][0], between)


@dataclass(frozen=True)
class LinearProduct:
    """``second ∘ first`` multiplied out: ``weight = W2 W1`` and ``bias = W2 b1 + b2`` (float64).

    When ``pair.collapses`` is False this is only what the two layers *would* be without the
    nonlinearity between them: it does not compute what the model computes.
    """

    pair: LinearPair
    weight: torch.Tensor  # (out_features, in_features)
    bias: torch.Tensor  # (out_features,)
    hidden: int  # width between the two matrices: the first layer's outputs
    first_parameters: int  # weights and biases of the first layer, as PyTorch counts them
    second_parameters: int
    model_parameters: int  # the whole model's

    @property
    def in_features(self) -> int:
        return int(self.weight.shape[1])

    @property
    def out_features(self) -> int:
        return int(self.weight.shape[0])

    @property
    def parameters(self) -> int:
        """Parameters of the one matrix: its weights and biases."""
        return self.weight.numel() + self.bias.numel()

    @property
    def pair_parameters(self) -> int:
        """Parameters of the two layers it replaces."""
        return self.first_parameters + self.second_parameters

    @property
    def rank_limited(self) -> bool:
        """True when the hidden layer is narrower than both ends: then the product is a matrix of rank at most
        ``hidden``, and the two layers express less than a full ``in -> out`` matrix would."""
        return self.hidden < min(self.in_features, self.out_features)

    @property
    def expressible_parameters(self) -> int:
        """Parameters of the same model with the pair replaced by one matrix (only meaningful when it collapses)."""
        return self.model_parameters - self.pair_parameters + self.parameters

    @property
    def redundant_parameters(self) -> int:
        """How many of the model's parameters the product makes unnecessary (0 when one matrix is no smaller)."""
        return max(0, self.pair_parameters - self.parameters)


def multiply_out(model: nn.Module, pair: LinearPair | None = None) -> LinearProduct:
    """Multiply the pair (by default the model's last two Linear layers) into one matrix and bias, in float64.

    Raises ValueError when the model has fewer than two Linear layers or their sizes do not chain.
    """
    pair = pair or last_linear_pair(model)
    if pair is None:
        raise ValueError("the model has fewer than two fully connected layers")
    layers = dict(model.named_children())
    first, second = layers[pair.first], layers[pair.second]
    if not isinstance(first, nn.Linear) or not isinstance(second, nn.Linear):
        raise ValueError(f"{pair.first} and {pair.second} must both be fully connected layers")
    if second.in_features != first.out_features:
        raise ValueError(f"{pair.second} reads {second.in_features} values but {pair.first} outputs "
                         f"{first.out_features}")
    w1, w2 = first.weight.detach().double(), second.weight.detach().double()
    b1 = first.bias.detach().double() if first.bias is not None else torch.zeros(w1.shape[0], dtype=torch.float64)
    b2 = second.bias.detach().double() if second.bias is not None else torch.zeros(w2.shape[0], dtype=torch.float64)
    # float64: the product sums 128 terms per entry; the comparison below should show the layers' own
    # float32 rounding, not the product's.
    return LinearProduct(pair, w2 @ w1, w2 @ b1 + b2, first.out_features, count_parameters(first), count_parameters(second),
                         count_parameters(model))


@dataclass(frozen=True)
class LogitComparison:
    """The model's logits for one input, computed through the two layers and through the one matrix."""

    two_layers: torch.Tensor  # (out,) float32: the model's own layers, in order
    one_matrix: torch.Tensor  # (out,) float64: everything before the pair, then the product

    @property
    def max_abs_difference(self) -> float:
        return float((self.two_layers.double() - self.one_matrix).abs().max())


def compare_logits(model: nn.Module, product: LinearProduct, image: torch.Tensor) -> LogitComparison:
    """Run one preprocessed image (1, 28, 28) through the model, and through the model with the pair replaced
    by the product (layers after the pair, if any, are applied to the product's output).

    Dropout is the identity, as at inference; nothing on the model changes.
    """
    x = image.detach().to("cpu", torch.float32).reshape(1, *INPUT_SHAPE)
    names = [name for name, _ in model.named_children()]
    start, end = names.index(product.pair.first), names.index(product.pair.second)
    with torch.inference_mode():
        logits = forward_layers(model, x)
        # What the first layer of the pair reads: the output of the layer just before it.
        into_pair = forward_layers(model, x, until=names[start - 1]) if start > 0 else x.flatten(start_dim=1)
        h = into_pair.double() @ product.weight.T + product.bias
        for _, layer in list(model.named_children())[end + 1:]:
            if not isinstance(layer, IDENTITY_AT_INFERENCE):
                h = layer(h)
    return LogitComparison(logits[0].clone(), h[0].clone())
