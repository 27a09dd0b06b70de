"""Load test of the app: many browser sessions drawing at once against one `streamlit run app.py`.

    .venv/bin/python bench/bench_load.py [--sessions 20] [--seconds 30]

Starts the app on a free loopback port and opens ``--sessions`` sessions in one headless
chromium (one Playwright browser context each: its own cookies, so its own Streamlit
session). Once every session shows the home page with its canvas, each one, for
``--seconds``, repeatedly draws a short stroke on the canvas and waits for the answer.

A *request* is one stroke: mouse down/move/up on the canvas, which makes the browser send
the drawing and the server rerun app.py (preprocess, trace, figures). It is *served* when
the server's "script finished successfully" message for that rerun has reached the browser
and the page shows a Prediction with no exception box and no st.error. Every stroke adds
ink, so every request is a new digit (no trace cache hit). Latency is from mouse up to
that message. (Script runs are followed on the websocket, not in the DOM: on a starved
machine React batches "running" and "finished" into one render and the DOM never changes.)

Errors: page errors (uncaught JavaScript exceptions), exceptions or st.error sent by the
server or shown on the page, closed websockets, unsuccessful script runs, and timeouts (a
page not opening, or a request not served, within --timeout seconds). The server's RSS
(its process and any children, from /proc) is sampled every 0.5 s.

Prints the figures and exits 1 if there was any error. Everything is bounded: the run
stops by itself and the server is stopped in any case. Only loopback traffic.
Needs Debian's chromium (/usr/bin/chromium, or $CNN_EXPLORER_CHROMIUM) and playwright.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path(os.environ.get("CNN_EXPLORER_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
VIEWPORT = {"width": 1280, "height": 800}
RSS_INTERVAL_S = 0.5
OPENING_AT_ONCE = 4  # sessions opening their page at the same time: 20 at once starve chromium on 2 cores

CANVAS_INPUT = "canvas.upper-canvas"  # Fabric.js: the top canvas takes the mouse events
PROBLEMS = '[data-testid="stException"], [data-testid="stAlertContentError"]'


# --------------------------------------------------------------------------- the server


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port: int, log_path: Path) -> subprocess.Popen:
    """``streamlit run app.py`` on 127.0.0.1:port, output to ``log_path``."""
    cmd = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
           "--server.address", "127.0.0.1", "--server.headless", "true",
           "--server.fileWatcherType", "none", "--browser.gatherUsageStats", "false"]
    with open(log_path, "wb") as log:  # a file, not a pipe nobody reads (a full pipe blocks the server)
        return subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def wait_healthy(proc: subprocess.Popen, url: str, timeout_s: float) -> None:
    """Poll /_stcore/health until it answers 200; raises RuntimeError if the server dies or never answers."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited with code {proc.returncode} before serving")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.25)  # polling an HTTP endpoint: there is no event to wait on
    raise RuntimeError(f"streamlit was not healthy at {url} after {timeout_s:.0f} s")


