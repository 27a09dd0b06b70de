"""What the server sends per run of each page: websocket bytes (and media files), by element, in one Chromium session.

    .venv/bin/python bench/bench_bytes.py [--top 4]

Starts one app process and opens it in headless Chromium, then for every page in sidebar order
(found as bench_cold.py finds them):

- ``first load``: the page opened from the sidebar (the home page: the app's URL, then a stroke on
  its canvas so that the other pages have a digit), counted from the click to the run's end;
- ``new input``: the run that follows a new digit. On a page with a canvas of its own (the home
  page), one more stroke on it; on the others, one more stroke on the home page, then the page
  opened again, counting only that page's run.

Counted: the size of every websocket message the server sends the page for that run (Streamlit's
protobuf ``ForwardMsg``; the server sends them uncompressed), plus the bodies of ``/media/`` files
the page fetches meanwhile (what ``st.image`` and downloads are served as). The heaviest element
types of each page's first load are listed (count x type: KiB), so that what to cut is plain:
issue 13 item 2. The browser keeps no message cache across runs in this Streamlit (it sends no
cached hashes), so every run resends every element it draws.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_cold import NAV_LINK, sidebar_links
from bench_latency import Frame, PageWire, first_line, open_page, stroke_down, wait_rendered
from bench_load import CANVAS_INPUT, CHROMIUM, CHROMIUM_ARGS


@dataclass
class Traffic:
    """What one run sent: websocket messages and media files."""

    frames: list[Frame] = field(default_factory=list)
    media: int = 0  # bytes of /media/ bodies
    problem: str = ""

    @property
    def websocket(self) -> int:
        return sum(f.size for f in self.frames)

    @property
    def total(self) -> int:
        return self.websocket + self.media

    def heaviest(self, top: int) -> str:
        """The ``top`` element types by bytes, as "count x type: KiB"."""
        by_type: dict[str, list[int]] = defaultdict(list)
        for f in self.frames:
            if f.element:
                by_type[f.element].append(f.size)
        ranked = sorted(by_type.items(), key=lambda kv: -sum(kv[1]))[:top]
        return ", ".join(f"{len(sizes)} x {kind}: {sum(sizes) / 1024:.1f}" for kind, sizes in ranked)


class Media:
    """Bodies of /media/ responses the page received, with the time they arrived."""

    def __init__(self) -> None:
        self.received: list[tuple[float, int]] = []

    async def on_response(self, response: Any) -> None:
        if "/media/" not in response.url:
            return
        try:
            size = len(await response.body())
        except Exception:  # a body the page no longer holds (navigated away): count nothing
            return
        self.received.append((time.perf_counter(), size))

    def between(self, start: float, end: float) -> int:
        return sum(size for at, size in self.received if start <= at <= end)


async def run_traffic(page: Any, wire: PageWire, media: Media, action: Any, timeout_s: float) -> Traffic:
    """Do ``action`` (a coroutine function), wait until the run it starts is over and rendered; what it sent."""
    mark = wire.mark()
    started = time.perf_counter()
    try:
        await action()
        end = await wire.wait_finished(mark, timeout_s)
        await wait_rendered(page, timeout_s)
    except Exception as e:  # a failed page is reported in the table, the others are still measured
        return Traffic(wire.frames[mark:], problem=first_line(e))
    await asyncio.sleep(0.2)  # media requests of the last elements may still be in flight
    end_index = wire.frames.index(end) + 1
    return Traffic(wire.frames[mark:end_index], media.between(started, time.perf_counter()))


async def measure(url: str, a: argparse.Namespace) -> list[tuple[str, Traffic, Traffic]]:
    """(page, first load, new input) for every page in sidebar order."""
    from playwright.async_api import async_playwright

    rows = []
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            media = Media()
            context, page, wire = await open_page(browser, url, a.timeout)
            page.on("response", media.on_response)
            await wait_rendered(page, a.timeout)
            home_load = Traffic(wire.frames[:wire.mark()])  # the first run, up to now
            links = await sidebar_links(page)
            home_href = next((href for _, href in links if href.rstrip("/") == page.url.rstrip("/")), links[0][1])
            strokes = 0

            async def stroke_here() -> None:  # on the page's (first) canvas; the run it starts is waited for
                nonlocal strokes
                await stroke_down(page, await page.locator(CANVAS_INPUT).first.bounding_box(), strokes)
                await page.mouse.up()
                strokes += 1

            def open_link(href: str) -> Any:
                return lambda: page.locator(f'{NAV_LINK}[href="{href}"]').first.click()

            home_input = await run_traffic(page, wire, media, stroke_here, a.timeout)
            for label, href in links:
                if href == home_href:
                    rows.append((label, home_load, home_input))
                    continue
                first = await run_traffic(page, wire, media, open_link(href), a.timeout)
                if await page.locator(CANVAS_INPUT).count():
                    new_input = await run_traffic(page, wire, media, stroke_here, a.timeout)
                else:
                    await run_traffic(page, wire, media, open_link(home_href), a.timeout)
                    await run_traffic(page, wire, media, stroke_here, a.timeout)
                    new_input = await run_traffic(page, wire, media, open_link(href), a.timeout)
                rows.append((label, first, new_input))
            await context.close()
        finally:
            await browser.close()
    return rows


def kib(t: Traffic) -> str:
    """Total KiB of a run, with the media part if any."""
    if t.problem:
        return "failed"
    media = f" ({t.media / 1024:.0f} media)" if t.media else ""
    return f"{t.total / 1024:.1f}{media}"


def main(argv: list[str] | None = None) -> int:
    """Run the measurement; returns the exit code (0: every page measured, 1: not, 2: cannot run)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--top", type=int, default=4, help="heaviest element types listed per page (default 4)")
    p.add_argument("--timeout", type=float, default=180, help="seconds a page may take before it is an error")
    p.add_argument("--app-root", type=Path, help="serve the app of another copy of the project (default: this one)")
    a = p.parse_args(argv)
    if not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)):
        print(f"error: no chromium at {CHROMIUM} (apt-get install chromium)", file=sys.stderr)
        return 2

    from deploy.run_cluster import Cluster, ClusterError

    cluster = Cluster(1, proxy=False, app_root=a.app_root)
    try:
        cluster.start()
        rows = asyncio.run(measure(cluster.url, a))
    except ClusterError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # the home page never opened
        print(f"error: the home page did not open: {e}\n{cluster.apps[0].log()[-2000:]}", file=sys.stderr)
        return 1
    finally:
        cluster.stop()

    print(f"app: {a.app_root or ROOT}; KiB the server sends per run (websocket messages + /media/ files)")
    header = f"{'page':<22} {'first load':>16} {'new input':>16}  heaviest in the first load (KiB)"
    print(header)
    print("-" * len(header))
    for label, first, new_input in rows:
        print(f"{label:<22} {kib(first):>16} {kib(new_input):>16}  {first.heaviest(a.top)}")
    problems = [(label, t.problem) for label, first, new_input in rows for t in (first, new_input) if t.problem]
    for label, problem in problems:
        print(f"error: {label}: {problem}")
    print(f"errors: {len(problems)}", flush=True)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
