"""In a real browser: clicking a unit on the Receptive field page's feature map selects that unit.

The app is served by ``streamlit run`` and driven by chromium. The map is a Plotly heatmap; the
test clicks the centre of a chosen cell, computed from the plot area's drag layer (``.nsewdrag``),
and checks that the page then describes that unit and the input region it sees (as cnn_core
computes it), padding included at the border.

Needs chromium at /usr/bin/chromium: skipped without it, failed if CNN_EXPLORER_REQUIRE_BROWSER=1.
"""

from __future__ import annotations

import re

import pytest
from browser import SCREENSHOT_DIR, TIMEOUT_MS, VIEWPORT, assert_no_errors, playwright_expect, wait_for_script_idle

expect = playwright_expect()

MAP = ".st-key-rf_map"  # the element container of the chart with key "rf_map"


@pytest.fixture
def page(browser, app_server):
    context = browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(TIMEOUT_MS)
    pg = context.new_page()
    yield pg
    context.close()


def metric_value(page, label: str):
    """The value element of the st.metric with exactly this label."""
    label_el = page.get_by_test_id("stMetricLabel").filter(has_text=re.compile(rf"^\s*{re.escape(label)}\s*$"))
    return page.get_by_test_id("stMetric").filter(has=label_el).get_by_test_id("stMetricValue")


def click_cell(page, row: int, col: int, rows: int, cols: int) -> None:
    """Click the centre of cell (row, col) of the map's heatmap of rows x cols cells (row 0 at the top)."""
    area = page.locator(f"{MAP} .nsewdrag").first
    area.wait_for(state="visible")
    box = area.bounding_box()
    assert box is not None and box["width"] > 50 and box["height"] > 50, box
    x = box["x"] + (col + 0.5) * box["width"] / cols
    y = box["y"] + (row + 0.5) * box["height"] / rows
    page.mouse.move(x, y)  # hover first: Plotly picks the point under the pointer on the click
    page.mouse.click(x, y)


def test_clicking_a_unit_shows_its_receptive_field(page, app_server):
    from cnn_core.architecture import layer_table, receptive_field
    from cnn_core.checkpoint import load_checkpoint
    from cnn_core.explain import cells_in_padding

    model = load_checkpoint().model
    page.goto(f"{app_server.url}/Receptive_field")
    wait_for_script_idle(page)
    unit = metric_value(page, "Unit")
    expect(unit).to_have_text(re.compile(r"^\w+\[\d+, \d+, \d+\]$"))
    layer = unit.inner_text().split("[")[0]  # the page's default layer
    _, rows, cols = [r for r in layer_table(model) if r.name == layer][0].output_shape

    # A unit inside the image.
    row, col = 2, cols - 3
    click_cell(page, row, col, rows, cols)
    expect(unit).to_have_text(f"{layer}[0, {row}, {col}]")
    wait_for_script_idle(page)
    region = receptive_field(model, layer, row, col)
    expect(metric_value(page, "Receptive field")).to_have_text(f"{region.height} × {region.width} px")
    inside = region.clipped()
    expect(metric_value(page, "Real pixels in it")).to_have_text(
        f"{inside.height} × {inside.width} = {inside.height * inside.width}")
    expect(page.get_by_text(f"rows {region.top} to {region.bottom}, columns {region.left} to {region.right}",
                            exact=False).first).to_be_visible()
    assert page.get_by_label(re.compile(r"^Row")).input_value() == str(row)

    # The top-left corner: part of the window is padding, and the page says how much.
    click_cell(page, 0, 0, rows, cols)
    expect(unit).to_have_text(f"{layer}[0, 0, 0]")
    wait_for_script_idle(page)
    corner = receptive_field(model, layer, 0, 0)
    padded = cells_in_padding(corner)
    assert padded > 0
    alert = page.get_by_test_id("stAlert").filter(has_text="lie outside the image")
    expect(alert).to_contain_text(f"{padded} of the {corner.height * corner.width} cells")
    assert_no_errors(page, "the Receptive field page after two clicks")
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT_DIR / "receptive_field_clicked.png"), full_page=True)
