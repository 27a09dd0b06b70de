"""Pen-drawn digits: real pen trajectories, drawn the way the app's canvas draws them.

The home page's canvas (streamlit-drawable-canvas 0.13, Fabric.js ``PencilBrush``) does not
join the mouse positions with straight lines: it smooths them. For points p0..pn of a stroke
it draws ``M p0``, then for each i a quadratic curve with control point p(i-1) ending at the
midpoint of p(i-1) and p(i), and finally a line to pn, with round caps and joins, in white on
a 280x280 black canvas. :func:`render_canvas` repeats that (anti-aliased by supersampling) and
:func:`render_input` sends the picture through the app's own ``preprocess``, so a trajectory
becomes exactly the kind of 28x28 input a visitor's drawing becomes.

Trajectories come from the UNIPEN isolated digits (CC BY 4.0; see ``data/pen-digits/README.md``).
They are split **by writer** (:func:`writer_parts`): training, validation (every choice and
calibration) and test writers (the reported figures), never one writer in two parts. The test
writers' digits ship with the project (:func:`load_bundled_pen_test`).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image, ImageDraw

from .data import IMAGES_MAGIC, LABELS_MAGIC, MnistDataError, MnistSplit, read_idx
from .paths import BUNDLED_DATA_DIR, PROJECT_ROOT
from .preprocess import preprocess

Part = Literal["train", "validation", "test"]
PARTS: tuple[Part, ...] = ("train", "validation", "test")

CANVAS = 280  # the home page's canvas, in CSS pixels
APP_BRUSH = 20.0  # the home page's brush width
BRUSH_RANGE = (12.0, 26.0)  # brush widths people use (and the range training covers)
SUPERSAMPLE = 3  # render at 3x and average down: anti-aliased edges, like the browser's canvas

BUNDLED_PEN_DIR = BUNDLED_DATA_DIR / "pen-digits"
BUNDLED_IMAGES = "pen-test-images-idx3-ubyte.gz"
BUNDLED_LABELS = "pen-test-labels-idx1-ubyte.gz"
BUNDLED_WRITERS = "pen-test-writers.txt"
BUNDLED_TRAJECTORIES = "pen-test.jsonl.gz"

# Bounds on a trajectory file (it is read whole): far above the real data (at most 4 strokes and
# 502 points a digit, 8,860 digits), far below what would hurt.
MAX_DIGITS = 100_000
MAX_POINTS = 5_000


@dataclass(frozen=True)
class PenDigit:
    """One pen-drawn digit: its label, writer (``site/id``), strokes of (x, y) canvas points, source line."""

    label: int
    writer: str
    strokes: tuple[np.ndarray, ...]  # each (n, 2) float64, canvas pixels, x right, y down
    line: int  # 1-based line of the source file

    @property
    def site(self) -> str:
        return self.writer.split("/", 1)[0]


@dataclass(frozen=True)
class PenSplit(MnistSplit):
    """Pen-drawn digits as network inputs (an MnistSplit), with the writer of each digit."""

    writers: tuple[str, ...] = ()


# --------------------------------------------------------------------------- reading


def _digit_from_record(record: object, line: int, where: str) -> PenDigit:
    if not isinstance(record, dict):
        raise MnistDataError(f"{where}:{line}: not a JSON object")
    label, writer, strokes = record.get("label"), record.get("writer"), record.get("strokes")
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label <= 9:
        raise MnistDataError(f"{where}:{line}: label must be a digit 0-9, not {label!r}"[:200])
    if not isinstance(writer, str) or not writer:
        raise MnistDataError(f"{where}:{line}: writer must be a name")
    if not isinstance(strokes, list) or not strokes:
        raise MnistDataError(f"{where}:{line}: strokes must be a non-empty list")
    arrays = []
    for stroke in strokes:
        try:
            a = np.asarray(stroke, dtype=np.float64)
        except (TypeError, ValueError):
            raise MnistDataError(f"{where}:{line}: a stroke must be a list of [x, y] numbers") from None
        if a.ndim != 2 or a.shape[1] != 2 or len(a) == 0 or not np.isfinite(a).all():
            raise MnistDataError(f"{where}:{line}: a stroke must be a non-empty list of finite [x, y] points")
        arrays.append(a)
    if sum(len(a) for a in arrays) > MAX_POINTS:
        raise MnistDataError(f"{where}:{line}: more than {MAX_POINTS:,} points")
    return PenDigit(label, writer, tuple(arrays), line)


def read_pen_digits(path: str | Path) -> list[PenDigit]:
    """Read a pen-trajectory file (JSON lines, gzipped or not: ``{"label", "writer", "strokes"}``)."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    digits: list[PenDigit] = []
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for line_no, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                if len(digits) >= MAX_DIGITS:
                    raise MnistDataError(f"{path} holds more than {MAX_DIGITS:,} digits")
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise MnistDataError(f"{path}:{line_no}: not valid JSON: {e}") from None
                digits.append(_digit_from_record(record, line_no, str(path)))
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise MnistDataError(f"cannot read {path}: {e}") from e
    return digits


