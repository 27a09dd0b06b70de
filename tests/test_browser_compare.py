"""In a real browser: on the Compare page, input B drawn with the mouse, and the maps PNG downloaded.

The app is served by ``streamlit run`` and driven by chromium. The test picks "draw B yourself",
draws a 7 on the page's small canvas, and checks that the page reads B as cnn_core reads the canvas's
own pixels; then it downloads the maps PNG and checks its name (layer and digit, no hash) and size.

Needs chromium at /usr/bin/chromium: skipped without it, failed if CNN_EXPLORER_REQUIRE_BROWSER=1.
"""

from __future__ import annotations

import re

import pytest
from browser import (
    CANVAS_INPUT,
    SCREENSHOT_DIR,
    TIMEOUT_MS,
    VIEWPORT,
    assert_no_errors,
    canvas_image,
    draw,
    follow_script_runs,
    playwright_expect,
    script_rerun,
    wait_for_script_idle,
)
from PIL import Image

expect = playwright_expect()

SEVEN = [[(0.25 + 0.5 * i / 20, 0.2) for i in range(21)],
         [(0.75 - 0.3 * i / 30, 0.2 + 0.65 * i / 30) for i in range(31)]]


@pytest.fixture
def page(browser, app_server):
    context = browser.new_context(viewport=VIEWPORT, accept_downloads=True)
    context.set_default_timeout(TIMEOUT_MS)
    pg = context.new_page()
    follow_script_runs(pg)
    yield pg
    context.close()


def test_b_drawn_with_the_mouse_and_the_png_download(page, app_server):
    from cnn_core.checkpoint import load_checkpoint
    from cnn_core.introspect import trace
    from cnn_core.preprocess import preprocess
    from ui.state import default_model_id, shipped_model_paths

    page.goto(f"{app_server.url}/Compare")
    wait_for_script_idle(page)
    with script_rerun(page):
        page.get_by_test_id("stSelectbox").filter(has_text="Input B").click()
        page.get_by_role("option", name=re.compile("Draw B yourself")).click()
    page.locator(CANVAS_INPUT).wait_for(state="visible")
    expect(page.get_by_text("Draw a digit for B")).to_be_visible()
    draw(page, SEVEN)
    wait_for_script_idle(page)

    drawn = preprocess(canvas_image(page))
    assert not drawn.blank
    model = load_checkpoint(shipped_model_paths()[default_model_id()]).model
    expected = trace(model, drawn.tensor).prediction
    expect(page.get_by_text(re.compile(rf"B reads {expected} \("))).to_be_visible()
    expect(page.get_by_text("Draw a digit for B")).to_have_count(0)
    assert_no_errors(page, "the Compare page after drawing B")

    with page.expect_download() as info:
        page.get_by_role("button", name=re.compile(r"Maps of conv1 for A \(\.png\)")).click()
    download = info.value
    assert re.fullmatch(r"cnn_explorer_conv1_maps_[a-z0-9-]+\.png", download.suggested_filename), \
        download.suggested_filename
    assert "sample" in download.suggested_filename  # A is the sample shown when nothing was drawn at home
    image = Image.open(download.path())
    assert image.width >= 1600
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    page.locator(CANVAS_INPUT).scroll_into_view_if_needed()
    page.screenshot(path=str(SCREENSHOT_DIR / "compare_drawn_b.png"), full_page=True)
