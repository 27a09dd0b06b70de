"""Generated non-digits for training ("outlier exposure"): inputs the network should not be sure about.

A network trained only on digits has never been told that anything else exists, so a scribble
can land in the middle of a digit class with 99% confidence. Outlier exposure (Hendrycks et al.,
2019) adds inputs that are not digits to training, with the uniform distribution over the ten
classes as their target: the architecture stays the same, and the logits and the last Linear
layer's input of such inputs move away from the digits' (which the unusual-input score reads).

The kinds made here are deliberately different from the ones ``bench/bench_uncertainty.py``
measures on (scribbles, two digits side by side, capital letters, photos of blank paper), so the
benchmark shows how the flag generalises rather than how well it remembers:

- **tangles**: three to five strokes taken from different pen digits, turned and scattered;
- **overlaps**: two pen digits drawn on top of each other, offset by part of their width;
- **lowercase letters** that are not drawn like digits (e h k m n r u v w x), as pen strokes;
- **blobs**: smooth random ink patches, straight at 28x28 (what noise becomes after preprocess);
- **glyphs**: three to five straight strokes between random points of a 3x3 grid (made-up symbols).

Every choice comes from a numpy generator seeded by the run's seed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from .pen import CANVAS, PenDigit, render_input, to_uint8

KINDS = ("tangle", "overlap", "letter", "blob", "glyph")

# Lowercase letters not shaped like a digit, as pen strokes in a unit box (x right, y down).
LOWERCASE: dict[str, list[list[tuple[float, float]]]] = {
    "e": [[(0.05, 0.55), (0.95, 0.55), (0.9, 0.3), (0.6, 0.1), (0.3, 0.12), (0.05, 0.45), (0.1, 0.8), (0.45, 1.0),
           (0.9, 0.9)]],
    "h": [[(0.1, -0.4), (0.1, 1.0)], [(0.1, 0.4), (0.4, 0.1), (0.8, 0.15), (0.9, 0.5), (0.9, 1.0)]],
    "k": [[(0.1, -0.4), (0.1, 1.0)], [(0.85, 0.05), (0.1, 0.6)], [(0.35, 0.45), (0.9, 1.0)]],
    "m": [[(0.0, 1.0), (0.0, 0.1)], [(0.0, 0.35), (0.2, 0.08), (0.45, 0.2), (0.5, 1.0)],
          [(0.5, 0.35), (0.7, 0.08), (0.95, 0.2), (1.0, 1.0)]],
    "n": [[(0.1, 1.0), (0.1, 0.1)], [(0.1, 0.4), (0.4, 0.08), (0.8, 0.15), (0.9, 0.5), (0.9, 1.0)]],
    "r": [[(0.2, 1.0), (0.2, 0.1)], [(0.2, 0.45), (0.5, 0.1), (0.9, 0.1)]],
    "u": [[(0.1, 0.0), (0.1, 0.7), (0.35, 1.0), (0.7, 0.95), (0.9, 0.6)], [(0.9, 0.0), (0.9, 1.0)]],
    "v": [[(0.0, 0.0), (0.5, 1.0), (1.0, 0.0)]],
    "w": [[(0.0, 0.0), (0.25, 1.0), (0.5, 0.3), (0.75, 1.0), (1.0, 0.0)]],
    "x": [[(0.0, 0.0), (1.0, 1.0)], [(1.0, 0.0), (0.0, 1.0)]],
}


def _place(strokes: Sequence[np.ndarray], size: float, centre: np.ndarray, angle: float) -> list[np.ndarray]:
    """Strokes scaled so their box's longer side is ``size``, turned by ``angle`` and centred on ``centre``."""
    pts = np.concatenate(strokes)
    lo, hi = pts.min(0), pts.max(0)
    k = size / max(float((hi - lo).max()), 1.0)
    c, s = np.cos(angle), np.sin(angle)
    rot = np.array([[c, -s], [s, c]])
    return [np.clip(((a - (lo + hi) / 2) * k) @ rot.T + centre, 4, CANVAS - 4) for a in strokes]


def _densify(points: np.ndarray, step: float, rng: np.random.Generator) -> np.ndarray:
    out = [points[:1]]
    for a, b in zip(points[:-1], points[1:]):
        n = max(1, int(np.ceil(np.linalg.norm(b - a) / step)))
        out.append(a + (b - a) * (np.arange(1, n + 1) / n)[:, None])
    stroke = np.concatenate(out)
    return stroke + rng.normal(0, 0.8, stroke.shape)


