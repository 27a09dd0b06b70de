"""Plotly charts of the architecture, parameter and model pages (no Streamlit here)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from cnn_core.architecture import LayerRow

CNN_COLOUR = "#4c78a8"
MLP_COLOUR = "#e45756"
SECOND_COLOUR = "#72b7b2"


def _shape_text(shape: tuple[int, ...]) -> str:
    return "×".join(str(d) for d in shape)


def accuracy_floor(values: Sequence[float]) -> float:
    """Where an accuracy axis starts: 10 points (rounded down to a tenth) below the lowest value, at least 0.

    Good networks sit between 90% and 100%: on a 0-100% axis their curves would be flat lines at the top.
    """
    return max(0.0, math.floor((min(values, default=0.0) - 0.1) * 10) / 10)


def shape_flow(rows: Sequence[LayerRow], height: int = 320) -> go.Figure:
    """How many values each layer outputs (log scale), each bar labelled with its shape.

    Feature maps (C×H×W) are blue, flat vectors green: convolutions add channels, pooling divides
    the values by four, and the fully connected layers squeeze everything down to 10 scores.
    """
    sizes = [int(np.prod(r.output_shape)) for r in rows]
    colours = [CNN_COLOUR if len(r.output_shape) == 3 else SECOND_COLOUR for r in rows]
    fig = go.Figure(go.Bar(
        x=[r.name for r in rows], y=sizes, marker_color=colours, text=[_shape_text(r.output_shape) for r in rows],
        textposition="outside", cliponaxis=False, customdata=[r.kind for r in rows],
        hovertemplate="%{x} (%{customdata}): %{text} = %{y:,} values<extra></extra>",
    ))
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=40, b=10), dragmode=False,
                      title="Values each layer outputs: feature maps C×H×W (blue), vectors (green)",
                      yaxis=dict(type="log", dtick=1, tickformat=",", title="values (log scale)", fixedrange=True,
                                 range=[0.5, np.log10(max(sizes)) + 0.5]),
                      xaxis=dict(type="category", fixedrange=True))
    return fig


def param_bars(groups: Sequence[str], cnn: Sequence[int], mlp: Sequence[int], height: int = 360) -> go.Figure:
    """CNN versus MLP parameter counts per input shape, grouped bars on a log scale."""
    fig = go.Figure()
    for name, values, colour in (("CNN", cnn, CNN_COLOUR), ("MLP", mlp, MLP_COLOUR)):
        fig.add_trace(go.Bar(x=list(groups), y=list(values), name=name, marker_color=colour,
                             text=[f"{v:,}" for v in values], textposition="outside", cliponaxis=False,
                             hovertemplate=f"{name}, %{{x}}: %{{y:,}} parameters<extra></extra>"))
    top = max([*cnn, *mlp, 1])
    fig.update_layout(height=height, barmode="group", margin=dict(l=10, r=10, t=40, b=10), dragmode=False,
                      title="Parameters (log scale)", legend=dict(orientation="h", y=-0.12, x=0.5, xanchor="center"),
                      yaxis=dict(type="log", title="parameters", fixedrange=True,
                                 # headroom above the tallest bar for its label (log axis: range in powers of 10)
                                 range=[0, np.log10(top) + 0.6]),
                      xaxis=dict(type="category", fixedrange=True))
    return fig


def training_curves(history: Sequence[Mapping], height: int = 300, measured_on: str = "test") -> go.Figure:
    """Loss and accuracy per epoch from a model card's history (epoch, loss, train_accuracy, test_accuracy).

    ``measured_on`` names the digits the per-epoch accuracy was measured on ("test", or "validation" when
    training held out validation digits for its choices).
    """
    epochs = [h.get("epoch", i + 1) for i, h in enumerate(history)]
    fig = make_subplots(rows=1, cols=2, subplot_titles=("Training loss", "Accuracy"), horizontal_spacing=0.1)
    fig.add_trace(go.Scatter(x=epochs, y=[h.get("loss") for h in history], mode="lines+markers", name="loss",
                             line=dict(color=CNN_COLOUR), hovertemplate="epoch %{x}: %{y:.4f}<extra></extra>"),
                  row=1, col=1)
    for key, label, colour in (("train_accuracy", "train", SECOND_COLOUR), ("test_accuracy", measured_on, MLP_COLOUR)):
        values = [h.get(key) for h in history]
        if any(v is not None for v in values):
            fig.add_trace(go.Scatter(x=epochs, y=values, mode="lines+markers", name=f"{label} accuracy",
                                     line=dict(color=colour),
                                     hovertemplate=f"{label}, epoch %{{x}}: %{{y:.2%}}<extra></extra>"),
                          row=1, col=2)
    fig.update_xaxes(title="epoch", dtick=1 if len(epochs) <= 20 else None)
    fig.update_yaxes(tickformat=".1%", row=1, col=2)
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=40, b=10), dragmode=False,
                      legend=dict(orientation="h", y=-0.25))
    return fig


def confusion_heatmap(confusion, height: int = 440) -> go.Figure:
    """A 10x10 confusion matrix (rows true digit, columns predicted) with the count in every cell.

    The colour is log-scaled so that the few mistakes stand out next to the large diagonal.
    """
    counts = np.asarray(confusion.numpy() if hasattr(confusion, "numpy") else confusion, dtype=float)
    digits = [str(d) for d in range(counts.shape[0])]
    fig = go.Figure(go.Heatmap(
        z=np.log10(counts + 1), x=digits, y=digits, customdata=counts, colorscale="Blues", showscale=False,
        text=counts.astype(int).tolist(), texttemplate="%{text}", textfont=dict(size=12),
        hovertemplate="true %{y}, predicted %{x}: %{customdata:.0f}<extra></extra>",
    ))
    fig.update_yaxes(autorange="reversed", title="true digit", type="category", scaleanchor="x",
                     constrain="domain", fixedrange=True)
    fig.update_xaxes(title="predicted digit", type="category", side="top", constrain="domain", fixedrange=True)
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=40, b=10), dragmode=False)
    return fig


def per_class_floor(*per_class: Sequence[float]) -> float:
    """Where a per-class accuracy axis starts: 5 points below the weakest class, at least 0 (the page says so)."""
    return max(0.0, min((float(v) for values in per_class for v in values), default=0.0) - 0.05)


def per_class_bars(per_class: Sequence[float], height: int = 300) -> go.Figure:
    """Accuracy of each digit class as bars, zoomed to where the bars differ (from :func:`per_class_floor`)."""
    values = [float(v) for v in per_class]
    low = per_class_floor(values)
    # Ticks only up to 100%: the axis goes a little higher to leave room for the labels above the bars.
    step = next(s for s in (0.01, 0.02, 0.05, 0.1, 0.2, 0.25) if (1.0 - low) / s <= 5)
    ticks = [round(1.0 - k * step, 4) for k in range(int((1.0 - low) / step + 1e-9) + 1)]
    fig = go.Figure(go.Bar(x=[str(d) for d in range(len(values))], y=values, marker_color=CNN_COLOUR,
                           text=[f"{v:.1%}" for v in values], textposition="outside", cliponaxis=False,
                           hovertemplate="digit %{x}: %{y:.2%}<extra></extra>"))
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=30, b=10), dragmode=False,
                      # Start the axis a little below the weakest class: a 0-100% axis hides the differences.
                      yaxis=dict(tickformat=".0%", range=[low, 1.0 + 0.06 * (1.0 - low)], tickvals=ticks,
                                 fixedrange=True),
                      xaxis=dict(title="true digit", type="category", fixedrange=True))
    return fig


def shift_comparison(shifts: Sequence[int], curves: Mapping[str, Sequence[float]], height: int = 320) -> go.Figure:
    """Test accuracy against how far the digits are shifted, one line per network."""
    fig = go.Figure()
    for (name, acc), colour in zip(curves.items(), [CNN_COLOUR, MLP_COLOUR, SECOND_COLOUR, "#54a24b"]):
        fig.add_trace(go.Scatter(x=list(shifts), y=list(acc), mode="lines+markers", name=name,
                                 line=dict(color=colour), hovertemplate="shift %{x} px: %{y:.1%}<extra></extra>"))
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=30, b=10),
                      xaxis=dict(title="shift to the right (px)", dtick=1),
                      yaxis=dict(title="test accuracy", tickformat=".0%",
                                 range=[accuracy_floor([v for acc in curves.values() for v in acc]), 1.02]),
                      legend=dict(orientation="h", y=-0.25))
    return fig


def per_class_comparison(curves: Mapping[str, Sequence[float]], height: int = 320) -> go.Figure:
    """Per-class accuracy of several models as grouped bars, the axis starting at :func:`per_class_floor`."""
    low = per_class_floor(*curves.values())
    fig = go.Figure()
    for (name, values), colour in zip(curves.items(), [CNN_COLOUR, SECOND_COLOUR, MLP_COLOUR, "#54a24b"]):
        fig.add_trace(go.Bar(x=[str(d) for d in range(len(values))], y=[float(v) for v in values], name=name,
                             marker_color=colour, hovertemplate=f"{name}, digit %{{x}}: %{{y:.1%}}<extra></extra>"))
    fig.update_layout(height=height, barmode="group", margin=dict(l=10, r=10, t=30, b=10), dragmode=False,
                      yaxis=dict(tickformat=".0%", range=[low, 1.0], fixedrange=True, title="accuracy"),
                      xaxis=dict(title="true digit", type="category", fixedrange=True),
                      legend=dict(orientation="h", y=-0.3, yanchor="top", x=0.5, xanchor="center"))
    return fig
