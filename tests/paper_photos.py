"""Photos of paper, made in code: digits written on paper and photographed with a phone, as test inputs.

A photo here is a JPEG of a sheet of paper (slightly textured, under uneven light) with marks on it:
an MNIST test digit printed as ink (pen or faint pencil), two digits side by side, a random scribble,
or nothing at all. Every step follows how such a picture is made:

- **paper**: a reflectance near white with fine grain and larger blotches (fibres, slight creases),
  optionally ruled (faint blue lines, a red margin), optionally not filling the frame (a darker,
  grainy table along one side);
- **ink**: the digit's strokes (an MNIST digit scaled up, its soft edges made into a stroke of ink),
  dark for a pen, 15-30% darker than the paper for faint pencil, with graphite's patchy grain;
- **light**: multiplicative, a gradient across the sheet, optionally a hard shadow over one corner
  (a straight edge with a short penumbra, 35-60% darker);
- **camera**: gamma encoding, a warm colour cast, a little optical blur, sensor noise, JPEG.

Everything is drawn from the ``numpy.random.Generator`` passed in, so a seed gives the same bytes.
Used by ``tests/test_preprocess.py``; importable by any benchmark that needs such photos.
"""

from __future__ import annotations

import io
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter


@dataclass(frozen=True)
class Conditions:
    """How one photo is taken: what the ink is and how the sheet is lit."""

    pencil: bool = False  # faint pencil (15-30% darker than the paper) instead of a dark pen
    shadow: bool = False  # a hard shadow over one corner
    gradient: float = 0.35  # light falls by up to this fraction across the sheet
    jpeg_quality: int = 80
    size: tuple[int, int] = (480, 640)  # (width, height) of the photo
    ruled: bool = False  # lined notebook paper: faint blue lines across the sheet, a red margin
    noise: float | None = None  # the camera's noise (std, in 8-bit levels); None: 1.5-4 at random
    digit_size: tuple[float, float] = (0.45, 0.85)  # the digit's height, as a share of the photo's shorter side
    table: bool = False  # the sheet does not fill the photo: a darker, grainy table along one side


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Zero-mean, unit-std noise that varies over about ``h / cells`` pixels (bicubic upscaled grid)."""
    grid = rng.normal(0.0, 1.0, (cells, max(2, round(cells * w / h)))).astype(np.float32)
    up = np.asarray(Image.fromarray(grid).resize((w, h), Image.Resampling.BICUBIC), np.float32)
    return (up - up.mean()) / max(float(up.std()), 1e-6)


def paper(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Reflectance of a sheet of paper, float32 HxW near 0.85-0.93: grain plus blotches."""
    base = rng.uniform(0.85, 0.93)
    grain = rng.normal(0.0, rng.uniform(0.008, 0.02), (h, w)).astype(np.float32)
    blotches = _smooth_noise(rng, h, w, int(rng.integers(8, 30))) * np.float32(rng.uniform(0.004, 0.015))
    return np.float32(base) + grain + blotches


def stroke_alpha(digit: np.ndarray, height: int, rng: np.random.Generator) -> np.ndarray:
    """An MNIST digit (28x28 uint8) as ink coverage in [0, 1], ``height`` px tall: solid strokes, soft edges."""
    up = Image.fromarray(digit).resize((height, height), Image.Resampling.BICUBIC)
    x = np.asarray(up, np.float32) / 255.0
    level = rng.uniform(0.3, 0.55)  # where the stroke's edge lies: a lower level gives a bolder pen
    return np.clip((x - level) / 0.25 + 0.5, 0.0, 1.0)


