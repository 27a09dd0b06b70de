"""The home page's HTML probability chart shows exactly the ten probabilities it is given."""

from __future__ import annotations

import re

import numpy as np

from ui.bars import probability_bars_html
from ui.figures import PROB_COLOUR, TOP_COLOUR


def test_bar_heights_and_labels_are_the_probabilities():
    p = np.array([0.001, 0.6, 0.1, 0.05, 0.05, 0.05, 0.05, 0.049, 0.03, 0.02])
    html = probability_bars_html(p, "Probabilities <calibrated>")
    heights = [float(h) for h in re.findall(r"cnnx-fill\" style=\"height:([\d.]+)%", html)]
    assert heights == [round(v * 100, 1) for v in p]
    assert re.findall(r'aria-label="digit (\d): ', html) == [str(d) for d in range(10)]
    colours = re.findall(r"background:(#[0-9a-f]{6})", html)
    assert colours[1] == TOP_COLOUR and colours.count(TOP_COLOUR) == 1 and colours[0] == PROB_COLOUR
    assert "<calibrated>" not in html and "&lt;calibrated&gt;" in html  # the title is text, not markup
    assert ">60%<" in html and ">0%<" not in html  # shares under 1% get no label