def tangle(digits: Sequence[PenDigit], rng: np.random.Generator) -> list[np.ndarray]:
    """Three to five strokes of different digits, each turned and put somewhere on the canvas."""
    strokes = []
    for _ in range(int(rng.integers(3, 6))):
        d = digits[int(rng.integers(len(digits)))]
        stroke = d.strokes[int(rng.integers(len(d.strokes)))]
        strokes += _place([stroke], rng.uniform(60, 160), rng.uniform(70, 210, 2), rng.uniform(-np.pi, np.pi))
    return strokes


def overlap(digits: Sequence[PenDigit], rng: np.random.Generator) -> list[np.ndarray]:
    """Two digits of different classes, one on top of the other, offset by a third to two thirds of their size."""
    a = digits[int(rng.integers(len(digits)))]
    b = a
    while b.label == a.label:
        b = digits[int(rng.integers(len(digits)))]
    size = rng.uniform(120, 170)
    offset = rng.uniform(0.33, 0.66) * size * np.array([np.cos(t := rng.uniform(0, 2 * np.pi)), np.sin(t)])
    centre = np.array([CANVAS / 2, CANVAS / 2])
    return (_place(a.strokes, size, centre - offset / 2, rng.uniform(-0.2, 0.2))
            + _place(b.strokes, size, centre + offset / 2, rng.uniform(-0.2, 0.2)))


def letter(rng: np.random.Generator) -> list[np.ndarray]:
    """A lowercase letter not shaped like a digit, drawn with a wobbly hand."""
    name = sorted(LOWERCASE)[int(rng.integers(len(LOWERCASE)))]
    h = rng.uniform(100, 200)
    w = h * rng.uniform(0.6, 1.0)
    origin = np.array([CANVAS / 2 - w / 2, CANVAS / 2 - h / 2]) + rng.uniform(-20, 20, 2)
    return [np.clip(_densify(np.array(s) * [w, h] + origin, 4.0, rng), 4, CANVAS - 4) for s in LOWERCASE[name]]


def blob(rng: np.random.Generator) -> np.ndarray:
    """A 28x28 patch of smooth random ink, scaled like preprocess scales ink (brightest pixel 1)."""
    coarse = rng.random((int(rng.integers(3, 8)),) * 2).astype(np.float32)
    smooth = np.asarray(Image.fromarray(coarse).resize((20, 20), Image.Resampling.BICUBIC), np.float32)
    ink = np.clip((smooth - rng.uniform(0.4, 0.8)) * rng.uniform(2, 8), 0, 1)
    out = np.zeros((28, 28), np.float32)
    out[4:24, 4:24] = ink
    peak = float(out.max())
    return out / peak if peak > 0 else out


def glyph(rng: np.random.Generator) -> list[np.ndarray]:
    """A made-up symbol: three to five straight strokes between points of a 3x3 grid, none repeated."""
    grid = [(x, y) for x in (0.0, 0.5, 1.0) for y in (0.0, 0.5, 1.0)]
    h = rng.uniform(110, 200)
    w = h * rng.uniform(0.6, 1.0)
    origin = np.array([CANVAS / 2 - w / 2, CANVAS / 2 - h / 2]) + rng.uniform(-20, 20, 2)
    used: set[tuple[int, int]] = set()
    strokes: list[np.ndarray] = []
    count = int(rng.integers(3, 6))
    while len(strokes) < count:
        a, b = (int(i) for i in rng.choice(len(grid), 2, replace=False))
        if (min(a, b), max(a, b)) in used:
            continue
        used.add((min(a, b), max(a, b)))
        ends = np.array([grid[a], grid[b]]) * [w, h] + origin
        strokes.append(np.clip(_densify(ends, 4.0, rng), 4, CANVAS - 4))
    return strokes


def make_outliers(digits: Sequence[PenDigit], n: int, seed: int, purpose: int = 0) -> torch.Tensor:
    """``n`` generated non-digits as uint8 network inputs (n, 28, 28), the kinds in turn; deterministic in ``seed``.

    ``digits`` give the strokes of tangles and overlaps (the training writers' for training, the
    validation writers' for choosing a score). ``purpose`` picks an independent stream of the same
    seed: 0 for training, 1 for validation, so the two sets share no letter, glyph or blob.
    """
    rng = np.random.default_rng([seed, 0x6F7574, purpose])  # "out": this run's streams for outliers
    images = np.zeros((n, 28, 28), np.uint8)
    for i in range(n):
        kind = KINDS[i % len(KINDS)]
        if kind == "blob":
            pixels = blob(rng)
        else:
            strokes = (tangle(digits, rng) if kind == "tangle" else overlap(digits, rng) if kind == "overlap"
                       else glyph(rng) if kind == "glyph" else letter(rng))
            pixels = render_input(strokes, float(rng.uniform(12, 26)))
        images[i] = to_uint8(pixels)
    return torch.from_numpy(images)