def scribble_alpha(rng: np.random.Generator, size: int) -> np.ndarray:
    """A random scribble (a smooth closed-ish tangle of pen strokes) as ink coverage, size x size."""
    from PIL import ImageDraw

    big = Image.new("L", (size * 2, size * 2), 0)
    draw = ImageDraw.Draw(big)
    # A random walk with momentum, smoothed: looks like someone scribbling, not like a digit.
    pts, pos, vel = [], np.array([size, size], float), rng.normal(0, 1, 2)
    for _ in range(int(rng.integers(60, 120))):
        vel = 0.85 * vel + rng.normal(0, 1.0, 2)
        pos = np.clip(pos + vel * size * 0.05, size * 0.2, size * 1.8)
        pts.append((float(pos[0]), float(pos[1])))
    draw.line(pts, fill=255, width=max(2, size // 12), joint="curve")
    return np.asarray(big.resize((size, size), Image.Resampling.BOX), np.float32) / 255.0


def place(canvas: np.ndarray, alpha: np.ndarray, top: int, left: int) -> None:
    """Add ink coverage ``alpha`` into ``canvas`` at (top, left), clipped to the canvas (max, not sum)."""
    h, w = alpha.shape
    H, W = canvas.shape
    t0, l0 = max(top, 0), max(left, 0)
    t1, l1 = min(top + h, H), min(left + w, W)
    if t1 <= t0 or l1 <= l0:
        return
    region = canvas[t0:t1, l0:l1]
    np.maximum(region, alpha[t0 - top : t1 - top, l0 - left : l1 - left], out=region)


def _light(rng: np.random.Generator, h: int, w: int, cond: Conditions) -> np.ndarray:
    """Illumination over the sheet (multiplicative), float32 HxW in about [0.3, 1]."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(angle) * (xx / w - 0.5) + np.sin(angle) * (yy / h - 0.5)) * np.float32(np.sqrt(2))
    light = 1.0 - cond.gradient * (ramp + 0.5) * rng.uniform(0.6, 1.0)
    light *= np.float32(rng.uniform(0.75, 1.0))  # exposure
    if cond.shadow:
        # A straight edge cutting one corner off, from a point on one side to a point on the next.
        corner = int(rng.integers(4))
        a, b = rng.uniform(0.3, 0.55), rng.uniform(0.3, 0.55)
        u = xx / w if corner in (0, 3) else 1 - xx / w  # 0 at the corner's side
        v = yy / h if corner in (0, 1) else 1 - yy / h
        inside = (u / a + v / b) < 1.0  # the triangle at the corner
        mask = Image.fromarray((inside * 255).astype(np.uint8))
        soft = np.asarray(mask.filter(ImageFilter.GaussianBlur(rng.uniform(1.0, 4.0))), np.float32) / 255.0
        light *= 1.0 - np.float32(rng.uniform(0.35, 0.6)) * soft
    return light.astype(np.float32)


def photograph(ink: np.ndarray, rng: np.random.Generator, cond: Conditions) -> bytes:
    """A JPEG photo of a sheet of paper carrying ``ink`` coverage (HxW in [0, 1], the photo's size)."""
    h, w = ink.shape
    reflect = paper(rng, h, w)
    if cond.ruled:
        # Faint blue lines every 7-9% of the height, and a red margin line: printed, so sharp.
        lines = np.zeros((h, w), np.float32)
        step, offset = h * rng.uniform(0.07, 0.09), rng.uniform(0, h * 0.07)
        for y in np.arange(offset, h, step):
            lines[int(y) : int(y) + max(1, h // 300)] = 1.0
        margin = int(w * rng.uniform(0.08, 0.15))
        lines[:, margin : margin + max(1, w // 300)] = 1.0
        reflect = reflect * (1.0 - np.float32(rng.uniform(0.1, 0.2)) * lines)
    if cond.table:
        # Beyond a slightly tilted straight edge 4-12% in from one side, the table: darker, with grain.
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        side = int(rng.integers(4))
        across = [xx / w, 1 - xx / w, yy / h, 1 - yy / h][side]
        along = [yy / h, yy / h, xx / w, xx / w][side]
        table = across < rng.uniform(0.04, 0.12) + rng.uniform(-0.04, 0.04) * along
        wood = rng.uniform(0.2, 0.45) * (1 + 0.08 * _smooth_noise(rng, h, w, 40)) + rng.normal(0, 0.02, (h, w))
        reflect = np.where(table, wood.astype(np.float32), reflect)
    if cond.pencil:
        depth = rng.uniform(0.15, 0.3)  # faint: the graphite is only this much darker than the paper
        grain = np.clip(1.0 + 0.35 * rng.normal(0, 1, (h, w)), 0.3, 1.5).astype(np.float32)
        coverage = np.clip(ink * grain, 0.0, 1.0)
        reflect = reflect * (1.0 - np.float32(depth) * coverage)
    else:
        ink_level = np.float32(rng.uniform(0.05, 0.25))
        reflect = reflect * (1.0 - ink) + ink_level * ink
    linear = np.clip(reflect * _light(rng, h, w, cond), 0.0, 1.0)
    encoded = linear ** (1 / 2.2)  # cameras store gamma-encoded values
    cast = np.array([1.0, rng.uniform(0.93, 1.0), rng.uniform(0.82, 0.95)], np.float32)  # warm light
    rgb = (np.clip(encoded[..., None] * cast, 0, 1) * 255).astype(np.uint8)
    img = Image.fromarray(rgb).filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 1.3)))
    sigma = cond.noise if cond.noise is not None else rng.uniform(1.5, 4.0)
    noisy = np.asarray(img, np.float32) + rng.normal(0, sigma, (h, w, 3)).astype(np.float32)
    out = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))
    buf = io.BytesIO()
    out.save(buf, "JPEG", quality=cond.jpeg_quality)
    return buf.getvalue()


def digit_photo(digit: np.ndarray, rng: np.random.Generator, cond: Conditions = Conditions()) -> bytes:
    """A photo of one MNIST digit (28x28 uint8) written on paper (its 28x28 box ``cond.digit_size`` of the shorter side)."""
    w, h = cond.size
    side = int(min(h, w) * rng.uniform(*cond.digit_size))
    ink = np.zeros((h, w), np.float32)
    place(ink, stroke_alpha(digit, side, rng), int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1)))
    return photograph(ink, rng, cond)


