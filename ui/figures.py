"""Plotly figures of digits, activations and probabilities (no Streamlit here)."""

from __future__ import annotations

import base64
import io
import math
from functools import lru_cache

import numpy as np
import plotly.colors as pcolors
import plotly.graph_objects as go
from PIL import Image
from plotly.subplots import make_subplots

PLOT_CONFIG = {"displayModeBar": False}  # every chart of the app: no Plotly toolbar over the figures
PROB_COLOUR = "#4c78a8"
TOP_COLOUR = "#e45756"
DIVERGING = "RdBu_r"  # blue negative, white zero, red positive (with zmid=0)
STRIP_WIDTH = 0.9  # share of a vector strip's width left of its colour bar


def _array(x) -> np.ndarray:
    return x.numpy() if hasattr(x, "numpy") else np.asarray(x)


def probability_bars(probabilities, height: int = 260, title: str = "Output probabilities (softmax)") -> go.Figure:
    """The ten class probabilities as bars, the predicted digit highlighted."""
    p = _array(probabilities).astype(np.float32)
    top = int(p.argmax())
    fig = go.Figure(go.Bar(
        x=[str(d) for d in range(10)], y=p,
        marker_color=[TOP_COLOUR if d == top else PROB_COLOUR for d in range(10)],
        text=[f"{v:.0%}" if v >= 0.01 else "" for v in p], textposition="outside",
        hovertemplate="digit %{x}: %{y:.2%}<extra></extra>",
    ))
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=30, b=10),
                      yaxis=dict(range=[0, 1.15], tickformat=".0%", title="probability", fixedrange=True),
                      xaxis=dict(title="digit", type="category", fixedrange=True), title=title, dragmode=False)
    return fig


def image_heatmap(values, title: str = "", colorscale: str = "gray", zmid: float | None = None,
                  height: int = 300, showscale: bool = False, zmin: float | None = None,
                  zmax: float | None = None) -> go.Figure:
    """One 2-D array as a square heatmap with row 0 at the top (zmin/zmax fix the colour range)."""
    z = _array(values).astype(np.float32)
    fig = go.Figure(go.Heatmap(z=z, colorscale=colorscale, zmid=zmid, zmin=zmin, zmax=zmax, showscale=showscale,
                               colorbar=dict(thickness=10),
                               hovertemplate="row %{y}, col %{x}: %{z:.3f}<extra></extra>"))
    fig.update_yaxes(autorange="reversed", scaleanchor="x", constrain="domain", showticklabels=False, ticks="",
                     showgrid=False, zeroline=False)
    fig.update_xaxes(constrain="domain", showticklabels=False, ticks="", showgrid=False, zeroline=False)
    fig.update_layout(height=height, margin=dict(l=5, r=5, t=30 if title else 5, b=5), title=title or None)
    return fig


def mosaic(maps, cols: int = 8, gap: int = 1) -> np.ndarray:
    """Tile (C, H, W) maps into one 2-D array, C in rows of ``cols``, separated by NaN gaps."""
    m = _array(maps).astype(np.float32)
    c, h, w = m.shape
    rows = math.ceil(c / cols)
    out = np.full((rows * (h + gap) - gap, cols * (w + gap) - gap), np.nan)
    for i in range(c):
        r, k = divmod(i, cols)
        out[r * (h + gap): r * (h + gap) + h, k * (w + gap): k * (w + gap) + w] = m[i]
    return out


def mosaic_channel(row: int, col: int, shape: tuple[int, int, int], cols: int = 8, gap: int = 1) -> int | None:
    """Which channel a (row, col) cell of :func:`mosaic` belongs to (None in a gap or past the end)."""
    c, h, w = shape
    r, dy = divmod(row, h + gap)
    k, dx = divmod(col, w + gap)
    if dy >= h or dx >= w or k >= cols:
        return None
    channel = r * cols + k
    return channel if channel < c else None


def _tile_origin(channel: int, h: int, w: int, cols: int, gap: int = 1) -> tuple[int, int]:
    """(row, col) of the top-left cell of ``channel``'s tile in :func:`mosaic`."""
    r, k = divmod(channel, cols)
    return r * (h + gap), k * (w + gap)


