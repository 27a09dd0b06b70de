"""CNN Explorer: the home page (draw or upload a digit, see what the network reads) and the app's navigation."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import streamlit as st
from PIL import Image
from streamlit_drawable_canvas import st_canvas

from cnn_core.model import count_parameters
from cnn_core.preprocess import MAX_UPLOAD_BYTES, ImageError, Preprocessed, load_image, preprocess, to_greyscale
from ui.bars import probability_bars_html
from ui.state import (
    clear_digit,
    current_digit,
    get_model,
    get_trace,
    model_label_md,
    model_picker,
    selected_model_id,
    set_digit,
)
from ui.text import plain
from ui.verdict import explain_answer, verdict_for

HERE = Path(__file__).resolve().parent
CANVAS_SIZE = 280
STROKE_WIDTH = 20  # about 2 px of the 28x28 input once the digit is scaled into its 20x20 box
UPLOAD_TYPES = ["png", "jpg", "jpeg", "bmp", "gif", "webp"]
PREVIEW_SIDE = 240  # the upload shown back, and kept so that it is still there after a visit to another page

# Session keys. Widget state is dropped when the visitor opens another page, so what the home page must
# give back on return (the mode, the strokes, the upload) is kept under keys of its own.
MODE, MODE_WIDGET = "home_mode", "input_mode"
STROKES = "home_strokes"  # the canvas's objects (Fabric.js JSON) as last received
SEED = "home_canvas_seed"  # what the canvas is (re)loaded with: restored strokes, or the result of Undo / Clear
STALE = "home_canvas_stale"  # the canvas value sent before an Undo / Clear: ignored until the canvas answers
SEEDS_MADE = "home_canvas_seeds_made"
UPLOADED = "home_upload"  # (name, preview PNG bytes) of the last good upload

LAYOUT_CSS = """
<style>
@media (min-width: 641px) { .st-key-answer_narrow, .st-key-input_narrow { display: none; } }
@media (max-width: 640px) { .st-key-answer_wide, .st-key-intro { display: none; } }
[data-testid="stMainBlockContainer"] { padding-top: 2.5rem; }
</style>
"""
# Two changes to the canvas component, made from outside it, on every page that has one:
# - It shows a toolbar on hover (undo, redo, reset, and an "edit" mode in which a drag moves a stroke and
#   silently changes the answer); a phone never hovers. The pages have their own Undo and Clear buttons, so
#   the toolbar is hidden inside the component's (open) shadow root.
# - It sends a new drawing 200 ms after the stroke ends (a fixed debounce), which alone is more than the
#   whole answer costs the server. The hidden toolbar's own "Update the app with this drawing" button sends
#   at once and cancels that wait: it is pressed when a stroke ends, after the component has recorded it.
CANVAS_SCRIPT = """
<script>
(() => {
  if (window.__cnnExplorerCanvas) return;
  window.__cnnExplorerCanvas = true;
  const hide = () => {
    for (const host of document.querySelectorAll('[data-testid="stElementContainer"] div')) {
      const root = host.shadowRoot;
      if (root && root.querySelector('.dc-toolbar') && !root.querySelector('style[data-cnn-explorer]')) {
        const style = document.createElement('style');
        style.dataset.cnnExplorer = 'toolbar';
        style.textContent = '.dc-toolbar { display: none !important; }';
        root.appendChild(style);
      }
    }
  };
  hide();
  // The component attaches its shadow root after it is added to the page, which no observer of the page
  // sees: look again on every change of the page and four times a second.
  new MutationObserver(hide).observe(document.body, {childList: true, subtree: true});
  setInterval(hide, 250);

  let drawingIn = null;  // the shadow root of the canvas a stroke started on
  const started = (event) => {
    const path = event.composedPath();
    const onCanvas = path.some((el) => el instanceof HTMLCanvasElement);
    const root = path.find((el) => el instanceof ShadowRoot && el.querySelector('.dc-toolbar'));
    drawingIn = onCanvas && root ? root : null;
  };
  const ended = () => {
    const root = drawingIn;
    drawingIn = null;
    if (!root) return;
    // A task later: the component records the stroke (and starts its 200 ms wait) in a microtask of mouse-up.
    setTimeout(() => {
      const send = root.querySelector('button[aria-label="Update the app with this drawing"]');
      if (send) send.click();
    }, 0);
  };
  window.addEventListener('mousedown', started, true);
  window.addEventListener('touchstart', started, true);
  window.addEventListener('mouseup', ended);
  window.addEventListener('touchend', ended);
})();
</script>
"""


def preview_png(image: Image.Image) -> bytes:
    """A small PNG of an upload, in a mode the browser can show (16-bit and float images are not)."""
    preview = image.copy()
    preview.thumbnail((PREVIEW_SIDE, PREVIEW_SIDE))
    if preview.mode not in ("1", "L", "LA", "P", "RGB", "RGBA"):
        preview = (preview.convert("RGB") if preview.mode == "CMYK"
                   else Image.fromarray(np.uint8(np.round(to_greyscale(preview) * 255))))
    buf = io.BytesIO()
    preview.save(buf, "PNG")
    return buf.getvalue()


def _mode_changed() -> None:
    st.session_state[MODE] = st.session_state[MODE_WIDGET]


def _new_seed(objects: list) -> None:
    """Load the canvas with ``objects``; the number makes every seed differ, so the canvas reloads each time."""
    st.session_state[SEEDS_MADE] = st.session_state.get(SEEDS_MADE, 0) + 1
    st.session_state[SEED] = {"objects": objects, "cnnExplorerSeed": st.session_state[SEEDS_MADE]}
    st.session_state[STROKES] = objects
    st.session_state[STALE] = _canvas_objects()


def _canvas_objects() -> list | None:
    value = st.session_state.get("canvas") or {}
    raw = (value.get("drawing") or {}).get("raw") if isinstance(value, dict) else None
    return raw.get("objects") if isinstance(raw, dict) else None


def undo_stroke() -> None:
    """Undo: drop the last stroke."""
    _new_seed(list(st.session_state.get(STROKES) or [])[:-1])


def clear_canvas() -> None:
    """Clear: no strokes, no digit."""
    _new_seed([])
    clear_digit(only_source_prefix="your drawing")


def draw_input() -> Preprocessed | None:
    """The canvas with Undo and Clear; returns the drawing preprocessed, or None when nothing new came in."""
    if "canvas" not in st.session_state:
        # A new canvas on the page (first visit, or back from another page): give it the strokes it had.
        _new_seed(list(st.session_state.get(STROKES) or []))
        st.session_state[STALE] = None
    canvas = st_canvas(
        stroke_width=STROKE_WIDTH, stroke_color="#FFFFFF", background_color="#000000",
        height=CANVAS_SIZE, width=CANVAS_SIZE, drawing_mode="freedraw",
        initial_drawing=st.session_state[SEED], return_image_data=True, key="canvas",
    )
    result = _read_canvas(canvas)
    undo, clear, _ = st.columns([1, 1, 1.2])
    undo.button("↶ Undo", key="home_undo", on_click=undo_stroke, width="stretch",
                disabled=not st.session_state.get(STROKES))
    clear.button("✕ Clear", key="home_clear", on_click=clear_canvas, width="stretch",
                 disabled=not st.session_state.get(STROKES))
    return result


def _read_canvas(canvas) -> Preprocessed | None:
    """What the canvas sent, preprocessed; None when it sent nothing new (the strokes are kept for later)."""
    objects = (canvas.json_data or {}).get("objects")
    if objects is None or canvas.image_data is None:
        return None  # a restored canvas has not sent anything yet: keep the digit the session has
    if st.session_state.get(STALE) is not None and objects == st.session_state[STALE]:
        return None  # the value from before Undo / Clear: the reloaded canvas answers in a moment
    st.session_state[STALE] = None
    st.session_state[STROKES] = objects
    return preprocess(canvas.image_data)


def upload_input() -> None:
    """The file uploader: a good image becomes the current digit; anything else gets a sentence."""
    upload = st.file_uploader(
        "Upload an image of one digit", type=UPLOAD_TYPES, key="upload",
        help=f"PNG, JPEG, BMP, GIF or WebP, up to {MAX_UPLOAD_BYTES // 1_000_000} MB. "
             "Dark ink on light paper is fine: it is inverted like MNIST.",
    )
    if upload is None:
        kept = st.session_state.get(UPLOADED)
        digit = current_digit()
        if kept is not None and digit is not None and digit.source == f"upload {kept[0]}":
            st.image(kept[1], caption=kept[0], width=180)
            st.caption("Your last upload. Upload another image to replace it.")
        return
    name = plain(upload.name)
    try:
        image = load_image(upload.getvalue())
        result = preprocess(image)
    except ImageError as e:
        st.error(f"{name}: {e}")
        clear_digit(only_source_prefix="upload")
        return
    if result.blank:
        st.warning(f"{name}: {result.message}" if result.message else f"{name} looks blank: no digit found to "
                   "classify.")
        clear_digit(only_source_prefix="upload")
        return
    st.session_state[UPLOADED] = (upload.name, preview_png(image))
    st.image(st.session_state[UPLOADED][1], caption=upload.name, width=180)
    set_digit(result.pixels, f"upload {upload.name}", marks=result.marks, message=result.message)


@st.fragment
def reader() -> None:
    """Input on the left, the network's answer on the right. A stroke reruns only this fragment."""
    left, right = st.columns([1, 1], gap="large")
    with left:
        st.session_state[MODE_WIDGET] = st.session_state.get(MODE, "Draw")
        mode = st.radio("Input", ["Draw", "Upload"], horizontal=True, key=MODE_WIDGET, on_change=_mode_changed,
                        label_visibility="collapsed")
        # On a phone the columns stack: this copy of the answer sits above the canvas, so it stays in view
        # after each stroke; the CSS below shows it on narrow screens only, and the right column's on wide ones.
        narrow_answer = st.container(key="answer_narrow")
        if mode == "Draw":
            drawn = draw_input()
            if drawn is not None:
                if drawn.blank:
                    clear_digit(only_source_prefix="your drawing")
                else:
                    set_digit(drawn.pixels, "your drawing", marks=drawn.marks, message=drawn.message)
            st.caption("Draw one digit, large, in the middle. The answer follows every stroke.")
        else:
            upload_input()
    digit = current_digit()
    with right:
        wide_answer = st.container(key="answer_wide")
    if digit is None:
        for where in (narrow_answer, wide_answer):
            where.info("Draw a digit on the black canvas, or upload a photo of one, to see what the network reads.")
        return
    loaded = get_model()
    trace = get_trace(digit)
    verdict = verdict_for(loaded, selected_model_id(), digit, trace)
    for where in (narrow_answer, wide_answer):
        with where:
            a, b = st.columns([1, 1])
            a.metric("Prediction", str(verdict.prediction), f"{verdict.confidence:.0%} sure", delta_color="off",
                     delta_arrow="off", help=verdict.confidence_help)
            if where is wide_answer:  # on a phone the canvas must stay in view: the 28x28 input is further down
                b.image(_enlarged(digit.pixels), caption="What the network sees", width=84)
            if verdict.warning:
                st.warning(verdict.warning)
    with right:
        st.html(probability_bars_html(verdict.probabilities, verdict.probabilities_title))
        st.container(key="input_narrow").image(_enlarged(digit.pixels), caption="What the network sees (28×28)",
                                               width=112)
        st.caption(f"Input: {plain(digit.source)}. Answered by **{model_label_md(selected_model_id())}**.")
        with st.expander("Why does it always answer one of ten digits?"):
            st.markdown(explain_answer(loaded))