def two_digits_photo(a: np.ndarray, b: np.ndarray, rng: np.random.Generator, cond: Conditions = Conditions()) -> bytes:
    """Two MNIST digits written side by side, as people space them: 15-50% of a digit's height between their boxes."""
    w, h = cond.size
    side = int(min(h, w / 2.6) * rng.uniform(0.7, 0.95))
    ink = np.zeros((h, w), np.float32)
    top = int(rng.integers(0, h - side + 1))
    # MNIST boxes are 28 wide with the digit's 20 px in the middle: overlap the boxes by that margin.
    margin = side * 4 // 28
    left = int(rng.integers(0, max(1, w - 2 * side + 2 * margin)))
    gap = int(side * rng.uniform(0.15, 0.5) * 20 / 28)
    place(ink, stroke_alpha(a, side, rng), top, left)
    place(ink, stroke_alpha(b, side, rng), top + int(rng.integers(-side // 10, side // 10 + 1)),
           left + side - 2 * margin + gap)
    return photograph(ink, rng, cond)


def scribble_photo(rng: np.random.Generator, cond: Conditions = Conditions()) -> bytes:
    """A photo of a random scribble on paper."""
    w, h = cond.size
    side = int(min(h, w) * rng.uniform(0.45, 0.8))
    ink = np.zeros((h, w), np.float32)
    place(ink, scribble_alpha(rng, side), int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1)))
    return photograph(ink, rng, cond)


def blank_photo(rng: np.random.Generator, cond: Conditions = Conditions()) -> bytes:
    """A photo of blank paper."""
    w, h = cond.size
    return photograph(np.zeros((h, w), np.float32), rng, cond)


def random_conditions(rng: np.random.Generator) -> Conditions:
    """A mix: a shadow half the time, faint pencil a third of the time, lined paper or the table in
    the frame now and then, any JPEG quality 50-92, portrait or landscape, now and then twice as big."""
    size = (480, 640) if rng.random() < 0.5 else (640, 480)
    if rng.random() < 0.15:
        size = (size[0] * 2, size[1] * 2)
    return Conditions(
        pencil=bool(rng.random() < 1 / 3),
        shadow=bool(rng.random() < 0.5),
        gradient=float(rng.uniform(0.0, 0.5)),
        jpeg_quality=int(rng.integers(50, 93)),
        size=size,
        ruled=bool(rng.random() < 0.15),
        table=bool(rng.random() < 0.15),
    )


