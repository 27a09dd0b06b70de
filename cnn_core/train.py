"""Train a network of the family on MNIST, reproducibly.

    python -m cnn_core.train --data ../shared/data/mnist --out models/mnist_cnn.pt

One obvious loop: shuffle, augment (small random rotations, shifts and scalings,
so 10,000 digits go further), step, keep a moving average of the weights, and
evaluate that average on the test split after each epoch. Weights and model
card are written only at the end, atomically.
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import save_checkpoint
from .data import MNIST_MEAN, MNIST_STD, MnistDataError, MnistSplit, get_mnist, take
from .evaluate import accuracy
from .model import CNNConfig, MLPConfig, ModelConfig, build_model, count_parameters


@dataclass(frozen=True)
class TrainConfig:
    """How to train. The defaults train the shipped model: 60 epochs of 10,000 digits."""

    epochs: int = 60
    batch_size: int = 64
    lr: float = 0.05  # peak of the one-cycle schedule (SGD, Nesterov momentum 0.9)
    weight_decay: float = 5e-4
    seed: int = 0
    train_size: int | None = None
    augment: bool = True
    rotate: float = 12.0  # degrees, at most, either way
    zoom: float = 0.1  # scale by 1 +- zoom at most
    shift: float = 2.5  # pixels, at most, in each direction
    label_smoothing: float = 0.0
    ema: float = 0.999  # > 0: return an exponential moving average of the weights along training


@dataclass
class EpochStats:
    """What one epoch did."""

    epoch: int
    loss: float
    train_accuracy: float
    test_accuracy: float | None
    seconds: float


@dataclass
class Progress:
    """Reported after every batch: enough for a progress bar and a live curve."""

    epoch: int
    epochs: int
    batch: int
    batches: int
    loss: float
    accuracy: float

    @property
    def fraction(self) -> float:
        return ((self.epoch - 1) * self.batches + self.batch) / (self.epochs * self.batches)


@dataclass
class TrainResult:
    """The trained eval-mode model and its history; ``cancelled`` if stopped early."""

    model: nn.Sequential
    history: list[EpochStats] = field(default_factory=list)
    cancelled: bool = False


def random_affine(pixels: torch.Tensor, generator: torch.Generator, degrees: float,
                  zoom: float, shift: float) -> torch.Tensor:
    """Per-image random rotation (up to ``degrees``), scaling (1 +- ``zoom``) and shift (up to ``shift`` px).

    Works on a batch (N, 1, H, W) in [0, 1]; what moves in from outside is background (0).
    """
    n, _, h, w = pixels.shape
    u = torch.rand(n, 4, generator=generator) * 2 - 1
    angle = u[:, 0] * math.radians(degrees)
    s = 1 + u[:, 1] * zoom
    tx, ty = u[:, 2] * shift / (w / 2), u[:, 3] * shift / (h / 2)  # affine_grid works in [-1, 1] units
    cos, sin = torch.cos(angle) / s, torch.sin(angle) / s
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, [n, 1, h, w], align_corners=False)
    return F.grid_sample(pixels, grid, align_corners=False, padding_mode="zeros")


def _ema(decay: float) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """Exponential moving average of the weights: the average along the last steps generalises
    better than the last step alone. The decay ramps up over the first steps, so a short run
    (a few hundred steps in the app) averages recent weights rather than the random initial ones.
    """
    def update(average: torch.Tensor, current: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
        d = min(decay, (1 + int(steps)) / (10 + int(steps)))
        return average * d + current * (1 - d)

    return update


def train_model(
    model_config: ModelConfig,
    train_split: MnistSplit,
    test_split: MnistSplit | None = None,
    config: TrainConfig = TrainConfig(),
    on_progress: Callable[[Progress], None] | None = None,
    on_epoch: Callable[[EpochStats], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> TrainResult:
    """Train a fresh model; callbacks report progress and ``should_stop`` can cancel between batches."""
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    data = take(train_split, config.train_size)
    pixels = data.images.float().div(255).unsqueeze(1)
    labels = data.labels
    model = build_model(model_config)
    opt = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=0.9, nesterov=True,
                          weight_decay=config.weight_decay)
    batches = math.ceil(len(labels) / config.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=config.epochs * batches)
    averaged = torch.optim.swa_utils.AveragedModel(model, avg_fn=_ema(config.ema)) if config.ema > 0 else None
    result = TrainResult(model=model)

    for epoch in range(1, config.epochs + 1):
        model.train()
        start, seen, correct, loss_sum = time.perf_counter(), 0, 0, 0.0
        order = torch.randperm(len(labels), generator=gen)
        for b in range(batches):
            if should_stop is not None and should_stop():
                result.cancelled = True
                result.model.eval()
                return result
            idx = order[b * config.batch_size:(b + 1) * config.batch_size]
            x = pixels[idx]
            if config.augment:
                x = random_affine(x, gen, config.rotate, config.zoom, config.shift)
            x = (x - MNIST_MEAN) / MNIST_STD
            y = labels[idx]
            logits = model(x)
            loss = F.cross_entropy(logits, y, label_smoothing=config.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if averaged is not None:
                averaged.update_parameters(model)
            seen += len(y)
            correct += int((logits.argmax(1) == y).sum())
            loss_sum += loss.item() * len(y)
            if on_progress is not None:
                on_progress(Progress(epoch, config.epochs, b + 1, batches, loss_sum / seen, correct / seen))
        result.model = averaged.module if averaged is not None else model
        result.model.eval()
        test_acc = accuracy(result.model, test_split) if test_split is not None else None
        stats = EpochStats(epoch, loss_sum / seen, correct / seen, test_acc, time.perf_counter() - start)
        result.history.append(stats)
        if on_epoch is not None:
            on_epoch(stats)
    return result


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    d, c = TrainConfig(), CNNConfig()
    p = argparse.ArgumentParser(prog="python -m cnn_core.train", description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", help="folder with MNIST IDX files (e.g. ../shared/data/mnist)")
    src.add_argument("--download", metavar="ROOT", help="download the official MNIST with torchvision into ROOT")
    p.add_argument("--out", required=True, help="weights file to write (its model card goes beside it, .json)")
    p.add_argument("--name", help="model name for the card (default: the file's stem)")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--train-size", type=int, default=None, help="use only the first N training digits")
    p.add_argument("--no-augment", action="store_true", help="train on the digits as they are")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--arch", choices=["cnn", "mlp"], default="cnn")
    p.add_argument("--conv1", type=int, default=c.conv1_channels, help="filters of conv1")
    p.add_argument("--conv2", type=int, default=c.conv2_channels, help="filters of conv2")
    p.add_argument("--kernel", type=int, default=c.kernel_size)
    p.add_argument("--padding", type=int, default=c.padding)
    p.add_argument("--pool", choices=["max", "avg"], default=c.pool)
    p.add_argument("--dropout", type=float, default=c.dropout)
    p.add_argument("--hidden", type=int, nargs="+", default=[c.hidden],
                   help="hidden width (cnn: one value; mlp: one value per hidden layer)")
    p.add_argument("--hidden-relu", action="store_true", help="cnn: a ReLU between fc1 and fc2")
    return p.parse_args(argv)


def _model_config(a: argparse.Namespace) -> ModelConfig:
    if a.arch == "mlp":
        return MLPConfig(hidden=tuple(a.hidden), dropout=a.dropout)
    if len(a.hidden) != 1:
        raise ValueError("--hidden takes one width for the CNN")
    return CNNConfig(a.conv1, a.conv2, a.kernel, a.padding, a.pool, a.dropout, a.hidden[0], a.hidden_relu)


def _check_writable(out: Path) -> None:
    folder = out.parent if str(out.parent) else Path(".")
    if out.suffix == ".json":
        raise ValueError(f"{out}: the weights file must not end in .json, that name is its model card's")
    if out.is_dir():
        raise OSError(f"{out} is a folder; give the path of a weights file, e.g. {out / 'model.pt'}")
    if not folder.is_dir():
        raise OSError(f"output folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise OSError(f"output folder {folder} is not writable")
    if out.exists() and not os.access(out, os.W_OK):
        raise OSError(f"{out} exists and is not writable")


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit code (2 for bad input)."""
    from tqdm import tqdm

    a = _parse_args(argv)
    out = Path(a.out)
    try:
        model_config = _model_config(a)
        build_model(model_config)  # fail on an impossible architecture before loading data
        _check_writable(out)
        cfg = TrainConfig(epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, weight_decay=a.weight_decay,
                          seed=a.seed, train_size=a.train_size, augment=not a.no_augment)
        if cfg.epochs < 1 or cfg.batch_size < 1:
            raise ValueError("--epochs and --batch-size must be at least 1")
        if cfg.train_size is not None and cfg.train_size < 1:
            raise ValueError("--train-size must be at least 1")
        if not cfg.lr > 0 or not cfg.weight_decay >= 0:  # also refuses nan
            raise ValueError("--lr must be positive and --weight-decay not negative")
        if a.threads is not None and a.threads < 1:
            raise ValueError("--threads must be at least 1")
        root = a.download
        train_split = get_mnist(a.data, "train", root)
        test_split = get_mnist(a.data, "test", root)
        for split in (train_split, test_split):
            if len(split) == 0:
                raise MnistDataError(f"{split.source} holds no digits")
    except (MnistDataError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if a.threads:
        torch.set_num_threads(a.threads)

    n_train = len(take(train_split, cfg.train_size))
    print(f"training {model_config.kind} ({count_parameters(build_model(model_config)):,} parameters) on "
          f"{n_train:,} digits from {train_split.source}, testing on {len(test_split):,} from {test_split.source}")
    bar = tqdm(total=cfg.epochs * math.ceil(n_train / cfg.batch_size), unit="batch", dynamic_ncols=True)

    def on_progress(p: Progress) -> None:
        bar.update(1)
        bar.set_description(f"epoch {p.epoch}/{p.epochs}")
        bar.set_postfix(loss=f"{p.loss:.4f}", acc=f"{p.accuracy:.4f}")

    def on_epoch(s: EpochStats) -> None:
        bar.write(f"epoch {s.epoch}: loss {s.loss:.4f}  train acc {s.train_accuracy:.4f}  "
                  f"test acc {s.test_accuracy:.4f}  ({s.seconds:.0f} s)")

    started = time.perf_counter()
    try:
        result = train_model(model_config, train_split, test_split, cfg, on_progress, on_epoch)
    except KeyboardInterrupt:
        bar.close()
        print(f"interrupted: nothing written, {out} left as it was", file=sys.stderr)
        return 130
    bar.close()
    final = result.history[-1]
    card = {
        "name": a.name or out.stem,
        "command": "python -m cnn_core.train " + " ".join(shlex.quote(s) for s in (argv if argv is not None else sys.argv[1:])),
        "seed": cfg.seed,
        "training": asdict(cfg),
        "data": {"train": train_split.source, "train_examples": n_train,
                 "test": test_split.source, "test_examples": len(test_split)},
        "epochs": cfg.epochs,
        "history": [asdict(h) for h in result.history],
        "metrics": {"test_accuracy": final.test_accuracy, "test_examples": len(test_split)},
        "train_seconds": round(time.perf_counter() - started, 1),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    try:
        card = save_checkpoint(result.model, model_config, out, card)
    except OSError as e:
        print(f"error: could not write {out}: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out} (sha256 {card['sha256'][:12]}...) test accuracy {final.test_accuracy:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
