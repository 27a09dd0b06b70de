"""The uncertainty benchmark's generators and whole-path runner (bench/bench_uncertainty.py), on small inputs."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import bench_uncertainty as bench

from cnn_core import uncertainty as U
from cnn_core.data import MnistSplit
from cnn_core.model import CNNConfig
from cnn_core.pen import CANVAS, load_bundled_pen_trajectories
from cnn_core.preprocess import preprocess
from cnn_core.train import fresh_model


def test_generators_are_seeded_and_draw_on_the_canvas():
    pens = load_bundled_pen_trajectories()[:50]
    for make in (bench.scribble, bench.letter, lambda rng: bench.two_digits(rng, pens)):
        a, b = make(np.random.default_rng(1)), make(np.random.default_rng(1))
        assert a.shape == (CANVAS, CANVAS) and a.dtype == np.uint8
        assert np.array_equal(a, b) and a.max() == 255
        assert not preprocess(a).blank


def test_two_digits_are_two_marks_apart():
    pens = load_bundled_pen_trajectories()[:50]
    canvas = bench.two_digits(np.random.default_rng(0), pens)
    columns = np.flatnonzero(canvas.max(axis=0) > 0)
    assert columns.min() < 100 and columns.max() > 180  # ink on both halves


def test_paper_photos_are_light_pictures_without_ink():
    photo = bench.blank_paper_photo(np.random.default_rng(3))
    assert isinstance(photo, Image.Image) and photo.mode == "RGB"
    grey = np.asarray(photo.convert("L"), np.float64)
    assert grey.mean() > 100  # paper, not a black canvas


def test_run_path_reports_refusals_and_flags():
    model = fresh_model(CNNConfig(conv1_channels=4, conv2_channels=8, hidden=16), torch.Generator().manual_seed(0))
    model.eval()
    g = torch.Generator().manual_seed(1)
    images = (torch.rand(200, 28, 28, generator=g) * 255).to(torch.uint8)
    split = MnistSplit(images, torch.arange(200) % 10, "noise")
    u = U.fit_uncertainty(model, split, split)
    blank = np.zeros((CANVAS, CANVAS), np.uint8)
    drawn = bench.letter(np.random.default_rng(0))
    outcomes = bench.run_path([blank, drawn], model, u)
    assert outcomes[0].refused and not outcomes[0].flagged
    assert not outcomes[1].refused
    line = bench.summary("kind", outcomes)
    assert line.startswith("| kind | 2 | 50.0% |")
