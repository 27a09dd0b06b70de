"""The ten probabilities as a small HTML bar chart: no plotting library, so the home page stays light.

The home page redraws its answer after every stroke. A Plotly figure costs milliseconds to build on the
server and several megabytes of JavaScript in the browser on the first visit; ten <div>s cost neither.
No Streamlit here: the page passes the HTML to ``st.html``.
"""

from __future__ import annotations

import html

import numpy as np

from ui.figures import PROB_COLOUR, TOP_COLOUR

CHART_HEIGHT_PX = 150


def probability_bars_html(probabilities, title: str) -> str:
    """Ten labelled bars (digit, share), the largest in the highlight colour; heights in percent of the chart."""
    p = np.asarray(probabilities, dtype=float).reshape(-1)
    top = int(p.argmax())
    bars = []
    for digit, value in enumerate(p):
        share = min(max(value, 0.0), 1.0)
        label = f"{share:.0%}" if share >= 0.01 else ""
        colour = TOP_COLOUR if digit == top else PROB_COLOUR
        bars.append(
            f'<div class="cnnx-bar" role="listitem" aria-label="digit {digit}: {share:.1%}" title="digit {digit}: '
            f'{share:.2%}"><span class="cnnx-share">{label}</span><div class="cnnx-fill" style="height:'
            f'{share * 100:.1f}%;background:{colour}"></div><span class="cnnx-digit">{digit}</span></div>'
        )
    return (
        "<style>"
        ".cnnx-chart{font-family:sans-serif;font-size:.8rem}"
        ".cnnx-title{font-weight:600;margin-bottom:.3rem}"
        f".cnnx-bars{{display:flex;align-items:flex-end;gap:4px;height:{CHART_HEIGHT_PX}px;"
        "border-bottom:1px solid #ccc;padding-top:1.1rem}"
        ".cnnx-bar{flex:1;height:100%;display:flex;flex-direction:column;justify-content:flex-end;"
        "align-items:center;position:relative}"
        ".cnnx-fill{width:100%;min-height:1px;border-radius:2px 2px 0 0}"
        ".cnnx-share{font-size:.7rem;color:#555;white-space:nowrap}"
        ".cnnx-digit{position:absolute;bottom:-1.3rem;color:#333}"
        "</style>"
        f'<div class="cnnx-chart"><div class="cnnx-title">{html.escape(title)}</div>'
        f'<div class="cnnx-bars" role="list">{"".join(bars)}</div><div style="height:1.4rem"></div></div>'
    )
