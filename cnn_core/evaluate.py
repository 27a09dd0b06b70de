"""Measure a model on a split of MNIST: accuracy, per-class accuracy, confusion matrix.

    python -m cnn_core.evaluate --data ../shared/data/mnist [--weights models/mnist_cnn.pt]
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

import torch
from torch import nn

from .data import MnistDataError, MnistSplit, get_mnist, to_input


@dataclass
class EvalResult:
    """Predictions of a model on a split and what follows from them."""

    accuracy: float
    per_class: list[float]
    confusion: torch.Tensor  # (10, 10) int64, rows = true digit, columns = predicted
    predictions: torch.Tensor  # (N,) int64
    confidences: torch.Tensor  # (N,) float, probability of the predicted digit
    misclassified: torch.Tensor  # indices of wrong predictions, most confident mistakes first


@torch.inference_mode()
def predict_all(model: nn.Module, images: torch.Tensor, batch_size: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted digits and their probabilities for uint8 images (N, 28, 28), with an eval-mode model."""
    preds, confs = [], []
    for i in range(0, len(images), batch_size):
        probs = torch.softmax(model(to_input(images[i:i + batch_size])), dim=1)
        c, p = probs.max(dim=1)
        preds.append(p)
        confs.append(c)
    if not preds:
        return torch.empty(0, dtype=torch.long), torch.empty(0)
    return torch.cat(preds), torch.cat(confs)


def accuracy(model: nn.Module, split: MnistSplit) -> float:
    """Fraction of ``split`` that ``model`` classifies correctly."""
    preds, _ = predict_all(model, split.images)
    return float((preds == split.labels).float().mean())


def evaluate(model: nn.Module, split: MnistSplit) -> EvalResult:
    """Accuracy, per-class accuracy and confusion matrix of ``model`` on ``split``."""
    preds, confs = predict_all(model, split.images)
    labels = split.labels
    confusion = torch.bincount(labels * 10 + preds, minlength=100).reshape(10, 10)
    totals = confusion.sum(dim=1).clamp(min=1)
    per_class = (confusion.diagonal() / totals).tolist()
    wrong = torch.nonzero(preds != labels).flatten()
    wrong = wrong[torch.argsort(confs[wrong], descending=True)]
    return EvalResult(
        accuracy=float((preds == labels).float().mean()),
        per_class=per_class,
        confusion=confusion,
        predictions=preds,
        confidences=confs,
        misclassified=wrong,
    )


def format_report(result: EvalResult, n: int) -> str:
    """The result as text: accuracy, per-class accuracy and the confusion matrix."""
    lines = [f"accuracy: {result.accuracy:.4f} ({round(result.accuracy * n)}/{n})", "", "per class:"]
    lines += [f"  {d}: {a:.4f}" for d, a in enumerate(result.per_class)]
    lines += ["", "confusion matrix (rows: true digit, columns: predicted):",
              "      " + "".join(f"{d:>6}" for d in range(10))]
    lines += [f"  {d:>2}  " + "".join(f"{int(v):>6}" for v in row) for d, row in enumerate(result.confusion)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit code (2 for bad input)."""
    from .checkpoint import SHIPPED_WEIGHTS, WeightsError, load_checkpoint

    p = argparse.ArgumentParser(prog="python -m cnn_core.evaluate", description="Evaluate weights on MNIST.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", help="folder with MNIST IDX files")
    src.add_argument("--download", metavar="ROOT", help="download the official MNIST with torchvision into ROOT")
    p.add_argument("--weights", default=str(SHIPPED_WEIGHTS), help="weights file (its .json card beside it)")
    p.add_argument("--split", choices=["train", "test"], default="test")
    a = p.parse_args(argv)
    try:
        loaded = load_checkpoint(a.weights)
        split = get_mnist(a.data, a.split, a.download)
        if len(split) == 0:
            raise MnistDataError(f"{split.source} holds no digits")
    except (WeightsError, MnistDataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{loaded.name} on {len(split):,} digits from {split.source}")
    print(format_report(evaluate(loaded.model, split), len(split)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