def colour_lut(colorscale: str, n: int = 256) -> np.ndarray:
    """``n`` RGB colours (uint8, n x 3) sampled evenly along a Plotly colour scale, low to high."""
    return _colour_lut(colorscale, n)


@lru_cache(maxsize=16)
def _colour_lut(colorscale: str, n: int) -> np.ndarray:
    scale = pcolors.get_colorscale(colorscale)
    samples = pcolors.sample_colorscale(scale, [i / (n - 1) for i in range(n)], colortype="tuple")
    rgb = np.array(samples, dtype=float)
    rgb = rgb * 255 if rgb.max() <= 1.0 else rgb
    out = np.rint(rgb).astype(np.uint8)
    out.setflags(write=False)
    return out


def coloured(z: np.ndarray, colorscale: str, zmin: float, zmax: float, gap: tuple[int, int, int] = (255, 255, 255),
             ) -> np.ndarray:
    """A 2-D array (NaN = gap) as an RGB uint8 image on ``colorscale`` from ``zmin`` to ``zmax``."""
    lut = colour_lut(colorscale)
    span = zmax - zmin if zmax > zmin else 1.0
    t = np.clip((np.nan_to_num(z, nan=zmin) - zmin) / span, 0.0, 1.0)
    rgb = lut[np.rint(t * (len(lut) - 1)).astype(np.intp)]
    rgb[np.isnan(z)] = gap
    return rgb


def png_uri(rgb: np.ndarray) -> str:
    """An RGB uint8 image as a PNG data URI."""
    buf = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def feature_map_grid(maps, cols: int = 8, title: str = "", colorscale: str = "Viridis",
                     zmid: float | None = None, selected: int | None = None,
                     clickable: bool = False) -> go.Figure:
    """All feature maps of a layer as one tiled picture, channels labelled, one colour scale for all tiles.

    The tiles are sent as one PNG image (a few kB), not as a heatmap of thousands of cells: a page shows
    a hundred maps and reruns on every click. ``zmid`` centres the scale (0 for a diverging scale).
    ``selected`` outlines that channel's tile. ``clickable`` lays one invisible point on the centre of
    each tile, so that a click selects the tile under the pointer; read the click back with
    :func:`channel_from_selection`. Cell (row, col) of :func:`mosaic` is at y=row, x=col.
    """
    m = _array(maps).astype(np.float32)
    c, h, w = m.shape
    z = mosaic(m, cols)
    rows = math.ceil(c / cols)
    finite = m[np.isfinite(m)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if zmid is not None:
        limit = max(abs(lo - zmid), abs(hi - zmid)) or 1.0
        lo, hi = zmid - limit, zmid + limit
    # zsmooth=False: the browser draws the small image with square pixels instead of blurring it.
    fig = go.Figure(go.Image(source=png_uri(coloured(z, colorscale, lo, hi)), zsmooth=False, hoverinfo="skip"))
    # The colour bar: an invisible point that carries the scale (an image trace has none).
    fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", showlegend=False, hoverinfo="skip",
                             marker=dict(colorscale=colorscale, cmin=lo, cmax=hi, color=[lo], showscale=True,
                                         colorbar=dict(thickness=10))))
    origins = [_tile_origin(i, h, w, cols) for i in range(c)]
    fig.add_trace(go.Scatter(x=[left - 0.5 for _, left in origins], y=[top - 0.5 for top, _ in origins],
                             mode="text", text=[str(i) for i in range(c)], textposition="bottom right",
                             textfont=dict(size=12 if w >= 7 else 10, color="white", shadow="1px 1px 2px black"),
                             hoverinfo="skip", showlegend=False))
    if selected is not None and 0 <= selected < c:
        top, left = _tile_origin(selected, h, w, cols)
        fig.add_shape(type="rect", x0=left - 0.5, x1=left + w - 0.5, y0=top - 0.5, y1=top + h - 0.5,
                      line=dict(color=TOP_COLOUR, width=3))
    if clickable:
        peaks = m.reshape(c, -1).max(axis=1)
        fig.add_trace(go.Scatter(
            x=[left + (w - 1) / 2 for _, left in origins], y=[top + (h - 1) / 2 for top, _ in origins],
            mode="markers", marker=dict(size=12, opacity=0), showlegend=False,
            customdata=np.stack([np.arange(c), peaks], axis=1),
            hovertemplate="channel %{customdata[0]:.0f} (max %{customdata[1]:.2f})<br>"
                          "click to look closer<extra></extra>",
        ))
        # No distance cutoff: a click anywhere on a tile picks the nearest centre, i.e. that tile.
        fig.update_layout(hovermode="closest", hoverdistance=-1, clickmode="event+select")
    height_cells, width_cells = z.shape
    fig.update_yaxes(range=[height_cells - 0.5, -0.5], scaleanchor="x", constrain="domain",
                     showticklabels=False, ticks="", showgrid=False, zeroline=False, fixedrange=True)
    fig.update_xaxes(range=[-0.5, width_cells - 0.5], constrain="domain", showticklabels=False, ticks="",
                     showgrid=False, zeroline=False, fixedrange=True)
    cell = 60 if w >= 14 else 45
    fig.update_layout(height=max(200, rows * cell + 60), margin=dict(l=5, r=5, t=30 if title else 5, b=5),
                      title=title or None, dragmode=False, plot_bgcolor="white")
    return fig