def stop_server(proc: subprocess.Popen) -> None:
    """Terminate the server, kill it if it does not stop within 10 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])  # the name in () may hold spaces
        children.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo += children.get(p, [])
    return tree


def rss_bytes(pids: list[int]) -> int:
    """Sum of VmRSS of ``pids`` (processes that are gone count 0)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
                        break
        except OSError:
            pass
    return total


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class RssSampler(threading.Thread):
    """Samples the RSS of a process tree every RSS_INTERVAL_S until stopped."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.samples: list[int] = []
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.samples.append(rss_bytes(process_tree(self.pid)))
            self._stop_event.wait(RSS_INTERVAL_S)

    def stop(self) -> None:
        self._stop_event.set()
        if self.is_alive():
            self.join(timeout=5)


# --------------------------------------------------------------------------- one session's websocket


class ServerMessages:
    """Follows the Streamlit messages a page receives: finished script runs and reported problems."""

    def __init__(self) -> None:
        from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

        self._parse = ForwardMsg.FromString
        self._ok = {ForwardMsg.FINISHED_SUCCESSFULLY, ForwardMsg.FINISHED_FRAGMENT_RUN_SUCCESSFULLY}
        self._early = ForwardMsg.FINISHED_EARLY_FOR_RERUN
        self.finished = 0  # successful script runs
        self.problems: list[str] = []
        self.socket = None
        self.changed = asyncio.Event()

    def attach(self, ws) -> None:
        if "/_stcore/stream" not in ws.url:
            return
        self.socket = ws
        ws.on("framereceived", self._on_frame)
        ws.on("close", lambda _ws: self._note("the websocket closed"))

    def _note(self, problem: str) -> None:
        self.problems.append(problem)
        self.changed.set()

    def _on_frame(self, payload) -> None:
        if isinstance(payload, str):
            return
        try:
            msg = self._parse(payload)
        except Exception:
            return
        kind = msg.WhichOneof("type")
        if kind == "script_finished":
            if msg.script_finished in self._ok:
                self.finished += 1
            elif msg.script_finished != self._early:  # a run cut short by a newer one is normal
                self._note(f"script run ended with status {msg.script_finished}")
            self.changed.set()
        elif kind == "delta" and msg.delta.WhichOneof("type") == "new_element":
            element = msg.delta.new_element
            if element.WhichOneof("type") == "exception" and not element.exception.is_warning:
                self._note(f"exception {element.exception.type}: {element.exception.message[:200]}")
            elif element.WhichOneof("type") == "alert" and element.alert.format == element.alert.ERROR:
                self._note(f"st.error: {element.alert.body[:200]}")

    async def wait_finished(self, more_than: int, timeout_s: float) -> None:
        """Wait until more than ``more_than`` runs finished successfully (TimeoutError after timeout_s)."""
        async def until() -> None:
            while self.finished <= more_than and not self.problems:
                self.changed.clear()
                await self.changed.wait()

        await asyncio.wait_for(until(), timeout_s)


# --------------------------------------------------------------------------- the sessions


@dataclass
class Stats:
    """What all sessions did."""

    opened: int = 0  # sessions that showed the home page with its canvas
    held: int = 0  # sessions still connected and error-free at the end
    latencies: list[float] = field(default_factory=list)  # seconds from mouse up to the finished run
    errors: list[str] = field(default_factory=list)

    def error(self, session: int, what: str) -> None:
        self.errors.append(f"session {session}: {what}")


@dataclass
class Start:
    """The starting line: sessions report when they have opened (or failed to), then wait for the go."""

    go: asyncio.Event = field(default_factory=asyncio.Event)
    opening: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(OPENING_AT_ONCE))
    arrived: int = 0
    deadline: float = float("inf")


def stroke(session: int, n: int) -> list[tuple[float, float]]:
    """A short stroke in canvas fractions, different for every session and request, in the middle of the canvas."""
    angle = (session * 0.7 + n * 1.3) % math.pi
    cx = 0.35 + 0.3 * ((session * 7 + n * 3) % 10) / 9
    cy = 0.35 + 0.3 * ((session * 3 + n * 5) % 10) / 9
    dx, dy = 0.12 * math.cos(angle), 0.12 * math.sin(angle)
    return [(cx - dx + 2 * dx * i / 7, cy - dy + 2 * dy * i / 7) for i in range(8)]


def prediction(page):
    """The value of the st.metric labelled "Prediction"."""
    label = page.get_by_test_id("stMetricLabel").filter(has_text=re.compile(r"^\s*Prediction\s*$"))
    return page.get_by_test_id("stMetric").filter(has=label).filter(visible=True).get_by_test_id("stMetricValue")


async def problems_on(page) -> list[str]:
    """Texts of exception boxes and st.error alerts on the page."""
    loc = page.locator(PROBLEMS)
    return [(await loc.nth(i).inner_text())[:300] for i in range(await loc.count())]


async def screenshot(page, session: int, artifacts: Path | None) -> None:
    """Best effort: a screenshot of a failed session for whoever investigates."""
    if page is None or artifacts is None:
        return
    try:
        artifacts.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(artifacts / f"session-{session}.png"), timeout=10_000)
    except Exception:
        pass


async def run_session(i: int, browser, url: str, start: Start, stats: Stats, timeout_s: float,
                      artifacts: Path | None) -> None:
    """One user: open the home page, wait for everybody, then draw strokes until the deadline."""
    from playwright.async_api import Error as PlaywrightError  # TimeoutError is a subclass

    context = page = None
    failed = False
    step = "opening the home page"
    server = ServerMessages()

    def page_error(e) -> None:
        nonlocal failed
        failed = True
        stats.error(i, f"page error: {e}")

    try:
        try:
            async with start.opening:
                context = await browser.new_context(viewport=VIEWPORT)
                context.set_default_timeout(timeout_s * 1000)
                page = await context.new_page()
                page.on("pageerror", page_error)
                page.on("websocket", server.attach)
                await page.goto(url)
                await server.wait_finished(0, timeout_s)  # the first script run
                canvas = page.locator(CANVAS_INPUT)
                await canvas.wait_for(state="visible")
                box = await canvas.bounding_box()
            stats.opened += 1
        finally:
            start.arrived += 1
        await start.go.wait()  # the clock starts when every session has opened (or given up)
        n = 0
        while time.monotonic() < start.deadline and not failed and not server.problems:
            step = f"drawing stroke {n}"
            before = server.finished
            points = [(box["x"] + fx * box["width"], box["y"] + fy * box["height"]) for fx, fy in stroke(i, n)]
            await page.mouse.move(*points[0])
            await page.mouse.down()
            for p in points[1:]:
                await page.mouse.move(*p)
            started = time.perf_counter()
            await page.mouse.up()
            step = f"waiting for the rerun of stroke {n}"
            await server.wait_finished(before, timeout_s)
            if server.problems:
                break
            latency = time.perf_counter() - started
            step = f"waiting for the prediction of stroke {n} to show"
            await prediction(page).wait_for(state="visible")
            shown = await problems_on(page)
            if shown:
                failed = True
                stats.error(i, f"stroke {n}: the page shows {shown}")
                break
            stats.latencies.append(latency)
            n += 1
        for problem in server.problems:
            stats.error(i, f"{problem} ({step})")
        if not failed and not server.problems:
            stats.held += 1
    except (TimeoutError, asyncio.TimeoutError):
        stats.error(i, f"timeout {step} (no answer in {timeout_s:.0f} s)")
        await screenshot(page, i, artifacts)
    except PlaywrightError as e:
        kind = "timeout" if "Timeout" in type(e).__name__ else "browser error"
        stats.error(i, f"{kind} {step}: {str(e).splitlines()[0]}")
        await screenshot(page, i, artifacts)
    finally:
        if context is not None:
            try:
                await context.close()
            except PlaywrightError:
                pass


async def drive(url: str, sessions: int, seconds: float, timeout_s: float,
                artifacts: Path | None) -> tuple[Stats, float, float]:
    """Open the sessions in one chromium, drive them for ``seconds``; returns stats, opening and driving time."""
    from playwright.async_api import async_playwright

    stats = Stats()
    start = Start()
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            t0 = time.monotonic()
            tasks = [asyncio.create_task(run_session(i, browser, url, start, stats, timeout_s, artifacts))
                     for i in range(sessions)]
            # Each step of opening is bounded by timeout_s; sessions open OPENING_AT_ONCE at a time.
            opening_deadline = t0 + 3 * timeout_s * math.ceil(sessions / OPENING_AT_ONCE)
            while start.arrived < sessions and time.monotonic() < opening_deadline:
                await asyncio.sleep(0.1)
            started = time.monotonic()
            start.deadline = started + seconds
            start.go.set()
            # Every request is bounded by timeout_s: this only guards against a hang.
            done, pending = await asyncio.wait(tasks, timeout=seconds + 3 * timeout_s + 30)
            elapsed = time.monotonic() - started
            for t in pending:
                t.cancel()
                stats.error(-1, "a session did not finish in time and was cancelled")
            for t in done:
                if not t.cancelled() and t.exception() is not None:
                    stats.error(-1, f"a session crashed: {t.exception()!r}")
        finally:
            await browser.close()
    return stats, started - t0, elapsed


# --------------------------------------------------------------------------- main


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) by nearest rank."""
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * len(s)) - 1))]


