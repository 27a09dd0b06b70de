"""First visit of every page on a fresh server, then warm page switches, in one real Chromium session.

    .venv/bin/python bench/bench_cold.py [--targets direct,proxy] [--processes 3] [--no-digit]

For each target (``direct``: one app process; ``proxy``: ``--processes`` app processes behind the
deploy recipe's nginx, see deploy/run_cluster.py) a fresh server is started (its start-up time,
process start to healthy, is printed too) and one headless Chromium page:

1. opens the app's URL (the home page's first visit, timed from the navigation's start);
2. draws one stroke on the home canvas, so that the pages have a digit to show (``--no-digit``: not);
3. opens every other page in sidebar order by clicking its sidebar link: its first visit on this
   server, timed from the click;
4. opens every page again, in the same order: warm page switches (``--rounds N``: N times, and the
   table shows each page's median and slowest warm switch).

A visit ends when the page is *fully rendered*: the server's ``script_finished`` for the run that the
click started has reached the page, and then the DOM shows the app connected, no run going, no stale
element (``data-stale``), no spinner or skeleton, every Plotly chart drawn (its SVG exists) and
every image loaded; checked every animation frame. Pages are found in the sidebar
(``stSidebarNavLink``, after "View more" if the list is folded), so pages added, renamed or moved
under ``st.navigation`` are measured without changing this script. Exceptions and ``st.error``
shown by a page are reported. Needs Debian's chromium and, for the proxy target, nginx.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_latency import PageWire, draw_and_time, first_line, open_page, wait_rendered
from bench_load import CANVAS_INPUT, CHROMIUM, CHROMIUM_ARGS

NAV_LINK = '[data-testid="stSidebarNavLink"]'
NAV_MORE = '[data-testid="stSidebarNavViewButton"]'
PROBLEMS = '[data-testid="stException"], [data-testid="stAlertContentError"]'
# A link's words without its icon (a material icon's name is text in the page, drawn by a font).
LABEL_JS = """(link) => {
  const copy = link.cloneNode(true);
  copy.querySelectorAll('[data-testid="stIconMaterial"], [data-testid="stIconEmoji"]').forEach((n) => n.remove());
  return copy.innerText.replace(/\\s+/g, ' ').trim();
}"""


@dataclass
class Visit:
    """One page opened once."""

    page: str
    seconds: float | None  # None: it failed
    problem: str = ""


@dataclass
class TargetResult:
    """Everything measured on one target."""

    target: str
    server_start_s: float
    first: list[Visit] = field(default_factory=list)
    warm: list[Visit] = field(default_factory=list)
    stroke_s: float | None = None


async def sidebar_links(page: Any) -> list[tuple[str, str]]:
    """(label, href) of every page link in the sidebar, in order; unfolds "View more" first."""
    more = page.locator(NAV_MORE)
    if await more.count() and "more" in (await more.first.inner_text()).lower():
        await more.first.click()
    links = page.locator(NAV_LINK)
    await links.first.wait_for(state="visible")
    found = []
    for i in range(await links.count()):
        link = links.nth(i)
        found.append((await link.evaluate(LABEL_JS), await link.get_attribute("href") or ""))
    return found


async def visit(page: Any, wire: PageWire, label: str, href: str, timeout_s: float) -> Visit:
    """Click the sidebar link ``href`` and time it until the page is fully rendered."""
    mark = wire.mark()
    started = time.perf_counter()
    try:
        await page.locator(f'{NAV_LINK}[href="{href}"]').first.click()
        await wire.wait_finished(mark, timeout_s)
        await wait_rendered(page, timeout_s)
    except Exception as e:  # a timeout, a failed run, Playwright's own errors: this page failed, go on
        return Visit(label, None, first_line(e))
    seconds = time.perf_counter() - started
    shown = page.locator(PROBLEMS)
    problem = (await shown.first.inner_text())[:200] if await shown.count() else ""
    return Visit(label, seconds, problem)


async def measure(url: str, target: str, server_start_s: float, a: argparse.Namespace) -> TargetResult:
    """Home, one stroke, first visits of the other pages in sidebar order, then warm switches."""
    from playwright.async_api import async_playwright

    result = TargetResult(target, server_start_s)
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            started = time.perf_counter()
            context, page, wire = await open_page(browser, url, a.timeout)
            await wait_rendered(page, a.timeout)
            links = await sidebar_links(page)
            here = page.url
            home = next((label for label, href in links if href.rstrip("/") == here.rstrip("/")), links[0][0])
            result.first.append(Visit(home, time.perf_counter() - started))
            if not a.no_digit:
                canvas = page.locator(CANVAS_INPUT).first
                await canvas.wait_for(state="visible")
                result.stroke_s = (await draw_and_time(page, wire, await canvas.bounding_box(), 0, a.timeout)).shown
            for label, href in links:
                if label != home:
                    result.first.append(await visit(page, wire, label, href, a.timeout))
            for _ in range(a.rounds):
                for label, href in links:
                    result.warm.append(await visit(page, wire, label, href, a.timeout))
            await context.close()
        finally:
            await browser.close()
    return result


def seconds(v: Visit | None) -> str:
    """A visit's time for the table."""
    if v is None:
        return "-"
    return "failed" if v.seconds is None else f"{v.seconds:.2f}"


