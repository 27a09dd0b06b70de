"""Turn a drawing or an uploaded picture into the network's 28x28 input, the way MNIST was made.

MNIST digits are white on black, have their background at exactly 0, are scaled so the
longer side of the ink's bounding box is 20 px (keeping the aspect ratio, anti-aliased) and
are placed in a 28x28 frame so that their centre of mass sits at the frame's centre. A
network trained on MNIST only works on inputs prepared the same way, so :func:`preprocess`
repeats those steps on whatever the user gives: a canvas drawing (RGBA, transparent
background), a photo of ink on paper (dark on light: inverted), a scan, a palette GIF...

:func:`load_image` is the one place untrusted bytes are decoded; it turns every failure into
:class:`ImageError`, whose message can be shown to the user as it is.
"""

from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .data import MNIST_MEAN, MNIST_STD  # noqa: F401  (re-exported: preprocess's callers normalise too)

MAX_PIXELS = 40_000_000  # refuse images with more pixels, checked from the header before decoding
MAX_UPLOAD_BYTES = 10 * 1024 * 1024

# Only the formats the app accepts: Pillow would otherwise also try EPS (which runs
# Ghostscript), PSD, FITS... on whatever bytes are uploaded. "JPEG" also opens the MPO
# files many phone cameras write ("MPO" itself is not an opener name: listing it is a KeyError).
_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP")
_FORMAT_NAMES = "PNG, JPEG, BMP, GIF or WebP"

_SIZE = 28  # side of the network's input
_BOX = 20  # MNIST scales the ink's bounding box so its longer side is 20 px
_CENTRE = 14.0  # where MNIST puts the centre of mass, in pixel-index coordinates (measured: 13.5..14.5)
_MAX_SIDE = 1024  # larger inputs are shrunk first: the digit ends up 20 px anyway
_MIN_CONTRAST = 0.12  # ink less than this above the background is paper texture or noise, not a digit
_INK = 0.2  # after rescaling, fainter pixels do not count as ink for the bounding box
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R 601, as Pillow's "L" conversion


class ImageError(ValueError):
    """The project's one error type for images that cannot be used; str(e) is a friendly, user-facing sentence."""


@dataclass(frozen=True)
class Preprocessed:
    """The network's input made from one image, and what was done to get it."""

    pixels: np.ndarray  # (28, 28) float32 in [0, 1], white digit on black, before normalisation (zeros when blank)
    tensor: torch.Tensor | None  # (1, 28, 28) float32, normalised with MNIST_MEAN/STD; None when blank
    blank: bool  # True when there is no digit to classify (empty canvas, all-white, all-black, uniform)
    inverted: bool  # True when the input was dark-on-light and was inverted


# --------------------------------------------------------------------------- decoding


