"""Load test through the deploy recipe: light clients drawing on the home page of N app processes behind nginx.

    .venv/bin/python bench/bench_proxy_load.py [--sessions 60] [--processes 3] [--seconds 30] [--think 1]
    .venv/bin/python bench/bench_proxy_load.py --direct --sessions 30     # one app process, no proxy

Starts the cluster of ``deploy/run_cluster.py`` (``--processes`` app processes and nginx on loopback),
or with ``--direct`` one app process alone, and opens ``--sessions`` *light clients* against it.
Once all are open, each one draws for ``--seconds``: a stroke, wait until it is served, think for
``--think`` seconds (0.5x to 1.5x, at random), again. Prints a table and exits 1 on any error.

A light client is a browser session without the browser: it speaks Streamlit's websocket protocol
(the protobuf messages of ``streamlit.proto``) with the server as the app's page does, and renders
nothing, so that 60 sessions cost the client side almost no CPU (60 Chromium tabs would take the
2 cores from the server). Exactly what one sends:

1. ``GET /`` (the page's HTML), then ``GET /_stcore/health``, as the browser does before its
   websocket, keeping the cookies they set: nginx's sticky-session cookie ``cnnx_route`` (on the
   first response) and Streamlit's ``_streamlit_xsrf`` (on the health check; uploads need it).
2. A websocket to ``/_stcore/stream`` with subprotocol ``streamlit`` and those cookies (no Origin
   header, no compression: the server offers none).
3. The page's first message: ``BackMsg.rerun_script`` with an empty page hash and widget state and
   the browser's context (timezone UTC, locale en-US, URL, light theme). The server runs app.py;
   the client learns the page's script hash (``new_session`` / ``navigation``) and the canvas
   widget's id (the ``bidi_component`` element whose id ends in ``-canvas``: ``st_canvas(key="canvas")``)
   and, if the canvas is in an ``st.fragment``, that fragment's id.
4. Per stroke: ``BackMsg.rerun_script`` with the page hash, the canvas's fragment id (if any), and
   one widget state, the canvas's ``json_value`` as the real canvas sends it on mouse-up:
   ``{"drawing": {"raw": <Fabric.js JSON of the paths>, "data": "data:image/png;base64,..."}}``,
   the PNG being the whole 280x280 drawing (white strokes 20 px wide, round ends, on black) with
   one more 8-point stroke than the last time (a fresh drawing every 12 strokes). About 5-7 KB, like
   the browser's. Other widgets (model picker, Draw/Upload) are not sent: the server keeps their
   defaults, the values a new visitor has.

A stroke is *served* when the server's ``script_finished`` (successful, whole page or fragment)
arrives and the run sent a ``Prediction`` metric, with no exception or ``st.error``; latency is
from sending the stroke to that message. Errors: closed websockets, failed runs, exceptions,
st.error, runs without a prediction, timeouts. App processes' RSS (with any children) is sampled
every 0.5 s. Only loopback traffic; everything is bounded and stopped in any case.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import random
import statistics
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_load import percentile, process_tree, rss_bytes, stroke  # the browser load test's building blocks

CANVAS_SIZE = 280  # st_canvas(width=280, height=280) on the home page
STROKE_WIDTH = 20
STROKES_PER_DRAWING = 12  # then the client starts a fresh drawing, as a visitor clears the canvas
CANVAS_KEY_SUFFIX = "-canvas"  # widget ids end in -<key>; the home page's canvas has key="canvas"
OPEN_AT_ONCE = 10  # sessions opening at the same time (each first run costs the server a few hundred ms)
RSS_INTERVAL_S = 0.5
MAX_FRAME = 64 * 2**20  # largest websocket message accepted from the server
# urllib without the environment's proxy settings: every request here goes to loopback.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# --------------------------------------------------------------------------- the canvas, drawn without a browser


@dataclass
class Drawing:
    """What the home page's canvas holds: strokes in canvas pixels, sent as the canvas sends them."""

    strokes: list[list[tuple[float, float]]] = field(default_factory=list)

    def add(self, points: list[tuple[float, float]]) -> None:
        """One more stroke; a fresh drawing after STROKES_PER_DRAWING (never an empty one: that is no digit)."""
        if len(self.strokes) >= STROKES_PER_DRAWING:
            self.strokes = []
        self.strokes.append(points)

    def png(self) -> bytes:
        """The canvas as PNG: white strokes STROKE_WIDTH px wide with round ends on black, RGBA like the canvas's."""
        from PIL import Image, ImageDraw

        image = Image.new("RGBA", (CANVAS_SIZE, CANVAS_SIZE), (0, 0, 0, 255))
        draw = ImageDraw.Draw(image)
        r = STROKE_WIDTH / 2
        for points in self.strokes:
            draw.line(points, fill=(255, 255, 255, 255), width=STROKE_WIDTH, joint="curve")
            for x, y in (points[0], points[-1]):
                draw.ellipse((x - r, y - r, x + r, y + r), fill=(255, 255, 255, 255))
        out = io.BytesIO()
        image.save(out, format="PNG")
        return out.getvalue()

    def widget_json(self) -> str:
        """The canvas widget's value: Fabric.js-style JSON of the paths and the drawing as a data: URL."""
        objects = [{"type": "Path", "version": "7.4.0", "originX": "center", "originY": "center",
                    "stroke": "#FFFFFF", "strokeWidth": STROKE_WIDTH, "strokeLineCap": "round",
                    "strokeLineJoin": "round", "fill": None,
                    "path": [["M" if i == 0 else "L", round(x, 3), round(y, 3)] for i, (x, y) in enumerate(points)]}
                   for points in self.strokes]
        data = "data:image/png;base64," + base64.b64encode(self.png()).decode("ascii")
        return json.dumps({"drawing": {"raw": {"version": "7.4.0", "objects": objects, "background": "#000000"},
                                       "data": data}}, separators=(",", ":"))


