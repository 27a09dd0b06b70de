"""Turn a drawing or an uploaded picture into the network's 28x28 input, the way MNIST was made.

MNIST digits are white on black, have their background at exactly 0, are scaled so the
longer side of the ink's bounding box is 20 px (keeping the aspect ratio, anti-aliased) and
are placed in a 28x28 frame so that their centre of mass sits at the frame's centre. A
network trained on MNIST only works on inputs prepared the same way, so :func:`preprocess`
repeats those steps on whatever the user gives: a canvas drawing (RGBA, transparent
background), a photo of ink on paper (dark on light: inverted), a scan, a palette GIF...

Two kinds of input are told apart by their background. A *clean* picture (a canvas drawing, a
rendered or scanned digit) has a flat background: at least half of it holds exactly its
border's value. A *photo* has paper texture, noise and uneven light; for it the paper's
brightness is estimated at every pixel and the ink is kept only where it stands out from the
paper's own noise, measured on the photo itself (see :func:`preprocess`). Both report how many
separate marks of digit size they hold, so a picture of several digits can be pointed out.

:func:`load_image` is the one place untrusted bytes are decoded; it turns every failure into
:class:`ImageError`, whose message can be shown to the user as it is.
"""

from __future__ import annotations

import io
import math
import re
import threading
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .data import MNIST_MEAN, MNIST_STD  # also re-exported: preprocess's callers normalise too

MAX_SIDE = 1024  # every input is shrunk to this longer side first: the digit ends up 20 px anyway
# Refuse images with more pixels, checked from the header before decoding (JPEGs after draft
# scaling, see load_image). 16 megapixels holds a 4K or 5K screenshot or a 12 MP phone photo
# saved as PNG; beyond that a picture costs memory (up to 4 bytes a pixel) and adds nothing.
MAX_PIXELS = 16_000_000
# Streamlit's server.maxUploadSize = 10 is checked first in the browser, which counts a megabyte as
# 1,000,000 bytes (outside Windows; the server itself allows 10 MiB), so the app states one limit:
# 10 MB = 10,000,000 bytes.
MAX_UPLOAD_MB = 10
MAX_UPLOAD_BYTES = MAX_UPLOAD_MB * 1_000_000
# At most this many uploads are decoded (and large pictures shrunk) at once in one process: N
# visitors uploading together cost at most this many decodes' memory (up to about 8 bytes x
# MAX_PIXELS each: an RGBA picture and the premultiplied copy Pillow averages it through); the
# others wait their turn.
MAX_CONCURRENT_DECODES = 2

# Only the formats the app accepts: Pillow would otherwise also try EPS (which runs
# Ghostscript), PSD, FITS... on whatever bytes are uploaded. "JPEG" also opens the MPO
# files many phone cameras write ("MPO" itself is not an opener name: listing it is a KeyError).
_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP")
_FORMAT_NAMES = "PNG, JPEG, BMP, GIF or WebP"
_DECODE_SLOTS = threading.BoundedSemaphore(MAX_CONCURRENT_DECODES)
_OPENING = threading.Lock()  # see load_image

_SIZE = 28  # side of the network's input
_BOX = 20  # MNIST scales the ink's bounding box so its longer side is 20 px
_CENTRE = 14.0  # where MNIST puts the centre of mass, in pixel-index coordinates (measured: 13.5..14.5)
_LEVELS = 4096  # greyscale is rounded to 1/4096: exact in float32, so 1 - (1 - g) == g (see preprocess)
_MIN_CONTRAST = 0.12  # clean pictures: ink less than this above the background is not a digit
_INK = 0.2  # after rescaling, fainter pixels do not count as ink for the bounding box
# ...compared half a rounding step lower, so that a pixel of exactly 20% (51 of 255) still counts.
_INK_LEVEL = np.float32(_INK - 0.5 / _LEVELS)
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R 601, as Pillow's "L" conversion

# Photos (see _photo_ink). Sizes are fractions of the working copy's longer side.
_WORK_SIDE = 256  # photos are analysed at this longer side: a digit filling a third of it is still 85 px
_WINDOW = 0.2  # the paper estimate ignores dark marks narrower than this (pen strokes, loops' ink)
_NOISE_K = 5.0  # ink must stand this many noise levels (robust std of the paper) above the paper
_NOISE_BINS = 12  # ...measured separately in this many bands of paper brightness (a shadow is noisier)
_EDGE = 0.5  # ...plus this share of any step in the paper's estimate within 2 px (see _photo_ink)
_MIN_PHOTO_CONTRAST = 0.04  # ...and at least 4% darker than the paper around it, however clean the photo
_SHADOW = 0.03  # paper this much denser than the fitted light (3% darker) may be in a shadow
_MAX_INK_SHARE = 0.4  # a "digit" covering more of the photo than this is texture, not strokes
_MIN_MARK = 0.05  # a photo's mark shorter than this is a speck (dust, grain), not a digit

