"""The container recipe without a Docker engine: its build context holds what it copies, and the installed
app finds its files wherever pip's install scheme put them."""

from __future__ import annotations

import re
from pathlib import Path

from cnn_core import paths

ROOT = Path(__file__).resolve().parent.parent


def kept_by_dockerignore() -> set[str]:
    """The paths .dockerignore lets into the build context (it ignores everything, then keeps a list)."""
    lines = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()]
    rules = [ln for ln in lines if ln and not ln.startswith("#")]
    assert rules[0] == "*", "the context is a whitelist: everything ignored first"
    return {r[1:].rstrip("/") for r in rules if r.startswith("!")}


def copied_by_dockerfile() -> list[str]:
    """Every source path of the Dockerfile's COPY instructions."""
    sources = []
    for line in (ROOT / "deploy" / "Dockerfile").read_text().splitlines():
        m = re.match(r"\s*COPY\s+(.*)", line)
        if m:
            *src, _dest = m.group(1).split()
            sources += [s.rstrip("/") for s in src if not s.startswith("--")]
    return sources


def test_the_build_context_holds_everything_the_dockerfile_copies():
    copied = copied_by_dockerfile()
    assert "models" in copied and "data" in copied and "app.py" in copied
    missing = [s for s in copied if s not in kept_by_dockerignore()]
    assert not missing, f"COPY sources that .dockerignore leaves out of the build context: {missing}"
    for source in copied:
        assert (ROOT / source).exists(), source


def test_the_build_context_leaves_out_the_virtual_environment_and_git():
    kept = kept_by_dockerignore()
    assert not {".venv", ".git", "tests", "artifacts"} & kept


def test_an_installed_app_is_found_under_the_install_schemes_data_path(tmp_path, monkeypatch):
    # Debian's system Python installs data files under /usr/local while its sys.prefix is /usr.
    installed = tmp_path / "local" / "share" / "cnn-explorer"
    installed.mkdir(parents=True)
    monkeypatch.delenv(paths.HOME_ENV, raising=False)
    monkeypatch.setattr(paths, "_SOURCE_ROOT", tmp_path / "site-packages")  # no app.py beside the package
    monkeypatch.setattr(paths.sysconfig, "get_path", lambda name: str(tmp_path / "local"))
    monkeypatch.setattr(paths.sys, "prefix", str(tmp_path / "usr"))
    assert paths.project_root() == installed
