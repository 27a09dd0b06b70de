"""Helpers for tests that drive the real app in a real browser (not a test module).

- :func:`free_port`, :func:`start_streamlit` / :class:`StreamlitServer`: run ``streamlit run``
  as a subprocess of the current interpreter (so the tests use the same venv) and wait for
  its health endpoint.
- :func:`chromium_path` / :func:`launch_chromium`: Debian's chromium driven by Playwright's
  sync API; a missing browser skips the test, or fails it when CNN_EXPLORER_REQUIRE_BROWSER=1 (CI).
- :func:`discover_pages`: the app's pages and their URL paths, from ``pages/*.py``, so that
  pages added later are covered without touching the tests.
- :func:`wait_for_script_idle`, :func:`assert_no_errors`: Streamlit-aware waits and checks.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCREENSHOT_DIR = ROOT / "artifacts" / "screenshots"
DOCS_SCREENSHOT_DIR = ROOT / "docs" / "screenshots"

CHROMIUM = Path(os.environ.get("CNN_EXPLORER_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
VIEWPORT = {"width": 1280, "height": 800}  # a laptop screen

SERVER_START_TIMEOUT_S = 60.0
TIMEOUT_MS = 30_000  # a first script run on a busy 2-core machine takes several seconds



# --------------------------------------------------------------------------- the server


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class StreamlitServer:
    """A running ``streamlit run`` subprocess and where to reach it."""

    process: subprocess.Popen
    port: int
    log_path: Path
    _log_file: object = field(repr=False, default=None)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        """Everything the server printed so far (stdout and stderr)."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        """Terminate the server (kill it if it does not stop within 10 s) and remove its log."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        if self._log_file is not None:
            self._log_file.close()
        self.log_path.unlink(missing_ok=True)


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def start_streamlit(script: str = "app.py", timeout_s: float = SERVER_START_TIMEOUT_S) -> StreamlitServer:
    """Start ``python -m streamlit run script`` from the project root and wait until it is healthy.

    Output goes to a temporary file rather than a pipe: a pipe nobody reads fills up and
    blocks the server. Fails the test with the server's output if it never comes up.
    """
    port = free_port()
    log_file = tempfile.NamedTemporaryFile("wb", prefix="streamlit-", suffix=".log", delete=False)
    # The app is started the way `cnn-explorer` and run.sh start it (cnn_core/cli.py, then ui/server.py);
    # any other script with plain `streamlit run`.
    start = [sys.executable, "-m", "cnn_core.cli"] if script == "app.py" else [sys.executable, "-m", "streamlit",
                                                                               "run", script]
    cmd = [
        *start,
        "--server.port", str(port),
        "--server.address", "127.0.0.1",
        "--server.headless", "true",
        "--server.fileWatcherType", "none",
        "--browser.gatherUsageStats", "false",
    ]
    process = subprocess.Popen(cmd, cwd=ROOT, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    server = StreamlitServer(process, port, Path(log_file.name), log_file)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log = server.log()
            server.stop()
            pytest.fail(f"streamlit exited with code {process.returncode} before serving:\n{log}")
        if _healthy(server.url):
            return server
        time.sleep(0.25)  # polling an HTTP endpoint: there is no event to wait on
    log = server.log()
    server.stop()
    pytest.fail(f"streamlit was not healthy at {server.url} after {timeout_s:.0f} s:\n{log}")


def default_weights() -> str:
    """The weights file of the model the home page answers with (the default shipped model)."""
    from ui.state import default_model_id, shipped_model_paths

    return shipped_model_paths()[default_model_id()]


# --------------------------------------------------------------------------- the browser

REQUIRE_BROWSER = os.environ.get("CNN_EXPLORER_REQUIRE_BROWSER") == "1"  # CI: a missing browser fails, never skips


def playwright_expect():
    """Playwright's ``expect``; skips the calling test module when playwright is missing (fails it in CI).

    Call at module level: ``expect = playwright_expect()``.
    """
    try:
        from playwright.sync_api import expect
    except ImportError:
        if REQUIRE_BROWSER:
            raise
        pytest.skip("playwright is not installed (pip install -r requirements-dev.txt)", allow_module_level=True)
    return expect



def chromium_path() -> Path:
    """Debian's chromium; skips the test when it is missing, or fails it if CNN_EXPLORER_REQUIRE_BROWSER=1."""
    if CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK):
        return CHROMIUM
    reason = (
        f"no chromium at {CHROMIUM} (install Debian's: sudo apt-get install chromium; "
        "or point CNN_EXPLORER_CHROMIUM at one)"
    )
    if REQUIRE_BROWSER:
        pytest.fail(f"CNN_EXPLORER_REQUIRE_BROWSER=1 but {reason}")
    pytest.skip(reason)


