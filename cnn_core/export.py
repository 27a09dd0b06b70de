"""Files to take away: a trace as .npz, feature maps as a tiled PNG, a model as weights + card.

Pure functions returning bytes (the pages hand them to ``st.download_button``);
images are drawn with Pillow only, no plotting backend.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .checkpoint import LoadedModel, sha256_bytes, state_dict_bytes
from .introspect import Trace
from .model import count_parameters

RESERVED_NPZ_KEYS = ("input", "probabilities")

# Blue for negative, white for zero, red for positive: the app's diverging colours (RdBu reversed).
_NEGATIVE = np.array([33, 102, 172], dtype=np.float64)
_ZERO = np.array([247, 247, 247], dtype=np.float64)
_POSITIVE = np.array([178, 24, 43], dtype=np.float64)
GAP_COLOUR = (255, 255, 255)
_TEXT = (30, 30, 30)  # labels and titles of a labelled PNG


def _numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def trace_to_npz(trace: Trace) -> bytes:
    """The trace as a compressed .npz: ``input`` (1, 28, 28), one array per layer under its name, ``probabilities``.

    Arrays keep the trace's float32 values exactly; ``numpy.load`` reads them back in layer order.
    """
    arrays: dict[str, np.ndarray] = {"input": _numpy(trace.input)}
    for layer in trace.layers:
        if layer.name in RESERVED_NPZ_KEYS or layer.name in arrays:
            raise ValueError(f"layer name {layer.name!r} clashes with another array of the export")
        arrays[layer.name] = _numpy(layer.output)
    arrays["probabilities"] = _numpy(trace.probabilities)
    buf = io.BytesIO()
    np.savez_compressed(buf, allow_pickle=False, **arrays)
    return buf.getvalue()


def grid_shape(channels: int, cols: int) -> tuple[int, int]:
    """(rows, cols) of the tiling of ``channels`` maps, at most ``cols`` to a row."""
    if channels < 1 or cols < 1:
        raise ValueError("need at least one map and one column")
    cols = min(cols, channels)
    return math.ceil(channels / cols), cols


def _colour(maps: np.ndarray, diverging: bool) -> np.ndarray:
    """(C, H, W) values -> (C, H, W, 3) uint8, on one colour scale shared by all maps."""
    if diverging:
        limit = float(np.abs(maps).max()) or 1.0
        t = np.clip(maps / limit, -1, 1)[..., None]
        rgb = np.where(t < 0, _ZERO + (-t) * (_NEGATIVE - _ZERO), _ZERO + t * (_POSITIVE - _ZERO))
    else:
        lo, hi = float(maps.min()), float(maps.max())
        t = (maps - lo) / (hi - lo) if hi > lo else np.zeros_like(maps)
        rgb = np.repeat(t[..., None] * 255, 3, axis=-1)
    return np.rint(rgb).astype(np.uint8)


def feature_maps_png(maps, cols: int = 8, scale: int = 4, gap: int = 2, diverging: bool | None = None,
                     labels: Sequence[str] | None = None, title: str | None = None) -> bytes:
    """Feature maps (C, H, W) (or one (H, W) map) tiled into a PNG, channel 0 at the top left.

    Each map is ``scale`` times enlarged with square pixels; tiles are separated by ``gap``
    white pixels. All maps share one colour scale, so tiles compare: blue-white-red around
    zero when ``diverging`` (the default when there are negative values), else black to white.
    The image is ``cols*W*scale + (cols-1)*gap`` wide, ``rows*H*scale + (rows-1)*gap`` tall
    (``cols`` capped at C, rows as :func:`grid_shape`).

    With ``labels`` (one per map) each tile gets its label written in a white band above it, and
    with ``title`` a line of text heads the image: a figure that reads on its own, e.g. on a slide.
    Without them the image is exactly the tiling described above.
    """
    m = _numpy(maps).astype(np.float64)
    if m.ndim == 2:
        m = m[None]
    if m.ndim != 3 or 0 in m.shape:
        raise ValueError(f"expected maps of shape (C, H, W) or (H, W), got {m.shape}")
    if scale < 1 or gap < 0:
        raise ValueError("scale must be at least 1 and gap not negative")
    if not np.isfinite(m).all():
        raise ValueError("the maps contain NaN or infinite values")
    c, h, w = m.shape
    rows, cols = grid_shape(c, cols)
    if diverging is None:
        diverging = bool((m < 0).any())
    tiles = _colour(m, diverging)
    tile_h, tile_w = h * scale, w * scale
    out = np.empty((rows * tile_h + (rows - 1) * gap, cols * tile_w + (cols - 1) * gap, 3), dtype=np.uint8)
    out[:] = GAP_COLOUR
    for i in range(c):
        r, k = divmod(i, cols)
        top, left = r * (tile_h + gap), k * (tile_w + gap)
        out[top:top + tile_h, left:left + tile_w] = np.kron(tiles[i], np.ones((scale, scale, 1), dtype=np.uint8))
    image = Image.fromarray(out, "RGB")
    if labels is not None or title is not None:
        image = _with_labels(image, (rows, cols), (tile_h, tile_w), gap, labels, title)
    buf = io.BytesIO()
    image.save(buf, "PNG", optimize=True)
    return buf.getvalue()


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (OSError, TypeError, ImportError):  # Pillow without FreeType: its small bitmap font
        return ImageFont.load_default()


def _with_labels(tiled: Image.Image, grid: tuple[int, int], tile: tuple[int, int], gap: int,
                 labels: Sequence[str] | None, title: str | None) -> Image.Image:
    """``tiled`` re-laid with a band of text above each row of tiles and a title line above everything."""
    rows, cols = grid
    tile_h, tile_w = tile
    if labels is not None and len(labels) > rows * cols:
        raise ValueError(f"{len(labels)} labels for {rows * cols} tiles")
    size = max(12, min(32, tile_w // 7))  # readable on a slide, never wider than a tile for short labels
    font, title_font = _font(size), _font(round(size * 1.3))
    band = round(size * 1.5) if labels is not None else 0
    head = round(size * 2.2) if title else 0
    out = Image.new("RGB", (tiled.width, head + rows * (band + tile_h) + (rows - 1) * gap), GAP_COLOUR)
    draw = ImageDraw.Draw(out)
    if title:
        draw.text((2, head // 2), title, fill=_TEXT, font=title_font, anchor="lm")
    for r in range(rows):
        top = head + r * (band + tile_h + gap)
        strip = tiled.crop((0, r * (tile_h + gap), tiled.width, r * (tile_h + gap) + tile_h))
        out.paste(strip, (0, top + band))
        for k in range(cols):
            i = r * cols + k
            if labels is not None and i < len(labels):
                draw.text((k * (tile_w + gap) + 2, top + band // 2), str(labels[i]), fill=_TEXT, font=font,
                          anchor="lm")
    return out


def model_files(loaded: LoadedModel, weights_file: str | None = None) -> tuple[bytes, bytes]:
    """A model's weights (.pt state_dict) and model card (.json), consistent with each other.

    The card's sha256 is set to the sha256 of these weight bytes, so the pair loads back with
    :func:`cnn_core.checkpoint.load_checkpoint_bytes` (and with ``load_checkpoint`` once saved).
    """
    weights = state_dict_bytes(loaded.model)
    card = dict(loaded.card)
    card.update(architecture=loaded.config.to_dict(), sha256=sha256_bytes(weights),
                parameters=count_parameters(loaded.model))
    if weights_file is not None:
        card["weights_file"] = weights_file
    return weights, (json.dumps(card, indent=2) + "\n").encode()