def write_pen_digits(path: str | Path, digits: Iterable[PenDigit]) -> None:
    """Write digits as gzipped JSON lines in the source's format (points rounded to 0.1 px), reproducibly."""
    lines = []
    for d in digits:
        strokes = [[[round(float(x), 1), round(float(y), 1)] for x, y in s] for s in d.strokes]
        lines.append(json.dumps({"label": d.label, "writer": d.writer, "strokes": strokes}, separators=(",", ":")))
    data = ("\n".join(lines) + "\n").encode()
    # mtime=0: the same digits give the same bytes (the file is checked into the repository).
    Path(path).write_bytes(gzip.compress(data, compresslevel=9, mtime=0))


# --------------------------------------------------------------------------- the split by writer

# Writers with unusual styles, from the source's README: slashed zeros (diagonal, theta, phi) and
# continental 1s. They are spread over the three parts so that each part has some: a model must
# learn these styles from some writers and is measured on others.
QUIRKY_WRITERS = frozenset({
    "apa/PaulArnao", "art/writer03", "ibm/04", "ibm/06", "ibm/08", "ibm/09", "ibm/12", "ibm/13", "ibm/14",
    "ibm/15", "imp/ostrowski", "syn/sjb-dig20", "uqb/ja_3828", "uqb/py_3828", "uqb/re_3828",
    "val/val02", "gmd/monu",
})
# The writers who slash some or all of their zeros (diagonal, horizontal or vertical bar), from the
# source's README: a model should read those zeros as 0.
SLASHED_ZERO_WRITERS = frozenset({
    "apa/PaulArnao", "art/writer03", "ibm/04", "ibm/06", "ibm/08", "ibm/09", "ibm/12", "ibm/13", "ibm/14",
    "ibm/15", "imp/ostrowski", "syn/sjb-dig20", "uqb/ja_3828", "uqb/py_3828", "uqb/re_3828",
})
HEAVY_WRITER = 300  # writers with this many digits or more train: one would dominate a small part
CYCLE: tuple[Part, ...] = ("train", "test", "validation", "train")

# Digits of the source file that are not one digit of their label (the source README's "wrong
# label" and "several characters" rows), as (line, writer, label): all three must match, so another
# file is never cut at the same line numbers. They are left out of every part; "doubtful" ones stay.
SOURCE_ERRORS = frozenset({
    (41, "aga/crlmtchl", 1), (53, "aga/crlmtchl", 7), (898, "apb/Emda_Hartnett", 8), (1265, "apb/Kenny_Wee", 5),
    (2863, "ced/AAAA9018", 7), (5812, "syn/jcp-dig11", 0), (6465, "syn/rkt-dig19", 0),
    *((line, "val/val02", 0) for line in (8119, 8147, 8149, 8151, 8155, 8159, 8166, 8167)),
    (8592, "val/val02", 6),
})


