"""Why the network says what it says: saliency, what-if shifts, top-activating digits, receptive fields.

All functions are pure: they read the model's weights and never change the model (no hooks,
no mode switches). Forward passes walk the layers in order and skip dropout, exactly as
:func:`cnn_core.introspect.trace` does, so results do not depend on the model's train/eval mode.
Gradients are taken with respect to a fresh input tensor only; the model's own parameters
may have ``requires_grad=False``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from .architecture import Region, layer_table, window_back, window_of
from .data import MNIST_MEAN, MNIST_STD, to_input
from .introspect import forward_layers
from .model import INPUT_SHAPE

SaliencyMethod = Literal["integrated_gradients", "gradient_x_input"]
IG_TOLERANCE = 0.01  # logit units: how far the attributions may miss the score difference they split
IG_MAX_STEPS = 2048  # the most points on the path integrated gradients takes (about 2 s of CPU for the CNN)
IG_BATCH = 128  # images per backward pass: bounds the memory of one saliency map


# --------------------------------------------------------------------------- forward passes


def as_network_input(images: torch.Tensor) -> torch.Tensor:
    """Images (N, 28, 28) -> normalised network input (N, 1, 28, 28).

    uint8 images (as MNIST stores them) are read as 0..255; float images as pixels in [0, 1].
    """
    if images.dtype == torch.uint8:
        return to_input(images)
    return ((images.float() - MNIST_MEAN) / MNIST_STD).reshape(-1, *INPUT_SHAPE)


def probabilities(model: nn.Module, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Class probabilities (N, 10) for images (N, 28, 28), uint8 or float pixels in [0, 1]."""
    out = []
    with torch.inference_mode():
        for i in range(0, len(images), batch_size):
            out.append(torch.softmax(forward_layers(model, as_network_input(images[i:i + batch_size])), dim=1))
    return torch.cat(out) if out else torch.empty(0, 10)


# --------------------------------------------------------------------------- top-activating digits


@dataclass(frozen=True)
class TopActivations:
    """For each channel of a layer, the images whose map reaches the highest value, best first."""

    layer: str
    indices: torch.Tensor  # (C, k) int64: image indices, by decreasing activation
    values: torch.Tensor  # (C, k) float: each image's maximum over the channel's map
    positions: torch.Tensor  # (C, k, 2) int64: (row, col) of that maximum in the map
    n_images: int


