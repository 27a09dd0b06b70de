"""Generated non-digits (cnn_core.outliers) and the writing styles added to pen digits (cnn_core.pen.add_style)."""

from __future__ import annotations

import numpy as np
import torch

from cnn_core import outliers, pen


def digits() -> list[pen.PenDigit]:
    """A few synthetic pen digits: a loop (0), a bar (1), a hook (7) and strokes for the rest."""
    t = np.linspace(0, 2 * np.pi, 40)
    loop = np.stack([140 + 50 * np.cos(t), 140 + 90 * np.sin(t)], 1)
    bar = np.stack([np.full(20, 140.0), np.linspace(50, 230, 20)], 1)
    seven = np.array([[80.0, 50.0], [200.0, 50.0], [120.0, 230.0]])
    out = [pen.PenDigit(0, "s/a", (loop,), 1), pen.PenDigit(1, "s/a", (bar,), 2), pen.PenDigit(7, "s/a", (seven,), 3)]
    for label in (2, 3, 4, 5, 6, 8, 9):
        out.append(pen.PenDigit(label, "s/b", (bar + [label * 3.0, 0], seven + [0, label * 2.0]), 3 + label))
    return out


def test_outliers_are_seeded_inputs_of_every_kind():
    a = outliers.make_outliers(digits(), 25, seed=3)
    b = outliers.make_outliers(digits(), 25, seed=3)
    c = outliers.make_outliers(digits(), 25, seed=4)
    v = outliers.make_outliers(digits(), 25, seed=3, purpose=1)
    assert a.shape == (25, 28, 28) and a.dtype == torch.uint8
    assert torch.equal(a, b) and not torch.equal(a, c)
    # the validation stream shares no image with the training stream
    assert not any(torch.equal(x, y) for x in a for y in v)
    assert all(int(x.max()) > 200 for x in a)  # every one has ink, scaled like preprocess scales it


def test_glyphs_and_letters_stay_on_the_canvas():
    rng = np.random.default_rng(0)
    for _ in range(20):
        for strokes in (outliers.glyph(rng), outliers.letter(rng), outliers.tangle(digits(), rng),
                        outliers.overlap(digits(), rng)):
            pts = np.concatenate(strokes)
            assert pts.min() >= 4 and pts.max() <= pen.CANVAS - 4
    assert 3 <= len(outliers.glyph(np.random.default_rng(1))) <= 5


def test_overlaps_are_two_different_digits():
    rng = np.random.default_rng(2)
    ds = digits()
    for _ in range(10):
        strokes = outliers.overlap(ds, rng)
        assert len(strokes) >= 2


def test_add_style_bars_zeros_flags_ones_and_crosses_sevens():
    rng = np.random.default_rng(0)
    zero, one, seven = digits()[:3]
    for _ in range(20):
        styled = pen.add_style(zero, rng)
        assert len(styled) == 2
        bar = styled[0] if len(styled[0]) != len(zero.strokes[0]) else styled[1]
        # the bar passes near the loop's centre
        assert np.min(np.linalg.norm(bar - [140, 140], axis=1)) < 20
        s1 = pen.add_style(one, rng)
        flag = s1[0]
        top = one.strokes[0][0]
        assert np.allclose(flag[-1], top) and flag[0][0] < top[0] and flag[0][1] > top[1]  # rises from the left
        s7 = pen.add_style(seven, rng)
        assert len(s7) == 2 and np.ptp(s7[1][:, 1]) < 20  # a roughly horizontal bar
    other = digits()[4]
    assert pen.add_style(other, rng) is other.strokes
