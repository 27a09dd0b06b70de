"""The whole network in one view: each layer's output drawn as one picture, side by side (no Streamlit here).

Each layer becomes a :class:`Panel`, a small picture in which every unit of the layer owns a block of
whole screen pixels: feature maps as tiles in a grid, vectors as columns of cells. A layer is rendered
with numpy and Pillow into one PNG (a lookup of each pixel's unit, then of its colour) and shown
through Plotly's ``go.Image``; invisible markers answer clicks (Streamlit reports clicks on points, not
on images) and rectangles drawn over the picture highlight a unit and what it is computed from.
Ten small PNGs draw a network of ~300 feature maps faster, and in fewer bytes, than ~300 heatmaps.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import plotly.graph_objects as go
from PIL import Image, ImageDraw
from plotly.colors import get_colorscale, unlabel_rgb

from cnn_core.architecture import Region
from cnn_core.unit_sources import UnitSources

TILE_TARGET = 28  # display pixels a feature map tile aims at (28x28 maps are drawn 1:1)
GAP = 1  # pixels between tiles: the grey line of their frames
MAX_TILE_ROWS = 16  # tiles per column: 64 maps become 4 columns of 16, 32 maps 2 columns
MIN_STRIP = 384  # the pictures' height when no layer needs more (a network without feature maps)
TITLE_HEIGHT = 30  # room above each picture for its name and shape
VECTOR_ROWS = 128  # cells per column of a vector; a longer one gets more columns
VECTOR_CELL_W = 16  # width of a one-column vector
MIN_VECTOR_W = 22  # a vector's picture is at least this wide
FLAT_WIDTH = 56  # about how wide the flattened vector is drawn
INPUT_SCALE = 3  # the input digit is drawn three times as large as a map tile
LAYER_GAP = 4  # pixels between two layers drawn in one chart
MIN_CHART_WIDTH = 150  # Streamlit draws no Plotly chart narrower than this
OUTPUT_LABEL_W, OUTPUT_TEXT_W = 14, 34  # room for the digit left of each output cell and its probability right

FRAME_COLOUR = (200, 200, 200, 255)
EMPTY, FRAME = -1, -2  # pixel_units() of pixels that show no unit: transparent, or a tile's frame
LEVELS = 128  # colours of the values: 22% fewer PNG bytes than 254 levels, and no banding to see
FRAME_INDEX, EMPTY_INDEX = LEVELS, LEVELS + 1
SELECTED_COLOUR = "#111111"
SOURCE_COLOUR = "#f58518"  # orange: not on the blue-white-red scale of the values
SOURCE_FILL = "rgba(245,133,24,0.30)"

Role = Literal["input", "maps", "flat", "vector", "output"]


def _array(x) -> np.ndarray:
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def _lut(name: str, levels: int) -> np.ndarray:
    """A ``levels``-entry RGB lookup table of a Plotly colour scale, interpolated linearly between its stops."""
    stops = get_colorscale(name)
    positions = np.array([float(p) for p, _ in stops])
    colours = np.array([unlabel_rgb(c) for _, c in stops], dtype=float)
    t = np.linspace(0, 1, levels)
    return np.stack([np.interp(t, positions, colours[:, i]) for i in range(3)], axis=1).round().astype(np.uint8)


# The app's diverging scale (ui.figures.DIVERGING): blue negative, white zero, red positive.
DIVERGING_LUT = _lut("RdBu_r", LEVELS)
GREY_LUT = np.repeat(np.linspace(0, 255, LEVELS).round().astype(np.uint8)[:, None], 3, axis=1)  # black paper, white ink


# --------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class Block:
    """A rectangle of cells in a panel: ``rows`` x ``cols`` cells of ``cell_h`` x ``cell_w`` pixels from (top, left).

    A block is what one click picks: a feature map's tile, a row of the flattened vector, or one unit.
    Its units are numbered row by row, following the blocks before it.
    """

    top: int
    left: int
    rows: int
    cols: int
    cell_h: int
    cell_w: int

    @property
    def units(self) -> int:
        return self.rows * self.cols

    @property
    def bottom(self) -> int:
        return self.top + self.rows * self.cell_h

    @property
    def right(self) -> int:
        return self.left + self.cols * self.cell_w

    @property
    def centre(self) -> tuple[float, float]:
        return (self.left + self.right) / 2, (self.top + self.bottom) / 2


Rect = tuple[float, float, float, float]  # x0, y0, x1, y1 in panel pixels (y down)


@dataclass(frozen=True)
class Panel:
    """How one layer is drawn: its picture's size and where each of its units lies in it."""

    name: str
    kind: str  # the layer's class name ("Conv2d", "ReLU", ...), or "Input"
    role: Role
    shape: tuple[int, ...]  # the layer's output shape for one digit
    width: int
    height: int
    blocks: tuple[Block, ...]

    @property
    def units(self) -> int:
        return math.prod(self.shape)

    @property
    def per_block(self) -> int:
        return self.blocks[0].units

    def unit_index(self, index: Sequence[int]) -> int:
        """The flat index (in the layer's output order) of a unit given as (channel, row, col) or (i,)."""
        return int(np.ravel_multi_index(tuple(int(i) for i in index), self.shape))

    def unit_rect(self, index: Sequence[int]) -> Rect:
        """The pixels of one unit."""
        flat = self.unit_index(index)
        block = self.blocks[flat // self.per_block]
        r, c = divmod(flat % self.per_block, block.cols)
        x0, y0 = block.left + c * block.cell_w, block.top + r * block.cell_h
        return x0, y0, x0 + block.cell_w, y0 + block.cell_h

    def block_rect(self, block_index: int) -> Rect:
        b = self.blocks[block_index]
        return b.left, b.top, b.right, b.bottom

    def region_rect(self, channel: int, region: Region) -> Rect:
        """The pixels of rows/columns ``region`` of one feature map's tile, clipped to the tile."""
        if self.role not in ("maps", "input"):
            raise ValueError(f"{self.name} has no feature maps")
        _, h, w = self.shape
        inside = region.clipped(h, w)
        b = self.blocks[channel]
        return (b.left + inside.left * b.cell_w, b.top + inside.top * b.cell_h,
                b.left + (inside.right + 1) * b.cell_w, b.top + (inside.bottom + 1) * b.cell_h)

    def block_of(self, index: Sequence[int]) -> int:
        """Which block (tile, row of the flat vector, or unit) holds a unit."""
        return self.unit_index(index) // self.per_block

    def frames(self) -> list[tuple[int, int, int, int]]:
        """Rectangles (left, top, right, bottom) framed by a 1-pixel grey line just outside: each map's tile, or
        the whole vector (a frame per cell would hide cells 3 pixels tall). A map of zeros is white: the frame
        keeps it visible on the white page."""
        if self.role in ("maps", "input"):
            return [(b.left, b.top, b.right, b.bottom) for b in self.blocks]
        return [(min(b.left for b in self.blocks), min(b.top for b in self.blocks),
                 max(b.right for b in self.blocks), max(b.bottom for b in self.blocks))]

    def pixel_units(self) -> np.ndarray:
        """(height, width) int32: the flat index of the unit each pixel shows; FRAME for frame lines and
        EMPTY (transparent) elsewhere."""
        out = np.full((self.height, self.width), EMPTY, dtype=np.int32)
        for left, top, right, bottom in self.frames():
            x0, y0, x1, y1 = max(left - 1, 0), max(top - 1, 0), min(right + 1, self.width), min(bottom + 1, self.height)
            out[y0:y1, x0:x1] = FRAME
        start = 0
        for b in self.blocks:
            cells = np.arange(start, start + b.units, dtype=np.int32).reshape(b.rows, b.cols)
            out[b.top: b.bottom, b.left: b.right] = np.repeat(np.repeat(cells, b.cell_h, axis=0), b.cell_w, axis=1)
            start += b.units
        return out


def _grid(count: int, tile_h: int, tile_w: int, rows: int, cell: int, top: int = 0) -> list[Block]:
    """``count`` tiles in a grid of ``rows`` rows, filled row by row."""
    cols = math.ceil(count / rows)
    return [Block(top + (i // cols) * (tile_h + GAP), 1 + (i % cols) * (tile_w + GAP), tile_h // cell,
                  tile_w // cell, cell, cell) for i in range(count)]


def map_scale(side: int) -> int:
    """Screen pixels per cell of a map ``side`` cells wide: whole pixels, tiles near TILE_TARGET."""
    return max(1, round(TILE_TARGET / side))


def _maps_size(shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    """(rows of tiles, columns of tiles, tile height, tile width) in pixels for (C, H, W) maps."""
    c, h, w = shape
    f = map_scale(max(h, w))
    rows = min(c, MAX_TILE_ROWS)
    return rows, math.ceil(c / rows), h * f, w * f


def strip_height(shapes: Sequence[tuple[int, ...]]) -> int:
    """The height of every picture of the strip: the tallest grid of feature maps (at least MIN_STRIP)."""
    heights = [MIN_STRIP]
    for shape in shapes:
        if len(shape) == 3:
            rows, _, tile_h, _ = _maps_size(shape)
            heights.append(rows * (tile_h + GAP) - GAP + 2)  # + a 1-pixel frame above and below
    return max(heights)


def _centred(blocks: list[Block], height: int) -> list[Block]:
    """The blocks moved down so that they sit in the middle of a picture ``height`` pixels tall."""
    top = min(b.top for b in blocks)
    bottom = max(b.bottom for b in blocks)
    dy = (height - (bottom - top)) // 2 - top  # the frames' pixel above and below stay inside
    return [Block(b.top + dy, b.left, b.rows, b.cols, b.cell_h, b.cell_w) for b in blocks]


def flat_rows_are_maps(flat_from: tuple[int, ...]) -> bool:
    """Whether a flattened vector is drawn one map per row (enough maps to make a picture), else one map row
    per row (a single-channel image stays an image)."""
    return flat_from[0] >= 8


def layout_panel(name: str, kind: str, shape: tuple[int, ...], height: int, *, is_output: bool = False,
                 flat_from: tuple[int, ...] | None = None) -> Panel:
    """Lay out one layer's units in a picture ``height`` pixels tall.

    ``flat_from`` is the shape a flattened vector was made from: its rows are then the maps' rows
    (one row per channel), so the picture shows the maps unrolled. ``is_output`` marks the last layer,
    drawn as labelled cells.
    """
    shape = tuple(int(d) for d in shape)
    blocks: list[Block]
    if name == "input":
        _, h, w = shape
        f = map_scale(max(h, w)) * INPUT_SCALE
        blocks = [Block(1, 1, h, w, f, f)]
        height = h * f + 2  # the input stands alone above the canvas: as tall as itself
        role: Role = "input"
    elif len(shape) == 3:
        c = shape[0]
        rows, _, tile_h, tile_w = _maps_size(shape)
        blocks = _grid(c, tile_h, tile_w, rows, map_scale(max(shape[1:])))
        role = "maps"
    elif len(shape) == 1 and is_output:
        n = shape[0]
        cell_h = max(2, min(TILE_TARGET, (height - 2) // n))
        blocks = [Block(i * cell_h, OUTPUT_LABEL_W, 1, 1, cell_h, TILE_TARGET - 6) for i in range(n)]
        role = "output"
    elif len(shape) == 1 and flat_from is not None and len(flat_from) == 3 and math.prod(flat_from) == shape[0]:
        c, h, w = flat_from
        if flat_rows_are_maps(flat_from):  # a strip: one thin row per map
            rows, per_row = c, h * w
            cell_h, cell_w = max(1, min(TILE_TARGET // 2, (height - 2) // rows)), max(1, FLAT_WIDTH // per_row)
        else:  # still an image, row after row: square cells, or the digit would look stretched
            rows, per_row = c * h, w
            cell_h = cell_w = max(1, min((FLAT_WIDTH + TILE_TARGET) // per_row, (height - 2) // rows))
        blocks = [Block(i * cell_h, 1, 1, per_row, cell_h, cell_w) for i in range(rows)]
        role = "flat"
    elif len(shape) == 1:
        n = shape[0]
        rows = min(n, VECTOR_ROWS)
        cols = math.ceil(n / rows)
        cell_h = max(1, min(TILE_TARGET // 2, (height - 2) // rows))
        cell_w = VECTOR_CELL_W if cols == 1 else max(3, 2 * VECTOR_CELL_W // cols)
        # One block per unit, numbered down each column: a click then picks exactly the unit under it.
        # Narrow columns are centred in MIN_VECTOR_W pixels: room for a title like "relu3" beside "fc1".
        left = 1 + max(0, (MIN_VECTOR_W - 2 - cols * cell_w) // 2)
        blocks = [Block((i % rows) * cell_h, left + (i // rows) * cell_w, 1, 1, cell_h, cell_w) for i in range(n)]
        role = "vector"
    else:
        raise ValueError(f"{name}: cannot draw an output of shape {shape}")
    blocks = _centred(blocks, height)
    width = max(b.right for b in blocks) + (OUTPUT_TEXT_W if role == "output" else 1)
    if role == "vector":
        width = max(width, MIN_VECTOR_W)
    return Panel(name, kind, role, shape, width, height, tuple(blocks))


# --------------------------------------------------------------------------- rendering


def colour_limit(values) -> float:
    """The symmetric colour limit of a layer: its largest absolute value (1 when all are zero)."""
    v = np.abs(_array(values).astype(np.float64))
    peak = float(v.max()) if v.size else 0.0
    return peak if peak > 0 and math.isfinite(peak) else 1.0


def render_png(panel: Panel, values, pixel_units: np.ndarray | None = None) -> bytes:
    """The layer's picture as PNG bytes: each unit's value on the diverging scale (the input in grey).

    All maps of a layer share one colour scale (white is zero, full red/blue the layer's largest absolute
    value), so maps of one layer can be compared by eye. ``pixel_units`` is :meth:`Panel.pixel_units`,
    passed in when cached.
    """
    v = _array(values).astype(np.float64).reshape(-1)
    if v.size != panel.units:
        raise ValueError(f"{panel.name}: {v.size} values for {panel.units} units")
    top = LEVELS - 1
    if panel.role == "input":
        q = np.clip(np.rint(v * top), 0, top).astype(np.uint8)
        lut = GREY_LUT
    else:
        q = np.clip(np.rint((v / colour_limit(v) + 1) / 2 * top), 0, top).astype(np.uint8)
        lut = DIVERGING_LUT
    units = panel.pixel_units() if pixel_units is None else pixel_units
    # A palette image: one byte per pixel (a quarter of RGBA), LEVELS colours plus the frame and transparency.
    levels = np.append(q, np.array([FRAME_INDEX, EMPTY_INDEX], dtype=np.uint8))  # [-2] frame, [-1] empty
    image = Image.fromarray(levels[units], "P")
    palette = np.vstack([lut, [FRAME_COLOUR[:3], (255, 255, 255)]]).astype(np.uint8)
    image.putpalette(palette.reshape(-1).tolist())
    buf = io.BytesIO()
    # compress_level 6 (zlib's default): the pictures are mostly flat blocks, which pack well and fast.
    image.save(buf, format="PNG", transparency=EMPTY_INDEX, compress_level=6)
    return buf.getvalue()


def draw_marks(png: bytes, marks: Sequence[Mark]) -> bytes:
    """A picture with marks drawn into its pixels (for a picture shown as a plain image, not a chart)."""
    image = Image.open(io.BytesIO(png)).convert("RGBA")
    draw = ImageDraw.Draw(image)
    colours = {"source": SOURCE_COLOUR, "strong": SOURCE_COLOUR, "selected": SELECTED_COLOUR}
    for m in marks:
        x0, y0, x1, y1 = (int(round(v)) for v in m.rect)
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), outline=colours[m.style], width=2)
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def data_uri(png: bytes) -> str:
    """A PNG as a data URI, the form ``go.Image(source=...)`` takes."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


# --------------------------------------------------------------------------- what to highlight


@dataclass(frozen=True)
class Mark:
    """A rectangle drawn over a panel: the selected unit, a source, or a strongest source."""

    rect: Rect
    style: Literal["selected", "source", "strong"]


def _grow(rect: Rect, by: float) -> Rect:
    x0, y0, x1, y1 = rect
    return x0 - by, y0 - by, x1 + by, y1 + by


def selected_marks(panel: Panel, index: Sequence[int]) -> list[Mark]:
    """The selected unit outlined (and, in a grid of maps, its tile)."""
    marks = [Mark(_grow(panel.unit_rect(index), 1.5), "selected")]
    if panel.role in ("maps", "flat"):
        marks.insert(0, Mark(_grow(panel.block_rect(panel.block_of(index)), 1), "selected"))
    return marks


def source_marks(panel: Panel, sources: UnitSources) -> list[Mark]:
    """What the selected unit reads in this (previous) panel: windows, channels, or strongest inputs."""
    marks: list[Mark] = []
    if sources.kind == "conv" and sources.region is not None:
        for c in sources.channels:  # a convolution reads the same window in every input channel
            marks.append(Mark(_grow(panel.region_rect(c, sources.region), 1), "source"))
        for c in sources.strongest[:3]:
            marks.append(Mark(_grow(panel.block_rect(c), 1), "strong"))
    elif sources.kind in ("pool", "elementwise", "flatten") and sources.region is not None and sources.channels:
        c = sources.channels[0]
        marks.append(Mark(_grow(panel.region_rect(c, sources.region), 1.5), "strong"))
        marks.append(Mark(_grow(panel.block_rect(c), 1), "source"))
    elif sources.kind in ("elementwise", "flatten"):
        marks.append(Mark(_grow(panel.unit_rect(sources.index if sources.kind == "elementwise" else
                                                (int(sources.index[0]),)), 1.5), "strong"))
    elif sources.kind == "linear":
        for i in sources.strongest:
            marks.append(Mark(_grow(panel.unit_rect(np.unravel_index(i, panel.shape)), 1.5), "strong"))
    return marks


# --------------------------------------------------------------------------- the figure


def _rect_path(rects: Sequence[Rect]) -> tuple[list[float | None], list[float | None]]:
    """Closed outlines of many rectangles as one line trace (None breaks the line): one trace, not N shapes."""
    xs: list[float | None] = []
    ys: list[float | None] = []
    for x0, y0, x1, y1 in rects:
        xs += [x0, x1, x1, x0, x0, None]
        ys += [y0, y0, y1, y1, y0, None]
    return xs, ys


def block_peaks(panel: Panel, values) -> np.ndarray:
    """Each block's largest value (a single unit's block: its value), shown when the pointer is on it."""
    v = _array(values).astype(float).reshape(len(panel.blocks), panel.per_block)
    return v.max(axis=1)


def _hover(panel: Panel) -> str:
    """The hover text of a panel's click targets, filled in by Plotly from each target's customdata
    ``[layer, block, peak]`` (numbers travel as one compact typed array; a text per target would not)."""
    click = "<br><i>click: what is it computed from?</i><extra></extra>"
    if panel.role == "maps":
        return f"<b>{panel.name}</b>, map %{{customdata[1]:.0f}}<br>largest value %{{customdata[2]:.2f}}" + click
    if panel.role == "flat":
        return (f"<b>{panel.name}</b>, row %{{customdata[1]:.0f}} ({panel.per_block} values)"
                f"<br>largest %{{customdata[2]:.2f}}" + click)
    return f"<b>{panel.name}</b>[%{{customdata[1]:.0f}}] = %{{customdata[2]:.3f}}" + click


@dataclass(frozen=True)
class Drawn:
    """One layer as a chart draws it: its panel, its picture, its values and what to highlight on it."""

    panel: Panel
    source: str  # the picture, as a PNG data URI
    values: object  # the layer's output (for the hover texts)
    marks: tuple[Mark, ...] = ()
    layer: int = 0  # the layer's number in the strip: each click target sends it back with its block


def stage_groups(panels: Sequence[Panel]) -> list[list[Panel]]:
    """The panels cut into charts: one per convolution with the layers after it, then one for all the vectors.

    Streamlit draws no Plotly chart narrower than MIN_CHART_WIDTH pixels, so one chart per layer would
    leave wide gaps beside the narrow ones; a stage (conv, ReLU, pool) is also what one reads together.
    """
    groups: list[list[Panel]] = []
    for panel in panels:
        starts = not groups or panel.kind == "Conv2d" or (panel.role != "maps" and groups[-1][-1].role == "maps")
        if starts:
            groups.append([panel])
        else:
            groups[-1].append(panel)
    return groups


def group_width(panels: Sequence[Panel]) -> int:
    """The width of the chart that draws these panels side by side."""
    return max(MIN_CHART_WIDTH, sum(p.width for p in panels) + LAYER_GAP * (len(panels) - 1))


def _shifted(rect: Rect, dx: float) -> Rect:
    x0, y0, x1, y1 = rect
    return x0 + dx, y0, x1 + dx, y1


def group_figure(drawn: Sequence[Drawn], probabilities=None) -> go.Figure:
    """Several layers' pictures side by side in one chart, with click targets and their marks drawn over them.

    The figure's pixels are the pictures' pixels, one to one. Every block (map tile, vector row, unit)
    has one invisible marker at its centre whose ``customdata`` is ``[layer, block, peak]``.
    ``probabilities`` labels the output layer's cells.
    """
    panels = [d.panel for d in drawn]
    width = group_width(panels)
    height = max(p.height for p in panels)
    x = (width - (sum(p.width for p in panels) + LAYER_GAP * (len(panels) - 1))) / 2  # centred when padded
    fig = go.Figure()
    marks: list[Mark] = []
    annotations = []
    for d in drawn:
        p = d.panel
        fig.add_trace(go.Image(source=d.source, x0=x + 0.5, y0=0.5, dx=1, dy=1, hoverinfo="skip"))
        centres = np.array([b.centre for b in p.blocks])
        custom = np.column_stack([np.full(len(p.blocks), d.layer), np.arange(len(p.blocks)), block_peaks(p, d.values)])
        fig.add_trace(go.Scatter(x=x + centres[:, 0], y=centres[:, 1], mode="markers", showlegend=False,
                                 name="targets", customdata=custom, hovertemplate=_hover(p),
                                 marker=dict(size=[max(4, min(22, b.right - b.left, b.bottom - b.top))
                                                   for b in p.blocks], opacity=0)))
        marks += [Mark(_shifted(m.rect, x), m.style) for m in d.marks]
        annotations.append(dict(text=f"<b>{p.name}</b><br><span style='font-size:9px'>{shape_label(p.shape)}</span>",
                                x=x + p.width / 2, y=1, xref="x", yref="paper", yanchor="bottom", showarrow=False,
                                font=dict(size=11), align="center"))
        if p.role == "output" and probabilities is not None:
            _output_labels(fig, p, probabilities, x)
        x += p.width + LAYER_GAP
    for style, colour, line_width, fill in (("source", SOURCE_COLOUR, 1.5, None),
                                            ("strong", SOURCE_COLOUR, 2.5, SOURCE_FILL),
                                            ("selected", SELECTED_COLOUR, 2.5, None)):
        rects = [m.rect for m in marks if m.style == style]
        if rects:
            path_x, path_y = _rect_path(rects)
            fig.add_trace(go.Scatter(x=path_x, y=path_y, mode="lines", line=dict(color=colour, width=line_width),
                                     fill="toself" if fill else None, fillcolor=fill, hoverinfo="skip",
                                     showlegend=False, name=style))
    fig.update_xaxes(range=[0, width], visible=False, fixedrange=True)
    # scaleanchor: should a narrow screen shrink the chart, its pixels stay square.
    fig.update_yaxes(range=[height, 0], visible=False, fixedrange=True, scaleanchor="x", constrain="domain")
    fig.update_layout(
        width=width, height=height + TITLE_HEIGHT, margin=dict(l=0, r=0, t=TITLE_HEIGHT, b=0),
        paper_bgcolor="rgba(0,0,0,0)", plot_bgcolor="rgba(0,0,0,0)", dragmode=False, hovermode="closest",
        hoverdistance=-1, clickmode="event+select", showlegend=False, annotations=annotations,
        template="none",  # nothing here uses a template's styles: leave its 4 KB out of every run
    )
    return fig


def _output_labels(fig: go.Figure, panel: Panel, probabilities, x: float) -> None:
    """Each output cell's digit on its left and its probability on its right (the answer in bold)."""
    p = _array(probabilities).astype(float).reshape(-1)
    best = int(p.argmax())
    ys = [b.centre[1] for b in panel.blocks]
    fig.add_trace(go.Scatter(x=[x + OUTPUT_LABEL_W / 2] * len(ys), y=ys, mode="text", hoverinfo="skip",
                             text=[f"<b>{d}</b>" if d == best else str(d) for d in range(len(ys))],
                             textfont=dict(size=11), showlegend=False))
    right = x + max(b.right for b in panel.blocks)
    fig.add_trace(go.Scatter(x=[right + 3] * len(ys), y=ys, mode="text", textposition="middle right",
                             hoverinfo="skip", showlegend=False, textfont=dict(size=10),
                             text=[f"<b>{v:.0%}</b>" if d == best else (f"{v:.0%}" if v >= 0.005 else "")
                                   for d, v in enumerate(p)]))


def target_from_selection(selection) -> tuple[int, int] | None:
    """(layer, block) of the click target picked in a :func:`group_figure`, from a Streamlit plotly selection."""
    for point in (selection or {}).get("points") or []:
        custom = point.get("customdata")
        if isinstance(custom, dict):  # a row of a typed array arrives as {"0": layer, "1": block, ...}
            custom = [custom.get(str(i)) for i in range(len(custom))]
        if isinstance(custom, (list, tuple)) and len(custom) >= 2 and all(isinstance(c, (int, float)) for c in custom[:2]):
            return int(round(custom[0])), int(round(custom[1]))
    return None


def shape_label(shape: Sequence[int]) -> str:
    """A layer's output shape as the pictures label it: 32×28×28, or 3136."""
    return "×".join(str(int(d)) for d in shape)


# --------------------------------------------------------------------------- the detail view


def window_map(values, region: Region | None, title: str = "", marked: Region | None = None,
               height: int = 300, greyscale: bool = False) -> go.Figure:
    """One map large, the window a unit reads outlined in orange (and the selected unit in black)."""
    z = _array(values).astype(float)
    h, w = z.shape
    lim = colour_limit(z)
    heat = (go.Heatmap(z=z, colorscale="gray", zmin=0, zmax=1, showscale=False) if greyscale else
            go.Heatmap(z=z, colorscale="RdBu_r", zmin=-lim, zmax=lim, showscale=True, colorbar=dict(thickness=10)))
    heat.update(hovertemplate="row %{y}, col %{x}: %{z:.3f}<extra></extra>")
    fig = go.Figure(heat)
    for r, colour, fill in ((region, SOURCE_COLOUR, SOURCE_FILL), (marked, SELECTED_COLOUR, None)):
        if r is not None:
            fig.add_shape(type="rect", x0=r.left - 0.5, x1=r.right + 0.5, y0=r.top - 0.5, y1=r.bottom + 0.5,
                          line=dict(color=colour, width=3), fillcolor=fill, layer="above")
    pad = 0 if region is None else max(0, -region.top, -region.left, region.bottom - h + 1, region.right - w + 1)
    fig.update_xaxes(range=[-0.5 - pad, w - 0.5 + pad], constrain="domain", showgrid=False, zeroline=False,
                     showticklabels=False, fixedrange=True)
    fig.update_yaxes(range=[h - 0.5 + pad, -0.5 - pad], scaleanchor="x", constrain="domain", showgrid=False,
                     zeroline=False, showticklabels=False, fixedrange=True)
    fig.update_layout(height=height, margin=dict(l=5, r=5, t=30 if title else 5, b=5), title=title or None,
                      dragmode=False, plot_bgcolor="#e9e4d8")  # padding cells show as paper colour
    return fig


def contribution_bars(labels: Sequence[str], values: Sequence[float], title: str = "", height: int = 260) -> go.Figure:
    """How much each strongest source added to a unit (red up, blue down), largest first."""
    v = [float(x) for x in values]
    fig = go.Figure(go.Bar(x=list(labels), y=v, marker_color=["#b2182b" if x >= 0 else "#2166ac" for x in v],
                           hovertemplate="%{x}: %{y:+.3f}<extra></extra>"))
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=30 if title else 5, b=10), title=title or None,
                      xaxis=dict(type="category", fixedrange=True, tickangle=-45),
                      yaxis=dict(title="adds to the value", fixedrange=True, zeroline=True), dragmode=False)
    return fig
