"""Stroke -> prediction latency in one real Chromium session, alone and while other sessions draw.

    .venv/bin/python bench/bench_latency.py [--strokes 30] [--others 30] [--targets direct,proxy]

For each target (``direct``: one app process; ``proxy``: ``--processes`` app processes behind the
deploy recipe's nginx, see deploy/run_cluster.py) a fresh server is started and one headless
Chromium page opens the home page. It draws ``--warmup`` strokes that are not counted (the first
stroke after a server start loads what the prediction needs), then ``--strokes`` measured strokes
alone, then ``--others`` light clients (bench/bench_proxy_load.py: Streamlit's websocket protocol
without a browser; each sends the canvas widget's value as the canvas does on mouse-up, a 280x280
PNG data URL plus the Fabric.js paths, waits for its run, thinks ``--think`` s, 0.5x-1.5x at
random) open and draw while the page draws ``--strokes`` more.

What is timed, from just before Playwright releases the mouse on the canvas (the canvas sends its
value on mouse-up):

- ``prediction``: the websocket frame holding the new ``Prediction`` metric (``st.metric("Prediction")``,
  whole page or fragment) reaching the page: the answer is in the browser.
- ``finished``: the run's ``script_finished`` frame reaching the page.
- ``shown``: after that, the page's DOM shows the run's prediction with no run going, no stale
  element and the connection up (checked every animation frame): what the visitor sees.

Frames are followed through Playwright's websocket events (timestamps taken in this process as the
events arrive; Playwright's own relay adds about a millisecond). Each target prints one table row
per phase; the light clients' own figures and the app processes' peak RSS follow. Needs Debian's
chromium and, for the proxy target, nginx.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_load import CANVAS_INPUT, CHROMIUM, CHROMIUM_ARGS, VIEWPORT, percentile, stroke
from bench_proxy_load import LightLoad, LoadStats, RssSampler

PAUSE_S = 0.3  # between a stroke shown and the next: no overlap between runs of the measured session

# True when the page shows `expected` as its Prediction, nothing is running or stale, and the app is connected.
SHOWN_JS = """(expected) => {
  const app = document.querySelector('[data-testid="stApp"]');
  if (!app || app.getAttribute('data-test-connection-state') !== 'CONNECTED'
      || app.getAttribute('data-test-script-state') !== 'notRunning') return false;
  if (document.querySelector('[data-stale="true"]')) return false;
  for (const metric of document.querySelectorAll('[data-testid="stMetric"]')) {
    const label = metric.querySelector('[data-testid="stMetricLabel"]');
    if (label && label.innerText.trim() === 'Prediction') {
      const value = metric.querySelector('[data-testid="stMetricValue"]');
      return value !== null && value.innerText.trim() === expected;
    }
  }
  return false;
}"""

# The page is fully rendered: connected, no run going, nothing stale, no spinner or skeleton, every
# Plotly chart drawn and every image loaded.
RENDERED_JS = """() => {
  const app = document.querySelector('[data-testid="stApp"]');
  if (!app || app.getAttribute('data-test-connection-state') !== 'CONNECTED'
      || app.getAttribute('data-test-script-state') !== 'notRunning') return false;
  if (document.querySelector('[data-stale="true"], [data-testid="stSpinner"], [data-testid="stSkeleton"]')) return false;
  for (const chart of document.querySelectorAll('[data-testid="stPlotlyChart"]')) {
    if (!chart.querySelector('.main-svg')) return false;
  }
  for (const img of document.querySelectorAll('[data-testid="stMain"] img')) {
    if (!img.complete) return false;
  }
  return true;
}"""


# --------------------------------------------------------------------------- what the page receives


@dataclass
class Frame:
    """One websocket message from the server, as the page received it."""

    at: float  # time.perf_counter() when the event reached this process
    size: int  # bytes
    kind: str  # ForwardMsg type: delta, script_finished, new_session...
    element: str = ""  # for a new element: its type (plotly_chart, metric, imgs...)
    label: str = ""  # for a metric: its label
    value: str = ""  # for a metric: its value
    status: int = -1  # for script_finished


@dataclass
class PageWire:
    """Every message the server sends one page over its websocket, in order, with problems noted."""

    frames: list[Frame] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def attach(self, ws: Any) -> None:
        """Playwright's ``page.on("websocket", wire.attach)``: follow the app's stream."""
        if "/_stcore/stream" not in ws.url:
            return
        ws.on("framereceived", self._on_frame)
        ws.on("close", lambda _ws: self._note("the websocket closed"))

    def _note(self, problem: str) -> None:
        self.problems.append(problem)
        self.changed.set()

    def _on_frame(self, payload: bytes | str) -> None:
        from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

        at = time.perf_counter()
        if isinstance(payload, str):
            return
        try:
            msg = ForwardMsg.FromString(payload)
        except Exception:  # not a ForwardMsg: nothing to follow
            return
        frame = Frame(at, len(payload), msg.WhichOneof("type") or "")
        if frame.kind == "script_finished":
            frame.status = msg.script_finished
            ok = {ForwardMsg.FINISHED_SUCCESSFULLY, ForwardMsg.FINISHED_FRAGMENT_RUN_SUCCESSFULLY,
                  ForwardMsg.FINISHED_EARLY_FOR_RERUN}
            if msg.script_finished not in ok:
                self._note(f"script run ended with status {msg.script_finished}")
        elif frame.kind == "delta" and msg.delta.WhichOneof("type") == "new_element":
            element = msg.delta.new_element
            frame.element = element.WhichOneof("type") or ""
            if frame.element == "metric":
                frame.label, frame.value = element.metric.label, element.metric.body
            elif frame.element == "exception" and not element.exception.is_warning:
                self._note(f"exception {element.exception.type}: {element.exception.message[:200]}")
            elif frame.element == "alert" and element.alert.format == element.alert.ERROR:
                self._note(f"st.error: {element.alert.body[:200]}")
        self.frames.append(frame)
        self.changed.set()

    def mark(self) -> int:
        """A position in the stream: what arrives from now on is after it."""
        return len(self.frames)

    def finished_after(self, mark: int) -> Frame | None:
        """The first successful end of a run (whole page or fragment) after ``mark``."""
        from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

        ok = {ForwardMsg.FINISHED_SUCCESSFULLY, ForwardMsg.FINISHED_FRAGMENT_RUN_SUCCESSFULLY}
        return next((f for f in self.frames[mark:] if f.kind == "script_finished" and f.status in ok), None)

    def prediction_after(self, mark: int) -> Frame | None:
        """The first ``Prediction`` metric after ``mark``."""
        return next((f for f in self.frames[mark:] if f.element == "metric" and f.label == "Prediction"), None)

    async def wait_finished(self, mark: int, timeout_s: float) -> Frame:
        """Wait for a successful end of a run after ``mark``; TimeoutError, or RuntimeError on a problem."""
        async def until() -> Frame:
            while True:
                if self.problems:
                    raise RuntimeError("; ".join(self.problems))
                found = self.finished_after(mark)
                if found is not None:
                    return found
                self.changed.clear()
                await self.changed.wait()

        return await asyncio.wait_for(until(), timeout_s)


async def open_page(browser: Any, url: str, timeout_s: float) -> tuple[Any, Any, PageWire]:
    """A new browser context and page following its websocket, at ``url`` once its first run finished."""
    context = await browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(timeout_s * 1000)
    page = await context.new_page()
    wire = PageWire()
    page.on("websocket", wire.attach)
    page.on("pageerror", lambda e: wire._note(f"page error: {e}"))
    await page.goto(url)
    await wire.wait_finished(0, timeout_s)
    return context, page, wire


async def wait_rendered(page: Any, timeout_s: float) -> None:
    """Wait until the page is fully rendered (see RENDERED_JS)."""
    await page.wait_for_function(RENDERED_JS, polling="raf", timeout=timeout_s * 1000)


# --------------------------------------------------------------------------- strokes


@dataclass
class StrokeTimes:
    """Seconds from mouse-up to each milestone of one stroke."""

    prediction: float
    finished: float
    shown: float


async def stroke_down(page: Any, box: dict[str, float], n: int) -> None:
    """Press the mouse on the canvas in ``box`` and draw stroke ``n`` (bench_load's), not releasing it yet."""
    points = [(box["x"] + fx * box["width"], box["y"] + fy * box["height"]) for fx, fy in stroke(0, n)]
    await page.mouse.move(*points[0])
    await page.mouse.down()
    for p in points[1:]:
        await page.mouse.move(*p)


async def draw_and_time(page: Any, wire: PageWire, box: dict[str, float], n: int, timeout_s: float) -> StrokeTimes:
    """Draw stroke ``n`` on the canvas and time its answer (see the module docstring)."""
    await stroke_down(page, box, n)
    mark = wire.mark()
    started = time.perf_counter()
    await page.mouse.up()
    finished = await wire.wait_finished(mark, timeout_s)
    predicted = wire.prediction_after(mark)
    if predicted is None or predicted.at > finished.at:
        raise RuntimeError(f"stroke {n}: the run sent no Prediction")
    await page.wait_for_function(SHOWN_JS, arg=predicted.value, polling="raf", timeout=timeout_s * 1000)
    shown = time.perf_counter()
    return StrokeTimes(predicted.at - started, finished.at - started, shown - started)


@dataclass
class Phase:
    """The measured strokes of one phase (alone, or with others drawing) on one target."""

    target: str
    others: int
    times: list[StrokeTimes] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    load: LoadStats | None = None


async def measure_target(url: str, target: str, a: argparse.Namespace) -> tuple[list[Phase], float]:
    """Warm-up, then the strokes alone, then with ``a.others`` light clients drawing; returns phases and first stroke."""
    from playwright.async_api import async_playwright

    phases = [Phase(target, 0)] + ([Phase(target, a.others)] if a.others else [])
    first = float("nan")
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            context, page, wire = await open_page(browser, url, a.timeout)
            canvas = page.locator(CANVAS_INPUT).first
            await canvas.wait_for(state="visible")
            box = await canvas.bounding_box()
            n = 0
            for _ in range(a.warmup):
                times = await draw_and_time(page, wire, box, n, a.timeout)
                first = times.shown if n == 0 else first
                n += 1
                await asyncio.sleep(PAUSE_S)
            for phase in phases:
                if phase.others > 0:
                    load = LightLoad(url, phase.others, a.think, a.timeout)
                    await load.start()
                    load.go()
                    await asyncio.sleep(a.think)  # let the others get going
                for _ in range(a.strokes):
                    try:
                        phase.times.append(await draw_and_time(page, wire, box, n, a.timeout))
                    except (RuntimeError, TimeoutError) as e:
                        phase.errors.append(f"stroke {n}: {e}")
                        break
                    n += 1
                    await asyncio.sleep(PAUSE_S)
                if phase.others > 0:
                    phase.load = await load.stop()
            await context.close()
        finally:
            await browser.close()
    return phases, first


# --------------------------------------------------------------------------- main


def first_line(e: BaseException, limit: int = 200) -> str:
    """An exception as one short line: its type and the first line of its message."""
    lines = str(e).splitlines()
    return f"{type(e).__name__}: {lines[0][:limit]}" if lines else type(e).__name__


def ms(values: list[float], q: float) -> str:
    """The q-th percentile of ``values`` in whole milliseconds, or '-'."""
    return f"{percentile(values, q) * 1000:.0f}" if values else "-"


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the exit code (0: no errors, 1: errors, 2: cannot run)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--strokes", type=int, default=30, help="measured strokes per phase (default 30)")
    p.add_argument("--warmup", type=int, default=2, help="strokes drawn first and not counted (default 2)")
    p.add_argument("--others", type=int, default=30,
                   help="light clients drawing in the second phase (default 30; 0: no second phase)")
    p.add_argument("--think", type=float, default=1.0, help="their mean pause between strokes, seconds (default 1)")
    p.add_argument("--targets", default="direct,proxy", help="direct, proxy or both (default direct,proxy)")
    p.add_argument("--processes", type=int, default=3, help="app processes behind nginx for the proxy target")
    p.add_argument("--timeout", type=float, default=60, help="seconds a stroke may take before it is an error")
    p.add_argument("--app-root", type=Path, help="serve the app of another copy of the project (default: this one)")
    a = p.parse_args(argv)
    targets = [t.strip() for t in a.targets.split(",") if t.strip()]
    if not targets or set(targets) - {"direct", "proxy"}:
        p.error("--targets takes direct, proxy or direct,proxy")
    if a.strokes < 1 or a.warmup < 1 or a.others < 0 or a.processes < 1:
        p.error("--strokes and --warmup must be at least 1, --others not negative")
    if not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)):
        print(f"error: no chromium at {CHROMIUM} (apt-get install chromium)", file=sys.stderr)
        return 2

    from deploy.run_cluster import Cluster, ClusterError

    rows: list[Phase] = []
    notes: list[str] = []
    for target in targets:
        proxy = target == "proxy"
        cluster = Cluster(a.processes if proxy else 1, proxy=proxy, app_root=a.app_root)
        try:
            cluster.start()
        except ClusterError as e:
            cluster.stop()
            print(f"error: {target}: {e}", file=sys.stderr)
            return 2
        sampler = RssSampler([app.pid for app in cluster.apps if app.pid is not None])
        try:
            sampler.start()
            phases, first = asyncio.run(measure_target(cluster.url, target, a))
            if any(not app.alive() for app in cluster.apps):
                phases[-1].errors.append("an app process exited")
            if any(ph.errors or (ph.load and ph.load.errors) for ph in phases):
                for app in cluster.apps:
                    print(f"--- {target}: app process on port {app.port}: log (tail) ---\n{app.log()[-2000:]}",
                          file=sys.stderr)
        finally:
            sampler.stop()
            cluster.stop()
        per_process, total = sampler.peaks()
        rows += phases
        where = "1 app process" if not proxy else f"nginx + {a.processes} app processes"
        notes.append(f"{target} ({where}): first stroke after the page opened {first * 1000:.0f} ms to shown; "
                     f"app peak RSS {', '.join(f'{b / 2**20:.0f}' for b in per_process)} MiB "
                     f"(sum {total / 2**20:.0f} MiB)")

    print(f"app: {a.app_root or ROOT}; {os.cpu_count()} cores; light clients think {a.think:g} s (0.5x-1.5x)")
    print("milliseconds from mouse-up: p50 / p95 of the prediction frame received, run finished, prediction shown")
    header = (f"{'target':<7} {'others':>6} {'strokes':>7} {'prediction':>12} {'finished':>12} {'shown':>12}"
              f" {'others: strokes, p50/p95 ms, errors':>38}")
    print(header)
    print("-" * len(header))
    errors = 0
    for ph in rows:
        pred = [t.prediction for t in ph.times]
        fin = [t.finished for t in ph.times]
        shown = [t.shown for t in ph.times]
        others = "-"
        if ph.load is not None:
            lat = ph.load.latencies
            others = (f"{len(lat)}, {ms(lat, 50)}/{ms(lat, 95)}, {len(ph.load.errors)}"
                      f" ({ph.load.opened} opened)")
            errors += len(ph.load.errors)
        errors += len(ph.errors)
        print(f"{ph.target:<7} {ph.others:>6} {len(ph.times):>7} {ms(pred, 50):>5} / {ms(pred, 95):>4}"
              f" {ms(fin, 50):>5} / {ms(fin, 95):>4} {ms(shown, 50):>5} / {ms(shown, 95):>4} {others:>38}")
    for note in notes:
        print(note)
    for ph in rows:
        for error in ph.errors + (ph.load.errors[:10] if ph.load else []):
            print(f"error: {ph.target}, {ph.others} others: {error}")
    print(f"errors: {errors}", flush=True)
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