def _writer_key(writer: str) -> str:
    return hashlib.sha256(writer.encode()).hexdigest()


def writer_parts(digits: Sequence[PenDigit]) -> dict[str, Part]:
    """Which part each writer belongs to, deterministically.

    Rule: writers with at least HEAVY_WRITER digits train. The others form groups, one per
    recording site, plus one group of the QUIRKY_WRITERS; within a group, writers sorted by the
    sha256 of their name take turns through CYCLE (train, test, validation, train). So every
    part holds writers of most sites and some of the unusual styles, about half the writers
    train, and the split depends on nothing but the writers' names and counts.
    """
    counts = Counter(d.writer for d in digits)
    parts: dict[str, Part] = {}
    groups: dict[str, list[str]] = defaultdict(list)
    for writer, n in counts.items():
        if n >= HEAVY_WRITER:
            parts[writer] = "train"
        else:
            groups["quirky" if writer in QUIRKY_WRITERS else writer.split("/", 1)[0]].append(writer)
    for members in groups.values():
        for i, writer in enumerate(sorted(members, key=_writer_key)):
            parts[writer] = CYCLE[i % len(CYCLE)]
    return parts


def split_by_writer(digits: Sequence[PenDigit]) -> dict[Part, list[PenDigit]]:
    """The digits of each part (see :func:`writer_parts`), in file order, without the known source errors."""
    parts = writer_parts(digits)
    out: dict[Part, list[PenDigit]] = {p: [] for p in PARTS}
    for d in digits:
        if (d.line, d.writer, d.label) not in SOURCE_ERRORS:
            out[parts[d.writer]].append(d)
    return out


# --------------------------------------------------------------------------- drawing like the canvas


def brush_path(stroke: np.ndarray, max_step: float = 3.0) -> np.ndarray:
    """The polyline Fabric.js's PencilBrush draws through a stroke's points.

    ``M p0``; for each following point p(i), a quadratic curve with control point p(i-1) ending at
    the midpoint of p(i-1) and p(i); then ``L`` to the last point. Repeated points add nothing.
    Each curve is cut into straight pieces of at most about ``max_step`` pixels.
    """
    p = np.asarray(stroke, dtype=np.float64).reshape(-1, 2)
    if len(p) > 1:
        keep = np.concatenate([[True], np.any(p[1:] != p[:-1], axis=1)])
        p = p[keep]
    if len(p) < 2:
        return p
    control = p[:-1]
    end = (p[:-1] + p[1:]) / 2
    start = np.concatenate([p[:1], end[:-1]])  # each curve starts where the previous one ended
    longest = float(np.max(np.linalg.norm(control - start, axis=1) + np.linalg.norm(end - control, axis=1)))
    steps = int(min(64, max(1, math.ceil(longest / max_step))))
    t = (np.arange(1, steps + 1) / steps)[None, :, None]
    curves = (1 - t) ** 2 * start[:, None] + 2 * (1 - t) * t * control[:, None] + t ** 2 * end[:, None]
    return np.concatenate([p[:1], curves.reshape(-1, 2), p[-1:]])


def render_canvas(strokes: Sequence[np.ndarray], brush: float = APP_BRUSH, size: int = CANVAS,
                  supersample: int = SUPERSAMPLE) -> np.ndarray:
    """White strokes of width ``brush`` on a black ``size`` x ``size`` canvas, as uint8, anti-aliased.

    Round caps and joins (Fabric's defaults for the pencil brush): each stroke is its smoothed
    polyline drawn thick, plus a disc of the brush's width at every vertex. That union is exactly
    the round-capped, round-joined stroke (and a dot for a click without movement).
    """
    k = supersample
    img = Image.new("L", (size * k, size * k))
    pen = ImageDraw.Draw(img)
    r = brush * k / 2
    # Pillow draws whole-number coordinates at pixel centres and includes both corners of a box;
    # a canvas puts them at pixel corners. Hence the half-pixel shift and the disc's smaller box.
    disc = r - 0.5
    for stroke in strokes:
        pts = brush_path(stroke) * k - 0.5
        if len(pts) > 1:
            pen.line([(float(x), float(y)) for x, y in pts], fill=255, width=max(1, round(2 * r)))
        for x, y in pts:
            pen.ellipse((x - disc, y - disc, x + disc, y + disc), fill=255)
    if k > 1:
        img = img.resize((size, size), Image.Resampling.BOX)  # the mean of each k x k block: coverage
    return np.asarray(img, dtype=np.uint8)


