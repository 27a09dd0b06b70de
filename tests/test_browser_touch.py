"""Drawing with a finger: the home page on a phone-sized touch screen, driven by real touch events.

Chromium emulates a phone (390x844 CSS pixels, touch, mobile viewport). The stroke is sent
with the DevTools protocol's ``Input.dispatchTouchEvent`` (touchStart, touchMove..., touchEnd),
as a finger would, not as mouse events. The page must then show a prediction, equal to what
cnn_core predicts for the canvas's own pixels, and, once the real model ships (its card
reports at least 99% test accuracy), the digit drawn: a vertical stroke is a 1.

Needs chromium at /usr/bin/chromium: skipped without it, failed if CNN_EXPLORER_REQUIRE_BROWSER=1.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from browser import (
    CANVAS_INPUT,
    SCREENSHOT_DIR,
    TIMEOUT_MS,
    UPDATE_SCREENSHOTS,
    assert_no_errors,
    canvas_image,
    default_weights,
    follow_script_runs,
    playwright_expect,
    script_rerun,
    wait_for_script_idle,
    write_docs_copy,
)

expect = playwright_expect()

PHONE = {"viewport": {"width": 390, "height": 844}, "device_scale_factor": 3, "is_mobile": True, "has_touch": True}
REAL_MODEL_ACCURACY = 0.99  # below this the shipped weights are the placeholder: do not expect the right digit
ONE = [(0.5, 0.15 + 0.70 * i / 30) for i in range(31)]  # a vertical line, top to bottom, in canvas fractions

@pytest.fixture
def phone(browser, app_server):
    """A tab of a phone-sized, touch-screen browser."""
    context = browser.new_context(**PHONE)
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    follow_script_runs(page)
    yield page
    context.close()


def real_model_ships() -> bool:
    card = json.loads(Path(default_weights()).with_suffix(".json").read_text())
    accuracy = (card.get("metrics") or {}).get("test_accuracy")
    return isinstance(accuracy, (int, float)) and accuracy >= REAL_MODEL_ACCURACY


def touch_stroke(page, points: list[tuple[float, float]]) -> None:
    """One finger stroke over the canvas through CDP touch events, in CSS pixels of the viewport."""
    canvas = page.locator(CANVAS_INPUT)
    canvas.scroll_into_view_if_needed()
    box = canvas.bounding_box()
    assert box is not None, "the canvas is not visible"
    assert box["x"] >= 0 and box["x"] + box["width"] <= PHONE["viewport"]["width"], f"the canvas sticks out: {box}"
    cdp = page.context.new_cdp_session(page)

    def touch(kind: str, fx: float, fy: float) -> None:
        point = {"x": box["x"] + fx * box["width"], "y": box["y"] + fy * box["height"], "id": 1,
                 "radiusX": 4, "radiusY": 4, "force": 1}
        cdp.send("Input.dispatchTouchEvent", {"type": kind, "touchPoints": [] if kind == "touchEnd" else [point]})

    touch("touchStart", *points[0])
    for fx, fy in points[1:]:
        touch("touchMove", fx, fy)
    touch("touchEnd", *points[-1])
    cdp.detach()


def prediction_value(page):
    label = page.get_by_test_id("stMetricLabel").filter(has_text=re.compile(r"^\s*Prediction\s*$"))
    return page.get_by_test_id("stMetric").filter(has=label).filter(visible=True).get_by_test_id("stMetricValue")


def shown_prediction(page) -> str:
    value = prediction_value(page)
    value.wait_for(state="visible")
    assert value.count() == 1, "one Prediction is shown on a phone"
    return value.inner_text().strip()


def test_a_finger_drawn_one_is_predicted(phone, app_server):
    from cnn_core.checkpoint import load_checkpoint
    from cnn_core.introspect import trace
    from cnn_core.preprocess import preprocess

    page = phone
    page.goto(app_server.url)
    wait_for_script_idle(page)
    page.locator(CANVAS_INPUT).wait_for(state="visible")
    assert page.evaluate("() => navigator.maxTouchPoints") > 0, "the browser does not emulate a touch screen"

    with script_rerun(page):
        touch_stroke(page, ONE)

    drawn = canvas_image(page)
    assert (drawn[..., 0] > 127).sum() > 100, "the touch stroke left no white ink on the black canvas"
    shown = shown_prediction(page)
    assert_no_errors(page, "the home page after a touch stroke")
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT_DIR / "home_touch_phone.png"), full_page=True)
    if UPDATE_SCREENSHOTS:  # the phone's screen as the visitor sees it after a stroke, for the README
        page.screenshot(path=str(SCREENSHOT_DIR / "home_phone.png"))
        write_docs_copy(SCREENSHOT_DIR / "home_phone.png", width=PHONE["viewport"]["width"])

    result = preprocess(drawn)
    assert not result.blank
    expected = trace(load_checkpoint(default_weights()).model, result.tensor).prediction
    assert shown == str(expected), "the shown prediction is not cnn_core's for the drawing"
    if real_model_ships():
        assert shown == "1", f"drew a 1 with a finger, the app predicts {shown}"

    # After the stroke, the answer and the canvas are both on the screen, with no scrolling.
    screen = PHONE["viewport"]["height"]
    answer, canvas = prediction_value(page).bounding_box(), page.locator(CANVAS_INPUT).bounding_box()
    assert answer is not None and 0 <= answer["y"] and answer["y"] + answer["height"] <= screen, answer
    assert canvas is not None and canvas["y"] >= answer["y"], "the answer is above the canvas"
    # Undo and Clear are buttons a finger can reach (the canvas's hover toolbar is hidden).
    clear = page.get_by_role("button", name="Clear")
    assert clear.is_visible() and page.get_by_role("button", name="Undo").is_visible()
    clear.tap()
    expect(prediction_value(page)).to_have_count(0, timeout=TIMEOUT_MS)
    for _ in range(TIMEOUT_MS // 100):  # the canvas reloads asynchronously after Clear
        if (canvas_image(page)[..., 0] > 127).sum() == 0:
            break
        page.wait_for_timeout(100)
    assert (canvas_image(page)[..., 0] > 127).sum() == 0, "Clear left ink on the canvas"
