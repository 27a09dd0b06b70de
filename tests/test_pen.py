"""Pen-drawn digits (cnn_core.pen): drawing like the canvas, the split by writer, the bundled test writers."""

from __future__ import annotations

import gzip
import json
from collections import Counter

import numpy as np
import pytest
import torch

from cnn_core import pen
from cnn_core.data import MnistDataError, MnistSplit
from cnn_core.paths import pen_data_file
from cnn_core.preprocess import preprocess


def needs_pen_file():
    path = pen_data_file()
    if path is None or not path.is_file():
        pytest.skip("no pen-trajectory file (set CNN_EXPLORER_PEN_DATA or put ../shared/data/pen-digits beside)")
    return path


@pytest.fixture(scope="module")
def all_digits() -> list[pen.PenDigit]:
    return pen.read_pen_digits(needs_pen_file())


# --------------------------------------------------------------------------- the brush


def quadratic(p0, c, p1, t):
    return (1 - t) ** 2 * np.asarray(p0) + 2 * (1 - t) * t * np.asarray(c) + t ** 2 * np.asarray(p1)


def test_brush_path_follows_fabric_pencil_brush():
    """Oracle: the SVG path Fabric writes (M p0, Q p(i-1) mid(p(i-1), p(i)) ..., L pn), evaluated by hand."""
    pts = np.array([[10.0, 10.0], [50.0, 20.0], [60.0, 80.0], [20.0, 90.0]])
    path = pen.brush_path(pts)
    assert np.allclose(path[0], pts[0]) and np.allclose(path[-1], pts[-1])
    start = pts[0]
    for i in range(1, len(pts)):
        end = (pts[i - 1] + pts[i]) / 2
        for t in (0.5, 1.0):  # points of each curve must be vertices of the path (or within a step of one)
            target = quadratic(start, pts[i - 1], end, t)
            assert np.min(np.linalg.norm(path - target, axis=1)) < 1.6, (i, t)
        start = end
    # the corners p1, p2 are only control points: the smoothed path never reaches them
    for corner in pts[1:3]:
        assert np.min(np.linalg.norm(path - corner, axis=1)) > 5


def test_brush_path_steps_are_short_and_repeats_add_nothing():
    pts = np.array([[0.0, 0.0], [100.0, 0.0], [100.0, 0.0], [100.0, 100.0]])
    path = pen.brush_path(pts)
    # every piece of the curves is short; the last piece is Fabric's straight line to the last point
    assert np.max(np.linalg.norm(np.diff(path[:-1], axis=0), axis=1)) <= 3.0 + 1e-9
    assert np.allclose(path[-2], [100.0, 50.0])
    assert np.allclose(path, pen.brush_path(pts[[0, 1, 3]]))
    assert pen.brush_path(np.array([[5.0, 6.0]])).shape == (1, 2)


def test_canvas_stroke_has_the_brush_width_round_caps_and_soft_edges():
    canvas = pen.render_canvas([np.array([[100.0, 140.0], [180.0, 140.0]])], brush=20)
    assert canvas.shape == (280, 280) and canvas.dtype == np.uint8
    column = canvas[:, 140].astype(float) / 255
    assert abs(column.sum() - 20) < 0.5  # the stroke is 20 px thick
    assert canvas[140, 91] == 255 and canvas[140, 189] == 255  # round caps reach r = 10 beyond the ends
    assert canvas[131, 91] == 0 and canvas[149, 189] == 0  # ...but not into the corners of a square cap
    assert ((canvas > 0) & (canvas < 255)).any()  # anti-aliased edges


def test_a_click_draws_a_dot_of_the_brush():
    canvas = pen.render_canvas([np.array([[140.0, 140.0]])], brush=20)
    assert abs(canvas.astype(float).sum() / 255 - np.pi * 10 ** 2) < 8


def test_render_input_is_the_apps_preprocess_of_the_canvas():
    strokes = [np.array([[140.0, 50.0], [140.0, 230.0]]), np.array([[100.0, 90.0], [140.0, 50.0]])]
    pixels = pen.render_input(strokes, brush=16)
    assert pixels.shape == (28, 28)
    assert np.array_equal(pixels, preprocess(pen.render_canvas(strokes, 16)).pixels)
    assert pixels.max() > 0.9