def stroke_pixels(session: int, n: int) -> list[tuple[float, float]]:
    """bench_load's stroke ``n`` of ``session`` (canvas fractions) in canvas pixels."""
    return [(fx * CANVAS_SIZE, fy * CANVAS_SIZE) for fx, fy in stroke(session, n)]


# --------------------------------------------------------------------------- one light client


class SessionError(Exception):
    """A light client's session went wrong: closed, failed run, exception shown, no prediction, timeout."""


@dataclass
class Run:
    """What one script run sent, as far as a light client follows it."""

    sent_at: float
    prediction: str | None = None  # the "Prediction" metric's value, when the run sent one
    prediction_at: float | None = None
    finished_at: float | None = None
    status: int | None = None
    bytes: int = 0


class LightSession:
    """One visitor's session over Streamlit's websocket, without a browser (see the module docstring)."""

    def __init__(self, base_url: str, index: int = 0, cookies: dict[str, str] | None = None) -> None:
        from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

        self.base_url = base_url.rstrip("/")
        self.index = index
        self.cookies = dict(cookies or {})
        self.page_hash = ""
        self.session_id = ""  # the server's id of this session (uploads name it)
        self.canvas_id: str | None = None
        self.canvas_fragment = ""
        self.drawing = Drawing()
        self.strokes = 0
        self.bytes_received = 0
        self.problems: list[str] = []
        self.closed = False
        self.run: Run | None = None
        self._ws: Any = None
        self._reader: asyncio.Task | None = None
        self._changed = asyncio.Event()
        self._msg = ForwardMsg
        self._ok = {ForwardMsg.FINISHED_SUCCESSFULLY, ForwardMsg.FINISHED_FRAGMENT_RUN_SUCCESSFULLY}
        self._early = ForwardMsg.FINISHED_EARLY_FOR_RERUN

    # ------------------------------------------------------------------ connection

    def _get_page(self) -> None:
        """What the browser fetches before its websocket: the page, then the health check (which sets the XSRF cookie)."""
        for path in ("/", "/_stcore/health"):
            request = urllib.request.Request(f"{self.base_url}{path}", headers=self._cookie_header())
            with _DIRECT.open(request, timeout=30) as response:
                response.read()
                for header in response.headers.get_all("Set-Cookie") or []:
                    name, _, value = header.split(";", 1)[0].partition("=")
                    self.cookies[name.strip()] = value.strip()

    def _cookie_header(self) -> dict[str, str]:
        return {"Cookie": "; ".join(f"{k}={v}" for k, v in self.cookies.items())} if self.cookies else {}

    async def open(self, timeout_s: float) -> Run:
        """Load the page, open the websocket and run the page once; returns that first run."""
        from websockets.asyncio.client import connect
        from websockets.typing import Subprotocol

        if not self.cookies:
            await asyncio.to_thread(self._get_page)
        ws_url = "ws" + self.base_url.removeprefix("http") + "/_stcore/stream"
        # proxy=None: websockets would otherwise honour HTTP(S)_PROXY from the environment.
        self._ws = await asyncio.wait_for(
            connect(ws_url, subprotocols=[Subprotocol("streamlit")], additional_headers=self._cookie_header(), compression=None,
                    proxy=None, max_size=MAX_FRAME, open_timeout=timeout_s, ping_interval=None),
            timeout_s)
        self._reader = asyncio.create_task(self._read())
        from streamlit.proto.BackMsg_pb2 import BackMsg
        from streamlit.proto.ClientState_pb2 import ClientState, ContextInfo

        first = BackMsg(rerun_script=ClientState(context_info=ContextInfo(
            timezone="UTC", timezone_offset=0, locale="en-US", url=f"{self.base_url}/", color_scheme="light")))
        return await self._send_and_wait(first, timeout_s)

    async def close(self) -> None:
        """Close the websocket (the server then drops the session after its TTL)."""
        if self._ws is not None:
            try:
                await asyncio.wait_for(self._ws.close(), 5)
            except Exception:  # already closed or the server is gone: nothing left to close
                pass
        if self._reader is not None:
            self._reader.cancel()
            try:
                await self._reader
            except (asyncio.CancelledError, Exception):  # the reader's own end is reported in self.problems
                pass

    # ------------------------------------------------------------------ messages from the server

    async def _read(self) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            async for frame in self._ws:
                if isinstance(frame, bytes):
                    self.bytes_received += len(frame)
                    self._on_frame(frame)
        except ConnectionClosed:
            pass
        finally:
            self.closed = True
            self._note("the websocket closed")

    def _note(self, problem: str) -> None:
        self.problems.append(problem)
        self._changed.set()

    def _on_frame(self, frame: bytes) -> None:
        msg = self._msg.FromString(frame)
        run = self.run
        if run is not None:
            run.bytes += len(frame)
        kind = msg.WhichOneof("type")
        if kind == "new_session":
            self.page_hash = msg.new_session.page_script_hash or self.page_hash
            self.session_id = msg.new_session.initialize.session_id or self.session_id
        elif kind == "navigation":
            self.page_hash = msg.navigation.page_script_hash or self.page_hash
        elif kind == "script_finished":
            if run is not None and msg.script_finished != self._early:  # a run cut short by a newer one is normal
                run.finished_at = time.perf_counter()
                run.status = msg.script_finished
                if msg.script_finished not in self._ok:
                    self._note(f"script run ended with status {msg.script_finished}")
            self._changed.set()
        elif kind == "delta" and msg.delta.WhichOneof("type") == "new_element":
            element = msg.delta.new_element
            which = element.WhichOneof("type")
            if which == "bidi_component" and element.bidi_component.id.endswith(CANVAS_KEY_SUFFIX):
                self.canvas_id = element.bidi_component.id
                self.canvas_fragment = msg.delta.fragment_id
            elif which == "metric" and element.metric.label == "Prediction" and run is not None:
                run.prediction = element.metric.body
                run.prediction_at = time.perf_counter()
            elif which == "exception" and not element.exception.is_warning:
                self._note(f"exception {element.exception.type}: {element.exception.message[:200]}")
            elif which == "alert" and element.alert.format == element.alert.ERROR:
                self._note(f"st.error: {element.alert.body[:200]}")

    async def _send_and_wait(self, msg: Any, timeout_s: float) -> Run:
        if self.closed:
            raise SessionError("the websocket is closed")
        run = self.run = Run(time.perf_counter())
        await self._ws.send(msg.SerializeToString())

        async def until_finished() -> None:
            while run.finished_at is None and not self.problems:
                self._changed.clear()
                await self._changed.wait()

        try:
            await asyncio.wait_for(until_finished(), timeout_s)
        except TimeoutError:
            raise SessionError(f"no answer within {timeout_s:.0f} s") from None
        if self.problems:
            raise SessionError("; ".join(self.problems))
        return run

    # ------------------------------------------------------------------ what a visitor does

    async def draw(self, timeout_s: float) -> Run:
        """Add a stroke and send the canvas as it sends itself on mouse-up; returns the served run."""
        from streamlit.proto.BackMsg_pb2 import BackMsg
        from streamlit.proto.ClientState_pb2 import ClientState
        from streamlit.proto.WidgetStates_pb2 import WidgetState, WidgetStates

        if self.canvas_id is None:
            raise SessionError("the page sent no canvas (no element with key 'canvas')")
        self.drawing.add(stroke_pixels(self.index, self.strokes))
        self.strokes += 1
        state = WidgetState(id=self.canvas_id, json_value=self.drawing.widget_json())
        msg = BackMsg(rerun_script=ClientState(page_script_hash=self.page_hash, fragment_id=self.canvas_fragment,
                                               widget_states=WidgetStates(widgets=[state])))
        run = await self._send_and_wait(msg, timeout_s)
        if run.prediction is None:
            raise SessionError(f"stroke {self.strokes - 1}: the run sent no Prediction")
        return run


