"""End to end in a real browser: the app served by ``streamlit run``, driven by chromium.

- Draw: mouse strokes on the canvas ("1", "0", "7"); the Prediction metric must show the
  digit drawn, and what cnn_core predicts for the canvas's own pixels.
- Upload: a real MNIST test digit as a PNG file; the prediction must equal the true label
  and cnn_core's prediction for the same bytes. A non-image file gets a friendly error.
- Pages: every page in pages/ (found at run time, so new pages are covered), reached both by
  a fresh URL (no digit drawn yet) and from the sidebar with a drawn digit: no exception,
  no st.error. Full-page screenshots of everything go to artifacts/screenshots/; with
  UPDATE_SCREENSHOTS=1 smaller copies for the README go to docs/screenshots/.

Needs chromium at /usr/bin/chromium: skipped without it, failed if CNN_EXPLORER_REQUIRE_BROWSER=1.
"""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import numpy as np
import pytest
from browser import (
    CANVAS_INPUT,
    SCREENSHOT_DIR,
    TIMEOUT_MS,
    UPDATE_SCREENSHOTS,
    VIEWPORT,
    assert_no_errors,
    canvas_image,
    default_weights,
    discover_pages,
    draw,
    follow_script_runs,
    playwright_expect,
    script_rerun,
    wait_for_script_idle,
    write_docs_copy,
)
from PIL import Image

expect = playwright_expect()


METRIC_VALUE = '[data-testid="stMetricValue"]'
EXCEPTION = '[data-testid="stException"]'
ERROR_ALERT = '[data-testid="stAlertContentError"]'

# Strokes in canvas fractions (0..1 from the top left). Each digit is drawn large and centred,
# as the page asks; points are close together so Fabric records a smooth path.
_ELLIPSE = [(0.5 + 0.22 * np.sin(t), 0.5 - 0.33 * np.cos(t)) for t in np.linspace(0, 2 * np.pi, 41)]
DIGIT_STROKES: dict[int, list[list[tuple[float, float]]]] = {
    1: [[(0.5, 0.15 + 0.70 * i / 30) for i in range(31)]],
    0: [_ELLIPSE],
    7: [
        [(0.28 + 0.44 * i / 20, 0.2) for i in range(21)],
        [(0.72 - 0.26 * i / 30, 0.2 + 0.62 * i / 30) for i in range(31)],
    ],
}


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def screenshot_dir() -> Path:
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    print(f"\nbrowser screenshots: {SCREENSHOT_DIR}")
    return SCREENSHOT_DIR


@pytest.fixture
def page(request, browser, app_server, screenshot_dir):
    """A fresh tab (its own cookies, so its own Streamlit session) at laptop size.

    When the test fails, the tab is saved as FAILED_<test>.png and the server's log is printed.
    """
    context = browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(TIMEOUT_MS)
    pg = context.new_page()
    follow_script_runs(pg)
    failed_before = request.session.testsfailed
    yield pg
    if request.session.testsfailed > failed_before:  # the call phase is reported before teardown
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)
        try:
            pg.screenshot(path=str(screenshot_dir / f"FAILED_{name}.png"), full_page=True)
        except Exception as e:
            print(f"no failure screenshot: {e}")
        print(f"\n--- streamlit log (last 4000 characters) ---\n{app_server.log()[-4000:]}")
    context.close()


@pytest.fixture(scope="session")
def predict():
    """cnn_core's prediction for an image, exactly as the app computes it: load, preprocess, trace."""
    from cnn_core.checkpoint import load_checkpoint
    from cnn_core.introspect import trace
    from cnn_core.preprocess import load_image, preprocess

    model = load_checkpoint(default_weights()).model

    def run(image) -> int:
        if isinstance(image, (bytes, bytearray)):
            image = load_image(bytes(image))
        result = preprocess(image)
        assert not result.blank, "the test's own image preprocessed to blank"
        return trace(model, result.tensor).prediction

    return run