def test_jitter_keeps_the_drawing_on_the_canvas_and_is_seeded():
    strokes = (np.array([[49.0, 49.0], [231.0, 231.0]]), np.array([[231.0, 49.0], [49.0, 231.0]]))
    for seed in range(30):
        moved = pen.jitter(strokes, np.random.default_rng(seed))
        pts = np.concatenate(moved)
        assert pts.min() >= 12 - 1e-9 and pts.max() <= 268 + 1e-9
    a = pen.jitter(strokes, np.random.default_rng(1))
    b = pen.jitter(strokes, np.random.default_rng(1))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))


# --------------------------------------------------------------------------- reading


def write_lines(path, lines):
    path.write_bytes(gzip.compress("\n".join(lines).encode()))
    return path


def test_read_and_write_round_trip(tmp_path):
    digits = [pen.PenDigit(3, "x/a", (np.array([[1.25, 2.0], [3.0, 4.0]]),), 1),
              pen.PenDigit(7, "y/b", (np.array([[5.0, 6.0]]), np.array([[7.0, 8.0], [9.0, 10.0]])), 2)]
    pen.write_pen_digits(tmp_path / "d.jsonl.gz", digits)
    back = pen.read_pen_digits(tmp_path / "d.jsonl.gz")
    assert [(d.label, d.writer, d.line) for d in back] == [(3, "x/a", 1), (7, "y/b", 2)]
    assert np.allclose(back[0].strokes[0], [[1.2, 2.0], [3.0, 4.0]])  # rounded to 0.1 px, as the source
    assert len(back[1].strokes) == 2
    # reproducible bytes (the file is checked in)
    first = (tmp_path / "d.jsonl.gz").read_bytes()
    pen.write_pen_digits(tmp_path / "d.jsonl.gz", digits)
    assert (tmp_path / "d.jsonl.gz").read_bytes() == first


@pytest.mark.parametrize("line, message", [
    ('{"label": 10, "writer": "a/b", "strokes": [[[1, 2]]]}', "label must be a digit"),
    ('{"label": true, "writer": "a/b", "strokes": [[[1, 2]]]}', "label must be a digit"),
    ('{"label": 1, "writer": "", "strokes": [[[1, 2]]]}', "writer must be a name"),
    ('{"label": 1, "writer": "a/b", "strokes": []}', "strokes must be a non-empty list"),
    ('{"label": 1, "writer": "a/b", "strokes": [[[1, NaN]]]}', "finite"),
    ('{"label": 1, "writer": "a/b", "strokes": [[[1, 2, 3]]]}', "finite [x, y] points"),
    ('{"label": 1, "writer": "a/b", "strokes": [[["x", 2]]]}', "stroke must be"),
    ('[1, 2]', "not a JSON object"),
    ('{"label": 1,', "not valid JSON"),
])
def test_malformed_lines_are_refused_with_their_line(tmp_path, line, message):
    path = write_lines(tmp_path / "bad.jsonl.gz", ['{"label": 1, "writer": "a/b", "strokes": [[[1, 2]]]}', line])
    with pytest.raises(MnistDataError, match="bad.jsonl.gz:2") as e:
        pen.read_pen_digits(path)
    assert message in str(e.value)


def test_unreadable_file_is_a_data_error(tmp_path):
    (tmp_path / "x.jsonl.gz").write_bytes(b"not gzip at all")
    with pytest.raises(MnistDataError, match="cannot read"):
        pen.read_pen_digits(tmp_path / "x.jsonl.gz")


# --------------------------------------------------------------------------- the split by writer


def synthetic_digits() -> list[pen.PenDigit]:
    """Writers of several sites, one heavy, some quirky: enough to check the split's rule."""
    stroke = (np.array([[100.0, 100.0], [180.0, 180.0]]),)
    writers = {f"s{s}/w{i}": 10 + i for s in range(3) for i in range(8)}
    writers["big/one"] = pen.HEAVY_WRITER
    writers.update({w: 20 for w in sorted(pen.QUIRKY_WRITERS)[:8]})
    digits, line = [], 0
    for w, n in writers.items():
        for k in range(n):
            line += 1
            digits.append(pen.PenDigit(k % 10, w, stroke, line))
    return digits


def test_split_rule_on_synthetic_writers():
    digits = synthetic_digits()
    parts = pen.writer_parts(digits)
    assert parts == pen.writer_parts(list(reversed(digits)))  # order of the file does not matter
    assert parts["big/one"] == "train"
    for site in ("s0", "s1", "s2"):  # each site's writers spread over the three parts
        assert {parts[w] for w in parts if w.startswith(site + "/")} == set(pen.PARTS)
    assert {parts[w] for w in sorted(pen.QUIRKY_WRITERS)[:8]} == set(pen.PARTS)
    split = pen.split_by_writer(digits)
    assert sum(len(v) for v in split.values()) == len(digits)
    for part, members in split.items():
        assert all(parts[d.writer] == part for d in members)


