"""In a real browser: the Overview page (the whole network at once) and the Architecture page's fc1·fc2 lesson.

- Laptop (1280x800): every layer's picture is on one row and on screen; clicking a map of conv2 selects
  that unit (its strongest position for the digit, as cnn_core computes it) and lights up, in orange,
  the maps of pool1 that move it most; its button opens the Receptive field page on the same unit.
- Drawing on the Overview's canvas makes the drawing the digit every layer shows, read as cnn_core
  reads the canvas's own pixels.
- Phone (390x844): the layers wrap into rows that fit the screen; the Architecture table keeps its
  shape and parameter columns in view.

With UPDATE_SCREENSHOTS=1 the README's overview.png, overview_phone.png and fc_lesson.png are written
to docs/screenshots/. Needs chromium at /usr/bin/chromium: skipped without it, failed if
CNN_EXPLORER_REQUIRE_BROWSER=1.
"""

from __future__ import annotations

import base64
import io
import os
import re

import numpy as np
import pytest
from browser import (
    DOCS_SCREENSHOT_DIR,
    SCREENSHOT_DIR,
    TIMEOUT_MS,
    VIEWPORT,
    assert_no_errors,
    default_weights,
    follow_script_runs,
    playwright_expect,
    script_rerun,
    wait_for_script_idle,
)
from PIL import Image

expect = playwright_expect()

PHONE = {"width": 390, "height": 844}
UPDATE_SCREENSHOTS = os.environ.get("UPDATE_SCREENSHOTS") == "1"
CANVAS_INPUT = "canvas.upper-canvas"  # Fabric.js: the top canvas takes the mouse events
CANVAS_DRAWING = "canvas.dc-canvas.lower-canvas"


# --------------------------------------------------------------------------- fixtures and helpers


def new_page(browser, viewport):
    context = browser.new_context(viewport=viewport)
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    follow_script_runs(page)
    return context, page


@pytest.fixture
def laptop(browser, app_server):
    context, page = new_page(browser, VIEWPORT)
    yield page
    context.close()


@pytest.fixture
def phone(browser, app_server):
    context, page = new_page(browser, PHONE)
    yield page
    context.close()


@pytest.fixture(scope="module")
def shown():
    """The default model, the page's fallback digit (the first sample) and its trace, as the page computes them."""
    from cnn_core.checkpoint import load_checkpoint
    from cnn_core.introspect import trace
    from cnn_core.preprocess import normalise
    from cnn_core.samples import load_samples

    model = load_checkpoint(default_weights()).model
    return model, trace(model, normalise(load_samples()[0].pixels))


def layout(model):
    """The page's panels and charts for ``model``: the same ui.overview calls the page makes."""
    from cnn_core.architecture import layer_table
    from cnn_core.unit_sources import shown_layers
    from ui import overview as ov

    rows = {r.name: r for r in layer_table(model)}
    names = shown_layers(model)
    shapes = [rows[n].output_shape for n in names]
    height = ov.strip_height(shapes)
    panels = [ov.layout_panel(n, rows[n].kind, s, height, is_output=i == len(names) - 1,
                              flat_from=shapes[i - 1] if i else None) for i, (n, s) in enumerate(zip(names, shapes))]
    return ov.stage_groups(panels)


def panel_origin(groups, name: str) -> tuple[str, object, float]:
    """(chart key, panel, x of the panel in its chart) of the layer ``name``."""
    from ui import overview as ov

    for group in groups:
        x = (ov.group_width(group) - (sum(p.width for p in group) + ov.LAYER_GAP * (len(group) - 1))) / 2
        for p in group:
            if p.name == name:
                return f"ov_chart_{group[0].name}", p, x
            x += p.width + ov.LAYER_GAP
    raise KeyError(name)


def plot_area(page, chart_key: str) -> dict:
    """The bounding box of a chart's plotting area (its pixels are the figure's, one to one)."""
    area = page.locator(f".st-key-{chart_key} .nsewdrag").first
    area.wait_for(state="visible")
    box = area.bounding_box()
    assert box is not None
    return box


def wait_for_pictures(page, count: int) -> None:
    """Wait until the strip's charts have drawn all ``count`` layer pictures."""
    page.wait_for_function(
        """n => document.querySelectorAll('[class*="st-key-ov_chart_"] .imagelayer image').length === n
              && document.querySelector('[data-testid^="stSkeleton"]') === null""",
        arg=count, timeout=TIMEOUT_MS)
    page.wait_for_timeout(300)  # the data-URI images decode after they are attached


def open_overview(page, server, layers: int) -> None:
    page.goto(f"{server.url}/Overview")
    wait_for_script_idle(page)
    wait_for_pictures(page, layers)


def orange_share(pixels: np.ndarray) -> float:
    """The share of pixels of the highlight's orange (ui.overview.SOURCE_COLOUR, #f58518), antialiased or not.

    Orange has far more green than blue; no colour of the maps' blue-white-red scale does (at most 35 more).
    """
    r, g, b = (pixels[..., i].astype(int) for i in range(3))
    return float(((r > 200) & (g - b > 50)).mean())