def print_logs(cluster: Any, target: str) -> None:
    """The tail of every app process's log, for whoever investigates a failed page."""
    for app in cluster.apps:
        print(f"--- {target}: app process on port {app.port}: log (tail) ---\n{app.log()[-2000:]}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the exit code (0: every page rendered without errors, 1: not, 2: cannot run)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--targets", default="direct,proxy", help="direct, proxy or both (default direct,proxy)")
    p.add_argument("--processes", type=int, default=3, help="app processes behind nginx for the proxy target")
    p.add_argument("--no-digit", action="store_true", help="do not draw on the home page before visiting the pages")
    p.add_argument("--rounds", type=int, default=1,
                   help="warm switches through every page this many times; the table shows their median and max")
    p.add_argument("--timeout", type=float, default=180, help="seconds a page may take before it is an error")
    p.add_argument("--app-root", type=Path, help="serve the app of another copy of the project (default: this one)")
    a = p.parse_args(argv)
    targets = [t.strip() for t in a.targets.split(",") if t.strip()]
    if not targets or set(targets) - {"direct", "proxy"}:
        p.error("--targets takes direct, proxy or direct,proxy")
    if not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)):
        print(f"error: no chromium at {CHROMIUM} (apt-get install chromium)", file=sys.stderr)
        return 2

    from deploy.run_cluster import Cluster, ClusterError

    results: list[TargetResult] = []
    for target in targets:
        proxy = target == "proxy"
        cluster = Cluster(a.processes if proxy else 1, proxy=proxy, app_root=a.app_root)
        t0 = time.perf_counter()
        try:
            cluster.start()
            result = asyncio.run(measure(cluster.url, target, time.perf_counter() - t0, a))
        except ClusterError as e:
            print(f"error: {target}: {e}", file=sys.stderr)
            return 2
        except Exception as e:  # the home page never opened: nothing else can be measured
            print(f"error: {target}: the home page did not open: {e}", file=sys.stderr)
            print_logs(cluster, target)
            return 1
        else:
            results.append(result)
            if any(v.seconds is None or v.problem for v in result.first + result.warm):
                print_logs(cluster, target)
        finally:
            cluster.stop()

    print(f"app: {a.app_root or ROOT}; {os.cpu_count()} cores; seconds to fully rendered")
    for r in results:
        where = "1 app process" if r.target == "direct" else f"nginx + {a.processes} app processes"
        stroke = f"; first stroke {r.stroke_s * 1000:.0f} ms to shown" if r.stroke_s is not None else ""
        print(f"\n{r.target} ({where}): server start to healthy {r.server_start_s:.1f} s{stroke}")
        header = f"{'page':<22} {'first visit':>11} {'warm switch':>11}" + (f" {'warm max':>9}" if a.rounds > 1 else "")
        print(header)
        print("-" * len(header))
        medians = []
        for v in r.first:
            warm = sorted(w.seconds for w in r.warm if w.page == v.page and w.seconds is not None)
            medians += [statistics.median(warm)] if warm else []
            median = f"{medians[-1]:>11.2f}" if warm else f"{'failed':>11}"
            worst = (f" {warm[-1]:>9.2f}" if warm else f" {'failed':>9}") if a.rounds > 1 else ""
            print(f"{v.page:<22} {seconds(v):>11} {median}{worst}")
        firsts = [v.seconds for v in r.first if v.seconds is not None]
        warms = [v.seconds for v in r.warm if v.seconds is not None]
        if firsts and warms:
            print(f"{'slowest':<22} {max(firsts):>11.2f} {max(medians):>11.2f}"
                  + (f" {max(warms):>9.2f}" if a.rounds > 1 else ""))
    problems = [(r.target, v) for r in results for v in r.first + r.warm if v.seconds is None or v.problem]
    for target, v in problems:
        print(f"error: {target}: {v.page}: {v.problem or 'failed'}")
    print(f"errors: {len(problems)}", flush=True)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
