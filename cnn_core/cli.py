"""The ``cnn-explorer`` command: start the CNN Explorer web app.

    cnn-explorer [streamlit run options...]        e.g.  cnn-explorer --server.port 8502

It finds the app's files (``app.py``, ``pages/``, ``ui/``, ``models/``, ``data/``,
``.streamlit/config.toml``) through :func:`cnn_core.paths.project_root` (``$CNN_EXPLORER_HOME``, the
source checkout, or ``<prefix>/share/cnn-explorer`` of an installed package) and becomes
``python -m ui.server [options...]`` with this interpreter: the app's launcher, which warms up and then
runs ``streamlit run <root>/app.py [options...]``. Every option is passed through to ``streamlit run``. Streamlit reads the ``.streamlit/config.toml`` beside the script it
runs, so the shipped settings (upload limit, headless, no file watcher) apply whatever folder the
command is started from; options given here override them.

This module starts Streamlit as a program and never imports it: ``cnn_core`` stays a plain library.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from .paths import HOME_ENV, project_root

PROG = "cnn-explorer"
# What a runnable copy of the app must hold (data/ and .streamlit/ are optional: the app still starts).
REQUIRED = ("app.py", "pages", "ui", "models")
USAGE = f"""usage: {PROG} [streamlit run options...]

Start the CNN Explorer web app (http://localhost:8501 by default) on the shipped weights.
Options go to `streamlit run`, e.g. `{PROG} --server.port 8502 --server.address 0.0.0.0`
(`python -m streamlit run --help` lists them). The app's files are looked up in
${HOME_ENV}, else the source checkout, else <prefix>/share/cnn-explorer."""


def missing_files(root: Path) -> list[str]:
    """The entries of :data:`REQUIRED` that ``root`` lacks (empty when the app can start from it)."""
    return [name for name in REQUIRED if not (root / name).exists()]


def streamlit_command(root: Path, options: Sequence[str],
                      environ: dict[str, str] | None = None) -> tuple[list[str], dict[str, str]]:
    """The command (and its environment) that serves the app in ``root`` with this interpreter.

    ``python -m ui.server``, the app's own launcher, run with ``root`` first on the path: it imports PyTorch
    and loads the shipped models, then hands over to ``streamlit run <root>/app.py`` with ``options``, so
    the first visitor does not wait for them.
    """
    env = dict(os.environ if environ is None else environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), env.get("PYTHONPATH", "")) if p)
    # glibc keeps memory freed by a thread in that thread's arena; with many sessions decoding uploads at
    # once the server kept hundreds of MiB after the peak (bench/bench_upload_memory.py). Two arenas, and
    # large blocks mapped and unmapped directly, give it back. A deployment may set its own values.
    env.setdefault("MALLOC_ARENA_MAX", "2")
    env.setdefault("MALLOC_MMAP_THRESHOLD_", "131072")
    return [sys.executable, "-m", "ui.server", *options], env


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``cnn-explorer``: replace this process with Streamlit serving the app.

    Returns (instead of replacing the process) only to report an error: 2 when the app's files or
    Streamlit are missing, 1 when the interpreter cannot be started.
    """
    options = list(sys.argv[1:] if argv is None else argv)
    if options[:1] in (["-h"], ["--help"]):
        print(USAGE)
        return 0
    root = project_root()
    missing = missing_files(root)
    if missing:
        print(f"{PROG}: error: the app's files are not in {root} (missing: {', '.join(missing)}). "
              f"Reinstall the package (pip install .), or set {HOME_ENV} to a copy of the project "
              "that holds app.py, pages/, ui/ and models/.", file=sys.stderr)
        return 2
    if importlib.util.find_spec("streamlit") is None:
        print(f"{PROG}: error: Streamlit is not installed in {sys.prefix} (pip install -r requirements.txt).",
              file=sys.stderr)
        return 2
    command, env = streamlit_command(root, options)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        # exec, not a child process: Ctrl-C and `docker stop`'s SIGTERM reach Streamlit itself, and no
        # idle parent interpreter is left holding memory.
        os.execve(command[0], command, env)
    except OSError as e:
        print(f"{PROG}: error: cannot start {command[0]}: {e}", file=sys.stderr)
        return 1
    return 1  # unreachable: execv does not return


if __name__ == "__main__":
    raise SystemExit(main())
