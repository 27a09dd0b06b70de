"""Benchmark of the unusual-input flag on the whole path: generated inputs -> preprocess -> model -> score.

    .venv/bin/python bench/bench_uncertainty.py [--weights models/mnist_pen_cnn.pt] [--n 300] [--seed 0]

Generates inputs that are not one digit (scribbles, two digits side by side, letters drawn with
the canvas's brush, photos of blank paper with uneven light and shadows) and real digits (pen
digits of the bundled test writers as the canvas draws them, the bundled MNIST test digits),
sends each through the app's own ``preprocess`` (which may refuse an input, or count several
marks of digit size) and the model with its uncertainty statistics, and prints how often each
says so. Targets: the flag (or a refusal) on >= 90% of each kind of non-digit, on <= 3% of real
digits. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import io
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cnn_core.checkpoint import load_checkpoint
from cnn_core.data import load_mnist, to_input
from cnn_core.paths import BUNDLED_MNIST_DIR, MODELS_DIR
from cnn_core.pen import (
    CANVAS,
    PenDigit,
    load_bundled_pen_test,
    load_bundled_pen_trajectories,
    render_canvas,
)
from cnn_core.preprocess import preprocess
from cnn_core.uncertainty import assess_batch, load_uncertainty


def _arc(cx: float, cy: float, rx: float, ry: float, start: float, end: float) -> list[tuple[float, float]]:
    """Points along an elliptic arc (angles in degrees, 0 = right, 90 = down)."""
    t = np.radians(np.linspace(start, end, 16))
    return [(cx + rx * float(np.cos(a)), cy + ry * float(np.sin(a))) for a in t]


# Capital letters that are not drawn like a digit (no O, I, S, Z, B, G, T...), as pen strokes in a unit box.
# Straight ones and curved ones: the training's made-up symbols (cnn_core.outliers.glyph) are straight
# strokes, so the curved letters show whether the flag generalises beyond them.
LETTERS: dict[str, list[list[tuple[float, float]]]] = {
    "C": [_arc(0.55, 0.5, 0.45, 0.5, -50, -310)],
    "D": [[(0, 0), (0, 1)], [(0, 0), *_arc(0.3, 0.5, 0.7, 0.5, -90, 90), (0, 1)]],
    "P": [[(0, 1), (0, 0)], [(0, 0), *_arc(0.45, 0.27, 0.5, 0.27, -90, 90), (0, 0.54)]],
    "U": [[(0, 0), (0, 0.6), *_arc(0.5, 0.6, 0.5, 0.4, 180, 0), (1, 0)]],
    "A": [[(0, 1), (0.5, 0), (1, 1)], [(0.25, 0.55), (0.75, 0.55)]],
    "E": [[(1, 0), (0, 0), (0, 1), (1, 1)], [(0, 0.5), (0.7, 0.5)]],
    "F": [[(1, 0), (0, 0), (0, 1)], [(0, 0.5), (0.7, 0.5)]],
    "H": [[(0, 0), (0, 1)], [(1, 0), (1, 1)], [(0, 0.5), (1, 0.5)]],
    "K": [[(0, 0), (0, 1)], [(1, 0), (0, 0.55), (1, 1)]],
    "M": [[(0, 1), (0, 0), (0.5, 0.6), (1, 0), (1, 1)]],
    "N": [[(0, 1), (0, 0), (1, 1), (1, 0)]],
    "R": [[(0, 1), (0, 0), (0.7, 0), (0.95, 0.15), (0.95, 0.35), (0.7, 0.5), (0, 0.5)], [(0.35, 0.5), (1, 1)]],
    "W": [[(0, 0), (0.25, 1), (0.5, 0.35), (0.75, 1), (1, 0)]],
    "X": [[(0, 0), (1, 1)], [(1, 0), (0, 1)]],
    "Y": [[(0, 0), (0.5, 0.5), (1, 0)], [(0.5, 0.5), (0.5, 1)]],
}


@dataclass
class Outcome:
    """What the whole path said about one input."""

    refused: bool  # preprocess found no digit (blank, or ink indistinguishable from paper)
    several: bool  # preprocess counted two or more marks of digit size
    flagged: bool  # the model's unusual-input score is above its threshold


# --------------------------------------------------------------------------- generators


def densify(points: np.ndarray, step: float, rng: np.random.Generator, wobble: float) -> np.ndarray:
    """A mouse-like stroke through ``points``: a point every ``step`` px, with a little hand tremor."""
    out = [points[:1]]
    for a, b in zip(points[:-1], points[1:]):
        n = max(1, int(np.ceil(np.linalg.norm(b - a) / step)))
        t = (np.arange(1, n + 1) / n)[:, None]
        out.append(a + (b - a) * t)
    stroke = np.concatenate(out)
    return stroke + rng.normal(0, wobble, stroke.shape)


def draw(strokes: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """Strokes on the canvas with a brush width people use."""
    return render_canvas([np.clip(s, 4, CANVAS - 4) for s in strokes], float(rng.uniform(12, 26)))


def scribble(rng: np.random.Generator) -> np.ndarray:
    """One to three random smooth strokes: loops, zigzags, spirals."""
    strokes = []
    for _ in range(int(rng.integers(1, 4))):
        kind = rng.integers(0, 3)
        if kind == 0:  # a random walk of corners
            pts = rng.uniform(30, 250, (int(rng.integers(5, 12)), 2))
        elif kind == 1:  # a zigzag
            n = int(rng.integers(5, 10))
            xs = np.linspace(rng.uniform(20, 80), rng.uniform(200, 260), n)
            ys = np.where(np.arange(n) % 2 == 0, rng.uniform(40, 110), rng.uniform(170, 240))
            pts = np.stack([xs, ys + rng.normal(0, 10, n)], 1)
        else:  # a spiral or a tangle of loops
            t = np.linspace(0, rng.uniform(3, 6) * np.pi, 60)
            r = np.linspace(rng.uniform(10, 40), rng.uniform(60, 110), 60)
            c = rng.uniform(110, 170, 2)
            pts = np.stack([c[0] + r * np.cos(t), c[1] + r * np.sin(t) * rng.uniform(0.5, 1.2)], 1)
        strokes.append(densify(pts, 4.0, rng, 0.8))
    return draw(strokes, rng)


def two_digits(rng: np.random.Generator, digits: list[PenDigit]) -> np.ndarray:
    """Two pen digits written side by side on the canvas."""
    strokes = []
    for slot in (0, 1):
        d = digits[int(rng.integers(len(digits)))]
        pts = np.concatenate(d.strokes)
        lo, hi = pts.min(0), pts.max(0)
        size = rng.uniform(90, 120)
        k = size / max(float((hi - lo).max()), 1.0)
        centre = np.array([70 + slot * 140 + rng.uniform(-10, 10), 140 + rng.uniform(-30, 30)])
        strokes += [(s - (lo + hi) / 2) * k + centre for s in d.strokes]
    return draw(strokes, rng)


def letter(rng: np.random.Generator) -> np.ndarray:
    """A capital letter (not shaped like a digit) drawn with the mouse."""
    name = list(LETTERS)[int(rng.integers(len(LETTERS)))]
    h = rng.uniform(120, 210)
    w = h * rng.uniform(0.6, 0.95)
    origin = np.array([140 - w / 2, 140 - h / 2]) + rng.uniform(-25, 25, 2)
    strokes = [densify(np.array(s, float) * [w, h] + origin, 4.0, rng, 1.0) for s in LETTERS[name]]
    return draw(strokes, rng)


def blank_paper_photo(rng: np.random.Generator) -> Image.Image:
    """A phone photo of blank paper: tint, uneven light, a soft shadow, grain and fibres, JPEG."""
    h, w = int(rng.integers(240, 480)), int(rng.integers(240, 480))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    light = 1 + rng.uniform(-0.25, 0.25) * (xx / w - 0.5) + rng.uniform(-0.25, 0.25) * (yy / h - 0.5)
    light -= rng.uniform(0, 0.3) * (((xx / w - 0.5) ** 2 + (yy / h - 0.5) ** 2) * 2)  # vignette
    shadow = np.zeros((h, w))
    if rng.random() < 0.8:  # a hand's or a phone's shadow over part of the sheet, soft-edged
        cx, cy = rng.choice([0, w]), rng.uniform(0, h)
        r = rng.uniform(0.3, 0.8) * max(h, w)
        inside = np.clip((r - np.hypot(xx - cx, yy - cy)) / (0.15 * r), 0, 1)
        shadow = inside * rng.uniform(0.2, 0.55)
    blotches = np.asarray(Image.fromarray((rng.random((h // 16 + 1, w // 16 + 1)) * 255).astype(np.uint8))
                          .resize((w, h), Image.Resampling.BICUBIC), np.float64) / 255 - 0.5
    grain = rng.normal(0, rng.uniform(0.01, 0.04), (h, w))
    base = rng.uniform(0.78, 0.97)
    grey = base * light * (1 - shadow) + 0.04 * blotches + grain
    tint = np.array([1.0, rng.uniform(0.96, 1.0), rng.uniform(0.88, 0.98)])
    rgb = np.clip(grey[..., None] * tint * 255, 0, 255).astype(np.uint8)
    img = Image.fromarray(rgb).filter(ImageFilter.GaussianBlur(rng.uniform(0, 1.2)))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=int(rng.integers(60, 95)))
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


# --------------------------------------------------------------------------- the whole path


def run_path(images: list, model: torch.nn.Sequential, uncertainty) -> list[Outcome]:
    """preprocess each image, then the model and its score for those that are not refused."""
    outcomes: list[Outcome | None] = []
    inputs, where = [], []
    for image in images:
        r = preprocess(image)
        marks = getattr(r, "marks", 1)
        if r.blank or r.tensor is None:
            outcomes.append(Outcome(True, False, False))
            continue
        outcomes.append(None)
        where.append(len(outcomes) - 1)
        inputs.append((r.tensor, marks >= 2))
    if inputs:
        batch = torch.stack([t for t, _ in inputs])
        for i, a, (_, several) in zip(where, assess_batch(model, uncertainty, batch), inputs):
            outcomes[i] = Outcome(False, several, a.unusual)
    return [o for o in outcomes if o is not None]


def summary(name: str, outcomes: list[Outcome]) -> str:
    n = len(outcomes)
    refused = sum(o.refused for o in outcomes) / n
    several = sum(o.several for o in outcomes) / n
    flagged = sum(o.flagged for o in outcomes) / n
    told = sum(o.refused or o.several or o.flagged for o in outcomes) / n
    return f"| {name} | {n} | {refused:.1%} | {several:.1%} | {flagged:.1%} | **{told:.1%}** |"


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--weights", default=str(MODELS_DIR / "mnist_pen_cnn.pt"))
    p.add_argument("--n", type=int, default=300, help="inputs of each generated kind")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    loaded = load_checkpoint(a.weights)
    uncertainty = load_uncertainty(a.weights)
    if uncertainty is None:
        raise SystemExit(f"{a.weights} has no uncertainty statistics in its card")
    rng = np.random.default_rng(a.seed)
    pen_digits = load_bundled_pen_trajectories()

    kinds: dict[str, Callable[[], object]] = {
        "scribbles": lambda: scribble(rng),
        "two digits side by side": lambda: two_digits(rng, pen_digits),
        "capital letters (A C D E F H K M N P R U W X Y)": lambda: letter(rng),
        "blank paper photos": lambda: blank_paper_photo(rng),
    }
    print(f"{loaded.name}: temperature {uncertainty.temperature:.3f}, threshold {uncertainty.threshold:.1f} "
          f"(chosen for {uncertainty.false_alarm_target:.0%} false alarms on validation digits)\n")
    print("| input | n | refused by preprocess | several marks | score flag | told the user (any) |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, make in kinds.items():
        print(summary(name, run_path([make() for _ in range(a.n)], loaded.model, uncertainty)), flush=True)

    # Real digits: the model's inputs as the app makes them.
    pen = load_bundled_pen_test()
    pen_flags = assess_batch(loaded.model, uncertainty, to_input(pen.images))
    print(summary("real: pen digits of the test writers (canvas, brush 20)",
                  [Outcome(False, False, x.unusual) for x in pen_flags]))
    mnist = load_mnist(BUNDLED_MNIST_DIR, "test")
    mnist_flags = assess_batch(loaded.model, uncertainty, to_input(mnist.images))
    print(summary("real: MNIST test digits (as the network's input)", [Outcome(False, False, x.unusual)
                                                                        for x in mnist_flags]))
    # The same MNIST digits as uploads: through preprocess, like any picture.
    uploads = [img.numpy() for img in mnist.images[:1000]]
    print(summary("real: MNIST test digits uploaded (through preprocess), first 1,000",
                  run_path(uploads, loaded.model, uncertainty)))


if __name__ == "__main__":
    main()