# Marks (see _marks): fractions of the largest piece of ink.
_SPECK = 0.1  # pieces of ink shorter than this are specks: never a mark on their own
_JOIN = 0.15  # pieces closer than this belong to one mark (a 5 whose bar floats, a 4 in two strokes)
_MARK_SIZE = 0.4  # a mark at least this tall (as a share of the tallest) counts as a digit
_MARK_SIDE = 128  # marks are counted on a copy of the ink at most this large

NO_DIGIT_IN_PHOTO = (
    "No digit found: the marks in this picture cannot be told apart from the paper's texture and noise. "
    "Write the digit darker and larger, and photograph it in even light."
)
TOO_FAINT = "No digit found: the marks are too faint to tell apart from the background."
SEVERAL_DIGITS = (
    "The image seems to hold more than one digit ({marks} separate marks of digit size). "
    "The network reads one digit at a time, so here it reads them all squeezed into one 28x28 picture."
)


class ImageError(ValueError):
    """The project's one error type for images that cannot be used; str(e) is a friendly, user-facing sentence."""


@dataclass(frozen=True)
class Preprocessed:
    """The network's input made from one image, and what was done to get it."""

    pixels: np.ndarray  # (28, 28) float32 in [0, 1], white digit on black, before normalisation (zeros when blank)
    tensor: torch.Tensor | None  # (1, 28, 28) float32, normalised with MNIST_MEAN/STD; None when blank
    blank: bool  # True when there is no digit to classify (empty, uniform, too faint, or paper texture)
    inverted: bool  # True when the input was dark-on-light and was inverted
    marks: int = 0  # separate marks of digit size found (0 when blank); 2 or more: several digits
    message: str | None = None  # a sentence for the user when refused or when marks >= 2; None otherwise


# --------------------------------------------------------------------------- decoding


def _too_many_pixels(width: int, height: int) -> ImageError:
    return ImageError(
        f"The image is {width:,} x {height:,} pixels; the limit is {MAX_PIXELS:,} pixels. "
        f"The digit is read at {MAX_SIDE:,} pixels at most, so a smaller picture works just as well."
    )


