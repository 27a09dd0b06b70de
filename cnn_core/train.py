"""Train a network of the family on MNIST (and pen-drawn digits), reproducibly.

    python -m cnn_core.train --data ../shared/data/mnist --out models/mnist_cnn.pt

One obvious loop: shuffle, augment (small random rotations, shifts, scalings and elastic
distortions, so 9,000 digits go further), step, keep a moving average of the weights, and
evaluate that average on held-out digits after each epoch. Weights and model card are written
only at the end, atomically.

Randomness belongs to the run: one ``torch.Generator`` seeded from the run's seed draws the
initial weights, the order of the digits, the augmentation and the dropout masks. Nothing here
reads or reseeds PyTorch's process-wide generator, so the same settings and seed give the same
weights whether a run is alone or beside others (the app trains in server threads).

Data protocol of the command line (``--validation``, default 1,000): the last digits of the MNIST
training file are validation digits, never trained on; every choice (the epoch count, the
temperature, the unusual-input threshold) is made on them. The MNIST test digits are measured
once, at the end, for the figures of the model card. With ``--pen FILE`` the pen-drawn digits
are split by writer (cnn_core.pen): ``--pen-train`` trains on the training writers' digits, the
validation writers join every choice, the bundled test writers give the card's pen figures. The
commands of the shipped models are in models/README.md.

For other code: :func:`train_model` (one run, its own generator), :func:`model_card` (the one
place a card is built, command line and app alike), :func:`equivalent_command`.
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import stat
import sys
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from .data import MNIST_MEAN, MNIST_STD, MnistDataError, MnistSplit, get_mnist, take
from .evaluate import accuracy, evaluate
from .model import CNNConfig, MLPConfig, ModelConfig, build_model, check_config, count_parameters
from .outliers import make_outliers
from .pen import (
    APP_BRUSH,
    SLASHED_ZERO_WRITERS,
    Part,
    PenDigit,
    load_bundled_pen_test,
    load_bundled_pen_trajectories,
    read_pen_digits,
    render_split,
    render_variants,
    split_by_writer,
)
from .uncertainty import (
    DEFAULT_FALSE_ALARM,
    Uncertainty,
    card_entry,
    fit_uncertainty,
    measure,
    uncertainty_bytes,
    uncertainty_path,
)

PROGRAM = "python -m cnn_core.train"
VALIDATION_OUTLIERS = 2000  # generated non-digits for choosing the unusual-input score


@dataclass(frozen=True)
class TrainConfig:
    """How to train. Every setting is recorded in the model card."""

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
    elastic: float = 0.0  # > 0: smooth random displacements of up to about this many pixels
    label_smoothing: float = 0.0
    ema: float = 0.999  # > 0: return an exponential moving average of the weights along training
    outlier_weight: float = 0.0  # > 0 (with outliers given): weight of the "not sure" loss on non-digits


@dataclass
class EpochStats:
    """What one epoch did. ``test_accuracy`` is measured on the held-out split given to train_model."""

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


@dataclass(frozen=True)
class VariantSplit:
    """Extra training digits, each pre-rendered in several variants: every epoch uses one variant of each.

    ``images`` is uint8 (N, K, 28, 28) for N digits in K variants, ``labels`` int64 (N,). Rendering
    costs far more than a training step, so variants are made once per run and each epoch draws
    which one a digit shows (then the usual per-batch augmentation applies).
    """

    images: torch.Tensor
    labels: torch.Tensor
    source: str

    def __len__(self) -> int:
        return int(self.labels.shape[0])


# --------------------------------------------------------------------------- randomness owned by the run


def init_weights(model: nn.Module, generator: torch.Generator) -> None:
    """Initialise every Conv2d and Linear as PyTorch's ``reset_parameters`` does, drawing from ``generator``.

    Weights: Kaiming-uniform with a = sqrt(5); biases: uniform(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    """
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5), generator=generator)
                if m.bias is not None:
                    fan_in = m.weight[0].numel()  # in_features, or in_channels * kernel area
                    bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0.0
                    nn.init.uniform_(m.bias, -bound, bound, generator=generator)


def fresh_model(model_config: ModelConfig, generator: torch.Generator) -> nn.Sequential:
    """A new model whose initial weights come from ``generator`` only.

    Built on the meta device first: the layers' own constructors initialise from PyTorch's
    process-wide generator, which a run must not advance (another session may be using it).
    """
    with torch.device("meta"):
        model = build_model(model_config)
    model = model.to_empty(device="cpu")
    init_weights(model, generator)
    return model


def forward_with_dropout(model: nn.Sequential, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The training forward pass: the model's layers in order, with dropout masks drawn from ``generator``.

    ``nn.Dropout`` would draw its masks from the process-wide generator, so its layer is applied
    here by hand (inverted dropout, as nn.Dropout does); the layer stays in the model for the
    architecture table and does nothing in eval mode.
    """
    for layer in model:
        if isinstance(layer, nn.Dropout):
            p = float(layer.p)
            if p > 0:
                keep = torch.rand(x.shape, generator=generator) >= p
                x = x * keep / (1 - p)  # check_config keeps p <= 0.9, so no division by zero
        else:
            x = layer(x)
    return x


# --------------------------------------------------------------------------- augmentation


def random_affine(pixels: torch.Tensor, generator: torch.Generator, degrees: float,
                  zoom: float, shift: float, elastic: float = 0.0) -> torch.Tensor:
    """Per-image random rotation (up to ``degrees``), scaling (1 +- ``zoom``), shift (up to ``shift`` px)
    and, with ``elastic`` > 0, a smooth random displacement field of up to about ``elastic`` px.

    Works on a batch (N, 1, H, W) in [0, 1]; what moves in from outside is background (0).
    One resampling for all of it, so the digit is blurred only once.
    """
    n, _, h, w = pixels.shape
    u = torch.rand(n, 4, generator=generator) * 2 - 1
    angle = u[:, 0] * math.radians(degrees)
    s = 1 + u[:, 1] * zoom
    tx, ty = u[:, 2] * shift / (w / 2), u[:, 3] * shift / (h / 2)  # affine_grid works in [-1, 1] units
    cos, sin = torch.cos(angle) / s, torch.sin(angle) / s
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, [n, 1, h, w], align_corners=False)
    if elastic > 0:
        # Random displacements on a coarse 4x4 lattice, interpolated smoothly over the image: a
        # cheap elastic distortion (pen pressure, wobbly strokes) that keeps the digit's identity.
        coarse = (torch.rand(n, 2, 4, 4, generator=generator) * 2 - 1) * elastic
        field_px = F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=True)
        grid = grid + field_px.permute(0, 2, 3, 1) * torch.tensor([2 / w, 2 / h])
    return F.grid_sample(pixels, grid, align_corners=False, padding_mode="zeros")