def top_activating(model: nn.Module, images: torch.Tensor, layer: str, top_k: int = 9,
                   batch_size: int = 500) -> TopActivations:
    """The ``top_k`` images that activate each channel of ``layer`` most (max over the map's positions).

    ``images`` are (N, 28, 28), uint8 or float pixels in [0, 1]; they are run in batches up to ``layer`` only.
    """
    if len(images) == 0:
        raise ValueError("no images to rank")
    peaks, where = [], []
    with torch.inference_mode():
        for i in range(0, len(images), batch_size):
            maps = forward_layers(model, as_network_input(images[i:i + batch_size]), until=layer)
            if maps.dim() != 4:
                raise ValueError(f"{layer} outputs vectors, not feature maps")
            value, flat = maps.flatten(start_dim=2).max(dim=2)  # (n, C)
            peaks.append(value)
            where.append(flat)
    peaks_all, where_all = torch.cat(peaks).T, torch.cat(where).T  # (C, N)
    k = min(top_k, peaks_all.shape[1])
    values, indices = peaks_all.topk(k, dim=1)  # sorted, largest first
    flat = where_all.gather(1, indices)
    width = maps.shape[-1]
    positions = torch.stack([flat // width, flat % width], dim=2)
    return TopActivations(layer, indices, values, positions, int(peaks_all.shape[1]))


# --------------------------------------------------------------------------- saliency


@dataclass(frozen=True)
class Saliency:
    """How much each input pixel pushed the score (logit) of ``target`` up (positive) or down (negative)."""

    attributions: torch.Tensor  # (28, 28), in logit units: they add up to about logit - baseline_logit
    target: int
    method: SaliencyMethod
    logit: float  # the target's score for the image
    baseline_logit: float  # ... and for the all-black image (the reference of integrated gradients)
    steps: int = 0  # points on the path (integrated gradients); 0 for gradient x input

    @property
    def completeness_gap(self) -> float:
        """Sum of the attributions minus (logit - baseline_logit): 0 for exact integrated gradients.

        Integrated gradients is complete in the limit of infinitely many steps; with a finite number
        of steps the sum misses the score difference by this much.
        """
        return float(self.attributions.double().sum()) - (self.logit - self.baseline_logit)


def _pixel_logits(model: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """Logits (N, 10) of pixels (N, 28, 28) in [0, 1], differentiable with respect to the pixels."""
    x = ((pixels - MNIST_MEAN) / MNIST_STD).unsqueeze(1)
    return forward_layers(model, x)


def _pixel_gradients(model: nn.Module, pixels: torch.Tensor, target: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of the target's logit with respect to each image of a batch (N, 28, 28), and the logits."""
    with torch.enable_grad():
        x = pixels.detach().float().clone().requires_grad_(True)  # a fresh leaf: nothing on the model changes
        logits = _pixel_logits(model, x)[:, target]
        (grad,) = torch.autograd.grad(logits.sum(), x)
    return grad.detach(), logits.detach()


def _path_gradient_mean(model: nn.Module, image: torch.Tensor, target: int, steps: int,
                        batch_size: int = IG_BATCH) -> torch.Tensor:
    """The gradient of the target's score averaged over ``steps`` midpoints of the path from black to ``image``.

    Run in batches of ``batch_size`` images, so memory stays bounded whatever the number of steps.
    """
    alphas = (torch.arange(steps, dtype=torch.float64) + 0.5) / steps
    total = torch.zeros(image.shape, dtype=torch.float64)
    for i in range(0, steps, batch_size):
        chunk = alphas[i:i + batch_size].float()
        grad, _ = _pixel_gradients(model, chunk[:, None, None] * image, target)
        total += grad.double().sum(dim=0)
    return (total / steps).float()


def saliency(model: nn.Module, pixels, target: int | None = None,
             method: SaliencyMethod = "integrated_gradients", steps: int = 32) -> Saliency:
    """Attribute the score of ``target`` (default: the predicted digit) to the pixels of one image (28, 28).

    - ``gradient_x_input``: pixel value times the gradient of the score at the image.
    - ``integrated_gradients``: pixel value times the gradient averaged along the straight path from a black
      image to the image (``steps`` points, midpoint rule); the attributions add up to the difference of the
      scores of the image and of the black image.

    Pixels are taken in [0, 1] (before normalisation), so black background pixels get exactly zero.
    """
    image = torch.as_tensor(pixels, dtype=torch.float32).reshape(INPUT_SHAPE[1:])
    with torch.inference_mode():
        logits = _pixel_logits(model, torch.stack([image, torch.zeros_like(image)]))
    chosen = int(logits[0].argmax()) if target is None else int(target)
    if not 0 <= chosen < logits.shape[1]:
        raise ValueError(f"target must be a class 0..{logits.shape[1] - 1}")
    if method == "gradient_x_input":
        grad, _ = _pixel_gradients(model, image[None], chosen)
        attributions = image * grad[0]
    elif method == "integrated_gradients":
        if steps < 1:
            raise ValueError("steps must be at least 1")
        attributions = image * _path_gradient_mean(model, image, chosen, steps)
    else:
        raise ValueError(f"unknown saliency method {method!r}")
    return Saliency(attributions, chosen, method, float(logits[0, chosen]), float(logits[1, chosen]),
                    steps if method == "integrated_gradients" else 0)


def integrated_gradients(model: nn.Module, pixels, target: int | None = None, tolerance: float = IG_TOLERANCE,
                         first_steps: int = 32, max_steps: int = IG_MAX_STEPS) -> Saliency:
    """Integrated gradients with as many steps as completeness needs.

    Starts with ``first_steps`` points on the path and doubles them until the attributions add up to the
    score difference within ``tolerance`` (logit units: ``abs(result.completeness_gap) <= tolerance``),
    or ``max_steps`` is reached; the result says how many steps it took and how far off it still is.
    Doubling is needed because with ReLU and max pooling the gradient jumps along the path, so a
    fixed number of steps leaves an error that depends on the digit (0.04 and more at 32 steps).
    """
    if tolerance <= 0:
        raise ValueError("tolerance must be positive")
    if not 1 <= first_steps <= max_steps:
        raise ValueError("need 1 <= first_steps <= max_steps")
    steps = first_steps
    while True:
        result = saliency(model, pixels, target, "integrated_gradients", steps)
        if abs(result.completeness_gap) <= tolerance or steps >= max_steps:
            return result
        steps = min(steps * 2, max_steps)


# --------------------------------------------------------------------------- what if: shifts and thickness


def shift_images(images: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    """Images (..., H, W) moved ``dx`` columns right and ``dy`` rows down; what leaves the frame is lost, zeros come in.

    (torch.roll alone would wrap the digit round to the other side.)
    """
    h, w = images.shape[-2:]
    out = torch.roll(images, shifts=(int(dy), int(dx)), dims=(-2, -1))
    if dy > 0:
        out[..., : min(dy, h), :] = 0
    elif dy < 0:
        out[..., max(h + dy, 0):, :] = 0
    if dx > 0:
        out[..., :, : min(dx, w)] = 0
    elif dx < 0:
        out[..., :, max(w + dx, 0):] = 0
    return out


def thicken(pixels: torch.Tensor, steps: int = 1) -> torch.Tensor:
    """Strokes made thicker by ``steps`` morphological dilations.

    Each step replaces every pixel by the maximum of its 3x3 neighbourhood (a 3x3 max-pool of stride 1).
    """
    x = torch.as_tensor(pixels, dtype=torch.float32)
    shape = x.shape
    x = x.reshape(-1, 1, *shape[-2:])
    for _ in range(steps):
        x = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
    return x.reshape(shape)


@dataclass(frozen=True)
class ShiftSensitivity:
    """The network's probabilities for one image moved by every (dx, dy) of ``shifts``, and thickened."""

    shifts: list[int]
    grid: torch.Tensor  # (S, S, 10): grid[i, j] = probabilities shifted by dy = shifts[i], dx = shifts[j]
    thickness: list[int]  # dilation steps
    thickened: torch.Tensor  # (T, 10): probabilities after thickness[t] dilations
    predicted: int  # the prediction for the unchanged image

    @property
    def _zero(self) -> int:
        return self.shifts.index(0)

    @property
    def plain(self) -> torch.Tensor:
        """Probabilities of the unchanged image."""
        return self.grid[self._zero, self._zero]

    @property
    def horizontal(self) -> torch.Tensor:
        """(S, 10): moved left (negative) or right (positive) by each shift."""
        return self.grid[self._zero]

    @property
    def vertical(self) -> torch.Tensor:
        """(S, 10): moved up (negative) or down (positive) by each shift."""
        return self.grid[:, self._zero]


def shift_sensitivity(model: nn.Module, pixels, shifts: Iterable[int] = range(-4, 5),
                      thickness: Sequence[int] = (0, 1, 2)) -> ShiftSensitivity:
    """Probabilities of one image (28, 28), pixels in [0, 1], shifted by every (dx, dy) pair of ``shifts``
    (which must include 0) and thickened by each number of dilation steps in ``thickness``."""
    shifts = [int(s) for s in shifts]
    if 0 not in shifts:
        raise ValueError("shifts must include 0 (the unchanged image)")
    image = torch.as_tensor(pixels, dtype=torch.float32).reshape(INPUT_SHAPE[1:])
    moved = torch.stack([shift_images(image, dx, dy) for dy in shifts for dx in shifts])
    grid = probabilities(model, moved).reshape(len(shifts), len(shifts), -1)
    thick = probabilities(model, torch.stack([thicken(image, t) for t in thickness]))
    zero = shifts.index(0)
    return ShiftSensitivity(shifts, grid, list(thickness), thick, int(grid[zero, zero].argmax()))


def shifted_accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, dx: int = 0, dy: int = 0,
                     batch_size: int = 1000) -> float:
    """Accuracy of the model on images (N, 28, 28) moved ``dx`` px right and ``dy`` px down (zero fill)."""
    if len(images) == 0:
        raise ValueError("no images")
    correct = 0
    with torch.inference_mode():
        for i in range(0, len(images), batch_size):
            x = as_network_input(shift_images(images[i:i + batch_size].clone(), dx, dy))
            correct += int((forward_layers(model, x).argmax(dim=1) == labels[i:i + batch_size]).sum())
    return correct / len(images)


@dataclass(frozen=True)
class ShiftAccuracy:
    """Accuracy on a split moved sideways and up/down by each shift."""

    shifts: list[int]
    horizontal: list[float]
    vertical: list[float]
    n_images: int


def shift_accuracy_curve(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                         shifts: Iterable[int] = range(-4, 5)) -> ShiftAccuracy:
    """:func:`shifted_accuracy` for each shift, horizontally and vertically (the unshifted point once)."""
    shifts = [int(s) for s in shifts]
    plain = shifted_accuracy(model, images, labels) if 0 in shifts else None
    horizontal = [plain if s == 0 else shifted_accuracy(model, images, labels, dx=s) for s in shifts]
    vertical = [plain if s == 0 else shifted_accuracy(model, images, labels, dy=s) for s in shifts]
    return ShiftAccuracy(shifts, horizontal, vertical, len(images))  # type: ignore[arg-type]


# --------------------------------------------------------------------------- receptive fields


@dataclass(frozen=True)
class Window:
    """The rows and columns of one layer's output (or of the input) that a unit depends on."""

    layer: str  # "input" for the image itself
    region: Region  # in that layer's output coordinates; may reach into the padding (negative or past the edge)
    size: tuple[int, int]  # height, width of that layer's output


def receptive_chain(model: nn.Module, layer_name: str, row: int, col: int) -> list[Window]:
    """How unit (row, col) of ``layer_name`` sees more and more of each earlier layer, down to the input.

    The first window is the unit itself, the last one its receptive field on the input (as
    :func:`cnn_core.architecture.receptive_field` computes it). Only layers with a window
    (convolutions and pooling) grow it; each is listed once, with the layer whose output it reads.
    Layers after Flatten see everything: ask for a feature-map layer.
    """
    rows = layer_table(model)
    names = [r.name for r in rows]
    if layer_name not in names[1:]:
        raise KeyError(f"no layer named {layer_name!r}")
    end = names.index(layer_name)
    if len(rows[end].output_shape) != 3:
        raise ValueError(f"{layer_name} outputs a vector: each of its units sees the whole input")
    modules = dict(model.named_children())
    region = Region(row, row, col, col)
    chain = [Window(layer_name, region, _side(rows[end].output_shape))]
    for i in range(end, 0, -1):
        window = window_of(modules[rows[i].name])
        if window is None:
            continue
        region = window_back(region, window)
        below = rows[i - 1]
        chain.append(Window(below.name, region, _side(below.output_shape)))
    return chain


def _side(shape: tuple[int, ...]) -> tuple[int, int]:
    """(height, width) of a (C, H, W) output shape."""
    return int(shape[-2]), int(shape[-1])


def cells_in_padding(region: Region, height: int = INPUT_SHAPE[1], width: int = INPUT_SHAPE[2]) -> int:
    """How many cells of ``region`` lie outside a height x width map (in the zero padding)."""
    inside = region.clipped(height, width)
    return region.height * region.width - max(inside.height, 0) * max(inside.width, 0)


def linear_weight_map(model: nn.Module, layer_name: str, unit: int) -> torch.Tensor:
    """Where unit ``unit`` of a fully connected layer right after Flatten looks: the L2 norm of its weights
    over the channels, as a (H, W) map of the flattened feature maps' positions."""
    rows = layer_table(model)
    names = [r.name for r in rows]
    if layer_name not in names:
        raise KeyError(f"no layer named {layer_name!r}")
    i = names.index(layer_name)
    layer = dict(model.named_children())[layer_name]
    before = [r for r in rows[:i] if len(r.output_shape) == 3]
    if not isinstance(layer, nn.Linear) or not before or layer.in_features != math.prod(before[-1].output_shape):
        raise ValueError(f"{layer_name} is not a fully connected layer reading flattened feature maps")
    c, h, w = before[-1].output_shape
    return layer.weight[unit].detach().reshape(c, h, w).norm(dim=0)