def render_input(strokes: Sequence[np.ndarray], brush: float = APP_BRUSH) -> np.ndarray:
    """The network's 28x28 input (float32 in [0, 1]) for a drawing: canvas, then the app's ``preprocess``."""
    return preprocess(render_canvas(strokes, brush)).pixels


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    """Pixels in [0, 1] -> uint8 0-255 (rounded), as MNIST stores them."""
    return np.round(np.clip(pixels, 0.0, 1.0) * 255).astype(np.uint8)


def render_split(digits: Sequence[PenDigit], brush: float = APP_BRUSH, source: str = "pen digits") -> PenSplit:
    """Every digit drawn with the app's brush and preprocessed: a split to measure models on."""
    images = np.stack([to_uint8(render_input(d.strokes, brush)) for d in digits]) if digits else \
        np.zeros((0, 28, 28), np.uint8)
    return PenSplit(torch.from_numpy(images), torch.tensor([d.label for d in digits], dtype=torch.int64), source,
                    writers=tuple(d.writer for d in digits))


# --------------------------------------------------------------------------- augmentation


def jitter(strokes: Sequence[np.ndarray], rng: np.random.Generator, *, degrees: float = 10.0,
           scale: tuple[float, float] = (0.55, 1.3), aspect: float = 0.1, shift: float = 30.0) -> tuple[np.ndarray, ...]:
    """A randomly rotated, resized, stretched and moved copy of a drawing, kept on the canvas.

    In the source every digit's box is 182 px; visitors draw larger and smaller. Size matters
    even though preprocess rescales every digit: the brush keeps its width, so a small digit has
    thick strokes relative to its size and a large one thin strokes.
    """
    angle = math.radians(rng.uniform(-degrees, degrees))
    s = rng.uniform(*scale)
    stretch = 1 + rng.uniform(-aspect, aspect)
    cos, sin = math.cos(angle), math.sin(angle)
    m = np.array([[cos, -sin], [sin, cos]]) @ np.diag([s * stretch, s / stretch])
    centre = CANVAS / 2
    moved = [(a - centre) @ m.T for a in strokes]
    pts = np.concatenate(moved)
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    margin = 12.0
    fit = (CANVAS - 2 * margin) / max(float((hi - lo).max()), 1e-9)
    if fit < 1:  # too large for the canvas once turned: shrink to fit, as a visitor's drawing would be
        moved = [a * fit for a in moved]
        lo, hi = lo * fit, hi * fit
    # Shift at most so the drawing stays on the canvas, as a visitor's would.
    room_lo = -centre + margin - lo
    room_hi = centre - margin - hi
    offset = np.array([rng.uniform(max(-shift, min(a, b)), min(shift, max(a, b))) for a, b in zip(room_lo, room_hi)])
    return tuple(a + centre + offset for a in moved)


def _line(a: np.ndarray, b: np.ndarray, step: float = 4.0) -> np.ndarray:
    """Points every ``step`` px from a to b, as a mouse would give them."""
    n = max(1, int(np.ceil(np.linalg.norm(b - a) / step)))
    return a + (b - a) * (np.arange(n + 1) / n)[:, None]


STYLED = (0, 1, 7)  # the classes add_style changes