# --------------------------------------------------------------------------- helpers


def open_home(page, server) -> None:
    """Load the home page and wait for its first script run and the canvas."""
    page.goto(server.url)
    wait_for_script_idle(page)
    page.locator(CANVAS_INPUT).wait_for(state="visible")


def wait_for_rendering(page) -> None:
    """Wait until every Plotly chart has drawn and every image has loaded (they render after the run)."""
    # Lazily loaded elements (Plotly among them) show a skeleton until their code has arrived.
    page.wait_for_function(
        """() => document.querySelector('[data-testid^="stSkeleton"], [data-testid="stAppSkeleton"]') === null
              && [...document.querySelectorAll('[data-testid="stPlotlyChart"]')]
                    .every(c => c.offsetParent === null || c.querySelector('.main-svg') !== null)
              && [...document.images].every(img => img.complete)""",
        timeout=TIMEOUT_MS,
    )


def prediction_metric(page):
    """The value of the visible st.metric labelled "Prediction" (the home page has a copy for phones, hidden here)."""
    label = page.get_by_test_id("stMetricLabel").filter(has_text=re.compile(r"^\s*Prediction\s*$"))
    return page.get_by_test_id("stMetric").filter(has=label).filter(visible=True).locator(METRIC_VALUE)


def shown_prediction(page) -> str:
    """The predicted digit the page shows (waits for it to appear)."""
    value = prediction_metric(page)
    value.wait_for(state="visible")
    assert value.count() == 1, f"expected one Prediction metric, found {value.count()}"
    return value.inner_text().strip()


def screenshot(page, name: str) -> Path:
    """A full-page screenshot in artifacts/screenshots (and a README copy with UPDATE_SCREENSHOTS=1).

    Streamlit scrolls inside its main element, not the document, so Playwright's full_page
    would stop at the viewport: grow the viewport to the content's height for the shot.
    """
    page.mouse.move(0, 0)  # hovering the canvas shows its toolbar over the text above it
    wait_for_rendering(page)
    height = page.evaluate(
        """() => Math.max(window.innerHeight, ...[...document.querySelectorAll(
                 '[data-testid="stMain"], [data-testid="stSidebarContent"]')].map(e => e.scrollHeight))"""
    )
    size = page.viewport_size
    page.set_viewport_size({"width": size["width"], "height": min(int(height), 12_000)})
    try:
        # Let the browser lay out and paint at the new size before the shot.
        page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
        path = SCREENSHOT_DIR / name
        page.screenshot(path=str(path), full_page=True)
    finally:
        page.set_viewport_size(size)
    if UPDATE_SCREENSHOTS:
        write_docs_copy(path)
    return path


def mnist_test_digit(label: int) -> np.ndarray:
    """The first bundled MNIST test digit of class ``label`` (28x28 uint8, white on black), read from the IDX files."""
    from cnn_core.paths import BUNDLED_MNIST_DIR

    with gzip.open(BUNDLED_MNIST_DIR / "test-5k-images-idx3-ubyte.gz", "rb") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(BUNDLED_MNIST_DIR / "test-5k-labels-idx1-ubyte.gz", "rb") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)
    return images[int(np.flatnonzero(labels == label)[0])]


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("digit", [1, 0, 7])
def test_drawn_digit_is_predicted(page, app_server, screenshot_dir, predict, digit):
    open_home(page, app_server)
    assert prediction_metric(page).count() == 0, "a fresh session already shows a prediction"

    draw(page, DIGIT_STROKES[digit])
    shown = shown_prediction(page)
    assert_no_errors(page, f"the home page after drawing a {digit}")

    # The page shows what cnn_core says about the canvas's own pixels...
    assert shown == str(predict(canvas_image(page))), "the shown prediction is not cnn_core's for the drawing"
    # ...and that is the digit drawn.
    assert shown == str(digit), f"drew a {digit}, the app predicts {shown}"
    if digit == 0:
        screenshot(page, "home_drawn.png")