# --------------------------------------------------------------------------- many light clients


@dataclass
class LoadStats:
    """What a group of light clients did."""

    opened: int = 0
    held: int = 0  # sessions still open and error-free at the end
    latencies: list[float] = field(default_factory=list)  # seconds from sending a stroke to its finished run
    bytes_received: int = 0
    errors: list[str] = field(default_factory=list)


class LightLoad:
    """``n`` light clients that open, then draw until stopped (``start``, ``go``, ``stop``)."""

    def __init__(self, base_url: str, n: int, think_s: float, timeout_s: float, first_index: int = 1000,
                 seed: int = 0) -> None:
        self.base_url = base_url
        self.n = n
        self.think_s = think_s
        self.timeout_s = timeout_s
        self.first_index = first_index  # strokes differ from those of other groups
        self.stats = LoadStats()
        self.sessions: list[LightSession] = []
        self._go = asyncio.Event()
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._opened: list[asyncio.Future] = []
        self._rng = random.Random(seed)  # this load's own generator: think times are reproducible

    async def start(self) -> None:
        """Open the sessions (OPEN_AT_ONCE at a time); returns when all have opened or failed."""
        gate = asyncio.Semaphore(OPEN_AT_ONCE)
        loop = asyncio.get_running_loop()
        self._opened = [loop.create_future() for _ in range(self.n)]
        self._tasks = [asyncio.create_task(self._session(i, gate)) for i in range(self.n)]
        await asyncio.gather(*self._opened)

    def go(self) -> None:
        """Let the opened sessions start drawing."""
        self._go.set()

    async def stop(self) -> LoadStats:
        """Stop drawing (a stroke in flight is finished), close every session; returns the figures."""
        self._stop.set()
        self._go.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        return self.stats

    async def _session(self, i: int, gate: asyncio.Semaphore) -> None:
        session = LightSession(self.base_url, self.first_index + i)
        self.sessions.append(session)
        step = "opening"
        try:
            try:
                async with gate:
                    await session.open(self.timeout_s)
                self.stats.opened += 1
            finally:
                self._opened[i].set_result(None)
            await self._go.wait()
            while not self._stop.is_set():
                step = f"stroke {session.strokes}"
                run = await session.draw(self.timeout_s)
                assert run.finished_at is not None
                self.stats.latencies.append(run.finished_at - run.sent_at)
                think = self.think_s * self._rng.uniform(0.5, 1.5)
                try:
                    await asyncio.wait_for(self._stop.wait(), think)
                except TimeoutError:
                    pass
            self.stats.held += 1
        except (SessionError, OSError, TimeoutError) as e:
            self.stats.errors.append(f"session {i}: {step}: {e}")
        except Exception as e:  # a light client's own bug must show as an error, not vanish
            self.stats.errors.append(f"session {i}: {step}: {e!r}")
        finally:
            self.stats.bytes_received += session.bytes_received
            session.problems.append("closed by the load test")  # its own close is not an error
            await session.close()


