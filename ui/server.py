"""The app's server process: import the heavy libraries, load the shipped models, then serve app.py.

`streamlit run app.py` imports PyTorch only when the first visitor's script run imports cnn_core: about
3 s on the reference machine (torch 2.14's CUDA build) that the first visitor would wait. Imported here,
before the server listens, that time passes before the server reports itself ready. ``cnn-explorer``
(cnn_core/cli.py) runs ``python -m ui.server [streamlit run options...]``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

APP = Path(__file__).resolve().parent.parent / "app.py"


def warm_up() -> None:
    """Import what every page needs and load the shipped models and the bundled test digits into their caches."""
    import plotly.graph_objects  # noqa: F401 - imported for its import time

    from ui import state

    for path in state.shipped_model_paths().values():
        state.load_shipped(path)
    state.get_test_sets()


def main(argv: Sequence[str] | None = None) -> None:
    """Warm up, then hand over to ``streamlit run app.py`` with ``argv`` (default: the command line's)."""
    options = list(sys.argv[1:] if argv is None else argv)
    warm_up()
    from streamlit.web.cli import main as streamlit_main

    sys.argv = ["streamlit", "run", str(APP), *options]
    streamlit_main()


if __name__ == "__main__":
    main()