def save_docs(image: Image.Image, name: str, width: int | None = 1000, max_height: int = 1600) -> None:
    """A README copy in docs/screenshots (only with UPDATE_SCREENSHOTS=1), small enough to keep in the repository."""
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    image.save(SCREENSHOT_DIR / name)
    if not UPDATE_SCREENSHOTS:
        return
    DOCS_SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    img = image.convert("RGB")
    if width is not None and img.width > width:
        img = img.resize((width, round(img.height * width / img.width)), Image.Resampling.LANCZOS)
    img = img.crop((0, 0, img.width, min(img.height, max_height)))
    img.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(DOCS_SCREENSHOT_DIR / name, optimize=True)


def grab(page, full_height: int | None = None, **clip) -> Image.Image:
    """A screenshot as a PIL image; ``full_height`` grows the viewport first (Streamlit scrolls inside its main
    element, so Playwright's full_page stops at the viewport)."""
    size = page.viewport_size
    if full_height:
        page.set_viewport_size({"width": size["width"], "height": full_height})
        page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
        page.wait_for_timeout(500)
    try:
        png = page.screenshot(**({"clip": clip} if clip else {}))
    finally:
        page.set_viewport_size(size)
    return Image.open(io.BytesIO(png))


# --------------------------------------------------------------------------- tests


def test_the_network_fits_a_laptop_and_a_click_lights_up_what_a_unit_reads(laptop, app_server, shown):
    from cnn_core.unit_sources import shown_layers, unit_sources

    model, tr = shown
    page = laptop
    open_overview(page, app_server, len(shown_layers(model)))
    assert_no_errors(page, "the Overview page")

    # One screen: the charts side by side on one row, inside the window.
    charts = page.locator('[class*="st-key-ov_chart_"]')
    boxes = [charts.nth(i).bounding_box() for i in range(charts.count())]
    assert len(boxes) == len(layout(model))
    assert len({round(b["y"]) for b in boxes}) == 1, "the layers wrapped onto a second row"
    assert max(b["x"] + b["width"] for b in boxes) <= VIEWPORT["width"]
    assert max(b["y"] + b["height"] for b in boxes) <= VIEWPORT["height"], "the strip runs off the screen"

    # Click map 10 of conv2.
    groups = layout(model)
    chart_key, conv2, x0 = panel_origin(groups, "conv2")
    box = plot_area(page, chart_key)
    channel = 10
    cx, cy = conv2.blocks[channel].centre
    with script_rerun(page):
        page.mouse.move(box["x"] + x0 + cx, box["y"] + cy)  # hover first: Plotly picks the point under the pointer
        page.mouse.click(box["x"] + x0 + cx, box["y"] + cy)
    r, k = divmod(int(tr["conv2"][channel].argmax()), tr["conv2"].shape[-1])
    expect(page.get_by_role("heading", name=f"conv2[{channel}, {r}, {k}]: convolution")).to_be_visible()
    src = unit_sources(model, tr, "conv2", (channel, r, k))
    wait_for_pictures(page, len(shown_layers(model)))
    page.mouse.move(0, 0)  # no hover label over the pictures

    # The maps of pool1 that move it most get an orange frame; another map only the small window.
    chart_key, pool1, x1 = panel_origin(groups, "pool1")
    box = plot_area(page, chart_key)
    picture = grab(page)
    save_docs(picture, "overview.png")
    shot = np.asarray(picture.convert("RGB"))
    weak = next(c for c in range(pool1.shape[0]) if c not in src.strongest[:3])
    for c, framed in ((src.strongest[0], True), (weak, False)):
        b = pool1.blocks[c]
        top = int(box["y"] + b.top) - 1  # the frame's line runs just above the tile
        left, right = int(box["x"] + x1 + b.left), int(box["x"] + x1 + b.right)
        edge = shot[top - 1: top + 2, left:right]
        assert (orange_share(edge) > 0.4) == framed, (c, orange_share(edge))
        assert orange_share(shot[int(box["y"] + b.top): int(box["y"] + b.bottom), left:right]) > 0.01, c  # its window

    # Its button opens the Receptive field page on the same unit.
    with script_rerun(page):
        page.get_by_role("button", name=re.compile("Receptive field")).click()
    page.wait_for_url(re.compile(r"/Receptive_field$"))
    wait_for_script_idle(page)
    label = page.get_by_test_id("stMetricLabel").filter(has_text=re.compile(r"^\s*Unit\s*$"))
    unit = page.get_by_test_id("stMetric").filter(has=label).get_by_test_id("stMetricValue")
    expect(unit).to_have_text(f"conv2[{channel}, {r}, {k}]")
    assert_no_errors(page, "the Receptive field page opened from the Overview")