def main() -> None:
    """Print how ``preprocess`` and the shipped model do on generated photos (the figures in the notes)."""
    import argparse
    import sys
    import time
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import torch

    from cnn_core.checkpoint import load_checkpoint
    from cnn_core.data import load_mnist
    from cnn_core.paths import BUNDLED_MNIST_DIR
    from cnn_core.preprocess import load_image, preprocess

    parser = argparse.ArgumentParser(description="preprocess on generated photos of paper")
    parser.add_argument("--n", type=int, default=100, help="photos of each kind")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    split = load_mnist(BUNDLED_MNIST_DIR, "test")
    images, labels = split.images.numpy(), split.labels.numpy()
    model = load_checkpoint().model
    spent = [0.0, 0]

    def run(data: bytes):
        t = time.process_time()
        r = preprocess(load_image(data))
        spent[0] += time.process_time() - t
        spent[1] += 1
        return r

    def reading(tensor: torch.Tensor) -> int:
        with torch.no_grad():
            return int(model(tensor[None]).argmax())

    def digit_rate(name: str, conditions) -> None:
        right = same = refused = several = 0
        for i in range(args.n):
            rng = np.random.default_rng((args.seed, zlib.crc32(name.encode()), i))
            idx = int(rng.integers(len(images)))
            r = run(digit_photo(images[idx], rng, conditions(rng)))
            refused += r.blank
            several += r.marks >= 2
            if r.tensor is not None:
                answer = reading(r.tensor)
                right += answer == labels[idx]
                clean = preprocess(images[idx]).tensor
                same += clean is not None and answer == reading(clean)
        print(f"| {name} | {args.n} | {right / args.n:.1%} | {same / args.n:.1%} | {refused} | {several} |")

    print("| photos of one MNIST test digit | n | read right by the shipped model | read as the clean digit "
          "| refused | several marks |")
    print("| --- | --- | --- | --- | --- | --- |")
    digit_rate("pen, even light", lambda rng: Conditions(gradient=0.0))
    digit_rate("pen, uneven light", lambda rng: Conditions(gradient=0.45))
    digit_rate("pen, shadow over a corner", lambda rng: Conditions(shadow=True, gradient=0.45))
    digit_rate("faint pencil", lambda rng: Conditions(pencil=True, gradient=0.45))
    digit_rate("faint pencil, shadow", lambda rng: Conditions(pencil=True, shadow=True, gradient=0.45))
    digit_rate("any of the above, JPEG 50-92", random_conditions)
    digit_rate("JPEG quality 30, pencil, shadow", lambda rng: Conditions(jpeg_quality=30, pencil=True, shadow=True))
    digit_rate("noisy camera (std 8 levels), pencil", lambda rng: Conditions(noise=8.0, pencil=True))
    digit_rate("small digit (15-30% of the photo)", lambda rng: Conditions(digit_size=(0.15, 0.3)))
    digit_rate("lined paper, pencil", lambda rng: Conditions(ruled=True, pencil=True))
    digit_rate("table beside the sheet", lambda rng: Conditions(table=True, gradient=0.4))
    digit_rate("table, shadow and faint pencil", lambda rng: Conditions(table=True, shadow=True, pencil=True))

    print()
    print("| photos that are not one digit | n | refused | one mark | several marks |")
    print("| --- | --- | --- | --- | --- |")
    for name, make in [
        ("blank paper", lambda rng: blank_photo(rng, random_conditions(rng))),
        ("blank lined paper, JPEG 30", lambda rng: blank_photo(rng, Conditions(ruled=True, jpeg_quality=30,
                                                                              shadow=True))),
        ("blank paper, table beside it", lambda rng: blank_photo(rng, Conditions(table=True, shadow=True))),
        ("two digits side by side", lambda rng: two_digits_photo(images[rng.integers(len(images))],
                                                                 images[rng.integers(len(images))], rng,
                                                                 random_conditions(rng))),
        ("a scribble", lambda rng: scribble_photo(rng, random_conditions(rng))),
    ]:
        counts = [0, 0, 0]
        for i in range(args.n):
            r = run(make(np.random.default_rng((args.seed, zlib.crc32(name.encode()), i))))
            counts[0 if r.blank else 1 if r.marks == 1 else 2] += 1
        print(f"| {name} | {args.n} | {counts[0]} | {counts[1]} | {counts[2]} |")
    print(f"\nload_image + preprocess: {spent[0] / spent[1] * 1e3:.1f} ms of CPU per photo ({spent[1]} photos)")


if __name__ == "__main__":
    main()