def add_style(digit: PenDigit, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """The digit's strokes with a style many writers use and MNIST hardly has.

    Zeros get a bar: a diagonal slash (Ø), a horizontal bar (θ) or a vertical bar (φ), from inside
    the loop to far past it (some writers' bars are twice the loop's size). Sevens get a short bar
    across the middle of the stem. Ones get a long up-stroke (flag) into the top of the stem, as in
    continental 1s, sometimes with a foot. Other digits are returned unchanged.
    """
    strokes = digit.strokes
    pts = np.concatenate(strokes)
    lo, hi = pts.min(0), pts.max(0)
    w, h = np.maximum(hi - lo, 1.0)
    centre = (lo + hi) / 2
    if digit.label == 0:
        kind = rng.choice(["diagonal", "diagonal", "horizontal", "vertical"])
        offset = rng.normal(0, 0.04, 2) * [w, h]
        if kind == "diagonal":
            sign = 1 if rng.random() < 0.8 else -1  # mostly "/", sometimes "\"
            reach = rng.uniform(-0.1, 0.4)  # how far past the loop (negative: stays inside)
            half = np.array([sign * w * rng.uniform(0.3, 0.6), -h * (0.5 + reach)])
        elif kind == "horizontal":
            half = np.array([w * (0.5 + rng.uniform(-0.1, 1.0)), h * rng.uniform(-0.05, 0.05)])
        else:
            half = np.array([w * rng.uniform(-0.1, 0.1), h * (0.5 + rng.uniform(-0.1, 0.6))])
        bar = _line(centre + offset - half, centre + offset + half)
        return (*strokes, bar) if rng.random() < 0.7 else (bar, *strokes)
    if digit.label == 7:
        y = lo[1] + h * rng.uniform(0.45, 0.6)
        near = pts[np.abs(pts[:, 1] - y) < 0.08 * h + 1]
        x = float(near[:, 0].mean()) if len(near) else float(centre[0])
        half = max(w, h) * rng.uniform(0.15, 0.28)
        return (*strokes, _line(np.array([x - half, y]), np.array([x + half, y + rng.normal(0, 0.03 * h)])))
    if digit.label == 1:
        top = pts[np.argmin(pts[:, 1])]
        angle = np.radians(rng.uniform(30, 60))  # the flag rises to the top at this angle (a 7 is flatter)
        length = h * rng.uniform(0.2, 0.55)
        start = top + length * np.array([-np.cos(angle), np.sin(angle)])
        styled = (_line(start, top), *strokes)
        if rng.random() < 0.4:  # a foot across the bottom of the stem
            bottom = pts[np.argmax(pts[:, 1])]
            half = h * rng.uniform(0.12, 0.25)
            styled = (*styled, _line(bottom - [half, 0], bottom + [half, 0]))
        return styled
    return strokes


def render_variants(digits: Sequence[PenDigit], variants: int, seed: int,
                    brush_range: tuple[float, float] = BRUSH_RANGE,
                    style_share: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``variants`` renders of each digit, each jittered and drawn with a random brush width.

    With ``style_share`` > 0, that share of the renders of zeros, ones and sevens are drawn in a
    style MNIST lacks (:func:`add_style`). Returns uint8 images (N, variants, 28, 28) and int64 labels (N,).
    Deterministic in ``seed`` (the run's seed): the run's own numpy generator draws every choice.
    """
    rng = np.random.default_rng([seed, 0x70656E])  # "pen": this run's stream for rendering
    images = np.zeros((len(digits), variants, 28, 28), np.uint8)
    for i, d in enumerate(digits):
        for v in range(variants):
            brush = rng.uniform(*brush_range)
            strokes = add_style(d, rng) if d.label in STYLED and rng.random() < style_share else d.strokes
            images[i, v] = to_uint8(render_input(jitter(strokes, rng), brush))
    labels = torch.tensor([d.label for d in digits], dtype=torch.int64)
    return torch.from_numpy(images), labels


# --------------------------------------------------------------------------- the bundled test writers


def load_bundled_pen_test(folder: str | Path = BUNDLED_PEN_DIR) -> PenSplit:
    """The pen-drawn digits of the test writers that ship with the project, as the canvas makes them.

    Drawn with the app's brush (20 px) on the 280x280 canvas and sent through ``preprocess``:
    uint8 images (N, 28, 28), int64 labels, and the writer of each digit. No model was trained or
    tuned on these writers. Raises MnistDataError when the files are missing or inconsistent.
    """
    folder = Path(folder)
    images = read_idx(folder / BUNDLED_IMAGES, IMAGES_MAGIC)
    labels = read_idx(folder / BUNDLED_LABELS, LABELS_MAGIC)
    try:
        writers = tuple((folder / BUNDLED_WRITERS).read_text(encoding="utf-8").splitlines())
    except OSError as e:
        raise MnistDataError(f"cannot read {folder / BUNDLED_WRITERS}: {e}") from e
    if images.ndim != 3 or images.shape[1:] != (28, 28) or not len(images) == len(labels) == len(writers):
        raise MnistDataError(f"the pen test digits in {folder} are inconsistent: {images.shape} images, "
                             f"{len(labels)} labels, {len(writers)} writers")
    return PenSplit(torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64)),
                    f"pen digits of {len(set(writers))} test writers ({_shown(folder / BUNDLED_IMAGES)})",
                    writers=writers)


def _shown(path: Path) -> str:
    """A bundled file's path relative to the project (the same on every machine), else as it is."""
    try:
        return str(path.resolve().relative_to(PROJECT_ROOT))
    except ValueError:
        return str(path)


def load_bundled_pen_trajectories(folder: str | Path = BUNDLED_PEN_DIR) -> list[PenDigit]:
    """The trajectories of the bundled test writers' digits, in the order of :func:`load_bundled_pen_test`."""
    return read_pen_digits(Path(folder) / BUNDLED_TRAJECTORIES)


def write_idx_gz(path: str | Path, magic: int, array: np.ndarray) -> None:
    """Write a gzipped IDX file of uint8 values, reproducibly (no time stamp in the gzip header)."""
    header = magic.to_bytes(4, "big") + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    Path(path).write_bytes(gzip.compress(header + np.ascontiguousarray(array, np.uint8).tobytes(), 9, mtime=0))


def bundle_pen_test(digits: Sequence[PenDigit], folder: str | Path = BUNDLED_PEN_DIR) -> PenSplit:
    """Write the test writers' digits into ``folder``: trajectories, rendered images, labels, writers."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    split = render_split(digits)
    write_pen_digits(folder / BUNDLED_TRAJECTORIES, digits)
    write_idx_gz(folder / BUNDLED_IMAGES, IMAGES_MAGIC, split.images.numpy())
    write_idx_gz(folder / BUNDLED_LABELS, LABELS_MAGIC, split.labels.numpy().astype(np.uint8))
    (folder / BUNDLED_WRITERS).write_text("".join(w + "\n" for w in split.writers), encoding="utf-8")
    return split


def main(argv: list[str] | None = None) -> int:
    """``python -m cnn_core.pen --pen FILE [--out DIR]``: write the bundled test writers' digits."""
    import argparse
    import sys

    from .paths import pen_data_file

    p = argparse.ArgumentParser(prog="python -m cnn_core.pen",
                                description="Bundle the pen-drawn digits of the test writers with the project.")
    default = pen_data_file()
    p.add_argument("--pen", default=str(default) if default else None, required=default is None,
                   help="pen-trajectory file (default: the server's, e.g. ../shared/data/pen-digits/...)")
    p.add_argument("--out", default=str(BUNDLED_PEN_DIR), help="folder to write (default: data/pen-digits)")
    a = p.parse_args(argv)
    try:
        digits = read_pen_digits(a.pen)
    except MnistDataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    test = split_by_writer(digits)["test"]
    split = bundle_pen_test(test, a.out)
    counts = np.bincount(split.labels.numpy(), minlength=10)
    print(f"wrote {len(split):,} digits of {len(set(split.writers))} test writers to {a.out}; per class "
          + ", ".join(f"{d}: {n}" for d, n in enumerate(counts)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