def launch_chromium(playwright):
    """A headless chromium Browser from a Playwright sync instance."""
    try:
        from playwright.sync_api import Error as PlaywrightError
    except ImportError:  # pragma: no cover - playwright is in requirements-dev.txt
        PlaywrightError = Exception
    try:
        return playwright.chromium.launch(executable_path=str(chromium_path()), args=CHROMIUM_ARGS)
    except PlaywrightError as e:
        if REQUIRE_BROWSER:
            raise
        pytest.skip(f"chromium at {CHROMIUM} could not be started: {e}")


# --------------------------------------------------------------------------- the app's pages


@dataclass(frozen=True)
class AppPage:
    """One page of the multipage app."""

    script: Path  # pages/2_Feature_maps.py
    url_path: str  # Feature_maps
    title: str  # Feature maps

    @property
    def screenshot_name(self) -> str:
        return f"{self.url_path.lower()}.png"


def discover_pages(root: Path = ROOT) -> list[AppPage]:
    """The pages in ``pages/`` in Streamlit's order, with the URL path Streamlit gives each.

    Uses Streamlit's own rules (``streamlit.source_util``): the numeric prefix, a leading
    emoji and ``.py`` go, runs of spaces/underscores become one underscore.
    """
    from streamlit.source_util import page_icon_and_name, page_sort_key

    scripts = [
        script
        for script in (root / "pages").glob("*.py")
        # The files Streamlit itself turns into pages (streamlit.runtime.scriptrunner.script_runner).
        if not script.name.startswith(".") and script.name != "__init__.py"
    ]
    pages = []
    for script in sorted(scripts, key=page_sort_key):
        _icon, url_path = page_icon_and_name(script)
        pages.append(AppPage(script, url_path, url_path.replace("_", " ").strip()))
    return pages


# --------------------------------------------------------------------------- waits and checks


def wait_for_script_idle(page, timeout_ms: int = TIMEOUT_MS) -> None:
    """Wait until the app is connected and its script run is over.

    Streamlit marks its root element with ``data-test-script-state`` (initial, running,
    rerunRequested, notRunning...) and ``data-test-connection-state``. Only use this after
    something already showed that the run you care about started (or on a fresh load):
    right after a click the state may still read notRunning from the previous run.
    """
    page.wait_for_function(
        """() => {
            const app = document.querySelector('[data-testid="stApp"]');
            return app !== null
                && app.getAttribute('data-test-connection-state') === 'CONNECTED'
                && app.getAttribute('data-test-script-state') === 'notRunning';
        }""",
        timeout=timeout_ms,
    )


class ScriptRuns:
    """Counts the script runs that the server reports finished to one page, over its websocket.

    Reading the server's own messages cannot miss a run, unlike watching the page's
    "running" marker, which a busy browser may skip when a run is short.
    """

    def __init__(self, page) -> None:
        from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

        self._parse = ForwardMsg.FromString
        self.finished = 0
        page.on("websocket", self._attach)

    def _attach(self, ws) -> None:
        if "/_stcore/stream" in ws.url:
            ws.on("framereceived", self._on_frame)

    def _on_frame(self, payload) -> None:
        if isinstance(payload, str):
            return
        try:
            msg = self._parse(payload)
        except Exception:
            return
        if msg.WhichOneof("type") == "script_finished":
            self.finished += 1


_RUNS: dict[int, ScriptRuns] = {}


def follow_script_runs(page) -> ScriptRuns:
    """Start counting the page's finished script runs; call before the page's first goto."""
    _RUNS[id(page)] = ScriptRuns(page)
    return _RUNS[id(page)]


