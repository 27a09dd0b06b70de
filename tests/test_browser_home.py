"""The home page's canvas in a real browser: Undo and Clear, no hover toolbar, and the drawing kept across pages.

Needs chromium at /usr/bin/chromium: skipped without it, failed if CNN_EXPLORER_REQUIRE_BROWSER=1.
"""

from __future__ import annotations

import re

import pytest
from browser import (
    CANVAS_DRAWING,
    CANVAS_INPUT,
    TIMEOUT_MS,
    VIEWPORT,
    assert_no_errors,
    draw,
    follow_script_runs,
    playwright_expect,
    script_rerun,
    wait_for_script_idle,
)

expect = playwright_expect()

BAR = [(0.28 + 0.44 * i / 20, 0.2) for i in range(21)]  # the top bar of a 7
SLANT = [(0.72 - 0.26 * i / 30, 0.2 + 0.62 * i / 30) for i in range(31)]  # its stem
INK_JS = """c => {
    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    let n = 0; for (let i = 0; i < d.length; i += 4) if (d[i] > 127 && d[i + 3] > 127) n++; return n; }"""


@pytest.fixture
def page(browser, app_server):
    context = browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(TIMEOUT_MS)
    pg = context.new_page()
    follow_script_runs(pg)
    yield pg
    context.close()


def prediction(page):
    label = page.get_by_test_id("stMetricLabel").filter(has_text=re.compile(r"^\s*Prediction\s*$"))
    return page.get_by_test_id("stMetric").filter(has=label).filter(visible=True).get_by_test_id("stMetricValue")


def stroke(page, points) -> None:
    draw(page, [points])


def ink(page) -> int:
    """Canvas pixels covered by strokes (white on the black background the canvas draws)."""
    return int(page.locator(CANVAS_DRAWING).evaluate(INK_JS))


def wait_for_ink(page, check, what: str) -> int:
    """Wait until ``check(ink pixels)`` holds (the canvas reloads asynchronously after Undo, Clear, a page change)."""
    deadline_ms = TIMEOUT_MS
    while deadline_ms > 0:
        n = ink(page)
        if check(n):
            return n
        page.wait_for_timeout(100)
        deadline_ms -= 100
    raise AssertionError(f"{what}: the canvas has {ink(page)} ink pixels")


def test_undo_clear_and_the_drawing_kept_across_pages(page, app_server):
    page.goto(app_server.url)
    wait_for_script_idle(page)
    page.locator(CANVAS_INPUT).wait_for(state="visible")

    # The canvas's own toolbar (with its stroke-moving edit mode) is hidden: the page has buttons instead.
    page.locator(CANVAS_INPUT).hover()
    toolbar = page.locator(".dc-toolbar")  # Playwright's CSS engine looks inside open shadow roots
    toolbar.wait_for(state="attached")
    expect(toolbar).to_be_hidden(timeout=5_000)

    stroke(page, BAR)
    one = ink(page)
    stroke(page, SLANT)
    expect(prediction(page)).to_have_text("7", timeout=TIMEOUT_MS)
    both = ink(page)
    assert both > one > 0

    # Undo takes the last stroke away, and the prediction follows the drawing that is left.
    page.get_by_role("button", name="Undo").click()
    wait_for_ink(page, lambda n: abs(n - one) < 0.1 * one, "after Undo")
    expect(prediction(page)).not_to_have_text("7", timeout=TIMEOUT_MS)
    stroke(page, SLANT)
    expect(prediction(page)).to_have_text("7", timeout=TIMEOUT_MS)

    # Another page and back: the strokes are on the canvas again, the answer with them, and a new stroke
    # adds to them instead of replacing them.
    with script_rerun(page):
        page.locator('[data-testid="stSidebarNav"] a[href$="/Feature_maps"]').click()
    page.wait_for_url("**/Feature_maps")
    with script_rerun(page):
        page.locator('[data-testid="stSidebarNav"] a').first.click()
    page.locator(CANVAS_INPUT).wait_for(state="visible")
    wait_for_ink(page, lambda n: abs(n - both) < 0.1 * both, "back on the home page")
    expect(prediction(page)).to_have_text("7", timeout=TIMEOUT_MS)
    dot = [(0.2, 0.8), (0.22, 0.82)]
    stroke(page, dot)
    wait_for_ink(page, lambda n: n > both, "after one more stroke")
    assert_no_errors(page, "the home page after a visit to another page")

    # Clear empties the canvas and takes the answer away.
    page.get_by_role("button", name="Clear").click()
    wait_for_ink(page, lambda n: n == 0, "after Clear")
    expect(prediction(page)).to_have_count(0, timeout=TIMEOUT_MS)


def test_each_stroke_is_sent_once_when_it_ends(page, app_server):
    """The page presses the canvas's hidden "send" button at mouse-up instead of waiting for the component's
    200 ms debounce: each stroke must still reach the server exactly once (no second, debounced copy)."""
    from streamlit.proto.BackMsg_pb2 import BackMsg

    reruns: list[int] = []

    def on_sent(payload) -> None:
        if isinstance(payload, bytes):
            msg = BackMsg.FromString(payload)
            if msg.WhichOneof("type") == "rerun_script":
                reruns.append(len(payload))

    page.on("websocket", lambda ws: ws.on("framesent", on_sent))
    page.goto(app_server.url)
    wait_for_script_idle(page)
    page.locator(CANVAS_INPUT).wait_for(state="visible")
    send = page.locator('button[aria-label="Update the app with this drawing"]')  # inside the open shadow root
    expect(send).to_have_count(1)

    for points in (BAR, SLANT):
        before = len(reruns)
        with script_rerun(page):
            stroke(page, points)
        page.wait_for_timeout(600)  # well past the component's own 200 ms wait: a debounced copy would be here
        assert len(reruns) - before == 1, f"a stroke sent {len(reruns) - before} drawings"
    expect(prediction(page)).to_have_text("7", timeout=TIMEOUT_MS)
