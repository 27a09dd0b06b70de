"""Shared fixtures: the MNIST folder beside the project and the shipped model."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # tests/browser.py: helpers of the browser tests

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


@pytest.fixture
def no_job_outlives_its_test():
    """Cancel any training run a test leaves behind (a failed assertion must not leave a thread training)."""
    yield
    from cnn_core import jobs

    for job in jobs.active_jobs():
        job.cancel()
        job.wait(60)


# --- browser tests: one app server and one chromium for the whole run --------------------------------


@pytest.fixture(scope="session")
def app_server():
    """``streamlit run app.py`` on a free loopback port (skipped, or failed in CI, without chromium)."""
    from browser import chromium_path, start_streamlit

    chromium_path()  # decide before paying for a server when there is no browser
    server = start_streamlit("app.py")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def browser():
    """Debian's chromium driven by Playwright (one sync Playwright per process: tests share it)."""
    from browser import chromium_path, launch_chromium
    from playwright.sync_api import sync_playwright

    chromium_path()
    with sync_playwright() as p:
        b = launch_chromium(p)
        yield b
        b.close()
