"""Where the project's files live: shipped weights, bundled test digits, training data.

Two kinds of data, kept apart on purpose:

- **Bundled** with the project (in the repository, so a fresh clone works on its own): the
  shipped weights in ``models/`` and the test digits the pages measure on in ``data/``.
- **Training data**, which stays outside the project: a folder of MNIST IDX files given by the
  server's configuration (the ``CNN_EXPLORER_DATA`` environment variable), else
  ``../shared/data/mnist`` beside the project when it exists. Visitors never choose a path:
  pages show this setting read-only.

``CNN_EXPLORER_HOME`` points at another copy of the project's files (an installed package keeps
them under ``<prefix>/share/cnn-explorer``).
"""

from __future__ import annotations

import os
import site
import sys
import sysconfig
from pathlib import Path

DATA_ENV = "CNN_EXPLORER_DATA"
PEN_DATA_ENV = "CNN_EXPLORER_PEN_DATA"
HOME_ENV = "CNN_EXPLORER_HOME"

_SOURCE_ROOT = Path(__file__).resolve().parent.parent


def project_root() -> Path:
    """The folder holding ``app.py``, ``models/`` and ``data/``.

    ``$CNN_EXPLORER_HOME`` when set; else the source checkout this package was imported from; else the
    copy an installed package put under ``<prefix>/share/cnn-explorer``.
    """
    if os.environ.get(HOME_ENV):
        return Path(os.environ[HOME_ENV]).expanduser().resolve()
    if (_SOURCE_ROOT / "app.py").is_file():
        return _SOURCE_ROOT
    # pip puts data files under the install scheme's "data" path: sys.prefix in a venv or the python image,
    # /usr/local for Debian's system Python (whose sys.prefix is /usr), the user base for `pip install --user`.
    for base in (sysconfig.get_path("data"), sys.prefix, site.getuserbase()):
        installed = Path(base) / "share" / "cnn-explorer"
        if installed.is_dir():
            return installed
    return _SOURCE_ROOT


PROJECT_ROOT = project_root()
MODELS_DIR = PROJECT_ROOT / "models"
BUNDLED_DATA_DIR = PROJECT_ROOT / "data"
# The first 5,000 official MNIST test digits (see data/README.md for provenance and licence).
BUNDLED_MNIST_DIR = BUNDLED_DATA_DIR / "mnist"
SHARED_DATA_DIR = PROJECT_ROOT.parent / "shared" / "data"


def training_data_dir() -> Path | None:
    """The server's MNIST training folder: ``$CNN_EXPLORER_DATA``, else ``../shared/data/mnist`` if it exists.

    None when neither is there (a fresh clone): training in the app is then unavailable, and
    every other page still works on the bundled test digits.
    """
    configured = os.environ.get(DATA_ENV)
    if configured:
        return Path(configured).expanduser()
    default = SHARED_DATA_DIR / "mnist"
    return default if default.is_dir() else None


def pen_data_file() -> Path | None:
    """The pen-trajectory training file: ``$CNN_EXPLORER_PEN_DATA``, else the one in ``../shared`` if it exists."""
    configured = os.environ.get(PEN_DATA_ENV)
    if configured:
        return Path(configured).expanduser()
    default = SHARED_DATA_DIR / "pen-digits" / "pen-digits-train.jsonl.gz"
    return default if default.is_file() else None