def _enlarged(pixels: np.ndarray) -> np.ndarray:
    """The 28x28 input as an 8-bit image with square 4x4 pixels (sharp at any zoom)."""
    return np.kron((np.clip(pixels, 0, 1) * 255).astype(np.uint8), np.ones((4, 4), dtype=np.uint8))


def home() -> None:
    """The home page."""
    loaded = model_picker()
    st.html(LAYOUT_CSS)
    st.title("CNN Explorer")
    st.container(key="intro").write(
        "Draw a digit, or upload a photo of one, and watch a convolutional neural network read it. "
        "The pages on the left open the network up, layer by layer.")
    reader()
    st.divider()
    parameters = count_parameters(loaded.model)
    layers = " → ".join(name for name, _ in loaded.model.named_children())
    st.markdown(
        f"**{model_label_md(selected_model_id())}**, {parameters:,} parameters: {layers}. The network is the "
        "classic MNIST CNN of the article *Back to AI Basics: CNNs*; open **Network overview** to see your digit "
        "go through all of it, or **Feature maps** to follow it layer by layer."
    )


PAGES = (  # file in pages/ (None: the home page above), title in the sidebar, Material icon
    (None, "Home", ":material/draw:"),
    ("0_Overview.py", "Network overview", ":material/account_tree:"),
    ("1_Feature_maps.py", "Feature maps", ":material/layers:"),
    ("2_Architecture.py", "Architecture", ":material/table_chart:"),
    ("3_ANN_vs_CNN.py", "ANN vs CNN", ":material/compare_arrows:"),
    ("4_Model.py", "Model", ":material/fact_check:"),
    ("5_Convolution.py", "Convolution", ":material/grid_on:"),
    ("6_Receptive_field.py", "Receptive field", ":material/center_focus_strong:"),
    ("7_Filters.py", "Filters", ":material/filter:"),
    ("8_Why_this_digit.py", "Why this digit", ":material/help:"),
    ("9_Train_your_own.py", "Train your own", ":material/model_training:"),
    ("10_Compare.py", "Compare", ":material/difference:"),
)

st.set_page_config(page_title="CNN Explorer", page_icon="🔢", layout="wide")
st.html(CANVAS_SCRIPT, unsafe_allow_javascript=True)  # every page with a canvas: Home, Overview, Compare
st.navigation([
    st.Page(home, title=title, icon=icon, default=True) if file is None
    else st.Page(HERE / "pages" / file, title=title, icon=icon)
    for file, title, icon in PAGES if file is None or (HERE / "pages" / file).is_file()
]).run()