def _ema(decay: float) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor | int], torch.Tensor]:
    """Exponential moving average of the weights: the average along the last steps generalises
    better than the last step alone. The decay ramps up over the first steps, so a short run
    (a few hundred steps in the app) averages recent weights rather than the random initial ones.
    """
    def update(average: torch.Tensor, current: torch.Tensor, steps: torch.Tensor | int) -> torch.Tensor:
        d = min(decay, (1 + int(steps)) / (10 + int(steps)))
        return average * d + current * (1 - d)

    return update


# --------------------------------------------------------------------------- the loop


def train_model(
    model_config: ModelConfig,
    train_split: MnistSplit,
    test_split: MnistSplit | None = None,
    config: TrainConfig = TrainConfig(),
    on_progress: Callable[[Progress], None] | None = None,
    on_epoch: Callable[[EpochStats, nn.Module], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    *,
    variants: VariantSplit | None = None,
    outliers: torch.Tensor | None = None,
) -> TrainResult:
    """Train a fresh model; callbacks report progress and ``should_stop`` can cancel between batches.

    ``test_split`` is the held-out split measured after each epoch (the command line gives its
    validation digits). ``variants``: extra training digits (e.g. pen-drawn ones), one variant of
    each per epoch. ``outliers``: uint8 non-digits (M, 28, 28); with ``config.outlier_weight`` > 0
    every batch adds a quarter batch of them, trained towards equal probabilities for all ten
    digits (outlier exposure). All randomness comes from a generator seeded with ``config.seed``.
    """
    gen = torch.Generator().manual_seed(config.seed)
    data = take(train_split, config.train_size)
    pixels = data.images.float().div(255).unsqueeze(1)
    labels = data.labels
    if variants is not None and len(variants):
        labels = torch.cat([labels, variants.labels])
        extra = variants.images.float().div(255)  # (N, K, 28, 28)
    else:
        extra = None
    n = len(labels)
    use_outliers = outliers is not None and len(outliers) > 0 and config.outlier_weight > 0
    outlier_pixels = outliers.float().div(255).unsqueeze(1) if outliers is not None and use_outliers else None
    model = fresh_model(model_config, gen)
    opt = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=0.9, nesterov=True,
                          weight_decay=config.weight_decay)
    batches = math.ceil(n / config.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=config.epochs * batches)
    averaged = torch.optim.swa_utils.AveragedModel(model, avg_fn=_ema(config.ema)) if config.ema > 0 else None
    result = TrainResult(model=model)

    for epoch in range(1, config.epochs + 1):
        model.train()
        start, seen, correct, loss_sum = time.perf_counter(), 0, 0, 0.0
        if extra is not None:
            pick = torch.randint(extra.shape[1], (extra.shape[0],), generator=gen)
            epoch_pixels = torch.cat([pixels, extra[torch.arange(extra.shape[0]), pick].unsqueeze(1)])
        else:
            epoch_pixels = pixels
        order = torch.randperm(n, generator=gen)
        for b in range(batches):
            if should_stop is not None and should_stop():
                result.cancelled = True
                result.model.eval()
                return result
            idx = order[b * config.batch_size:(b + 1) * config.batch_size]
            x = epoch_pixels[idx]
            y = labels[idx]
            if outlier_pixels is not None:
                pick_out = torch.randint(len(outlier_pixels), (max(1, len(idx) // 4),), generator=gen)
                x = torch.cat([x, outlier_pixels[pick_out]])
            if config.augment:
                x = random_affine(x, gen, config.rotate, config.zoom, config.shift, config.elastic)
            x = (x - MNIST_MEAN) / MNIST_STD
            logits = forward_with_dropout(model, x, gen)
            if outlier_pixels is not None:
                logits, outlier_logits = logits[:len(y)], logits[len(y):]
                loss = F.cross_entropy(logits, y, label_smoothing=config.label_smoothing)
                # Cross-entropy against equal probabilities for the ten digits: "this is none of them".
                loss = loss - config.outlier_weight * F.log_softmax(outlier_logits, dim=1).mean()
            else:
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
        result.model = cast(nn.Sequential, averaged.module) if averaged is not None else model
        result.model.eval()
        test_acc = accuracy(result.model, test_split) if test_split is not None else None
        stats = EpochStats(epoch, loss_sum / seen, correct / seen, test_acc, time.perf_counter() - start)
        result.history.append(stats)
        if on_epoch is not None:
            on_epoch(stats, result.model)  # the eval-mode model this epoch ends with (the moving average)
    return result


# --------------------------------------------------------------------------- the model card


def equivalent_command(model_config: ModelConfig, config: TrainConfig, out: str, *,
                       data: str | None = None, download: str | None = None, validation: int = 0,
                       threads: int | None = None, extra_args: Sequence[str] = ()) -> str:
    """The command line that trains ``model_config`` with ``config`` (every setting spelt out).

    ``validation=0`` means the whole training file is trained on and the held-out split is the
    test split, as when the app trains; ``extra_args`` are appended as they are (e.g. pen data flags).
    """
    args: list[str] = ["--data", data] if data is not None else ["--download", download or "DATA"]
    args += ["--out", out, "--validation", str(validation)]
    if isinstance(model_config, MLPConfig):
        args += ["--arch", "mlp", "--hidden", *(str(h) for h in model_config.hidden),
                 "--dropout", repr(model_config.dropout)]
    else:
        c = model_config
        args += ["--arch", "cnn", "--conv1", str(c.conv1_channels), "--conv2", str(c.conv2_channels),
                 "--kernel", str(c.kernel_size), "--padding", str(c.padding), "--pool", c.pool,
                 "--dropout", repr(c.dropout), "--hidden", str(c.hidden)]
        if c.hidden_relu:
            args.append("--hidden-relu")
    args += ["--epochs", str(config.epochs), "--batch-size", str(config.batch_size), "--lr", repr(config.lr),
             "--weight-decay", repr(config.weight_decay), "--seed", str(config.seed)]
    if config.train_size is not None:
        args += ["--train-size", str(config.train_size)]
    if not config.augment:
        args.append("--no-augment")
    args += ["--rotate", repr(config.rotate), "--zoom", repr(config.zoom), "--shift", repr(config.shift),
             "--elastic", repr(config.elastic), "--label-smoothing", repr(config.label_smoothing),
             "--ema", repr(config.ema)]
    if config.outlier_weight:
        args += ["--outlier-weight", repr(config.outlier_weight)]
    if threads is not None:
        args += ["--threads", str(threads)]
    args += list(extra_args)
    return " ".join([PROGRAM, *(shlex.quote(a) for a in args)])


def data_source(split: MnistSplit) -> tuple[str | None, str | None]:
    """``(data folder, None)`` or ``(None, download root)`` for a split loaded by cnn_core.data."""
    source = split.source.split("[", 1)[0]  # take() and the validation cut append "[:n]" / "[n:]"
    if source.startswith("torchvision:"):
        return None, source.removeprefix("torchvision:")
    return str(Path(source).parent), None


def model_card(*, name: str, model_config: ModelConfig, config: TrainConfig, result: TrainResult,
               train_split: MnistSplit, held_out: MnistSplit | None, train_seconds: float,
               command: str | None = None, origin: str = "trained by " + PROGRAM,
               data: Mapping[str, object] | None = None, metrics: Mapping[str, object] | None = None,
               threads: int | None = None) -> dict:
    """The model card of a training run: the one place a card is built (command line and app alike).

    Records how to make the weights again (``command``: the exact command line, or for a run
    started elsewhere, e.g. in the app, the equivalent command built from its settings and data),
    the seed and every setting, the data, the per-epoch history and the measured metrics.
    ``held_out`` is the split measured after each epoch (``history[].test_accuracy``). Without
    ``metrics``, the last epoch's held-out accuracy is reported as ``test_accuracy``, which is what
    it is when the held-out split is the MNIST test split (as in the app). ``data`` adds or replaces
    entries of the card's data record. :func:`cnn_core.checkpoint.save_checkpoint` adds the
    sha256 of the written weights.
    """
    trained_on = take(train_split, config.train_size)
    threads = threads if threads is not None else torch.get_num_threads()
    if command is None:
        folder, root = data_source(train_split)
        command = equivalent_command(model_config, config, f"{name}.pt", data=folder, download=root, threads=threads)
    data_record: dict[str, object] = {"train": trained_on.source, "train_examples": len(trained_on)}
    if held_out is not None:
        data_record.update(held_out=held_out.source, held_out_examples=len(held_out))
    data_record.update(data or {})
    last = result.history[-1] if result.history else None
    if metrics is None:
        metrics = ({"test_accuracy": last.test_accuracy, "test_examples": len(held_out)}
                   if last is not None and last.test_accuracy is not None and held_out is not None else {})
    return {
        "name": name,
        "origin": origin,
        "command": command,
        "seed": config.seed,
        "training": asdict(config),
        "data": data_record,
        "epochs": len(result.history),
        "history": [asdict(h) for h in result.history],
        "metrics": dict(metrics),
        "cancelled": result.cancelled,
        "train_seconds": round(train_seconds, 1),
        "torch": torch.__version__,
        "threads": threads,
        "architecture": model_config.to_dict(),
        "parameters": count_parameters(result.model),
    }


def split_report(model: nn.Module, split: MnistSplit, mistakes: int = 0) -> dict:
    """Accuracy, per-class accuracy and count of ``split``, and up to ``mistakes`` of its most confident errors."""
    r = evaluate(model, split)
    report: dict[str, object] = {
        "accuracy": r.accuracy, "examples": len(split), "correct": int((r.predictions == split.labels).sum()),
        "per_class": [round(a, 4) for a in r.per_class], "source": split.source,
    }
    if mistakes:
        report["mistakes"] = [
            {"index": int(i), "label": int(split.labels[i]), "predicted": int(r.predictions[i]),
             "confidence": round(float(r.confidences[i]), 4)}
            for i in r.misclassified[:mistakes]
        ]
    return report


# --------------------------------------------------------------------------- the command line


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    d, c = TrainConfig(), CNNConfig()
    p = argparse.ArgumentParser(prog=PROGRAM, description=(__doc__ or "").split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", help="folder with MNIST IDX files (e.g. ../shared/data/mnist)")
    src.add_argument("--download", metavar="ROOT", help="download the official MNIST with torchvision into ROOT")
    p.add_argument("--out", required=True, help="weights file to write (its model card goes beside it, .json)")
    p.add_argument("--name", help="model name for the card (default: the file's stem)")
    p.add_argument("--validation", type=int, default=1000,
                   help="hold out the last N digits of the training file for choices (0: the test split is "
                        "measured after each epoch instead, as in the app)")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--train-size", type=int, default=None, help="use only the first N training digits")
    p.add_argument("--no-augment", action="store_true", help="train on the digits as they are")
    p.add_argument("--rotate", type=float, default=d.rotate, help="augmentation: degrees of rotation, at most")
    p.add_argument("--zoom", type=float, default=d.zoom, help="augmentation: scale by 1 +- this, at most")
    p.add_argument("--shift", type=float, default=d.shift, help="augmentation: pixels of shift, at most")
    p.add_argument("--elastic", type=float, default=d.elastic, help="augmentation: elastic distortion, pixels")
    p.add_argument("--label-smoothing", type=float, default=d.label_smoothing)
    p.add_argument("--ema", type=float, default=d.ema, help="decay of the weights' moving average (0: none)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--pen", metavar="FILE",
                   help="pen-trajectory file (e.g. ../shared/data/pen-digits/pen-digits-train.jsonl.gz): its "
                        "validation writers join every choice, and its test writers are checked against the "
                        "bundled ones")
    p.add_argument("--pen-train", action="store_true", help="also train on the pen digits of the training writers")
    p.add_argument("--pen-variants", type=int, default=4,
                   help="renders of each training writer's digit (brush width, size, angle, place), made once")
    p.add_argument("--pen-styles", type=float, default=0.0,
                   help="share of the renders of zeros and sevens drawn with a slash or a bar (0-1)")
    p.add_argument("--outliers", type=int, default=0,
                   help="with --pen-train: generate this many non-digits for outlier exposure")
    p.add_argument("--outlier-weight", type=float, default=d.outlier_weight,
                   help="weight of the 'none of the ten' loss on the generated non-digits")
    p.add_argument("--false-alarm", type=float, default=DEFAULT_FALSE_ALARM,
                   help="share of real validation digits the unusual-input threshold lets fire")
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
    config: ModelConfig
    if a.arch == "mlp":
        config = MLPConfig(hidden=tuple(a.hidden), dropout=a.dropout)
    else:
        if len(a.hidden) != 1:
            raise ValueError("--hidden takes one width for the CNN")
        config = CNNConfig(a.conv1, a.conv2, a.kernel, a.padding, a.pool, a.dropout, a.hidden[0], a.hidden_relu)
    check_config(config)  # the command line refuses exactly what the app refuses
    return config


def _train_config(a: argparse.Namespace) -> TrainConfig:
    cfg = TrainConfig(epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, weight_decay=a.weight_decay,
                      seed=a.seed, train_size=a.train_size, augment=not a.no_augment, rotate=a.rotate,
                      zoom=a.zoom, shift=a.shift, elastic=a.elastic, label_smoothing=a.label_smoothing, ema=a.ema,
                      outlier_weight=a.outlier_weight)
    check_train_config(cfg)
    if a.validation < 0:
        raise ValueError("--validation must not be negative")
    if a.threads is not None and a.threads < 1:
        raise ValueError("--threads must be at least 1")
    if a.pen_train and not a.pen:
        raise ValueError("--pen-train needs --pen FILE")
    if not 1 <= a.pen_variants <= 32:
        raise ValueError("--pen-variants must be between 1 and 32")
    if not 0 <= a.pen_styles <= 1 or not 0 <= a.outliers <= 200_000 or not 0 < a.false_alarm < 0.5:
        raise ValueError("--pen-styles must be 0-1, --outliers 0-200,000, --false-alarm above 0 and below 0.5")
    if a.outliers and not a.pen_train:
        raise ValueError("--outliers needs --pen-train (non-digits are made from the training writers' strokes)")
    return cfg


def check_train_config(cfg: TrainConfig) -> None:
    """Refuse settings that cannot train: ValueError with a sentence naming the command-line flag."""
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if isinstance(value, float) and not math.isfinite(value):  # inf and nan: never a setting
            raise ValueError(f"--{f.name.replace('_', '-')} must be a finite number, not {value}")
    if cfg.epochs < 1 or cfg.batch_size < 1:
        raise ValueError("--epochs and --batch-size must be at least 1")
    if cfg.train_size is not None and cfg.train_size < 1:
        raise ValueError("--train-size must be at least 1")
    if not cfg.lr > 0 or not cfg.weight_decay >= 0:
        raise ValueError("--lr must be positive and --weight-decay not negative")
    if not (0 <= cfg.rotate <= 180 and 0 <= cfg.zoom < 1 and 0 <= cfg.shift <= 14 and 0 <= cfg.elastic <= 14):
        raise ValueError("augmentation out of range: --rotate 0-180, --zoom 0 to below 1, --shift and --elastic 0-14")
    if not (0 <= cfg.label_smoothing < 1 and 0 <= cfg.ema < 1):
        raise ValueError("--label-smoothing and --ema must be at least 0 and below 1")
    if not 0 <= cfg.outlier_weight <= 10:
        raise ValueError("--outlier-weight must be between 0 and 10")
    if not 0 <= cfg.seed < 2**63:
        raise ValueError("--seed must be between 0 and 2**63 - 1")


# Kernel pseudo-filesystems: what lives there is a device or a kernel interface, never a weights file.
_SPECIAL_FOLDERS = (Path("/dev"), Path("/proc"), Path("/sys"))


def output_paths(out: Path) -> list[Path]:
    """Every file a run writes for ``out``: the weights, the card and the uncertainty statistics beside them."""
    return [out, out.with_suffix(".json"), uncertainty_path(out)]


def check_output(out: Path) -> None:
    """Refuse an output that is not a new or regular file in a normal, writable folder (OSError/ValueError)."""
    if out.suffix == ".json":
        raise ValueError(f"{out}: the weights file must not end in .json, that name is its model card's")
    if out.is_dir():
        raise OSError(f"{out} is a folder; give the path of a weights file, e.g. {out / 'model.pt'}")
    folder = out.parent if str(out.parent) else Path(".")
    if not folder.is_dir():
        raise OSError(f"output folder {folder} does not exist")
    real = folder.resolve()
    if any(real == s or s in real.parents for s in _SPECIAL_FOLDERS):
        raise OSError(f"output folder {folder} is a system folder, not a normal folder for files")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OSError(f"output folder {folder} is not writable")
    for path in output_paths(out):
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            continue
        # A run replaces its files by renaming a new file over them: that would silently turn a
        # device node, a pipe or a symlink into a plain file (e.g. /dev/null). Refuse instead.
        if not stat.S_ISREG(mode):
            raise OSError(f"{path} exists and is not a regular file; it was left alone")
        if not os.access(path, os.W_OK):
            raise OSError(f"{path} exists and is not writable")


def all_finite(model: nn.Module) -> bool:
    """True when every weight of ``model`` is a finite number (training did not diverge)."""
    return all(bool(torch.isfinite(t).all()) for t in model.state_dict().values() if t.is_floating_point())


def _split_train_validation(train_split: MnistSplit, n_validation: int) -> tuple[MnistSplit, MnistSplit | None]:
    if n_validation == 0:
        return train_split, None
    if n_validation >= len(train_split):
        raise MnistDataError(f"--validation {n_validation} leaves no training digits in {train_split.source} "
                             f"({len(train_split):,} digits)")
    cut = len(train_split) - n_validation
    return (MnistSplit(train_split.images[:cut], train_split.labels[:cut], f"{train_split.source}[:{cut}]"),
            MnistSplit(train_split.images[cut:], train_split.labels[cut:], f"{train_split.source}[{cut}:]"))


def _protocol(n_validation: int, pen: bool) -> str:
    text = (f"MNIST: the first digits of the training file are trained on, the last {n_validation:,} are validation "
            "digits (measured after each epoch, used for every choice); the MNIST test digits are measured once, "
            "at the end, for the reported figures." if n_validation else
            "MNIST: the whole training file is trained on; the test digits are measured after each epoch.")
    text += (" Pen digits: split by writer (cnn_core.pen.writer_parts); training writers are trained on (with "
             "--pen-train), validation writers join every choice, test writers (bundled in data/pen-digits) are "
             "measured once, at the end." if pen else
             " Pen digits: the bundled test writers (data/pen-digits) are measured once, at the end.")
    return text


def _pen_figures(model: nn.Module, pen_parts: Mapping[Part, Sequence[PenDigit]] | None) -> dict:
    """Pen-digit figures for the card: the bundled test writers (per class, every mistake, per brush
    width) and, given the trajectories, the validation writers."""
    metrics: dict[str, object] = {}
    record: dict[str, object] = {"metrics": metrics}
    try:
        test = load_bundled_pen_test()
        trajectories = load_bundled_pen_trajectories()
    except MnistDataError as e:
        record["pen_test"] = f"not measured: {e}"
        return record
    report = split_report(model, test, mistakes=len(test))
    for m in report.get("mistakes", []):
        m["writer"] = test.writers[m["index"]]
    report["writers"] = len(set(test.writers))
    slashed = [i for i, w in enumerate(test.writers) if w in SLASHED_ZERO_WRITERS and int(test.labels[i]) == 0]
    wrong = {m["index"] for m in report.get("mistakes", [])}
    report["slashed_zero_writers_zeros"] = len(slashed)
    report["slashed_zero_writers_zeros_read_as_0"] = sum(i not in wrong for i in slashed)
    if pen_parts is not None:  # the shipped models' runs: worth the seconds of drawing every digit 4 more times
        report["accuracy_by_brush_width"] = {
            f"{brush:g}": accuracy(model, test if brush == APP_BRUSH else render_split(trajectories, brush))
            for brush in (12.0, 16.0, 20.0, 24.0, 26.0)}
    metrics["pen_test"] = report
    record["pen_test"] = test.source
    record["pen_test_examples"] = len(test)
    if pen_parts is not None:
        expected = {d.writer for d in pen_parts["test"]}
        if set(test.writers) != expected:
            record["pen_test_warning"] = "the bundled test writers differ from this file's test writers"
        validation = render_split(pen_parts["validation"])
        metrics["pen_validation_accuracy"] = accuracy(model, validation)
        metrics["pen_validation_examples"] = len(validation)
        record["pen_validation_writers"] = len(set(validation.writers))
    return record


@dataclass
class _Data:
    """Everything a command-line run reads before training."""

    train: MnistSplit
    validation: MnistSplit | None
    test: MnistSplit
    pen_parts: dict[Part, list[PenDigit]] | None


def _load_data(a: argparse.Namespace) -> _Data:
    full_train = get_mnist(a.data, "train", a.download)
    test = get_mnist(a.data, "test", a.download)
    for split in (full_train, test):
        if len(split) == 0:
            raise MnistDataError(f"{split.source} holds no digits")
    train, validation = _split_train_validation(full_train, a.validation)
    pen_parts = split_by_writer(read_pen_digits(a.pen)) if a.pen else None
    return _Data(train, validation, test, pen_parts)


def _concat(splits: Sequence[MnistSplit], source: str) -> MnistSplit:
    return MnistSplit(torch.cat([s.images for s in splits]), torch.cat([s.labels for s in splits]), source)


def _fit_uncertainty_for(model: nn.Sequential, data: _Data, cfg: TrainConfig, false_alarm: float,
                         pen_trained: bool) -> tuple[Uncertainty, int] | None:
    """Temperature and unusual-input statistics, as the model card records them.

    Class means and covariance from the training digits (MNIST's, and the pen training writers'
    drawn with the app's brush when the model trained on them); temperature and threshold from the
    validation digits (MNIST's and, given the pen file, the pen validation writers'); then the
    figures on the test digits (MNIST test, pen test writers). None without validation digits.
    """
    fit = [take(data.train, cfg.train_size)]
    validation = [data.validation] if data.validation is not None else []
    outliers = None
    if data.pen_parts is not None:
        validation.append(render_split(data.pen_parts["validation"]))
        if pen_trained:
            fit.append(render_split(data.pen_parts["train"]))
        # Non-digits made from the validation writers' strokes (a stream of their own): the score that
        # flags most of them at the chosen false-alarm rate is the model's.
        outliers = make_outliers(data.pen_parts["validation"], VALIDATION_OUTLIERS, cfg.seed, purpose=1)
    if not validation:
        return None  # nothing held out to choose a temperature and a threshold on
    u = fit_uncertainty(model, _concat(fit, "training digits"), _concat(validation, "validation digits"),
                        false_alarm=false_alarm, outliers=outliers)
    rates = dict(u.rates)
    tests: list[tuple[str, MnistSplit]] = [("mnist_test", data.test)]
    try:
        tests.append(("pen_test", load_bundled_pen_test()))
    except MnistDataError:
        pass  # a checkout without the bundled pen digits: MNIST figures only
    for name, split in tests:
        for key, value in measure(model, u, split).items():
            rates[f"{name}_{key}"] = value
    if len(tests) == 2:
        for key, value in measure(model, u, _concat([s for _, s in tests], "all test digits")).items():
            rates[f"all_test_{key}"] = value
    u = replace(u, rates=rates)
    return u, sum(len(f) for f in fit)


# The targets the project set for its default model (issue 9): every card says how its model does.
TARGETS = {"mnist_test_accuracy": 0.994, "pen_test_accuracy": 0.985, "ece": 0.02, "false_alarm": 0.03}


def target_report(card: Mapping) -> list[dict]:
    """Each target the project set for the default model, with what this model measured and whether it is met."""
    metrics = card.get("metrics") or {}
    pen = metrics.get("pen_test") if isinstance(metrics.get("pen_test"), dict) else {}
    rates = (card.get("uncertainty") or {}).get("rates") or {}
    rows: list[dict] = [
        {"target": f"MNIST test digits: accuracy >= {TARGETS['mnist_test_accuracy']:.1%}",
         "measured": metrics.get("test_accuracy"), "met": metrics.get("test_accuracy", 0) >= TARGETS["mnist_test_accuracy"]},
    ]
    if pen:
        rows.append({"target": f"pen digits of the test writers: accuracy >= {TARGETS['pen_test_accuracy']:.1%}",
                     "measured": pen.get("accuracy"), "met": pen.get("accuracy", 0) >= TARGETS["pen_test_accuracy"]})
        n, ok = pen.get("slashed_zero_writers_zeros", 0), pen.get("slashed_zero_writers_zeros_read_as_0", 0)
        rows.append({"target": "zeros of the test writers who slash their zeros: all read as 0",
                     "measured": f"{ok} of {n}", "met": n > 0 and ok == n})
    if rates:
        ece = rates.get("all_test_ece_calibrated", 1.0)
        rows.append({"target": f"expected calibration error on the test digits <= {TARGETS['ece']:.0%}",
                     "measured": ece, "met": ece <= TARGETS["ece"]})
        alarms = max(rates.get("mnist_test_false_alarm", 1.0), rates.get("pen_test_false_alarm", 0.0))
        rows.append({"target": f"unusual-input flag on real test digits (MNIST, pen) <= {TARGETS['false_alarm']:.0%}",
                     "measured": alarms, "met": alarms <= TARGETS["false_alarm"]})
    rows.append({"target": "unusual-input flag on >= 90% of scribbles, two digits, letters, blank paper",
                 "measured": "see models/README.md (bench/bench_uncertainty.py)", "met": None})
    if card.get("architecture", {}).get("kind") == "cnn":
        rows.append({"target": "the article's architecture, 421,642 parameters",
                     "measured": card.get("parameters"), "met": card.get("parameters") == 421_642})
    return rows


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit code (2 for bad input or settings)."""
    from tqdm import tqdm

    from .checkpoint import atomic_write_bytes, save_checkpoint

    args = list(argv) if argv is not None else sys.argv[1:]
    a = _parse_args(args)
    out = Path(a.out)
    try:
        model_config = _model_config(a)
        cfg = _train_config(a)
        check_output(out)
        data = _load_data(a)
    except (MnistDataError, OSError, ValueError, zlib.error) as e:  # zlib.error: a corrupt .gz
        print(f"error: {e}", file=sys.stderr)
        return 2
    if a.threads:
        torch.set_num_threads(a.threads)
    held_out = data.validation if data.validation is not None else data.test
    prepared = time.perf_counter()
    variants, outliers = None, None
    if data.pen_parts is not None and a.pen_train:
        images, labels = render_variants(data.pen_parts["train"], a.pen_variants, cfg.seed, style_share=a.pen_styles)
        variants = VariantSplit(images, labels, f"{a.pen} (training writers, {a.pen_variants} renders each)")
        print(f"rendered {len(variants):,} pen digits of {len({d.writer for d in data.pen_parts['train']})} "
              f"training writers, {a.pen_variants} ways each", flush=True)
        if a.outliers:
            outliers = make_outliers(data.pen_parts["train"], a.outliers, cfg.seed)
            print(f"generated {len(outliers):,} non-digits for outlier exposure", flush=True)
    prepare_seconds = time.perf_counter() - prepared

    n_train = len(take(data.train, cfg.train_size)) + (len(variants) if variants is not None else 0)
    with torch.device("meta"):
        parameters = count_parameters(build_model(model_config))
    print(f"training {model_config.kind} ({parameters:,} parameters) on {n_train:,} digits from {data.train.source}"
          f"{' and pen digits' if variants is not None else ''}, measuring each epoch on {len(held_out):,} from "
          f"{held_out.source}", flush=True)
    bar = tqdm(total=cfg.epochs * math.ceil(n_train / cfg.batch_size), unit="batch", dynamic_ncols=True)

    def on_progress(p: Progress) -> None:
        bar.update(1)
        bar.set_description(f"epoch {p.epoch}/{p.epochs}")
        bar.set_postfix(loss=f"{p.loss:.4f}", acc=f"{p.accuracy:.4f}")

    def on_epoch(s: EpochStats, _model: nn.Module) -> None:
        bar.write(f"epoch {s.epoch}: loss {s.loss:.4f}  train acc {s.train_accuracy:.4f}  "
                  f"held-out acc {s.test_accuracy:.4f}  ({s.seconds:.0f} s)")

    started = time.perf_counter()
    try:
        result = train_model(model_config, data.train, held_out, cfg, on_progress, on_epoch, variants=variants,
                             outliers=outliers)
    except KeyboardInterrupt:
        bar.close()
        print(f"interrupted: nothing written, {out} left as it was", file=sys.stderr)
        return 130
    bar.close()
    train_seconds = time.perf_counter() - started
    if not all_finite(result.model):
        print(f"error: training diverged (the weights hold NaN or infinite values; try a smaller --lr): "
              f"nothing written, {out} left as it was", file=sys.stderr)
        return 2

    test_report = split_report(result.model, data.test, mistakes=20)
    metrics: dict[str, object] = {"test_accuracy": test_report["accuracy"], "test_examples": len(data.test),
                                  "test_per_class": test_report["per_class"], "test_mistakes": test_report["mistakes"]}
    if data.validation is not None:
        metrics["validation_accuracy"] = accuracy(result.model, data.validation)
        metrics["validation_examples"] = len(data.validation)
    record: dict[str, object] = {"test": data.test.source, "test_examples": len(data.test)}
    pen_report = _pen_figures(result.model, data.pen_parts)
    metrics.update(pen_report.pop("metrics"))
    record.update(pen_report)
    if variants is not None:
        record["pen_train"] = variants.source
        record["pen_train_examples"] = len(variants)
        record["pen_styles"] = (f"{a.pen_styles:.0%} of the renders of zeros and sevens get a slash or a bar "
                                "(cnn_core.pen.add_style)")
    if outliers is not None:
        record["outliers"] = (f"{len(outliers):,} generated non-digits (cnn_core.outliers: tangles, overlaps, "
                              "lowercase letters, blobs), trained towards equal probabilities")
    record["protocol"] = _protocol(a.validation, data.pen_parts is not None)

    uncertainty_file: tuple[Path, bytes] | None = None
    cfg_pen = a.pen_train and data.pen_parts is not None
    fitted = _fit_uncertainty_for(result.model, data, cfg, a.false_alarm, cfg_pen)
    card_uncertainty = None
    if fitted is not None:
        u, fit_examples = fitted
        blob = uncertainty_bytes(u)
        uncertainty_file = (uncertainty_path(out), blob)
        card_uncertainty = {**card_entry(u, blob, uncertainty_path(out).name), "fit_examples": fit_examples}
    card = model_card(
        name=a.name or out.stem, model_config=model_config, config=cfg, result=result, train_split=data.train,
        held_out=held_out, train_seconds=train_seconds,
        command=" ".join([PROGRAM, *(shlex.quote(s) for s in args)]),
        data=record, metrics=metrics,
    )
    card["prepare_seconds"] = round(prepare_seconds, 1)
    if card_uncertainty is not None:
        card["uncertainty"] = card_uncertainty
    card["targets"] = target_report(card)
    for row in card["targets"]:
        if row["met"] is False:
            print(f"target missed: {row['target']} (measured {row['measured']})", flush=True)
    try:
        check_output(out)  # again: the folder may have changed during a long run
        if uncertainty_file is not None:
            # Written first: the card that names its sha256 is written last, so a failed run never leaves
            # a card pointing at statistics of other weights.
            atomic_write_bytes(*uncertainty_file)
        card = save_checkpoint(result.model, model_config, out, card)
    except (OSError, ValueError) as e:
        print(f"error: could not write {out}: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out} (sha256 {card['sha256'][:12]}...) test accuracy {test_report['accuracy']:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