def channel_from_selection(selection, shape: tuple[int, int, int], cols: int = 8, gap: int = 1) -> int | None:
    """The channel clicked in a :func:`feature_map_grid`, from a Streamlit plotly selection.

    ``selection`` is the chart event's ``selection`` (a mapping with a ``points`` list whose
    items carry ``x`` and ``y`` in mosaic cells); None when nothing usable was clicked.
    """
    points = (selection or {}).get("points") or []
    for point in points:
        x, y = point.get("x"), point.get("y")
        if isinstance(x, (int, float)) and isinstance(y, (int, float)):
            channel = mosaic_channel(math.floor(y), math.floor(x), shape, cols, gap)
            if channel is not None:
                return channel
    return None


def kernel_heatmap(weights, title: str = "", height: int = 220) -> go.Figure:
    """A small 2-D kernel with its weights written in the cells; blue negative, red positive."""
    w = _array(weights).astype(np.float32)
    limit = float(np.abs(w).max()) or 1.0  # symmetric range: white is exactly zero
    fig = go.Figure(go.Heatmap(z=w, colorscale=DIVERGING, zmin=-limit, zmax=limit, showscale=False,
                               texttemplate="%{z:.2f}", textfont=dict(size=13),
                               hovertemplate="row %{y}, col %{x}: %{z:.4f}<extra></extra>"))
    fig.update_yaxes(autorange="reversed", scaleanchor="x", constrain="domain", showticklabels=False, ticks="",
                     showgrid=False, zeroline=False, fixedrange=True)
    fig.update_xaxes(constrain="domain", showticklabels=False, ticks="", showgrid=False, zeroline=False,
                     fixedrange=True)
    fig.update_layout(height=height, margin=dict(l=5, r=5, t=30 if title else 5, b=5), title=title or None,
                      dragmode=False)
    return fig


def zeroed_mask(before, title: str = "", height: int = 300) -> go.Figure:
    """Where ReLU zeroed a map: the cells that were negative before it, in red."""
    z = (_array(before).astype(np.float32) < 0).astype(np.float32)
    fig = go.Figure(go.Heatmap(z=z, colorscale=[[0, "#f2f2f2"], [1, TOP_COLOUR]], zmin=0, zmax=1,
                               showscale=False,
                               hovertemplate="row %{y}, col %{x}: %{z:.0f}<extra></extra>"))
    fig.update_yaxes(autorange="reversed", scaleanchor="x", constrain="domain", showticklabels=False, ticks="",
                     showgrid=False, zeroline=False)
    fig.update_xaxes(constrain="domain", showticklabels=False, ticks="", showgrid=False, zeroline=False)
    fig.update_layout(height=height, margin=dict(l=5, r=5, t=30 if title else 5, b=5), title=title or None,
                      dragmode=False)
    return fig


