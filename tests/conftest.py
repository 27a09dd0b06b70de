"""Shared fixtures: the bundled test digits, the training data when the server has some, the shipped model.

Data in three settings, all of them honest:
- the bundled test digits (data/mnist) are always there: tests that only measure use them;
- training data (`$CNN_EXPLORER_DATA`, else ../shared/data/mnist) may be absent, or a folder without
  usable files: tests that need it skip with the reason.

Hypothesis runs derandomized unless HYPOTHESIS_PROFILE=dev: the same examples on every run, so a
test that passes in CI passes every time (explore with `HYPOTHESIS_PROFILE=dev pytest ...`).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # tests/browser.py: helpers of the browser tests

settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", deadline=None, print_blob=True, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def _training_split(split: str):
    """A split of the training data folder, or a skip that says why there is none."""
    from cnn_core.data import MnistDataError, load_mnist
    from cnn_core.paths import training_data_dir

    folder = training_data_dir()
    if folder is None:
        pytest.skip("no MNIST training data: set CNN_EXPLORER_DATA or put ../shared/data/mnist beside the project")
    try:
        return load_mnist(folder, split)
    except MnistDataError as e:
        pytest.skip(f"no usable MNIST {split} data: {e}")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The training data folder, when it holds a usable train and test split (else the test is skipped)."""
    from cnn_core.paths import training_data_dir

    _training_split("train")
    _training_split("test")
    folder = training_data_dir()
    assert folder is not None
    return folder


@pytest.fixture(scope="session")
def train_split():
    """The training digits of the training data folder (skipped without one)."""
    return _training_split("train")


@pytest.fixture(scope="session")
def test_split():
    """The bundled MNIST test digits (always there)."""
    from cnn_core.data import load_bundled_test

    return load_bundled_test()


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
