"""Figures of the explanation pages: sliding windows, receptive fields, filters, saliency, shifts.

No Streamlit here. Heatmaps that can be clicked carry invisible markers (one per cell, per column or
per tile), because Streamlit reports selections of points, not of heatmap cells; read a click back
with :func:`cell_from_selection` or :func:`tile_from_selection`. Where a page shows many small
pictures (a gallery of digits) they are plain RGB images for st.image: a few kB, not Plotly JSON.
Titles are left to the pages (as Markdown above each chart), so long ones wrap on a phone.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go

from cnn_core.architecture import Region
from ui.charts import accuracy_floor
from ui.figures import DIVERGING, PROB_COLOUR, TOP_COLOUR

WINDOW_COLOUR = TOP_COLOUR
IMAGE_EDGE = "#555555"
EMPTY_BG = "#f0f0f0"  # cells with no value yet (NaN)
PADDING_BG = "#e9e4d8"  # the zero border around an image: a paper colour, distinct from black ink and white
NEGATIVE = "#2166ac"
POSITIVE = "#b2182b"
GRID_CELL_PX = 46  # the smallest cell of a number grid: room for "-0.42" at GRID_FONT_PX
GRID_FONT_PX = 13
TILE_LABEL_PX = 12  # channel numbers on tiled grids
# Diverging, transparent at zero: laid over the digit, only pixels that matter get colour.
SEE_THROUGH = [[0.0, "rgba(33,102,172,0.95)"], [0.5, "rgba(255,255,255,0)"], [1.0, "rgba(178,24,43,0.95)"]]


def _array(x) -> np.ndarray:
    return x.numpy() if hasattr(x, "numpy") else np.asarray(x)


def map_colours(kind: str) -> tuple[str, float | None]:
    """(colour scale, zmid) for a map output by a layer of this kind ("Conv2d", "ReLU", "MaxPool2d"...).

    The convention of every page: a convolution's map has negative values, drawn blue-white-red around
    zero; maps after a ReLU (and the poolings of them) are never negative, drawn in Viridis. So one map
    looks the same wherever it is shown.
    """
    return (DIVERGING, 0.0) if kind == "Conv2d" else ("Viridis", None)


def plotly_text(text: object, limit: int = 60) -> str:
    """Visitor-chosen text (a file or model name) for a Plotly title, legend or label: one line, at most
    ``limit`` characters, its tags and entities shown as characters (Plotly renders <a>, <b>, <br>...)."""
    one_line = " ".join(str(text).split())
    if len(one_line) > limit:
        one_line = one_line[: limit - 1] + "…"
    return html.escape(one_line, quote=False)


def _limit(z: np.ndarray) -> float:
    """A symmetric colour limit for a diverging scale (1 when everything is zero or NaN)."""
    finite = np.abs(z[np.isfinite(z)])
    return float(finite.max()) if finite.size and finite.max() > 0 else 1.0


def _square_axes(fig: go.Figure, x_range: tuple[float, float], y_range: tuple[float, float],
                 show_ticks: bool = False) -> None:
    """Cells square, row 0 at the top, no zooming (a click must select, not zoom)."""
    fig.update_xaxes(range=list(x_range), constrain="domain", showgrid=False, zeroline=False, fixedrange=True,
                     showticklabels=show_ticks, ticks="")
    fig.update_yaxes(range=[y_range[1], y_range[0]], scaleanchor="x", constrain="domain", showgrid=False,
                     zeroline=False, fixedrange=True, showticklabels=show_ticks, ticks="")


def _outline(fig: go.Figure, top: float, bottom: float, left: float, right: float, colour: str = WINDOW_COLOUR,
             width: float = 3, dash: str | None = None, fill: str | None = None) -> None:
    """A rectangle around cells rows top..bottom, columns left..right (inclusive)."""
    fig.add_shape(type="rect", x0=left - 0.5, x1=right + 0.5, y0=top - 0.5, y1=bottom + 0.5,
                  line=dict(color=colour, width=width, dash=dash), fillcolor=fill, layer="above")


# --------------------------------------------------------------------------- clickable maps


def clickable_heatmap(values, title: str = "", colorscale=DIVERGING, zmid: float | None = 0.0,
                      zmin: float | None = None, zmax: float | None = None, marked: tuple[int, int] | None = None,
                      marked_column: int | None = None, height: int = 320, showscale: bool = True,
                      hover: str = "row %{customdata[0]}, col %{customdata[1]}: %{customdata[2]:.3f}"
                                   "<br>click to pick") -> go.Figure:
    """A 2-D map whose cells can be clicked; ``marked`` (row, col), or the whole ``marked_column``, is outlined.

    One invisible marker sits on each cell centre and answers hover and clicks; the heatmap itself
    only draws.
    """
    z = _array(values).astype(np.float32)
    h, w = z.shape
    if zmid is not None and zmin is None and zmax is None:
        lim = _limit(z)
        zmin, zmax, zmid = -lim, lim, None  # symmetric: white is exactly zero
    fig = go.Figure(go.Heatmap(z=z, colorscale=colorscale, zmid=zmid, zmin=zmin, zmax=zmax, showscale=showscale,
                               colorbar=dict(thickness=10), hoverinfo="skip"))
    rows, cols = np.mgrid[0:h, 0:w]
    custom = np.stack([rows.ravel(), cols.ravel(), z.ravel()], axis=1)
    # Marker size roughly one cell; invisible but clickable.
    fig.add_trace(go.Scatter(x=cols.ravel(), y=rows.ravel(), mode="markers", showlegend=False,
                             marker=dict(size=max(4, min(18, 300 // max(h, w))), opacity=0),
                             customdata=custom, hovertemplate=hover + "<extra></extra>"))
    if marked is not None:
        _outline(fig, marked[0], marked[0], marked[1], marked[1])
    if marked_column is not None:
        _outline(fig, 0, h - 1, marked_column, marked_column, width=2)
    _square_axes(fig, (-0.5, w - 0.5), (-0.5, h - 0.5))
    fig.update_layout(height=height, margin=dict(l=5, r=5, t=30 if title else 5, b=5), title=title or None,
                      dragmode=False, hovermode="closest", hoverdistance=-1, clickmode="event+select",
                      plot_bgcolor=EMPTY_BG)
    return fig


def column_heatmap(values, colorscale="Viridis", marked_column: int | None = None, height: int = 320,
                   hover: str = "column %{customdata}: click to pick") -> go.Figure:
    """A 2-D map whose columns can be clicked; ``marked_column`` is outlined. Read a click with
    :func:`tile_from_selection` (it gives the column).

    One invisible point per column, at mid-height: with no hover distance limit the nearest point is
    the nearest column wherever the click lands in it, so a (C_in, C_out) map sends C_out points, not C_in x C_out.
    """
    z = _array(values).astype(np.float32)
    h, w = z.shape
    fig = go.Figure(go.Heatmap(z=z, colorscale=colorscale, showscale=True, colorbar=dict(thickness=10),
                               hoverinfo="skip"))
    fig.add_trace(go.Scatter(x=list(range(w)), y=[(h - 1) / 2] * w, mode="markers", showlegend=False,
                             marker=dict(size=max(4, min(18, 300 // w)), opacity=0), customdata=list(range(w)),
                             hovertemplate=hover + "<extra></extra>"))
    if marked_column is not None:
        _outline(fig, 0, h - 1, marked_column, marked_column, width=2)
    _square_axes(fig, (-0.5, w - 0.5), (-0.5, h - 0.5))
    fig.update_layout(height=height, margin=dict(l=5, r=5, t=5, b=5), dragmode=False, hovermode="closest",
                      hoverdistance=-1, clickmode="event+select", plot_bgcolor=EMPTY_BG)
    return fig


def cell_from_selection(selection) -> tuple[int, int] | None:
    """The (row, col) clicked in a :func:`clickable_heatmap`, from a Streamlit plotly selection (None if none)."""
    for point in (selection or {}).get("points") or []:
        custom = point.get("customdata")
        if isinstance(custom, (list, tuple)) and len(custom) >= 2:
            return int(round(custom[0])), int(round(custom[1]))
        x, y = point.get("x"), point.get("y")
        if isinstance(x, (int, float)) and isinstance(y, (int, float)):
            return int(round(y)), int(round(x))
    return None


def bar_from_selection(selection) -> int | None:
    """The x of the bar clicked in a bar chart, from a Streamlit plotly selection (None if none)."""
    for point in (selection or {}).get("points") or []:
        x = point.get("x")
        if isinstance(x, (int, float)):
            return int(round(x))
    return None


# --------------------------------------------------------------------------- the sliding window


def sliding_window(padded, padding: tuple[int, int], top: int, left: int, span: tuple[int, int],
                   title: str = "", height: int = 340, colorscale: str = "gray") -> go.Figure:
    """The padded input of a convolution with the image's edge and the window drawn on it.

    Coordinates are the input's own: the zero border has negative indices and indices past the edge.
    """
    z = _array(padded).astype(np.float32)
    ph, pw = padding
    h, w = z.shape[0] - 2 * ph, z.shape[1] - 2 * pw
    xs, ys = np.arange(-pw, w + pw), np.arange(-ph, h + ph)
    # The border is drawn in its own paper colour (not on the image's colour scale), so it cannot be
    # mistaken for background; its cells are zeros, as their hover text says.
    border = np.ones_like(z, dtype=bool)
    border[ph:ph + h, pw:pw + w] = False
    image = np.where(border, np.nan, z)
    fig = go.Figure(go.Heatmap(z=image, x=xs, y=ys, colorscale=colorscale, showscale=True, hoverongaps=False,
                               colorbar=dict(thickness=10),
                               hovertemplate="row %{y}, col %{x}: %{z:.3f}<extra></extra>"))
    if ph or pw:
        by, bx = np.nonzero(border)
        fig.add_trace(go.Scatter(x=xs[bx], y=ys[by], mode="markers", marker=dict(size=4, color="#b9ad8f"),
                                 showlegend=False, hovertemplate="row %{y}, col %{x}: 0 (padding)<extra></extra>"))
        _outline(fig, 0, h - 1, 0, w - 1, colour=IMAGE_EDGE, width=1, dash="dot")
    _outline(fig, top, top + span[0] - 1, left, left + span[1] - 1)
    _square_axes(fig, (-pw - 0.5, w + pw - 0.5), (-ph - 0.5, h + ph - 0.5))
    fig.update_layout(height=height, margin=dict(l=5, r=5, t=30 if title else 5, b=5), title=title or None,
                      dragmode=False, plot_bgcolor=PADDING_BG)
    return fig


def number_grid(values, title: str = "", colorscale=DIVERGING, in_padding=None, decimals: int = 2,
                height: int = 230, zrange: tuple[float, float] | None = None) -> go.Figure:
    """A small grid (e.g. 3x3) with each number written in its cell; padding cells labelled "pad".

    Colours span ``zrange`` (e.g. the range of the whole map the cells come from), else a range
    symmetric about zero, so that white means 0 on the default diverging scale.
    """
    z = _array(values).astype(np.float32)
    # A 5x5 or 7x7 kernel gets a taller figure: each cell keeps room for a readable "-0.42".
    height = max(height, GRID_CELL_PX * z.shape[0] + (30 if title else 5) + 5)
    pad = np.zeros_like(z, dtype=bool) if in_padding is None else _array(in_padding).astype(bool)
    text = [["" if pad[i, j] else f"{z[i, j]:.{decimals}f}" for j in range(z.shape[1])] for i in range(z.shape[0])]
    zmin, zmax = zrange if zrange is not None else (-_limit(z), _limit(z))
    # Padding cells are left out of the heatmap, so they show the paper colour of the border.
    fig = go.Figure(go.Heatmap(z=np.where(pad, np.nan, z), text=text, texttemplate="%{text}",
                               textfont=dict(size=GRID_FONT_PX), colorscale=colorscale, zmin=zmin, zmax=zmax,
                               showscale=False, hoverongaps=False,
                               hovertemplate="row %{y}, col %{x}: %{z:.4f}<extra></extra>"))
    h, w = z.shape
    pad_rows, pad_cols = np.nonzero(pad)
    for i, j in zip(pad_rows, pad_cols):
        fig.add_shape(type="rect", x0=j - 0.5, x1=j + 0.5, y0=i - 0.5, y1=i + 0.5, layer="below",
                      fillcolor=PADDING_BG, line=dict(width=0))
    if len(pad_rows):
        fig.add_trace(go.Scatter(x=pad_cols, y=pad_rows, mode="text", text=["pad 0"] * len(pad_rows),
                                 textfont=dict(size=GRID_FONT_PX, color="#6b6250"), showlegend=False,
                                 hovertemplate="padding: 0<extra></extra>"))
    _square_axes(fig, (-0.5, w - 0.5), (-0.5, h - 0.5))
    fig.update_layout(height=height, margin=dict(l=5, r=5, t=30 if title else 5, b=5), title=title or None,
                      dragmode=False, plot_bgcolor="white")
    return fig


def channel_contributions(per_channel, highlight: Sequence[int] = (), height: int = 250,
                          title: str = "", products: int = 9) -> go.Figure:
    """What each input channel adds to the sum: red bars push the value up, blue ones down.

    ``products``: how many products each bar sums (kh x kw of the filter: 9 for 3x3, 25 for 5x5).
    """
    v = _array(per_channel).astype(np.float32).ravel()
    colours = [POSITIVE if x >= 0 else NEGATIVE for x in v]
    fig = go.Figure(go.Bar(x=list(range(len(v))), y=v, marker_color=colours,
                           marker_line=dict(color=["black" if i in highlight else "rgba(0,0,0,0)"
                                                   for i in range(len(v))], width=2),
                           hovertemplate="input channel %{x}: %{y:+.4f}<extra></extra>"))
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=30 if title else 5, b=10), title=title or None,
                      xaxis=dict(title="input channel", dtick=1 if len(v) <= 16 else 4, fixedrange=True),
                      yaxis=dict(title=f"sum of its {products} products" if len(v) else "", fixedrange=True),
                      bargap=0.15, dragmode=False)
    return fig


# --------------------------------------------------------------------------- receptive fields


def receptive_field_view(pixels, region: Region, title: str = "", height: int = 380,
                         margin: int | None = None) -> go.Figure:
    """The 28x28 input with the region a unit sees drawn on it; what falls outside the image shows on a
    paper-coloured border (the padding)."""
    z = _array(pixels).astype(np.float32)
    h, w = z.shape
    if margin is None:
        margin = max(0, -region.top, -region.left, region.bottom - (h - 1), region.right - (w - 1))
    fig = go.Figure(go.Heatmap(z=z, x=np.arange(w), y=np.arange(h), colorscale="gray", zmin=0, zmax=1,
                               showscale=False, hovertemplate="row %{y}, col %{x}: %{z:.2f}<extra></extra>"))
    inside = region.clipped(h, w)
    _outline(fig, region.top, region.bottom, region.left, region.right, colour=WINDOW_COLOUR, width=3,
             fill="rgba(228,87,86,0.18)")
    if inside != region:
        _outline(fig, inside.top, inside.bottom, inside.left, inside.right, colour="white", width=1, dash="dot")
    _outline(fig, 0, h - 1, 0, w - 1, colour=IMAGE_EDGE, width=1)
    _square_axes(fig, (-margin - 0.5, w - 1 + margin + 0.5), (-margin - 0.5, h - 1 + margin + 0.5), show_ticks=True)
    fig.update_xaxes(dtick=4, tick0=0, side="top")
    fig.update_yaxes(dtick=4, tick0=0)
    fig.update_layout(height=height, margin=dict(l=5, r=5, t=50 if title else 25, b=5), title=title or None,
                      plot_bgcolor=PADDING_BG, dragmode=False)
    return fig


def unit_bars(values, selected: int | None = None, title: str = "", height: int = 240) -> go.Figure:
    """A vector of units as clickable bars, the selected one highlighted."""
    v = _array(values).astype(np.float32).ravel()
    fig = go.Figure(go.Bar(x=list(range(len(v))), y=v,
                           marker_color=[TOP_COLOUR if i == selected else PROB_COLOUR for i in range(len(v))],
                           hovertemplate="unit %{x}: %{y:.3f}<br>click to pick<extra></extra>"))
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=30 if title else 5, b=10), title=title or None,
                      xaxis=dict(title="unit", fixedrange=True), yaxis=dict(title="value", fixedrange=True),
                      bargap=0.1, dragmode=False, clickmode="event+select", hovermode="closest")
    return fig


# --------------------------------------------------------------------------- filters and the digits they like


def digit_with_box(pixels, region: Region | None = None, scale: int = 4,
                   colour: tuple[int, int, int] = (228, 87, 86)) -> np.ndarray:
    """A 28x28 digit in [0, 1] as an RGB image (``scale`` px per pixel) with ``region`` outlined, for st.image.

    An image rather than a Plotly heatmap: a gallery of ten digits costs a few kB instead of ~100 kB of JSON.
    """
    grey = np.rint(np.clip(_array(pixels).astype(np.float32), 0, 1) * 255).astype(np.uint8)
    rgb = np.kron(np.repeat(grey[..., None], 3, axis=2), np.ones((scale, scale, 1), dtype=np.uint8))
    if region is not None:
        r = region.clipped(grey.shape[0], grey.shape[1])
        top, bottom, left, right = r.top * scale, (r.bottom + 1) * scale - 1, r.left * scale, (r.right + 1) * scale - 1
        line = max(1, scale // 2)
        rgb[top:top + line, left:right + 1] = colour
        rgb[bottom - line + 1:bottom + 1, left:right + 1] = colour
        rgb[top:bottom + 1, left:left + line] = colour
        rgb[top:bottom + 1, right - line + 1:right + 1] = colour
    return rgb


def tile_grid(maps, cols: int = 8, colorscale=DIVERGING, zmid: float | None = 0.0, selected: int | None = None,
              clickable: bool = False, cell_px: int = 14) -> go.Figure:
    """Small maps (C, h, w) (e.g. a layer's kernels) tiled in rows of ``cols``, each numbered above its tile.

    The numbers sit in a band of their own, so they never hide a cell and stay readable at any tile size.
    With ``clickable`` an invisible point on each tile answers clicks: read it back with
    :func:`tile_from_selection`. One colour scale for all tiles (symmetric about 0 when ``zmid`` is 0).
    """
    m = _array(maps).astype(np.float32)
    c, h, w = m.shape
    cols = max(1, min(cols, c))
    rows = math.ceil(c / cols)
    band = 1 + (h < 4)  # cells above each tile for its number: 2 for tiny kernels, whose cells are small
    out = np.full((rows * (h + band), cols * (w + 1) - 1), np.nan)
    origins = []
    for i in range(c):
        r, k = divmod(i, cols)
        top, left = r * (h + band) + band, k * (w + 1)
        out[top:top + h, left:left + w] = m[i]
        origins.append((top, left))
    lim = _limit(m) if zmid is not None else None
    fig = go.Figure(go.Heatmap(z=out, colorscale=colorscale, zmin=-lim if lim else None, zmax=lim,
                               showscale=True, colorbar=dict(thickness=10), hoverongaps=False,
                               hoverinfo="skip" if clickable else None,
                               hovertemplate=None if clickable else "%{z:.3f}<extra></extra>"))
    fig.add_trace(go.Scatter(x=[left - 0.5 for _, left in origins], y=[top - 0.5 for top, _ in origins],
                             mode="text", text=[str(i) for i in range(c)], textposition="top right",
                             textfont=dict(size=TILE_LABEL_PX, color="#333333"), hoverinfo="skip",
                             showlegend=False))
    if selected is not None and 0 <= selected < c:
        top, left = origins[selected]
        _outline(fig, top, top + h - 1, left, left + w - 1, width=3)
    if clickable:
        fig.add_trace(go.Scatter(x=[left + (w - 1) / 2 for _, left in origins],
                                 y=[top + (h - 1) / 2 for top, _ in origins], mode="markers",
                                 marker=dict(size=max(8, cell_px * w), opacity=0), showlegend=False,
                                 customdata=list(range(c)),
                                 hovertemplate="%{customdata}: click to pick<extra></extra>"))
        fig.update_layout(hovermode="closest", hoverdistance=-1, clickmode="event+select")
    _square_axes(fig, (-0.5, out.shape[1] - 0.5), (-0.5, out.shape[0] - 0.5))
    fig.update_layout(height=max(160, out.shape[0] * cell_px + 20), margin=dict(l=5, r=5, t=10, b=5),
                      dragmode=False, plot_bgcolor="white")
    return fig


def tile_from_selection(selection) -> int | None:
    """The tile clicked in a :func:`tile_grid` (None if none)."""
    for point in (selection or {}).get("points") or []:
        custom = point.get("customdata")
        if isinstance(custom, (int, float)):
            return int(custom)
        if isinstance(custom, (list, tuple)) and custom and isinstance(custom[0], (int, float)):
            return int(custom[0])
    return None


# --------------------------------------------------------------------------- saliency and what-if


def saliency_overlay(pixels, attributions, title: str = "", height: int = 380) -> go.Figure:
    """The digit in grey with its attributions laid over it: red pixels raise the score, blue ones lower it."""
    img = _array(pixels).astype(np.float32)
    a = _array(attributions).astype(np.float32)
    # A few pixels often dominate; a high percentile as the colour limit keeps the rest visible.
    nonzero = np.abs(a[a != 0])
    lim = float(np.percentile(nonzero, 98)) if nonzero.size else 1.0
    fig = go.Figure(go.Heatmap(z=img, colorscale=[[0, "#000000"], [1, "#bdbdbd"]], zmin=0, zmax=1,
                               showscale=False, hoverinfo="skip"))
    fig.add_trace(go.Heatmap(z=a, colorscale=SEE_THROUGH, zmin=-lim, zmax=lim, showscale=True,
                             colorbar=dict(thickness=10, title=dict(text="logit", side="right")),
                             hovertemplate="row %{y}, col %{x}: %{z:+.4f}<extra></extra>"))
    h, w = a.shape
    _square_axes(fig, (-0.5, w - 0.5), (-0.5, h - 0.5))
    fig.update_layout(height=height, margin=dict(l=5, r=5, t=30 if title else 5, b=5), title=title or None,
                      dragmode=False)
    return fig


def shift_curves(shifts: Sequence[int], horizontal, vertical, digit: int, height: int = 300,
                 title: str = "") -> go.Figure:
    """Probability of ``digit`` as the drawing moves sideways and up/down."""
    fig = go.Figure()
    for name, values, colour in (("moved right (+) / left (−)", horizontal, PROB_COLOUR),
                                 ("moved down (+) / up (−)", vertical, TOP_COLOUR)):
        fig.add_trace(go.Scatter(x=list(shifts), y=_array(values).astype(np.float32), name=name, mode="lines+markers",
                                 line=dict(color=colour),
                                 hovertemplate="shift %{x:+d} px: %{y:.1%}<extra></extra>"))
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=40 if title else 10, b=10), title=title or None,
                      xaxis=dict(title="shift (pixels)", dtick=1, fixedrange=True),
                      yaxis=dict(title=f"probability of {digit}", range=[0, 1.05], tickformat=".0%",
                                 fixedrange=True),
                      legend=dict(orientation="h", y=-0.3), dragmode=False)
    return fig


def shift_grid(shifts: Sequence[int], probabilities, digit: int, height: int = 330, title: str = "") -> go.Figure:
    """Probability of ``digit`` for every (dx, dy) shift: rows dy (down is positive), columns dx."""
    z = _array(probabilities).astype(np.float32)
    labels = [f"{s:+d}" if s else "0" for s in shifts]
    fig = go.Figure(go.Heatmap(z=z, x=labels, y=labels, colorscale="Viridis", zmin=0, zmax=1,
                               colorbar=dict(thickness=10, tickformat=".0%"),
                               hovertemplate="dx %{x}, dy %{y}: %{z:.1%}<extra></extra>"))
    zero = list(shifts).index(0) if 0 in shifts else None
    if zero is not None:
        _outline(fig, zero, zero, zero, zero, colour="white", width=2)
    fig.update_yaxes(autorange="reversed", scaleanchor="x", constrain="domain", title="dy (down +)",
                     fixedrange=True, type="category")
    fig.update_xaxes(title="dx (right +)", fixedrange=True, type="category", constrain="domain")
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=40 if title else 10, b=10), title=title or None,
                      dragmode=False)
    return fig


def accuracy_curve(shifts: Sequence[int], horizontal: Sequence[float], vertical: Sequence[float],
                   height: int = 300, title: str = "") -> go.Figure:
    """Accuracy on a test split moved by each shift, sideways and up/down."""
    fig = go.Figure()
    for name, values, colour in (("moved sideways", horizontal, PROB_COLOUR),
                                 ("moved up/down", vertical, TOP_COLOUR)):
        fig.add_trace(go.Scatter(x=list(shifts), y=list(values), name=name, mode="lines+markers",
                                 line=dict(color=colour), hovertemplate="shift %{x:+d} px: %{y:.1%}<extra></extra>"))
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=40 if title else 10, b=10), title=title or None,
                      xaxis=dict(title="shift (pixels)", dtick=1, fixedrange=True),
                      yaxis=dict(title="accuracy", range=[accuracy_floor([*horizontal, *vertical]), 1.02],
                                 tickformat=".0%", fixedrange=True),
                      legend=dict(orientation="h", y=-0.3), dragmode=False)
    return fig