def pool_winners(before, window: int = 2, title: str = "", height: int = 300,
                 colorscale: str = "Viridis", zmin: float | None = None, zmax: float | None = None) -> go.Figure:
    """A map before max pooling, a dot on the cell that wins each ``window`` x ``window`` block."""
    z = _array(before).astype(np.float32)
    rows, cols = z.shape[0] // window, z.shape[1] // window  # pooling drops a ragged edge
    blocks = z[: rows * window, : cols * window].reshape(rows, window, cols, window).transpose(0, 2, 1, 3)
    best = blocks.reshape(rows, cols, window * window).argmax(axis=2)
    dy, dx = np.divmod(best, window)
    ys = (np.arange(rows)[:, None] * window + dy)
    xs = (np.arange(cols)[None, :] * window + dx)
    flat = np.ptp(blocks.reshape(rows, cols, -1), axis=2) == 0  # every cell equal (e.g. all zero): no winner to mark
    ys, xs = ys[~flat], xs[~flat]
    fig = image_heatmap(z, title, colorscale=colorscale, height=height, showscale=True, zmin=zmin, zmax=zmax)
    fig.add_trace(go.Scatter(x=xs, y=ys, mode="markers", showlegend=False,
                             marker=dict(size=4, color="white", line=dict(width=1, color="black")),
                             hovertemplate="kept: row %{y}, col %{x}<extra></extra>"))
    # Fixed ranges: the dots must not pad the axes, so the map keeps the size of a plain heatmap.
    fig.update_xaxes(autorange=False, range=[-0.5, z.shape[1] - 0.5])
    fig.update_yaxes(autorange=False, range=[z.shape[0] - 0.5, -0.5])
    fig.update_layout(dragmode=False)
    return fig


def activation_bars(values, title: str = "", height: int = 260, highlight: int | None = None,
                    x_title: str = "unit", y_title: str = "activation") -> go.Figure:
    """A 1-D vector as bars (negative bars below zero), one bar optionally highlighted."""
    v = _array(values).astype(np.float32).ravel()
    colours = [TOP_COLOUR if i == highlight else PROB_COLOUR for i in range(len(v))]
    fig = go.Figure(go.Bar(x=list(range(len(v))), y=v, marker_color=colours,
                           hovertemplate=f"{x_title} %{{x}}: %{{y:.3f}}<extra></extra>"))
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=30 if title else 5, b=10), title=title or None,
                      xaxis=dict(title=x_title, dtick=1 if len(v) <= 20 else None), yaxis=dict(title=y_title),
                      bargap=0.1, dragmode=False)
    return fig


def vector_strip(values, title: str = "", colorscale: str = "Viridis", height: int = 120,
                 zmid: float | None = None, highlight: tuple[int, int] | None = None,
                 zmin: float | None = None, zmax: float | None = None, showscale: bool = True) -> go.Figure:
    """A 1-D vector as a one-row heatmap strip; ``highlight`` = (start, stop) outlines units start..stop-1."""
    v = _array(values).astype(np.float32).reshape(1, -1)
    # The strip and its colour bar get fixed shares of the width, so strips stacked on a page line up
    # unit for unit whatever the colour bar's labels.
    fig = go.Figure(go.Heatmap(z=v, colorscale=colorscale, zmid=zmid, zmin=zmin, zmax=zmax,
                               showscale=showscale, colorbar=dict(thickness=10, x=STRIP_WIDTH + 0.01,
                                                                  xanchor="left",
                                                                  nticks=3),  # a short bar: few labels
                               hovertemplate="unit %{x}: %{z:.3f}<extra></extra>"))
    if highlight is not None:
        fig.add_vrect(x0=highlight[0] - 0.5, x1=highlight[1] - 0.5, line=dict(color=TOP_COLOUR, width=2))
    fig.update_xaxes(domain=[0, STRIP_WIDTH])
    fig.update_yaxes(showticklabels=False)
    fig.update_layout(height=height, margin=dict(l=5, r=5, t=30 if title else 5, b=20), title=title or None)
    return fig