def _reduce(img: Image.Image) -> Image.Image:
    """Shrink a decoded image by a whole factor (box average) to a longer side of MAX_SIDE..2*MAX_SIDE-1."""
    factor = max(img.size) // MAX_SIDE
    if factor < 2:
        return img
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        # reduce() has no 16-bit mode; a box resize to the same size is the same average.
        w, h = img.size
        return img.resize((-(-w // factor), -(-h // factor)), Image.Resampling.BOX)
    if img.mode in ("1", "P"):
        # Palette and 1-bit images cannot be averaged as they are (resize would pick nearest pixels).
        palette_alpha = img.palette is not None and img.palette.mode == "RGBA"
        keep_alpha = img.mode == "P" and ("transparency" in img.info or palette_alpha)
        img = img.convert("RGBA" if keep_alpha else ("L" if img.mode == "1" else "RGB"))
    return img.reduce(factor)


def _open(data: bytes) -> Image.Image:
    """Read the header, refuse too many pixels, set up a reduced-scale JPEG decode; decode nothing yet."""
    img = Image.open(io.BytesIO(data), formats=_FORMATS)
    width, height = img.size
    if img.format == "JPEG" and max(width, height) >= 2 * MAX_SIDE:
        # JPEG can decode at 1/2, 1/4 or 1/8 scale directly (DCT scaling): ask for the
        # smallest scale that still gives MAX_SIDE on the longer side.
        k = MAX_SIDE / max(width, height)
        img.draft(img.mode, (max(1, math.ceil(width * k)), max(1, math.ceil(height * k))))
    if img.size[0] * img.size[1] > MAX_PIXELS:
        raise _too_many_pixels(width, height)
    img.seek(0)  # animations (GIF, WebP, APNG): the first frame
    return img


def _decode(img: Image.Image) -> Image.Image:
    """Decode an opened image and shrink it; a new image, detached from the file (and later frames)."""
    img.load()  # decode now, inside load_image's try, so truncated data is caught there
    return _reduce(img) if max(img.size) >= 2 * MAX_SIDE else img.copy()


def load_image(data: bytes) -> Image.Image:
    """Decode uploaded bytes into a PIL image, safely and within bounded memory.

    Returns a fully loaded, detached image (first frame of an animation, EXIF orientation
    applied), in the file's own mode. Pictures with a longer side of 2 * MAX_SIDE or more come
    back shrunk by a whole factor to a longer side of MAX_SIDE..2*MAX_SIDE-1: JPEGs are decoded
    at that scale directly (draft), others are box-averaged after decoding (palette and 1-bit
    images then become RGB(A) or L). At most MAX_CONCURRENT_DECODES uploads decode at once;
    others wait. Every problem - not bytes, empty, over MAX_UPLOAD_BYTES, not an image,
    truncated or corrupted, over MAX_PIXELS, decompression bomb - raises :class:`ImageError`
    with a sentence fit to show the user; no other exception escapes.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ImageError("The upload could not be read as a file.")
    size = len(data)
    if size == 0:
        raise ImageError("The file is empty.")
    if size > MAX_UPLOAD_BYTES:
        shown = math.ceil(size / 100_000) / 10  # rounded up: 10,000,001 bytes is "10.1 MB", not "10.0"
        raise ImageError(f"The file is {shown:.1f} MB; the limit is {MAX_UPLOAD_MB} MB.")
    img: Image.Image | None = None
    with _DECODE_SLOTS:
        try:
            # catch_warnings makes Pillow's "this may be a decompression bomb" warning an error
            # (Image.open raises it from the header, before any decoding). It swaps the process's
            # filter list in and out, which is not thread-safe: _OPENING keeps two uploads from
            # interleaving their swaps (and so leaving the temporary filter behind).
            with _OPENING, warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                img = _open(bytes(data))
            out = _decode(img)
        except ImageError:
            raise
        except UnidentifiedImageError:
            raise ImageError(f"This file is not a {_FORMAT_NAMES} image.") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            # Image.open refuses far-too-large headers itself; its message holds the pixel count.
            found = re.search(r"\((\d+) pixels\)", str(e))
            pixels = f"{int(found.group(1)):,} pixels" if found else "too many pixels"
            raise ImageError(
                f"The image has {pixels}; the limit is {MAX_PIXELS:,} pixels. "
                f"The digit is read at {MAX_SIDE:,} pixels at most, so a smaller picture works just as well."
            ) from None
        except MemoryError:
            raise ImageError("The image is too large to decode on this server.") from None
        except (OSError, SyntaxError, ValueError, EOFError):
            raise ImageError("The image file is damaged or incomplete and could not be decoded.") from None
        except Exception:  # decoders fed hostile bytes raise odd things (struct.error, IndexError...)
            raise ImageError("The image file could not be decoded.") from None
        finally:
            if img is not None:
                img.close()  # the file's decoder and buffer; ``out`` is a separate image
        try:
            # Phone photos are stored sideways with an EXIF "rotate me" tag.
            rotated = ImageOps.exif_transpose(out)
        except Exception:  # a malformed EXIF block must not make a good picture unusable
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


# --------------------------------------------------------------------------- image operations


def _shrink(a: np.ndarray, max_side: int) -> np.ndarray:
    """Box-average a float32 image down to ``max_side`` on its longer side (unchanged if smaller)."""
    h, w = a.shape
    if max(h, w) <= max_side:
        return a
    k = max_side / max(h, w)
    size = (max(1, round(w * k)), max(1, round(h * k)))
    return np.asarray(Image.fromarray(a).resize(size, Image.Resampling.BOX), dtype=np.float32)


def _sliding(a: np.ndarray, k: int, axis: int, op: np.ufunc) -> np.ndarray:
    """``op`` (np.maximum or np.minimum) over a window of k centred on each element along ``axis``.

    Edges are replicated. Windows double (2, 4, 8... then one last step to k), so the cost grows
    with log k, in whole-array operations (the windows here are a fifth of the picture).
    """
    r = k // 2
    moved = np.moveaxis(a, axis, 0)
    n = moved.shape[0]
    m = np.pad(moved, [(r, k - 1 - r)] + [(0, 0)] * (moved.ndim - 1), mode="edge")
    width = 1  # m[i] is op over the padded input's [i, i + width)
    while 2 * width <= k:
        m = op(m[:-width], m[width:])
        width *= 2
    if width < k:
        m = op(m[: m.shape[0] - (k - width)], m[k - width :])
    return np.moveaxis(m[:n], 0, axis)


def _filter(a: np.ndarray, k: int, op: np.ufunc) -> np.ndarray:
    """``op`` over a k x k square around each pixel (separable), edges replicated."""
    return _sliding(_sliding(a, k, 0, op), k, 1, op)


def _opening(a: np.ndarray, k: int) -> np.ndarray:
    """Grey-level opening by a k x k square: removes light features narrower than k, keeps the rest.

    The picture is extended by replicating its edges (by 2 windows' halves: enough that no
    square reaches past the extension), so a shadow over a corner (a region bounded by the
    picture's edges and a straight line) comes through whole, however thin its tips.
    """
    r = 2 * (k // 2)
    p = np.pad(a, r, mode="edge")
    return _filter(_filter(p, k, np.minimum), k, np.maximum)[r : r + a.shape[0], r : r + a.shape[1]]


@dataclass(frozen=True)
class _Pieces:
    """The 8-connected pieces of a boolean image."""

    labels: np.ndarray  # int32 like the image: 0 = background, 1..count = the piece a pixel belongs to
    count: int
    boxes: np.ndarray  # (count, 4) int: top, left, bottom, right of each piece (inclusive)
    seeds: np.ndarray  # (count, 2) int: (row, column) of one pixel of each piece

    def long_sides(self) -> np.ndarray:
        return _long_sides(self.boxes)


def _long_sides(boxes: np.ndarray) -> np.ndarray:
    return np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) + 1


def _label(mask: np.ndarray) -> _Pieces:
    """The 8-connected pieces of a boolean image, with their boxes.

    Works on runs of True along rows joined by union-find, so the Python loop is over runs
    (a few per row for a digit), not pixels.
    """
    h, w = mask.shape
    edges = np.diff(np.pad(mask.astype(np.int8), ((0, 0), (1, 1))), axis=1)
    run_row, run_start = np.nonzero(edges == 1)
    run_end = np.nonzero(edges == -1)[1]  # exclusive; pairs with the starts (both in row order)
    n = int(run_row.size)
    labels = np.zeros((h, w), np.int32)
    if n == 0:
        return _Pieces(labels, 0, np.zeros((0, 4), np.int64), np.zeros((0, 2), np.int64))
    first = np.searchsorted(run_row, np.arange(h + 1)).tolist()
    starts, ends = run_start.tolist(), run_end.tolist()
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for y in range(1, h):
        i, i_end, j, j_end = first[y - 1], first[y], first[y], first[y + 1]
        while i < i_end and j < j_end:
            if starts[i] <= ends[j] and starts[j] <= ends[i]:  # overlap, or touch diagonally
                a, b = root(i), root(j)
                if a != b:
                    parent[max(a, b)] = min(a, b)
            if ends[i] < ends[j]:
                i += 1
            else:
                j += 1
    roots = np.array([root(i) for i in range(n)])
    _, run_label = np.unique(roots, return_inverse=True)
    count = int(run_label.max()) + 1
    lengths = run_end - run_start
    # Paint every run's pixels with its label (flat indices built without a Python loop).
    offsets = np.repeat(run_row * w + run_start - np.cumsum(lengths) + lengths, lengths)
    labels.ravel()[offsets + np.arange(int(lengths.sum()))] = np.repeat(run_label + 1, lengths)
    # Boxes from the runs, grouped by label.
    order = np.argsort(run_label, kind="stable")
    at = np.flatnonzero(np.r_[True, np.diff(run_label[order]) != 0])
    rows, lefts, rights = run_row[order], run_start[order], run_end[order] - 1
    boxes = np.stack([np.minimum.reduceat(rows, at), np.minimum.reduceat(lefts, at),
                      np.maximum.reduceat(rows, at), np.maximum.reduceat(rights, at)], axis=1)
    seeds = np.stack([rows[at], lefts[at]], axis=1)
    return _Pieces(labels, count, boxes.astype(np.int64), seeds.astype(np.int64))


def _marks(mask: np.ndarray, min_side: float = 0.0) -> tuple[int, np.ndarray]:
    """Count the separate marks of digit size in an ink mask; also return the mask of their pixels.

    Pieces of ink (8-connected) shorter than _SPECK of the longest piece are specks and are
    left out. The others are grouped when they come within _JOIN of the longest piece of each
    other (a 4 written in two strokes, a 5 whose bar floats): each group is one mark. Marks at
    least _MARK_SIZE as tall as the tallest mark, and at least ``min_side`` px long, are of digit
    size.
    """
    pieces = _label(mask)
    if pieces.count == 0:
        return 0, np.zeros_like(mask)
    sides = pieces.long_sides()
    if pieces.count == 1:  # the usual drawing: one stroke, or strokes that cross
        return (1, mask) if sides[0] >= min_side else (0, np.zeros_like(mask))
    longest = float(sides.max())
    solid_ids = np.flatnonzero(sides >= _SPECK * longest)  # 0-based piece numbers
    solid = np.isin(pieces.labels, solid_ids + 1)
    # Pieces that a square of side 2r+1 can bridge are one mark: label the dilated ink.
    r = max(1, round(_JOIN * longest / 2))
    groups = _label(_filter(solid, 2 * r + 1, np.maximum))
    group = groups.labels[pieces.seeds[solid_ids, 0], pieces.seeds[solid_ids, 1]] - 1
    # Each mark's box is the union of its pieces' boxes (not of the dilated ink).
    mark_boxes = np.empty((groups.count, 4), np.int64)
    mark_boxes[:, :2] = np.iinfo(np.int64).max
    mark_boxes[:, 2:] = -1
    for col, op in ((0, np.minimum), (1, np.minimum), (2, np.maximum), (3, np.maximum)):
        op.at(mark_boxes[:, col], group, pieces.boxes[solid_ids, col])
    # Digits written side by side are about as tall as each other; a floating bar, a foot or a
    # dash is not, however wide. So a mark's height is what makes it digit-sized.
    heights = mark_boxes[:, 2] - mark_boxes[:, 0] + 1
    big = (heights >= _MARK_SIZE * float(heights.max())) & (_long_sides(mark_boxes) >= min_side)
    return int(big.sum()), np.isin(pieces.labels, solid_ids[big[group]] + 1)


def _block_any(mask: np.ndarray, max_side: int) -> np.ndarray:
    """Shrink a boolean image by a whole factor so its longer side is at most ``max_side`` (a block is True if any pixel is)."""
    h, w = mask.shape
    f = -(-max(h, w) // max_side)
    if f <= 1:
        return mask
    padded = np.zeros((-(-h // f) * f, -(-w // f) * f), bool)
    padded[:h, :w] = mask
    return np.asarray(padded.reshape(padded.shape[0] // f, f, padded.shape[1] // f, f).any(axis=(1, 3)))


# --------------------------------------------------------------------------- MNIST-style framing


def _ring(grey: np.ndarray) -> np.ndarray:
    """The outer ring of pixels (the picture's border), as a flat array."""
    if min(grey.shape) <= 2:
        return grey.ravel()
    return np.concatenate([grey[0], grey[-1], grey[1:-1, 0], grey[1:-1, -1]])


def _is_clean(grey: np.ndarray) -> bool:
    """True for a drawing or a render: a flat background, and ink that stands clear of it.

    At least half the picture holds its border's usual value (to 1/1024) and at most a tenth
    lies just off it (within 6%): in a drawing those are the strokes' anti-aliased edges (2-5%
    of a canvas). A photo's grain and light spread the paper over many nearby values; even a
    JPEG compressed so hard that whole blocks of paper come out equal keeps a quarter or more
    of the picture just off its usual value.
    """
    off = np.abs(grey - np.median(_ring(grey)))
    flat = int(np.count_nonzero(off <= np.float32(1 / 1024)))
    near = int(np.count_nonzero(off <= np.float32(0.06))) - flat
    return 2 * flat >= grey.size and 10 * near <= grey.size


def _background(grey: np.ndarray) -> np.ndarray:
    """The paper's level at every pixel: a plane fitted to the outer ring of pixels.

    A plane, not one number, because even a clean scan may be lit unevenly. The fit starts from
    the ring's median and drops outliers, so ink touching the edge is ignored.
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


def _is_dark_on_light(grey: np.ndarray, clean: bool) -> bool:
    """Whether the ink is darker than the background (so the picture must be inverted).

    Clean pictures: the ink is whichever side of the border's plane reaches further (a light
    background decides a tie, e.g. uniform white). Photos: the paper decides (light paper carries
    dark ink: a glare or a blotch can reach as far as faint pencil), unless the other side of the
    paper's light reaches twice as far in its 0.1% extremes (chalk on a board, white ink). There
    the paper's light is a plane through most of the picture (see _smooth_surface), not through
    its border, which a table beside the sheet or a shadow may take up.
    """
    if clean:
        diff = grey - _background(grey)
        dark, light = float(-diff.min()), float(diff.max())
        return dark > light if abs(dark - light) > 1e-6 else float(np.median(_ring(grey))) > 0.5
    low, high = np.percentile(grey - _smooth_surface(grey, quadratic=False), [0.1, 99.9])
    dark, light = -float(low), float(high)
    return not light > 2 * dark if float(np.median(grey)) > 0.5 else dark > 2 * light


def _clean_ink(v: np.ndarray) -> tuple[np.ndarray | None, str | None]:
    """Ink of a clean picture (light ink on a flat background): background 0, strokes stretched to 1."""
    diff = v - _background(v)
    contrast = float(diff.max())
    if contrast < _MIN_CONTRAST:
        return None, (TOO_FAINT if contrast > 0.0 else None)
    # MNIST's background is exactly 0 and its strokes reach 1: remove the background, stretch.
    return np.clip(diff / np.float32(contrast), 0.0, 1.0).astype(np.float32), None


def _noise_by_brightness(paper: np.ndarray, residual: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The paper's own level and noise at every pixel, as functions of how dark the paper is there.

    Noise differs between the lit paper, a shadow and a table beside the sheet (cameras amplify
    the dark; wood has grain), so it is measured separately in _NOISE_BINS equal bands of the
    paper's density: the median and the median absolute deviation of the residual of the pixels
    in each band, read back at every pixel by interpolation between the bands. Ink covers only
    a minority of any band (a band is a brightness of the paper, and the ink is spread over the
    paper it lies on), so the medians see paper.
    """
    lo, hi = (float(q) for q in np.percentile(paper, [0.5, 99.5]))
    band = np.clip(((paper - lo) / max(hi - lo, 1e-6) * _NOISE_BINS).astype(np.int64), 0, _NOISE_BINS - 1)
    centres, levels, noises = [], [], []
    for b in range(_NOISE_BINS):
        inside = band == b
        if int(np.count_nonzero(inside)) < 32:
            continue
        r = residual[inside]
        level = float(np.median(r))
        centres.append(float(np.median(paper[inside])))
        levels.append(level)
        noises.append(1.4826 * float(np.median(np.abs(r - level))))
    if not centres:  # a tiny picture: one band
        level = float(np.median(residual))
        return np.full_like(paper, level), np.full_like(paper, 1.4826 * float(np.median(np.abs(residual - level))))
    return (np.interp(paper, centres, levels).astype(np.float32),
            np.interp(paper, centres, noises).astype(np.float32))


def _block_medians(a: np.ndarray, b: int) -> np.ndarray:
    """Medians of the b x b blocks of ``a`` (a ragged last row/column of blocks is left out)."""
    gh, gw = a.shape[0] // b, a.shape[1] // b
    blocks = a[: gh * b, : gw * b].reshape(gh, b, gw, b).transpose(0, 2, 1, 3).reshape(gh, gw, b * b)
    return np.median(blocks, axis=2)


def _smooth_surface(a: np.ndarray, step: np.ndarray | None = None, quadratic: bool = True) -> np.ndarray:
    """A quadratic (or plane) surface through the bulk of ``a`` (the lit paper), ignoring ink and shadows.

    Fitted to the medians of 8x8 blocks (a thin stroke does not move a median) by trimmed least
    squares: each round keeps the blocks closest to the previous fit, down to the best half, so
    ink or a shadow's edge (a minority of the blocks) drops out instead of bending the surface.
    ``step`` (a boolean image: a shadow found earlier) adds one unknown offset for the pixels
    inside it, so that the shadowed paper helps fit the light instead of being trimmed away:
    a surface fitted without it is only extrapolated into the shadow, and tilts there.
    """
    h, w = a.shape
    b = 8
    if min(h, w) < 4 * b:  # too small a picture for a quadratic: flat
        return np.full_like(a, float(np.median(a)))
    z = _block_medians(a, b).ravel().astype(np.float64)
    gh, gw = h // b, w // b
    cy = (np.arange(gh) * b + (b - 1) / 2) / max(h - 1, 1) * 2 - 1
    cx = (np.arange(gw) * b + (b - 1) / 2) / max(w - 1, 1) * 2 - 1
    y, x = (g.ravel() for g in np.meshgrid(cy, cx, indexing="ij"))
    columns = [np.ones_like(x), x, y] + ([x * x, x * y, y * y] if quadratic else [])
    if step is not None:
        inside = _block_medians(step.astype(np.float32), b).ravel()
        if 0.0 < float(inside.mean()) < 1.0:
            columns.append(inside)
    design = np.stack(columns, axis=1)
    coef = np.linalg.lstsq(design, z, rcond=None)[0]
    for share in (0.8, 0.65, 0.5, 0.5):
        misfit = np.abs(z - design @ coef)
        keep = misfit <= np.quantile(misfit, share)
        coef = np.linalg.lstsq(design[keep], z[keep], rcond=None)[0]
    gy = 2 * np.arange(h, dtype=np.float64)[:, None] / max(h - 1, 1) - 1
    gx = 2 * np.arange(w, dtype=np.float64)[None, :] / max(w - 1, 1) - 1
    c = np.zeros(6)
    c[: 6 if quadratic else 3] = coef[: 6 if quadratic else 3]  # the light only, not the shadow's offset
    return (c[0] + c[1] * gx + c[2] * gy + c[3] * gx * gx + c[4] * gx * gy + c[5] * gy * gy).astype(np.float32)


def _photo_ink(v: np.ndarray) -> tuple[np.ndarray | None, int, str | None]:
    """Ink of a photo (light ink on unevenly lit paper, already inverted): (ink or None, marks, message).

    1. A working copy of at most _WORK_SIDE px, lightly smoothed (strokes are wider than 3 px
       there, pixel noise is not), as optical density: -log of the light reflected (1 - v once
       inverted). Light multiplies, so in density a gradient, a shadow and the ink simply add.
    2. The paper's density at every pixel: a robust surface for the light (see _smooth_surface;
       a shadow found on the way is fitted as an offset, so the surface is right inside it too)
       plus an opening by a square a fifth of the picture wide of what is left, which removes
       every stroke narrower than that and keeps the hard edge of a shadow (a region bounded by
       the picture's edges and a straight line comes through an opening whole, once flat).
    3. The paper's own noise (grain, texture, JPEG), measured on the photo as a function of the
       paper's density (see _noise_by_brightness): ink must stand _NOISE_K noise levels above
       the paper, and absorb at least _MIN_PHOTO_CONTRAST of the light the paper reflects; at a
       step of the paper's estimate (a shadow's edge, the sheet's) the bar is higher (_EDGE).
    4. The ink's strength is the fraction of the paper's light it absorbs: in a shadow the ink is
       darker but so is the paper, and the fraction is the same.
    5. Specks are dropped and marks counted (see _marks); marks smaller than _MIN_MARK of the
       picture are dust. No mark of digit size left, or "ink" everywhere: refused.
    """
    work = _shrink(v, _WORK_SIDE)
    h, w = work.shape
    if min(h, w) >= 3:
        # 3x3 box average, edges replicated.
        p = np.pad(work, 1, mode="edge")
        total = np.zeros_like(work)
        for dy in range(3):
            for dx in range(3):
                total += p[dy : dy + h, dx : dx + w]
        work = total / np.float32(9)
    density = -np.log(np.maximum(np.float32(1.0) - work, np.float32(1 / 256)))
    window = max(3, round(_WINDOW * max(h, w)) | 1)
    # A plane first: too stiff to bend into a shadow over a corner (a quadratic would, where the
    # light is dimmest anyway), so the shadow stands out above it.
    surface = _smooth_surface(density, quadratic=False)
    raised = _opening(density - surface, window)  # the paper above that surface: shadows
    shadow: np.ndarray | None = None
    for _ in range(3):
        found = raised > max(_SHADOW, 0.5 * float(raised.max()))
        if shadow is not None and np.array_equal(found, shadow):
            break
        shadow = found
        # Fit the light (now a quadratic) with the shadow as an offset, so the surface is right
        # inside the shadow too instead of being extrapolated into it.
        surface = _smooth_surface(density, shadow if shadow.any() else None)
        raised = _opening(density - surface, window)
    paper = raised + surface
    residual = density - paper  # >= 0: an opening never exceeds the picture
    level, noise = _noise_by_brightness(paper, residual)
    above = residual - level
    least = np.float32(-np.log1p(-_MIN_PHOTO_CONTRAST))
    # Where the paper's estimate steps (the edge of a shadow, of the sheet, of a table beside it)
    # it is only right to a pixel or two, so there the bar is raised by a share of the step.
    step = _filter(paper, 5, np.maximum) - _filter(paper, 5, np.minimum)
    threshold = np.maximum(np.float32(_NOISE_K) * noise, least) + np.float32(_EDGE) * step
    mask = above > threshold
    if float(mask.mean()) > _MAX_INK_SHARE:
        return None, 0, NO_DIGIT_IN_PHOTO
    marks, kept = _marks(mask, min_side=_MIN_MARK * max(h, w))
    if marks == 0:
        return None, 0, NO_DIGIT_IN_PHOTO
    # Strength as the share of the paper's light absorbed: strokes reach 1 (their 90th
    # percentile, so a few darker specks of graphite do not set the scale); soft edges, down to
    # half the threshold, fade in; everything away from the kept marks is 0, as in MNIST.
    strength = -np.expm1(-np.maximum(above, 0))
    floor = -np.expm1(-threshold / 2)
    top = float(np.percentile(strength[kept], 90))
    near = _filter(kept, 5, np.maximum)  # the kept marks and 2 px around them: their soft edges
    ink = np.clip((strength - floor) / np.maximum(np.float32(top) - floor, np.float32(1e-6)), 0.0, 1.0) * near
    return ink.astype(np.float32), marks, None


def _ink_box(ink: np.ndarray) -> tuple[slice, slice] | None:
    """The bounding box of the pixels that count as ink (at least _INK), or None when there are none."""
    strong = ink >= _INK_LEVEL
    rows = np.flatnonzero(strong.any(axis=1))
    cols = np.flatnonzero(strong.any(axis=0))
    if rows.size == 0:
        return None
    return slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1)


def _frame(crop: np.ndarray) -> np.ndarray | None:
    """Scale the ink's box to a longer side of 20 px and centre its mass in 28x28 (None if no ink)."""

    # Longer side 20 px, aspect ratio kept; Pillow's BILINEAR widens its kernel when
    # shrinking, so this is a proper anti-aliased resample (and never leaves [0, 1]).
    h, w = crop.shape
    k = _BOX / max(h, w)
    size = (max(1, min(_BOX, round(w * k))), max(1, min(_BOX, round(h * k))))  # PIL: (width, height)
    digit = np.asarray(Image.fromarray(crop).resize(size, Image.Resampling.BILINEAR), dtype=np.float32)

    mass = float(digit.sum())
    if not np.isfinite(mass) or mass <= 0.0:
        return None
    dh, dw = digit.shape
    com_r = float(digit.sum(axis=1) @ np.arange(dh, dtype=np.float32)) / mass
    com_c = float(digit.sum(axis=0) @ np.arange(dw, dtype=np.float32)) / mass
    # MNIST shifts by whole pixels so the centre of mass lands on index 14 (within half a
    # pixel); clamp so no ink falls off the frame. A centre exactly on a half pixel (a
    # symmetric digit) rounds the same way for both polarities because both reach this point
    # with bit-identical ink (see preprocess).
    top = min(max(int(np.floor(_CENTRE - com_r + 0.5)), 0), _SIZE - dh)
    left = min(max(int(np.floor(_CENTRE - com_c + 0.5)), 0), _SIZE - dw)
    pixels = np.zeros((_SIZE, _SIZE), np.float32)
    pixels[top : top + dh, left : left + dw] = digit
    return np.clip(pixels, 0.0, 1.0)


def _blank(inverted: bool, message: str | None = None) -> Preprocessed:
    return Preprocessed(np.zeros((_SIZE, _SIZE), np.float32), None, True, inverted, 0, message)


def _pixel_count(image: Image.Image | np.ndarray) -> int:
    if isinstance(image, Image.Image):
        return image.size[0] * image.size[1]
    return int(image.shape[0] * image.shape[1]) if isinstance(image, np.ndarray) and image.ndim >= 2 else 0


def shrunk_greyscale(image: Image.Image | np.ndarray) -> np.ndarray:
    """The greyscale copy :func:`preprocess` works on: as :func:`to_greyscale`, shrunk to MAX_SIDE and rounded.

    Pictures larger than MAX_SIDE on their longer side are box-averaged down to it (the digit
    ends up 20 px, so more pixels only cost time). Values are rounded to multiples of 1/4096,
    which float32 holds exactly, so that ``1 - g`` of a rounded ``g`` is exact too.
    """
    grey = _greyscale(image, max_side=MAX_SIDE)
    return np.round(grey * np.float32(_LEVELS)) / np.float32(_LEVELS)


def preprocess(image: Image.Image | np.ndarray) -> Preprocessed:
    """Turn a user's image into the network's 28x28 input the way MNIST itself was made.

    Steps: greyscale, shrunk to MAX_SIDE (:func:`shrunk_greyscale`, compositing transparency
    as :func:`to_greyscale`); decide whether the ink is dark on light (then invert) or light
    on dark; find the ink:

    - *clean* pictures (at least half the picture exactly its border's value: drawings, renders,
      clean scans; see _is_clean): subtract the background (a plane fitted to the border) and
      stretch the ink to [0, 1]; contrast under 12% is refused as too faint;
    - *photos*: divide out the paper's uneven light, keep what stands out from the paper's own
      noise, drop specks (see :func:`_photo_ink`); refused when nothing of digit size does.

    Then crop to the ink's bounding box (ignoring faint pixels), scale the longer side to 20 px
    keeping the aspect ratio (anti-aliased), and put it in a 28x28 black frame with its centre
    of mass at the centre, as MNIST did.

    ``blank`` is True when there is no digit to classify (empty, uniform, too faint, paper
    texture); ``message`` then says why in plain words when the picture held something (None
    for an empty or uniform one). ``marks`` counts separate marks of digit size; with 2 or more
    the picture seems to hold several digits, ``message`` says so and all of them are framed
    together, as the network would otherwise read them.

    Polarity is exact: an image and its negative (255 - x for 8-bit pixels of at most MAX_SIDE
    px) give bit-identical results but for ``inverted``, because the polarity is decided first
    and everything after it works on the same light-on-dark copy (rounded to 1/4096, so
    ``1 - (1 - g) == g``). The one exception is a tie the decision cannot break: a clean picture
    on a background of exactly 0.5 whose ink reaches equally far both ways.

    Pure: the input is never modified.
    """
    if _pixel_count(image) > MAX_SIDE * MAX_SIDE:
        # Shrinking a large picture takes tens of MB (float copies of every channel): it shares
        # the decode slots, so N uploads at once cost at most MAX_CONCURRENT_DECODES of it.
        with _DECODE_SLOTS:
            grey = shrunk_greyscale(image)
    else:
        grey = shrunk_greyscale(image)  # a canvas drawing never waits behind uploads
    if grey.size == 0:
        return _blank(False)
    clean = _is_clean(grey)
    inverted = _is_dark_on_light(grey if clean else _shrink(grey, _WORK_SIDE), clean)
    v = np.float32(1.0) - grey if inverted else grey  # light ink on a dark background from here on

    if clean:
        ink, message = _clean_ink(v)
        marks = 0
    else:
        ink, marks, message = _photo_ink(v)
    box = _ink_box(ink) if ink is not None else None
    pixels = _frame(ink[box]) if ink is not None and box is not None else None
    if ink is None or box is None or pixels is None:
        return _blank(inverted, message or (None if clean else NO_DIGIT_IN_PHOTO))
    if clean:
        # Counted on the ink's box, shrunk to at most _MARK_SIDE: cheap on every canvas stroke,
        # and the same wherever the digit sits on the canvas.
        marks, _ = _marks(_block_any(ink[box] >= _INK_LEVEL, _MARK_SIDE))
    message = SEVERAL_DIGITS.format(marks=marks) if marks >= 2 else None
    return Preprocessed(pixels, normalise(pixels), False, bool(inverted), marks, message)


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