def test_real_split_keeps_writers_apart_and_spreads_styles(all_digits):
    parts = pen.writer_parts(all_digits)
    split = pen.split_by_writer(all_digits)
    writers = {p: {d.writer for d in split[p]} for p in pen.PARTS}
    assert not (writers["train"] & writers["validation"] or writers["train"] & writers["test"]
                or writers["validation"] & writers["test"])
    for p in pen.PARTS:
        assert writers[p] & pen.QUIRKY_WRITERS, p  # every part has some of the unusual styles
        assert len({w.split("/")[0] for w in writers[p]}) >= 10, p  # and writers of many sites
        assert set(Counter(d.label for d in split[p])) == set(range(10))
    assert all((d.line, d.writer, d.label) not in pen.SOURCE_ERRORS for p in pen.PARTS for d in split[p])
    assert sum(len(v) for v in split.values()) == len(all_digits) - len(pen.SOURCE_ERRORS)
    assert len(split["train"]) > 2 * len(split["test"]) > 0
    assert set(parts.values()) == set(pen.PARTS)


# --------------------------------------------------------------------------- the bundled test writers (always run)


@pytest.fixture(scope="module")
def bundled() -> pen.PenSplit:
    return pen.load_bundled_pen_test()


def test_bundled_pen_test_is_a_split_with_writers(bundled):
    assert isinstance(bundled, MnistSplit)
    n = len(bundled)
    assert 1000 <= n <= 2000
    assert bundled.images.shape == (n, 28, 28) and bundled.images.dtype == torch.uint8
    assert bundled.labels.dtype == torch.int64 and set(bundled.labels.tolist()) == set(range(10))
    assert len(bundled.writers) == n and len(set(bundled.writers)) >= 30
    assert "test writers" in bundled.source
    assert int(bundled.images.max()) == 255  # preprocess stretches the ink to full white


def test_bundled_files_are_small():
    total = sum(f.stat().st_size for f in pen.BUNDLED_PEN_DIR.iterdir())
    assert total < 700_000


def test_bundled_images_are_the_canvas_renders_of_the_bundled_trajectories(bundled):
    trajectories = pen.load_bundled_pen_trajectories()
    assert [d.label for d in trajectories] == bundled.labels.tolist()
    assert tuple(d.writer for d in trajectories) == bundled.writers
    sample = range(0, len(trajectories), 7)  # every 7th digit: the same code path, a seventh of the time
    for i in sample:
        again = pen.to_uint8(pen.render_input(trajectories[i].strokes, pen.APP_BRUSH))
        assert np.array_equal(again, bundled.images[i].numpy()), i


def test_bundled_writers_are_the_test_writers(all_digits, bundled):
    test = pen.split_by_writer(all_digits)["test"]
    assert tuple(d.writer for d in test) == bundled.writers
    assert [d.label for d in test] == bundled.labels.tolist()


def test_missing_bundle_is_a_data_error(tmp_path):
    with pytest.raises(MnistDataError):
        pen.load_bundled_pen_test(tmp_path)


def test_bundle_round_trip(tmp_path):
    digits = [pen.PenDigit(d % 10, f"s/w{d % 3}", (np.array([[60.0 + d, 60.0], [200.0, 220.0 - d]]),), d + 1)
              for d in range(12)]
    written = pen.bundle_pen_test(digits, tmp_path)
    loaded = pen.load_bundled_pen_test(tmp_path)
    assert torch.equal(written.images, loaded.images) and torch.equal(written.labels, loaded.labels)
    assert loaded.writers == written.writers
    assert json.loads(gzip.decompress((tmp_path / pen.BUNDLED_TRAJECTORIES).read_bytes()).splitlines()[0])["label"] == 0


def test_render_variants_are_seeded_and_varied():
    digits = synthetic_digits()[:6]
    a, labels = pen.render_variants(digits, 3, seed=5)
    b, _ = pen.render_variants(digits, 3, seed=5)
    c, _ = pen.render_variants(digits, 3, seed=6)
    assert a.shape == (6, 3, 28, 28) and a.dtype == torch.uint8
    assert labels.tolist() == [d.label for d in digits]
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(a[0, 0], a[0, 1])  # each variant is drawn differently