def mask_strip(dropped, title: str = "", height: int = 110) -> go.Figure:
    """A 0/1 vector of dropped units as a strip, dropped in red; as wide as a :func:`vector_strip`."""
    fig = vector_strip(_array(dropped).astype(np.float32), title, colorscale=[[0, "#f2f2f2"], [1, TOP_COLOUR]],
                       height=height, zmin=0, zmax=1)
    # Keep the colour bar (so the strip lines up with the others) but label it in words.
    fig.update_traces(colorbar=dict(tickvals=[0, 1], ticktext=["kept", "dropped"]),
                      hovertemplate="unit %{x}: %{z:.0f}<extra></extra>")
    return fig


def _axis_settings(axis, x_ref: str | None = None) -> dict:
    """A panel's axis settings to reuse on a subplot: its place and anchors dropped, its scale tied to ``x_ref``."""
    settings = axis.to_plotly_json()
    for placement in ("domain", "anchor", "position", "overlaying", "matches"):
        settings.pop(placement, None)
    if "scaleanchor" in settings and x_ref is not None:
        settings["scaleanchor"] = x_ref
    return settings


def _add_panel(fig: go.Figure, panel: go.Figure, row: int, col: int, colorbar: dict) -> None:
    """Every trace of ``panel`` into subplot (row, col) of ``fig``; its colour bars get ``colorbar``'s placement.

    The copies in ``fig`` are placed, so the panel itself is left as it was.
    """
    for trace in panel.data:
        fig.add_trace(trace, row=row, col=col)
        added = fig.data[-1]
        if isinstance(added, go.Heatmap) and added.showscale:
            added.update(colorbar=colorbar)


def panel_row(panels: list[go.Figure], height: int = 300, spacing: float = 0.07) -> go.Figure:
    """Square panels made by the functions above, side by side in one figure, each keeping its title and colour bar.

    One figure instead of several charts: the browser lays out and draws one chart, which is most of the
    cost of a page full of small plots.
    """
    n = len(panels)
    fig = make_subplots(rows=1, cols=n, horizontal_spacing=spacing,
                        subplot_titles=[p.layout.title.text or "" for p in panels])
    for j, panel in enumerate(panels, start=1):
        suffix = "" if j == 1 else str(j)
        x_domain = fig.layout[f"xaxis{suffix}"].domain
        # Each colour bar just right of its own panel, not at the figure's right edge.
        _add_panel(fig, panel, 1, j, colorbar=dict(x=x_domain[1] + 0.005, xanchor="left", len=0.85, thickness=10))
        # Squares pushed to the right of their cells: next to their colour bars.
        fig.update_xaxes(_axis_settings(panel.layout.xaxis), constraintoward="right", row=1, col=j)
        fig.update_yaxes(_axis_settings(panel.layout.yaxis, x_ref=f"x{suffix}"), row=1, col=j)
    fig.update_annotations(font=dict(size=13))
    # The right margin holds the last panel's colour bar and its labels.
    fig.update_layout(height=height, margin=dict(l=5, r=60, t=40, b=5), dragmode=False, showlegend=False)
    return fig


def strip_stack(strips: list[go.Figure], strip_px: int = 55, gap_px: int = 45) -> go.Figure:
    """Strips made by :func:`vector_strip` or :func:`mask_strip`, stacked in one figure, unit under unit."""
    n = len(strips)
    top, bottom = 30, 25
    plot_px = n * strip_px + (n - 1) * gap_px
    fig = make_subplots(rows=n, cols=1, shared_xaxes=True, vertical_spacing=gap_px / plot_px,
                        subplot_titles=[s.layout.title.text or "" for s in strips])
    for i, strip in enumerate(strips, start=1):
        suffix = "" if i == 1 else str(i)
        y_domain = fig.layout[f"yaxis{suffix}"].domain
        _add_panel(fig, strip, i, 1, colorbar=dict(y=(y_domain[0] + y_domain[1]) / 2, yanchor="middle",
                                                   len=y_domain[1] - y_domain[0]))
        fig.update_xaxes(domain=[0, STRIP_WIDTH], row=i, col=1)
        fig.update_yaxes(showticklabels=False, row=i, col=1)
        for shape in strip.layout.shapes:
            fig.add_shape(shape, row=i, col=1)
    fig.update_annotations(font=dict(size=13))
    fig.update_layout(height=plot_px + top + bottom, margin=dict(l=5, r=5, t=top, b=bottom), showlegend=False)
    return fig