def test_drawing_on_the_overview_changes_every_layer(laptop, app_server, shown):
    from cnn_core.checkpoint import load_checkpoint
    from cnn_core.introspect import trace
    from cnn_core.preprocess import preprocess
    from cnn_core.unit_sources import shown_layers

    model, _ = shown
    page = laptop
    open_overview(page, app_server, len(shown_layers(model)))
    before = page.locator(".st-key-ov_input_column img").first.get_attribute("src")
    canvas = page.locator(CANVAS_INPUT)
    box = canvas.bounding_box()
    assert box is not None
    # The canvas's toolbar slides over its top edge until the pointer is on the canvas: hover it first.
    page.mouse.move(box["x"] + 0.5 * box["width"], box["y"] + 0.6 * box["height"])
    page.wait_for_timeout(300)
    with script_rerun(page):  # a "7": a bar, then a slanted stroke down
        page.mouse.move(box["x"] + 0.25 * box["width"], box["y"] + 0.3 * box["height"])
        page.mouse.down()
        for i in range(1, 21):
            page.mouse.move(box["x"] + (0.25 + 0.5 * i / 20) * box["width"], box["y"] + 0.3 * box["height"], steps=2)
        for i in range(1, 31):
            page.mouse.move(box["x"] + (0.75 - 0.3 * i / 30) * box["width"],
                            box["y"] + (0.3 + 0.6 * i / 30) * box["height"], steps=2)
        page.mouse.up()
    intro = page.get_by_test_id("stMain").get_by_test_id("stMarkdownContainer").filter(has_text="through every layer")
    expect(intro).to_contain_text("drawn on the Overview")
    # The page reads the drawing as cnn_core reads the canvas's own pixels.
    url = page.locator(CANVAS_DRAWING).evaluate("c => c.toDataURL('image/png')")
    pixels = np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGBA"))
    result = preprocess(pixels)
    assert not result.blank
    expected = trace(load_checkpoint(default_weights()).model, result.tensor)
    expect(intro).to_contain_text(f"reads a {expected.prediction} (softmax {expected.confidence:.1%})")
    wait_for_pictures(page, len(shown_layers(model)))
    assert page.locator(".st-key-ov_input_column img").first.get_attribute("src") != before
    assert_no_errors(page, "the Overview page after a drawing")


def test_on_a_phone_the_layers_wrap_into_rows_that_fit(phone, app_server, shown):
    from cnn_core.unit_sources import shown_layers

    model, _ = shown
    page = phone
    open_overview(page, app_server, len(shown_layers(model)))
    assert_no_errors(page, "the Overview page on a phone")
    charts = page.locator('[class*="st-key-ov_chart_"]')
    boxes = [charts.nth(i).bounding_box() for i in range(charts.count())]
    assert all(b["x"] >= 0 and b["x"] + b["width"] <= PHONE["width"] for b in boxes), boxes
    assert boxes[1]["y"] > boxes[0]["y"], "conv2's stage should wrap below conv1's on a phone"
    page.mouse.move(0, 0)
    save_docs(grab(page, full_height=2000), "overview_phone.png", width=None, max_height=2000)


def test_the_architecture_table_keeps_shape_and_parameters_in_view_on_a_phone(phone, app_server):
    page = phone
    page.goto(f"{app_server.url}/Architecture")
    wait_for_script_idle(page)
    table = page.get_by_test_id("stDataFrame").first
    table.wait_for(state="visible")
    box = table.bounding_box()
    assert box is not None and box["x"] + box["width"] <= PHONE["width"]
    # The grid renders only the columns in view: their headers are in its accessible table.
    headers = table.locator('[role="columnheader"]')
    expect(headers.filter(has_text="parameters")).to_have_count(1)
    names = [headers.nth(i).inner_text().strip() for i in range(headers.count())]
    assert {"name", "output shape", "parameters"} <= set(names), names
    assert "details" not in names  # the long column is the one left to scroll


def test_the_fc_lesson_shows_both_paths_agree(laptop, app_server):
    page = laptop
    page.goto(f"{app_server.url}/Architecture")
    wait_for_script_idle(page)
    heading = page.get_by_role("heading", name=re.compile("two layers, one matrix"))
    heading.scroll_into_view_if_needed()
    label = page.get_by_test_id("stMetricLabel").filter(has_text="Largest difference between the two paths")
    value = page.get_by_test_id("stMetric").filter(has=label).get_by_test_id("stMetricValue")
    assert float(value.inner_text()) < 1e-4
    assert_no_errors(page, "the Architecture page")
    # The lesson from its heading to the experiment's button, for the README.
    button = page.get_by_role("button", name=re.compile("ReLU after fc1"))
    top, bottom = heading.bounding_box(), None
    button.scroll_into_view_if_needed()
    top, bottom = heading.bounding_box(), button.bounding_box()
    if top is not None and bottom is not None and bottom["y"] + bottom["height"] - top["y"] < VIEWPORT["height"]:
        shot = grab(page, x=top["x"] - 10, y=max(top["y"] - 10, 0), width=top["width"] + 20,
                    height=bottom["y"] + bottom["height"] - top["y"] + 20)
    else:  # taller than the window: grow it and take the lesson from the page
        shot = grab(page, full_height=3000)
        top, bottom = heading.bounding_box(), button.bounding_box()
        shot = shot.crop((int(top["x"]) - 10, int(top["y"]) - 10, int(top["x"] + top["width"]) + 10,
                          int(bottom["y"] + bottom["height"]) + 10)) if top and bottom else shot
    save_docs(shot, "fc_lesson.png")