# --------------------------------------------------------------------------- memory of the app processes


class RssSampler(threading.Thread):
    """Samples the RSS of several process trees together every RSS_INTERVAL_S until stopped."""

    def __init__(self, pids: list[int]) -> None:
        super().__init__(daemon=True)
        self.pids = pids
        self.samples: list[list[int]] = []  # one list per sample: bytes per process tree
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.samples.append([rss_bytes(process_tree(pid)) for pid in self.pids])
            self._stop_event.wait(RSS_INTERVAL_S)

    def stop(self) -> None:
        self._stop_event.set()
        if self.is_alive():
            self.join(timeout=5)

    def peaks(self) -> tuple[list[int], int]:
        """Peak RSS per process tree, and the peak of their sum."""
        if not self.samples:
            return [0] * len(self.pids), 0
        return [max(column) for column in zip(*self.samples)], max(sum(s) for s in self.samples)


# --------------------------------------------------------------------------- main


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of the processes (and their children) so far; gone processes count 0."""
    total = 0.0
    for pid in pids:
        for p in process_tree(pid):
            try:
                with open(f"/proc/{p}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


async def drive(url: str, sessions: int, seconds: float, think_s: float, timeout_s: float,
                on_opened: Callable[[], None] = lambda: None) -> tuple[LoadStats, float, float]:
    """Open ``sessions`` light clients, let them draw for ``seconds``; returns stats, opening and driving time.

    ``on_opened`` is called once all sessions are open, before they draw.
    """
    load = LightLoad(url, sessions, think_s, timeout_s, first_index=0)
    t0 = time.monotonic()
    await load.start()
    opened = time.monotonic()
    on_opened()
    load.go()
    await asyncio.sleep(seconds)
    stats = await load.stop()
    return stats, opened - t0, time.monotonic() - opened


def main(argv: list[str] | None = None) -> int:
    """Run the load test; returns the exit code (0: no errors, 1: errors, 2: cannot run)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sessions", type=int, default=60, help="light clients (default 60)")
    p.add_argument("--processes", type=int, default=3, help="app processes behind nginx (default 3)")
    p.add_argument("--direct", action="store_true", help="one app process, no proxy")
    p.add_argument("--seconds", type=float, default=30, help="how long they draw once all are open (default 30)")
    p.add_argument("--think", type=float, default=1.0,
                   help="mean pause between a served stroke and the next, seconds (default 1; 0: back to back)")
    p.add_argument("--timeout", type=float, default=60, help="seconds a run may take before it is an error")
    p.add_argument("--app-root", type=Path, help="serve the app of another copy of the project (default: this one)")
    a = p.parse_args(argv)
    if a.sessions < 1 or a.seconds <= 0 or a.timeout <= 0 or a.think < 0 or a.processes < 1:
        p.error("--sessions, --processes, --seconds and --timeout must be positive, --think not negative")

    from deploy.run_cluster import Cluster, ClusterError

    cluster = Cluster(1 if a.direct else a.processes, proxy=not a.direct, app_root=a.app_root)
    try:
        cluster.start()
    except ClusterError as e:
        cluster.stop()
        print(f"error: {e}", file=sys.stderr)
        return 2
    pids = [app.pid for app in cluster.apps if app.pid is not None]
    sampler = RssSampler(pids)
    spread: list[int] = []
    try:
        sampler.start()
        cpu_before = cpu_seconds(pids)
        stats, opening, elapsed = asyncio.run(drive(cluster.url, a.sessions, a.seconds, a.think, a.timeout,
                                                    lambda: spread.extend(cluster.sessions_per_app())))
        cpu_used = cpu_seconds(pids) - cpu_before
        died = [app.port for app in cluster.apps if not app.alive()]
        if died:
            stats.errors.append(f"app process(es) on port(s) {died} exited")
        if stats.errors:
            for app in cluster.apps:
                print(f"--- app process on port {app.port}: log (tail) ---\n{app.log()[-3000:]}", file=sys.stderr)
    finally:
        sampler.stop()
        cluster.stop()

    lat = stats.latencies
    per_process, total_peak = sampler.peaks()
    where = "direct, 1 app process" if a.direct else f"through nginx, {a.processes} app processes"
    print(f"app: {a.app_root or ROOT}")
    print(f"target: {where}; think time {a.think:g} s (0.5x-1.5x); {os.cpu_count()} cores")
    print(f"sessions requested: {a.sessions} (opened in {opening:.1f} s, {OPEN_AT_ONCE} at a time)")
    print(f"sessions opened: {stats.opened}")
    print(f"sessions held: {stats.held}")
    print(f"open websockets per app process once all had opened: {spread}")
    print(f"strokes served: {len(lat)} in {elapsed:.1f} s ({len(lat) / elapsed:.2f}/s)")
    if lat:
        print(f"stroke latency: median {statistics.median(lat) * 1000:.0f} ms, "
              f"p95 {percentile(lat, 95) * 1000:.0f} ms, max {max(lat) * 1000:.0f} ms")
    print(f"bytes received by the clients: {stats.bytes_received / 2**20:.1f} MiB")
    print(f"errors: {len(stats.errors)}")
    for error in stats.errors[:20]:
        print(f"  {error}")
    print("app peak RSS: " + ", ".join(f"{b / 2**20:.0f} MiB" for b in per_process)
          + f" (sum at its peak {total_peak / 2**20:.0f} MiB)")
    print(f"app CPU time: {cpu_used:.1f} s while opening and drawing", flush=True)
    return 1 if stats.errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
