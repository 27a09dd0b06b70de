"""Shared fixtures: the MNIST folder beside the project and the shipped model."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DATA_DIR = Path(os.environ.get("CNN_EXPLORER_DATA", ROOT.parent / "shared" / "data" / "mnist"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA_DIR.is_dir():
        pytest.skip(f"no MNIST folder at {DATA_DIR}")
    return DATA_DIR


@pytest.fixture(scope="session")
def test_split(data_dir):
    from cnn_core.data import load_mnist

    return load_mnist(data_dir, "test")


@pytest.fixture(scope="session")
def shipped():
    from cnn_core.checkpoint import load_checkpoint

    return load_checkpoint()