def load_image(data: bytes) -> Image.Image:
    """Decode uploaded bytes into a PIL image, safely.

    Returns a fully loaded, detached image in whatever mode the file has (first frame of an
    animation, EXIF orientation applied). Every problem - empty, too big, not an image,
    truncated or corrupted, too many pixels, decompression bomb - raises :class:`ImageError`
    with a sentence fit to show the user; no other exception escapes.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ImageError("The upload could not be read as a file.")
    size = len(data)
    if size == 0:
        raise ImageError("The file is empty.")
    if size > MAX_UPLOAD_BYTES:
        raise ImageError(
            f"The file is {size / 2**20:.1f} MB; the limit is {MAX_UPLOAD_BYTES // 2**20} MB."
        )
    # catch_warnings makes Pillow's "this may be a decompression bomb" warning an error for
    # this call only (it is raised by Image.open from the header, before any decoding).
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(bytes(data)), formats=_FORMATS) as img:
                # Image.open only read the header: refuse huge images before decoding a pixel.
                width, height = img.size
                if width * height > MAX_PIXELS:
                    raise ImageError(
                        f"The image is {width:,} x {height:,} pixels; "
                        f"the limit is {MAX_PIXELS:,} pixels."
                    )
                img.seek(0)  # animations (GIF, WebP, APNG): the first frame
                img.load()  # decode now, inside the try, so truncated data is caught here
                out = img.copy()  # detached from the file, which the with-block closes
        except ImageError:
            raise
        except UnidentifiedImageError:
            raise ImageError(f"This file is not a {_FORMAT_NAMES} image.") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            # Image.open refuses far-too-large headers itself; its message holds the pixel count.
            found = re.search(r"\((\d+) pixels\)", str(e))
            pixels = f"{int(found.group(1)):,} pixels" if found else "too many pixels"
            raise ImageError(f"The image has {pixels}; the limit is {MAX_PIXELS:,} pixels.") from None
        except (OSError, SyntaxError, ValueError, EOFError):
            raise ImageError("The image file is damaged or incomplete and could not be decoded.") from None
        except Exception:  # noqa: BLE001 - decoders fed hostile bytes raise odd things (struct.error, IndexError...)
            raise ImageError("The image file could not be decoded.") from None
    try:
        # Phone photos are stored sideways with an EXIF "rotate me" tag.
        rotated = ImageOps.exif_transpose(out)
    except Exception:  # noqa: BLE001 - a malformed EXIF block must not make a good picture unusable
        rotated = None
    return rotated if rotated is not None else out


# --------------------------------------------------------------------------- greyscale


def _scale_to_unit(a: np.ndarray, full_scale: float | None = None) -> np.ndarray:
    """Map pixel values of any dtype to float32 in [0, 1] (NaN -> 0)."""
    if a.dtype == np.bool_:
        return a.astype(np.float32)
    if full_scale is None:
        if a.dtype == np.uint8:
            full_scale = 255.0
        elif a.dtype == np.uint16:
            full_scale = 65535.0
    out = a.astype(np.float32)
    if np.issubdtype(a.dtype, np.floating):
        out = np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)  # only floats can hold NaN / inf
    if full_scale is not None:
        return np.clip(out / np.float32(full_scale), 0.0, 1.0)
    if out.size == 0:
        return out
    # Other ints and floats carry no scale: guess the usual ones, else stretch min..max.
    lo, hi = float(out.min()), float(out.max())
    if lo >= 0.0 and hi <= 1.0 and np.issubdtype(a.dtype, np.floating):
        return out
    if lo >= 0.0 and hi <= 255.0:
        return out / np.float32(255.0)
    if lo >= 0.0 and hi <= 65535.0 and np.issubdtype(a.dtype, np.integer):
        return out / np.float32(65535.0)
    if hi - lo <= 0.0:
        return np.zeros_like(out)
    return (out - np.float32(lo)) / np.float32(hi - lo)


def _pil_colour_alpha(img: Image.Image, max_side: int | None) -> tuple[np.ndarray, np.ndarray | None]:
    """A PIL image -> (HxW or HxWx3 float32 in [0, 1], HxW alpha in [0, 1] or None), maybe shrunk."""
    mode = img.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # Wide integer modes: scale in numpy (Pillow's own conversions clip at 255), then go via "F".
        scale = 65535.0 if mode.startswith("I;16") else None
        values = np.asarray(img.convert("I") if mode != "I" else img)
        img = Image.fromarray(_scale_to_unit(values, scale))
    elif mode == "F":
        img = Image.fromarray(_scale_to_unit(np.asarray(img)))
    elif mode in ("LA", "La", "PA", "RGBA", "RGBa"):
        img = img.convert("LA" if mode in ("LA", "La") else "RGBA")
    elif "transparency" in img.info and mode in ("1", "L", "P", "RGB"):
        # A transparent colour (tRNS chunk, GIF transparency): turn it into an alpha channel.
        img = img.convert("LA" if mode in ("1", "L") else "RGBA")
    elif mode in ("1", "L"):
        img = img.convert("L")
    else:
        try:
            img = img.convert("RGB")  # P, CMYK, YCbCr, RGBX, HSV...
        except (ValueError, OSError):
            img = img.getchannel(0).convert("L")  # e.g. LAB: the first band is the lightness
    if max_side is not None and max(img.size) > max_side:
        # Shrinking first keeps big photos fast; Pillow resizes RGBA/LA with premultiplied alpha.
        w, h = img.size
        k = max_side / max(w, h)
        img = img.resize((max(1, round(w * k)), max(1, round(h * k))), Image.Resampling.BOX)
    arr = np.asarray(img)
    if img.mode == "F":
        return arr.astype(np.float32), None
    arr = arr.astype(np.float32) / np.float32(255.0)
    if img.mode == "LA":
        return arr[..., 0], arr[..., 1]
    if img.mode == "RGBA":
        return arr[..., :3], arr[..., 3]
    return arr, None


def _numpy_colour_alpha(arr: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """A numpy image HxW, HxWx1/2/3/4 of any numeric dtype -> (colour, alpha or None) in [0, 1]."""
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (2, 3, 4))):
        raise ImageError(f"An image array must be HxW, HxWx3 or HxWx4, not {arr.shape}.")
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_) or np.iscomplexobj(arr):
        raise ImageError(f"An image array must hold numbers, not {arr.dtype}.")
    unit = _scale_to_unit(arr)  # one scale for colour and alpha: they share the dtype
    if unit.ndim == 2:
        return unit, None
    if unit.shape[2] == 2:
        return unit[..., 0], unit[..., 1]
    if unit.shape[2] == 4:
        return unit[..., :3], unit[..., 3]
    return unit, None


def _composite(colour: np.ndarray, alpha: np.ndarray | None) -> np.ndarray:
    """Luminance, with transparent pixels filled so that the digit stands out (see to_greyscale)."""
    grey = colour @ _LUMA if colour.ndim == 3 else colour
    if alpha is None or grey.size == 0 or float(alpha.min()) >= 1.0:
        return np.ascontiguousarray(grey, dtype=np.float32)
    total = float(alpha.sum())
    if total <= 1e-6:
        return np.zeros_like(grey)  # fully transparent: nothing is drawn (an empty canvas)
    if total / alpha.size < 0.5:
        # Mostly transparent: the transparency is the background and the opaque pixels are
        # the strokes, so fill with the colour they contrast with (white strokes -> black).
        stroke = float((grey * alpha).sum()) / total
        fill = 0.0 if stroke > 0.5 else 1.0
    else:
        # Mostly opaque (a picture with transparent margins): fill with its own background
        # colour so the margins do not become ink.
        fill = float(np.median(grey[alpha > 0.5])) if bool((alpha > 0.5).any()) else 0.0
    return (grey * alpha + np.float32(fill) * (1.0 - alpha)).astype(np.float32)


def _greyscale(image: Image.Image | np.ndarray, max_side: int | None) -> np.ndarray:
    if isinstance(image, Image.Image):
        return _composite(*_pil_colour_alpha(image, max_side))
    if isinstance(image, np.ndarray):
        grey = _composite(*_numpy_colour_alpha(image))
        if max_side is not None and max(grey.shape) > max_side:
            h, w = grey.shape
            k = max_side / max(w, h)
            size = (max(1, round(w * k)), max(1, round(h * k)))
            grey = np.asarray(Image.fromarray(grey).resize(size, Image.Resampling.BOX), dtype=np.float32)
        return grey
    raise TypeError(f"expected a PIL image or a numpy array, not {type(image).__name__}")


def to_greyscale(image: Image.Image | np.ndarray) -> np.ndarray:
    """Any image -> float32 HxW in [0, 1], light = 1.

    Accepts any PIL mode (1, L, LA, P with or without transparency, RGB, RGBA, CMYK, I;16,
    I, F, ...) or a numpy array HxW / HxWx3 / HxWx4 (uint8, uint16, bool, other ints, float).
    Colour becomes ITU-R 601 luminance. uint8 / uint16 use their full range; floats already
    in [0, 1] are kept, those in [0, 255] divided by 255, anything else stretched min..max.
    Transparent pixels are composited: onto the colour that contrasts with the opaque pixels
    when the image is mostly transparent (white strokes on a transparent canvas -> black
    background, black strokes -> white), onto the image's own background colour otherwise.
    The input is never modified. Raises :class:`ImageError` for an array of unusable shape.
    """
    return _greyscale(image, max_side=None)


# --------------------------------------------------------------------------- MNIST-style framing


def _background(grey: np.ndarray) -> np.ndarray:
    """The paper's level at every pixel: a plane fitted to the outer ring of pixels.

    A plane, not one number, because photos of paper are lit unevenly: with a single level
    the darker side of the sheet would count as ink and stretch the bounding box. The fit
    starts from the ring's median and drops outliers, so ink touching the edge is ignored.
    """
    h, w = grey.shape
    if min(h, w) <= 2:
        return np.full_like(grey, float(np.median(grey)))
    ys = np.concatenate([np.zeros(w), np.full(w, h - 1), np.arange(1, h - 1), np.arange(1, h - 1)])
    xs = np.concatenate([np.arange(w), np.arange(w), np.zeros(h - 2), np.full(h - 2, w - 1)])
    ring = grey[ys.astype(np.intp), xs.astype(np.intp)].astype(np.float64)
    if float(np.ptp(ring)) == 0.0:
        return np.full_like(grey, ring[0])  # the usual case for a drawing: a uniform border
    # Coordinates scaled to [-1, 1] keep the least-squares problem well conditioned.
    design = np.stack([np.ones_like(ring), 2 * xs / (w - 1) - 1, 2 * ys / (h - 1) - 1], axis=1)
    coef = np.array([np.median(ring), 0.0, 0.0])
    for _ in range(3):
        res = ring - design @ coef
        mad = float(np.median(np.abs(res - np.median(res))))
        keep = np.abs(res) <= max(3 * 1.4826 * mad, 0.02)
        if keep.sum() < 3:
            break
        coef = np.linalg.lstsq(design[keep], ring[keep], rcond=None)[0]
    col = (coef[1] * (2 * np.arange(w) / (w - 1) - 1)).astype(np.float32)
    row = (coef[0] + coef[2] * (2 * np.arange(h) / (h - 1) - 1)).astype(np.float32)
    return row[:, None] + col[None, :]


def _blank(inverted: bool) -> Preprocessed:
    return Preprocessed(np.zeros((_SIZE, _SIZE), np.float32), None, True, inverted)


def preprocess(image: Image.Image | np.ndarray) -> Preprocessed:
    """Turn a user's image into the network's 28x28 input the way MNIST itself was made.

    Steps: shrink very large inputs; greyscale (compositing transparency, see
    :func:`to_greyscale`); estimate the background from the border (a plane, so uneven
    lighting cancels out) and invert dark ink on light paper (whichever side of the
    background the ink reaches further); subtract the background and stretch the ink to
    [0, 1]; crop to the ink's
    bounding box (ignoring faint noise); scale so the longer side is 20 px keeping the aspect
    ratio (anti-aliased); put it in a 28x28 black frame with its centre of mass at the
    centre. Returns ``blank=True`` and no tensor when there is no digit (empty, uniform, or
    too little contrast). Pure: the input is never modified.
    """
    grey = _greyscale(image, max_side=_MAX_SIDE)
    if grey.size == 0:
        return _blank(False)

    bg = _background(grey)
    diff = grey - bg
    # The ink is whichever side of the background reaches further: darker (ink on paper, so
    # invert) or lighter (a drawing). A light background decides a tie (e.g. uniform white).
    dark_span, light_span = float(-diff.min()), float(diff.max())
    if abs(dark_span - light_span) > 1e-6:
        inverted = dark_span > light_span
    else:
        inverted = float(bg.mean()) > 0.5
    if inverted:
        diff = -diff
    contrast = dark_span if inverted else light_span
    if contrast < _MIN_CONTRAST:
        return _blank(inverted)
    # MNIST's background is exactly 0 and its strokes reach 1: remove the paper level, stretch.
    ink = np.clip(diff / np.float32(contrast), 0.0, 1.0).astype(np.float32)

    rows = np.flatnonzero((ink >= _INK).any(axis=1))
    cols = np.flatnonzero((ink >= _INK).any(axis=0))
    if rows.size == 0:
        return _blank(inverted)
    crop = ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]

    # Longer side 20 px, aspect ratio kept; Pillow's BILINEAR widens its kernel when
    # shrinking, so this is a proper anti-aliased resample (and never leaves [0, 1]).
    h, w = crop.shape
    k = _BOX / max(h, w)
    size = (max(1, min(_BOX, round(w * k))), max(1, min(_BOX, round(h * k))))  # PIL: (width, height)
    digit = np.asarray(Image.fromarray(crop).resize(size, Image.Resampling.BILINEAR), dtype=np.float32)

    mass = float(digit.sum())
    if not np.isfinite(mass) or mass <= 0.0:
        return _blank(inverted)
    dh, dw = digit.shape
    com_r = float(digit.sum(axis=1) @ np.arange(dh, dtype=np.float32)) / mass
    com_c = float(digit.sum(axis=0) @ np.arange(dw, dtype=np.float32)) / mass
    # MNIST shifts by whole pixels so the centre of mass lands on index 14 (within half a
    # pixel); clamp so no ink falls off the frame.
    top = min(max(int(np.floor(_CENTRE - com_r + 0.5)), 0), _SIZE - dh)
    left = min(max(int(np.floor(_CENTRE - com_c + 0.5)), 0), _SIZE - dw)
    pixels = np.zeros((_SIZE, _SIZE), np.float32)
    pixels[top : top + dh, left : left + dw] = digit
    pixels = np.clip(pixels, 0.0, 1.0)
    return Preprocessed(pixels, normalise(pixels), False, bool(inverted))


# --------------------------------------------------------------------------- normalisation


def normalise(pixels: np.ndarray) -> torch.Tensor:
    """(28, 28) pixels in [0, 1] -> (1, 28, 28) float32 tensor normalised with MNIST_MEAN/STD."""
    arr = np.asarray(pixels, dtype=np.float32)
    if arr.shape == (1, _SIZE, _SIZE):
        arr = arr[0]
    if arr.shape != (_SIZE, _SIZE):
        raise ValueError(f"expected pixels of shape (28, 28), got {arr.shape}")
    return ((torch.from_numpy(arr.copy()) - MNIST_MEAN) / MNIST_STD).unsqueeze(0)


def denormalise(t: torch.Tensor) -> np.ndarray:
    """Inverse of :func:`normalise`: a (1, 28, 28) or (28, 28) tensor -> (28, 28) float32 in [0, 1] (clipped)."""
    if t.numel() != _SIZE * _SIZE:
        raise ValueError(f"expected one 28x28 image, got shape {tuple(t.shape)}")
    arr = t.detach().to("cpu", torch.float32).reshape(_SIZE, _SIZE)
    return np.clip((arr * MNIST_STD + MNIST_MEAN).numpy(), 0.0, 1.0).astype(np.float32)