def main(argv: list[str] | None = None) -> int:
    """Run the load test; returns the exit code (0: no errors, 1: errors, 2: cannot run)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sessions", type=int, default=20, help="concurrent browser sessions (default 20)")
    p.add_argument("--seconds", type=float, default=30, help="how long to drive them once all are open (default 30)")
    p.add_argument("--timeout", type=float, default=60,
                   help="seconds a page may take to open, or a request to be served, before it is an error (default 60)")
    p.add_argument("--startup-timeout", type=float, default=120, help="seconds for the server to become healthy")
    p.add_argument("--artifacts", type=Path, help="folder for screenshots of sessions that failed")
    a = p.parse_args(argv)
    if a.sessions < 1 or a.seconds <= 0 or a.timeout <= 0:
        p.error("--sessions, --seconds and --timeout must be positive")
    if not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)):
        print(f"error: no chromium at {CHROMIUM} (apt-get install chromium, or set CNN_EXPLORER_CHROMIUM)",
              file=sys.stderr)
        return 2
    try:
        import playwright  # noqa: F401
    except ImportError:
        print("error: playwright is not installed (pip install -r requirements-dev.txt)", file=sys.stderr)
        return 2

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    fd, name = tempfile.mkstemp(prefix="bench-load-streamlit-", suffix=".log")
    os.close(fd)
    log_path = Path(name)
    server = start_server(port, log_path)
    sampler = RssSampler(server.pid)
    try:
        wait_healthy(server, url, a.startup_timeout)
        sampler.start()
        cpu_before = cpu_seconds(server.pid)
        stats, opening, elapsed = asyncio.run(drive(url, a.sessions, a.seconds, a.timeout, a.artifacts))
        cpu_used = cpu_seconds(server.pid) - cpu_before
        if server.poll() is not None:
            stats.error(-1, f"the server exited with code {server.returncode}")
    except (RuntimeError, OSError) as e:
        print(f"error: {e}\n--- server log ---\n{log_path.read_text(errors='replace')[-4000:]}", file=sys.stderr)
        return 1
    finally:
        sampler.stop()
        stop_server(server)

    lat = stats.latencies
    rss = sampler.samples or [0]
    print(f"sessions requested: {a.sessions} (opened in {opening:.1f} s, {OPENING_AT_ONCE} at a time)")
    print(f"sessions held: {stats.held}")
    print(f"requests served: {len(lat)} in {elapsed:.1f} s ({len(lat) / elapsed:.2f}/s)")
    if lat:
        print(f"request latency: median {statistics.median(lat) * 1000:.0f} ms, "
              f"p95 {percentile(lat, 95) * 1000:.0f} ms, max {max(lat) * 1000:.0f} ms")
    print(f"errors: {len(stats.errors)}")
    for e in stats.errors[:20]:
        print(f"  {e}")
    print(f"server peak RSS: {max(rss) / 2**20:.0f} MiB (at start {rss[0] / 2**20:.0f} MiB, {len(rss)} samples)")
    print(f"server CPU time: {cpu_used:.1f} s while opening and driving, on {os.cpu_count()} cores", flush=True)
    if stats.errors:
        print(f"--- server log (tail) ---\n{log_path.read_text(errors='replace')[-3000:]}", file=sys.stderr)
    log_path.unlink(missing_ok=True)
    return 1 if stats.errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
