"""CNN Explorer, home page: draw or upload a digit and see what the network reads."""

from __future__ import annotations

import numpy as np
import streamlit as st
from PIL import Image
from streamlit_drawable_canvas import st_canvas

from cnn_core.preprocess import MAX_UPLOAD_BYTES, ImageError, load_image, preprocess, to_greyscale
from ui.figures import image_heatmap, probability_bars
from ui.state import (clear_digit, current_digit, get_trace, model_label, model_picker, selected_model_id,
                      set_digit)

st.set_page_config(page_title="CNN Explorer", page_icon="🔢", layout="wide")

CANVAS_SIZE = 280
STROKE_WIDTH = 20  # about 2 px of the 28x28 input once the digit is scaled into its 20x20 box
UPLOAD_TYPES = ["png", "jpg", "jpeg", "bmp", "gif", "webp"]



def preview_of(image: Image.Image) -> Image.Image:
    """A small copy of an upload in a mode the browser can show (16-bit and float images are not)."""
    preview = image.copy()
    preview.thumbnail((360, 360))
    if preview.mode in ("1", "L", "LA", "P", "RGB", "RGBA"):
        return preview
    if preview.mode == "CMYK":
        return preview.convert("RGB")
    return Image.fromarray(np.uint8(np.round(to_greyscale(preview) * 255)))


st.title("CNN Explorer")
st.write(
    "Draw a digit, or upload a photo of one, and watch a convolutional neural network read it. "
    "The pages on the left open the network up: every feature map, the architecture, "
    "and why a CNN needs far fewer weights than a plain fully connected network."
)

loaded = model_picker()
left, right = st.columns([1, 1], gap="large")

with left:
    mode = st.radio("Input", ["Draw", "Upload"], horizontal=True, key="input_mode",
                    label_visibility="collapsed")
    if mode == "Draw":
        st.caption("Draw one digit, large, in the middle. The prediction follows each stroke; "
                   "use the canvas toolbar to undo or clear.")
        st.write("")  # room for the toolbar that appears above the canvas on hover
        canvas = st_canvas(
            stroke_width=STROKE_WIDTH, stroke_color="#FFFFFF", background_color="#000000",
            height=CANVAS_SIZE, width=CANVAS_SIZE, drawing_mode="freedraw",
            return_image_data=True, key="canvas",
        )
        drawn = canvas.image_data if canvas is not None else None
        if drawn is not None:
            result = preprocess(drawn)
            if result.blank:
                clear_digit(only_source_prefix="your drawing")
            else:
                set_digit(result.pixels, "your drawing")
    else:
        upload = st.file_uploader(
            "Upload an image of one digit", type=UPLOAD_TYPES, key="upload",
            help=f"PNG, JPEG, BMP, GIF or WebP, up to {MAX_UPLOAD_BYTES // 2**20} MB. "
                 "Dark ink on light paper is fine: it is inverted like MNIST.",
        )
        if upload is not None:
            try:
                image = load_image(upload.getvalue())
                result = preprocess(image)
            except ImageError as e:
                st.error(f"{upload.name}: {e}")
                clear_digit(only_source_prefix="upload")
            else:
                if result.blank:
                    st.warning(f"{upload.name} looks blank: no digit found to classify.")
                    clear_digit(only_source_prefix="upload")
                else:
                    st.image(preview_of(image), caption=upload.name, width=180)
                    set_digit(result.pixels, f"upload {upload.name}")

digit = current_digit()
with right:
    if digit is None:
        st.info("Draw a digit on the canvas (white on black), or upload an image, to see the prediction.")
    else:
        trace = get_trace(digit)
        a, b = st.columns([1, 1])
        with a:
            st.metric("Prediction", str(trace.prediction), f"{trace.confidence:.1%} confident",
                      delta_color="off", delta_arrow="off")
            st.caption(f"Input: {digit.source}")
        with b:
            st.plotly_chart(image_heatmap(digit.pixels, "Network input, 28x28", height=220),
                            key="input_preview", config={"displayModeBar": False})
        st.plotly_chart(probability_bars(trace.probabilities), key="probabilities",
                        config={"displayModeBar": False})

st.divider()
layers = " → ".join(name for name, _ in loaded.model.named_children())
accuracy = (loaded.card.get("metrics") or {}).get("test_accuracy")
measured = f", {accuracy:.2%} on the MNIST test digits of its card" if isinstance(accuracy, float) else ""
st.markdown(
    f"**{model_label(selected_model_id())}** ({sum(p.numel() for p in loaded.model.parameters()):,} parameters"
    f"{measured}): {layers}. Open **Feature maps** to follow your digit through every layer."
)