def test_uploaded_digit_is_predicted(page, app_server, screenshot_dir, predict, tmp_path):
    label = 4
    png = tmp_path / f"mnist_test_{label}.png"
    Image.fromarray(mnist_test_digit(label)).save(png)
    expected = predict(png.read_bytes())

    open_home(page, app_server)
    with script_rerun(page):
        page.get_by_test_id("stRadio").get_by_text("Upload", exact=True).click()
    file_input = page.locator('[data-testid="stFileUploader"] input[type="file"]')
    file_input.wait_for(state="attached")

    with script_rerun(page):
        file_input.set_input_files(str(png))
    shown = shown_prediction(page)
    assert_no_errors(page, "the home page after uploading an MNIST digit")
    assert shown == str(expected), f"the app shows {shown}, cnn_core predicts {expected} for the same file"
    assert shown == str(label), f"uploaded an MNIST {label}, the app predicts {shown}"
    screenshot(page, "home_upload.png")

    # Another page and back: the upload is still there, with its name and its answer, in Upload mode.
    with script_rerun(page):
        page.locator('[data-testid="stSidebarNav"] a[href$="/Feature_maps"]').click()
    page.wait_for_url("**/Feature_maps")
    with script_rerun(page):
        page.locator('[data-testid="stSidebarNav"] a').first.click()
    expect(prediction_metric(page)).to_have_text(str(expected), timeout=TIMEOUT_MS)
    assert page.get_by_test_id("stRadio").get_by_role("radio", name="Upload").is_checked()
    expect(page.get_by_text(png.name, exact=True).first).to_be_visible()

    # Not an image, whatever the name says: a friendly message, no traceback, no stale prediction.
    fake = tmp_path / "not_a_digit.png"
    fake.write_text("this is a text file, not a picture of a digit\n")
    with script_rerun(page):
        file_input.set_input_files(str(fake))
    error = page.locator(ERROR_ALERT)
    error.first.wait_for(state="visible")
    assert "not_a_digit.png" in error.first.inner_text()
    assert page.locator(EXCEPTION).count() == 0, page.locator(EXCEPTION).first.inner_text()
    # The previous run's elements are removed once the browser has processed the end of this run: wait for it.
    expect(prediction_metric(page)).to_have_count(0, timeout=TIMEOUT_MS)


def test_every_page_renders(page, app_server, screenshot_dir):
    pages = discover_pages()
    assert pages, "no pages found in pages/"

    # Each page by its own URL, in a new session (nothing drawn yet: the pages fall back to a sample).
    for app_page in pages:
        page.goto(f"{app_server.url}/{app_page.url_path}")
        wait_for_script_idle(page)
        wait_for_rendering(page)
        assert_no_errors(page, f"{app_page.url_path} (fresh session)")
        assert page.locator('[data-testid="stHeading"], h1').count() > 0, f"{app_page.url_path} shows no heading"

    # The sidebar lists exactly these pages, and each still works with a digit drawn on the home page.
    open_home(page, app_server)
    nav = page.locator('[data-testid="stSidebarNav"] a')
    hrefs = {nav.nth(i).get_attribute("href").rstrip("/").rsplit("/", 1)[-1] for i in range(nav.count())}
    expected = {p.url_path for p in pages}
    assert expected <= hrefs, f"pages missing from the sidebar: {sorted(expected - hrefs)}"
    draw(page, DIGIT_STROKES[7])
    shown_prediction(page)
    for app_page in pages:
        link = page.locator(f'[data-testid="stSidebarNav"] a[href$="/{app_page.url_path}"]')
        with script_rerun(page):
            link.click()
        page.wait_for_url(f"**/{app_page.url_path}")
        assert_no_errors(page, f"{app_page.url_path} (with a drawn digit)")
        screenshot(page, app_page.screenshot_name)
