"""Packaging: `pip install .` gives an importable cnn_core and a `cnn-explorer` command that serves the app.

The package is built from a copy of this checkout (a build writes build/ and *.egg-info/ into its
source folder) with the project's own setuptools, and installed without dependencies into a fresh
virtual environment outside the project, which borrows this environment's packages (torch,
Streamlit...) through PYTHONPATH instead of downloading them again. Then, from an unrelated folder:
`import cnn_core` comes from the new environment and finds the app's files under
<prefix>/share/cnn-explorer, and `cnn-explorer` serves the home page (a light client runs it).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import threading
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from cnn_core import cli

ROOT = Path(__file__).resolve().parent.parent
NOT_PACKAGED = shutil.ignore_patterns(".venv", ".git", "artifacts", "__pycache__", ".*_cache", ".hypothesis", "build",
                                      "dist", "*.egg-info", "docs")
DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only, whatever the environment
START_TIMEOUT_S = 120


# --------------------------------------------------------------------------- the command, in this checkout


def test_cli_passes_options_through_to_streamlit_run(monkeypatch):
    options = ["--server.port", "8502", "--server.address", "0.0.0.0"]
    command, env = cli.streamlit_command(Path("/srv/app"), options, {"PYTHONPATH": "/elsewhere"})
    assert command == [sys.executable, "-m", "ui.server", *options]
    assert env["PYTHONPATH"].split(os.pathsep) == ["/srv/app", "/elsewhere"]  # the app's launcher is found first
    assert env["MALLOC_ARENA_MAX"] == "2"  # freed memory goes back to the system (see cnn_core/cli.py)
    # ...and the launcher hands the options to `streamlit run app.py` once the shipped models are loaded.
    import streamlit.web.cli

    import ui.server
    import ui.state

    seen = {}
    monkeypatch.setattr(streamlit.web.cli, "main", lambda: seen.setdefault("argv", list(sys.argv)))
    monkeypatch.setattr(sys, "argv", ["ui.server"])
    ui.state.load_shipped.cache_clear()
    ui.server.main(options)
    assert seen["argv"] == ["streamlit", "run", str(ROOT / "app.py"), *options]
    assert ui.state.load_shipped.cache_info().currsize == len(ui.state.shipped_model_paths())


def test_cli_finds_the_app_of_this_checkout():
    assert cli.missing_files(ROOT) == []


def test_cli_says_clearly_when_the_apps_files_are_missing(tmp_path):
    (tmp_path / "app.py").write_text("")  # app.py alone is not a runnable copy
    env = {**os.environ, "CNN_EXPLORER_HOME": str(tmp_path), "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-m", "cnn_core.cli"], capture_output=True, text=True, env=env, timeout=60,
                         cwd=tmp_path)
    assert run.returncode == 2
    assert str(tmp_path) in run.stderr and "missing: pages, ui, models" in run.stderr
    assert "CNN_EXPLORER_HOME" in run.stderr and "Traceback" not in run.stderr


def test_cli_help():
    run = subprocess.run([sys.executable, "-m", "cnn_core.cli", "--help"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and run.stdout.startswith("usage: cnn-explorer")


# --------------------------------------------------------------------------- pip install, for real


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh virtual environment with this project installed from a wheel (non-editable); its prefix."""
    work = tmp_path_factory.mktemp("package")
    source = work / "src"
    shutil.copytree(ROOT, source, ignore=NOT_PACKAGED)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    build = subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--wheel-dir", str(work / "dist"),
                            str(source)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    wheels = list((work / "dist").glob("cnn_explorer-*.whl"))
    assert len(wheels) == 1, wheels
    prefix = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(prefix)], check=True, timeout=120)
    install = subprocess.run([*pip, "--python", str(prefix / "bin" / "python"), "install", "--no-deps", "--no-index",
                              str(wheels[0])], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    return prefix


def foreign_env() -> dict[str, str]:
    """This environment's packages for the new one (torch, Streamlit...), and nothing of this checkout."""
    return {**{k: v for k, v in os.environ.items() if k not in ("CNN_EXPLORER_HOME", "PYTHONPATH")},
            "PYTHONPATH": sysconfig.get_paths()["purelib"]}


def test_the_apps_files_are_installed_under_share(installed):
    share = installed / "share" / "cnn-explorer"
    for pattern in ("app.py", "pages/*.py", "ui/*.py", "models/*.pt", "models/*.json", "data/mnist/*.gz",
                    ".streamlit/config.toml"):
        expected = {p.relative_to(ROOT) for p in ROOT.glob(pattern)}
        assert expected, pattern
        assert {p.relative_to(share) for p in share.glob(pattern)} == expected, pattern


def test_dependencies_are_those_of_requirements_txt(installed):
    metadata = next((installed / "lib").glob("python3*/site-packages/cnn_explorer-*.dist-info/METADATA")).read_text()
    declared = sorted(line.split(":", 1)[1].strip() for line in metadata.splitlines() if line.startswith("Requires-Dist:"))
    required = [line.split("#")[0].strip() for line in (ROOT / "requirements.txt").read_text().splitlines()]

    def normal(requirement: str) -> tuple[str, frozenset[str]]:  # name and the set of its version clauses
        name, spec = re.match(r"([A-Za-z0-9_.-]+)\s*(.*)", requirement).groups()
        return name.lower().replace("_", "-"), frozenset(c.strip() for c in spec.split(",") if c.strip())

    assert sorted(map(normal, declared)) == sorted(normal(r) for r in required if r)


def test_cnn_core_imports_from_the_installed_package(installed, tmp_path):
    probe = ("import cnn_core, cnn_core.paths as p, cnn_core.checkpoint as c; "
             "print(cnn_core.__file__); print(p.project_root()); print(c.load_checkpoint().model.__class__.__name__)")
    run = subprocess.run([str(installed / "bin" / "python"), "-c", probe], capture_output=True, text=True,
                         env=foreign_env(), cwd=tmp_path, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    module, root, model = run.stdout.split()
    assert Path(module).is_relative_to(installed / "lib")
    assert Path(root) == installed / "share" / "cnn-explorer"
    assert model  # the shipped weights load from the installed copy


def test_the_command_serves_the_home_page(installed, tmp_path):
    sys.path.insert(0, str(ROOT / "bench"))  # bench_proxy_load's light client
    from bench_proxy_load import LightSession

    from deploy.run_cluster import free_port

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "server.log"
    with open(log, "wb") as out:
        server = subprocess.Popen([str(installed / "bin" / "cnn-explorer"), "--server.port", str(port)], cwd=tmp_path,
                                  env=foreign_env(), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert server.poll() is None, log.read_text()
            try:
                if DIRECT.open(f"{url}/_stcore/health", timeout=2).status == 200:
                    break
            except (urllib.error.URLError, OSError):
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.25)  # polling an HTTP endpoint: there is no event to wait on

        outcome: dict[str, object] = {}

        async def first_run() -> None:
            session = LightSession(url)
            try:
                await session.open(START_TIMEOUT_S)  # raises on an exception or st.error in the page
                outcome["canvas"] = session.canvas_id
                run = await session.draw(START_TIMEOUT_S)
                outcome["prediction"] = run.prediction
            finally:
                await session.close()

        def in_thread() -> None:  # the browser tests' sync Playwright may own this thread's event loop
            try:
                asyncio.run(first_run())
            except BaseException as e:
                outcome["error"] = e

        worker = threading.Thread(target=in_thread)
        worker.start()
        worker.join()
        assert "error" not in outcome, f"{outcome['error']!r}\n{log.read_text()[-3000:]}"
        assert str(outcome["canvas"]).endswith("-canvas") and str(outcome["prediction"]).isdigit(), outcome
        # The shipped settings apply though the command ran from another folder: its address, if it sets one.
        settings = tomllib.loads((installed / "share" / "cnn-explorer" / ".streamlit" / "config.toml").read_text())
        address = settings.get("server", {}).get("address")
        if address:
            assert f"URL: http://{address}:{port}" in log.read_text()
    finally:
        server.send_signal(signal.SIGTERM)  # cnn-explorer became Streamlit: the signal reaches it directly
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=15)