@contextmanager
def script_rerun(page, timeout_ms: int = TIMEOUT_MS):
    """Run the body (a click, a stroke, a navigation...) and wait until the rerun it caused is over."""
    runs = _RUNS[id(page)]
    before = runs.finished
    yield
    deadline = time.monotonic() + timeout_ms / 1000
    while runs.finished <= before:
        if time.monotonic() > deadline:
            raise AssertionError(f"no script run finished within {timeout_ms / 1000:.0f} s of the action")
        page.wait_for_timeout(50)  # lets Playwright deliver the websocket frames meanwhile
    wait_for_script_idle(page, timeout_ms)  # a further rerun may have been queued meanwhile


# --------------------------------------------------------------------------- README screenshots

UPDATE_SCREENSHOTS = os.environ.get("UPDATE_SCREENSHOTS") == "1"  # also write the README's copies
DOCS_WIDTH = 1000  # README screenshots: downscaled to this width...
DOCS_MAX_HEIGHT = 1600  # ...cut to the top of the page for long pages...
DOCS_MAX_BYTES = 250_000  # ...and kept under this size


def write_docs_copy(path: Path, width: int = DOCS_WIDTH, name: str | None = None) -> Path:
    """A README-sized copy in docs/screenshots: ``width`` wide, at most DOCS_MAX_HEIGHT tall, palette PNG,
    cut shorter if still too big."""
    import io

    from PIL import Image

    DOCS_SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    img = Image.open(path).convert("RGB")
    img = img.resize((width, round(img.height * width / img.width)), Image.Resampling.LANCZOS)
    out = DOCS_SCREENSHOT_DIR / (name or path.name)
    height = min(img.height, DOCS_MAX_HEIGHT)
    while True:
        small = img.crop((0, 0, width, height)).quantize(colors=256, method=Image.Quantize.MEDIANCUT)
        buf = io.BytesIO()
        small.save(buf, "PNG", optimize=True)
        if buf.tell() <= DOCS_MAX_BYTES or height <= width // 2:
            break
        height = int(height * 0.8)  # too big: keep the top of the page, which shows the page's point
    out.write_bytes(buf.getvalue())
    return out


# --------------------------------------------------------------------------- the drawing canvas

CANVAS_INPUT = "canvas.upper-canvas"  # Fabric.js: the top canvas takes the mouse and touch events
CANVAS_DRAWING = "canvas.dc-canvas.lower-canvas"  # the strokes, on the black background the canvas paints


def draw(page, strokes: list[list[tuple[float, float]]], canvas: str = CANVAS_INPUT) -> None:
    """Mouse strokes on a canvas (points in canvas fractions, 0..1 from the top left), waiting for the rerun of each."""
    box = page.locator(canvas).first.bounding_box()
    assert box is not None, "the canvas is not visible"
    for stroke in strokes:
        with script_rerun(page):
            page.mouse.move(box["x"] + stroke[0][0] * box["width"], box["y"] + stroke[0][1] * box["height"])
            page.mouse.down()
            for fx, fy in stroke[1:]:
                page.mouse.move(box["x"] + fx * box["width"], box["y"] + fy * box["height"], steps=2)
            page.mouse.up()


def canvas_image(page, canvas: str = CANVAS_DRAWING):
    """The drawing canvas's RGBA pixels (H, W, 4) uint8, read back from the browser."""
    import base64
    import io

    import numpy as np
    from PIL import Image

    url = page.locator(canvas).first.evaluate("c => c.toDataURL('image/png')")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGBA"))


def error_texts(page) -> list[str]:
    """Texts of exception boxes and error alerts on the page (empty when all is well)."""
    found = []
    for selector in ('[data-testid="stException"]', '[data-testid="stAlertContentError"]'):
        loc = page.locator(selector)
        for i in range(loc.count()):
            found.append(f"{selector}: {loc.nth(i).inner_text()[:2000]}")
    return found


def assert_no_errors(page, where: str) -> None:
    """Fail with the error texts if the page shows an exception or an st.error."""
    errors = error_texts(page)
    assert not errors, f"{where} shows errors:\n" + "\n".join(errors)
