"""The home page with uploaded files (AppTest's file_uploader): bad files get a friendly message, good ones a prediction."""

from __future__ import annotations

import io
import re
import struct
import tomllib
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnn_core.introspect import trace
from cnn_core.preprocess import MAX_UPLOAD_BYTES, load_image, preprocess
from ui.text import plain

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "app.py")
DIGIT_INDEX = 0  # first MNIST test digit


# --------------------------------------------------------------------------- building files


def encode(img: Image.Image, fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def huge_bilevel_png(width: int, height: int) -> bytes:
    """A valid 1-bit PNG of width x height, all black: compresses to a few kB, decodes to a huge image.

    Written row by row with zlib so the test itself never holds the decoded image.
    """
    row = b"\x00" + bytes((width + 7) // 8)  # filter byte 0, then the packed bits
    z = zlib.compressobj(9)
    chunks = [z.compress(row) for _ in range(height)]
    idat = b"".join(chunks) + z.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # bit depth 1, greyscale
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def exif_rotated_jpeg(upright: Image.Image) -> bytes:
    """A JPEG stored sideways with an EXIF Orientation tag (6: rotate 90 degrees clockwise to view), like phone photos."""
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # exif_transpose undoes it with ROTATE_270
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(stored, "JPEG", quality=100, exif=exif.tobytes())


@pytest.fixture(scope="module")
def digit_image(test_split) -> Image.Image:
    """A real MNIST test digit, white on black, enlarged like a photo would be."""
    return Image.fromarray(test_split.images[DIGIT_INDEX].numpy()).resize((112, 112), Image.Resampling.NEAREST)


@pytest.fixture(scope="module")
def other_image(test_split) -> Image.Image:
    labels = test_split.labels.numpy()
    index = int(np.nonzero(labels != labels[DIGIT_INDEX])[0][0])
    return Image.fromarray(test_split.images[index].numpy()).resize((112, 112), Image.Resampling.NEAREST)


def good_files(digit: Image.Image, other: Image.Image) -> dict[str, bytes]:
    grey = np.asarray(digit)
    rgba = np.zeros((*grey.shape, 4), np.uint8)
    rgba[..., :3] = 255
    rgba[..., 3] = grey  # white strokes on a transparent background, like the canvas
    cmyk_source = Image.fromarray(255 - grey).convert("RGB")
    return {
        "digit.png": encode(digit, "PNG"),
        "inverted.jpg": encode(Image.fromarray(255 - grey), "JPEG", quality=95),
        "transparent.png": encode(Image.fromarray(rgba, "RGBA"), "PNG"),
        "palette.png": encode(digit.convert("RGB").quantize(16), "PNG"),
        "sixteen_bit.png": encode(Image.fromarray(grey.astype(np.uint16) * 257), "PNG"),
        "animated.gif": encode(digit, "GIF", save_all=True, append_images=[other], duration=200, loop=0),
        "exif_rotated.jpg": exif_rotated_jpeg(digit.convert("RGB")),
        "cmyk.jpg": encode(cmyk_source.convert("CMYK"), "JPEG", quality=95),
        "digit.bmp": encode(digit, "BMP"),
        "lossless.webp": encode(digit.convert("RGB"), "WEBP", lossless=True),
        "wide_sixteen_bit.png": encode(Image.fromarray(np.pad(grey, ((0, 0), (200, 200))).astype(np.uint16) * 257), "PNG"),
    }


def bad_files(digit: Image.Image) -> dict[str, tuple[bytes, str]]:
    """name -> (bytes, words the message must contain)."""
    png, jpeg = encode(digit, "PNG"), encode(digit.convert("RGB"), "JPEG")
    return {
        "notes.png": (b"these are my notes, not a picture\n" * 20, "not a PNG, JPEG, BMP, GIF or WebP image"),
        "truncated.png": (png[: len(png) // 2], "damaged or incomplete"),
        "truncated.jpg": (jpeg[: len(jpeg) // 2], "damaged or incomplete"),
        "empty.png": (b"", "empty"),
        "huge.png": (huge_bilevel_png(20_000, 20_000), "400,000,000 pixels; the limit is"),
        "large.png": (huge_bilevel_png(8_000, 6_000), "8,000 x 6,000 pixels; the limit is"),
        "too_big.png": (png + bytes(MAX_UPLOAD_BYTES + 1 - len(png)), "the limit is 10 MB"),
    }


BLANK_FILES = {
    "white.png": lambda: encode(Image.new("L", (64, 64), 255), "PNG"),
    "black.png": lambda: encode(Image.new("L", (64, 64), 0), "PNG"),
    "white.jpg": lambda: encode(Image.new("RGB", (64, 64), "white"), "JPEG"),
    "transparent.png": lambda: encode(Image.new("RGBA", (64, 64), (0, 0, 0, 0)), "PNG"),
}


# --------------------------------------------------------------------------- the app


@pytest.fixture
def home():
    """The home page with the Upload input selected."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    assert not at.exception
    at.radio(key="input_mode").set_value("Upload").run()
    assert not at.exception
    return at


def upload(at, name: str, data: bytes):
    mime = {"png": "image/png", "jpg": "image/jpeg", "gif": "image/gif", "bmp": "image/bmp",
            "webp": "image/webp"}[name.rsplit(".", 1)[1]]
    at.file_uploader(key="upload").set_value((name, data, mime)).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def shown_prediction(at) -> str | None:
    values = [m.value for m in at.metric if m.label == "Prediction"]
    return values[0] if values else None


def expected_prediction(model, data: bytes) -> int:
    """What the page should show, computed here from the same bytes through cnn_core."""
    result = preprocess(load_image(data))
    assert not result.blank
    return trace(model, result.tensor).prediction


def test_apptest_supports_uploads(home):
    assert home.file_uploader(key="upload").label == "Upload an image of one digit"


@pytest.mark.parametrize("name", ["digit.png", "inverted.jpg", "transparent.png", "palette.png", "sixteen_bit.png",
                                  "wide_sixteen_bit.png", "animated.gif", "exif_rotated.jpg", "cmyk.jpg",
                                  "digit.bmp", "lossless.webp"])
def test_good_upload_shows_the_networks_prediction(home, shipped, digit_image, other_image, name):
    data = good_files(digit_image, other_image)[name]
    at = upload(home, name, data)
    assert not at.error and not at.warning
    assert shown_prediction(at) == str(expected_prediction(shipped.model, data))
    digit = at.session_state["digit"]
    assert digit.source == f"upload {name}"
    assert digit.pixels.shape == (28, 28) and 0.0 <= digit.pixels.min() and digit.pixels.max() <= 1.0
    assert name in [c for img in at.image for c in img.captions]  # the upload is shown back to the user


@pytest.mark.parametrize("name", ["inverted.jpg", "transparent.png", "palette.png", "sixteen_bit.png",
                                  "wide_sixteen_bit.png", "animated.gif", "exif_rotated.jpg", "cmyk.jpg",
                                  "digit.bmp", "lossless.webp"])
def test_every_format_becomes_the_same_digit(home, digit_image, other_image, name):
    """Whatever the encoding, the page explores (nearly) the digit of the plain PNG: same orientation, first frame."""
    files = good_files(digit_image, other_image)
    reference = preprocess(load_image(files["digit.png"])).pixels
    at = upload(home, name, files[name])
    pixels = at.session_state["digit"].pixels
    assert np.corrcoef(pixels.ravel(), reference.ravel())[0, 1] > 0.97
    # An image left sideways, or the GIF's second frame, would look quite different.
    sideways = np.rot90(reference)
    assert np.corrcoef(sideways.ravel(), reference.ravel())[0, 1] < 0.9


@pytest.mark.parametrize("name", ["notes.png", "truncated.png", "truncated.jpg", "empty.png", "huge.png",
                                  "large.png", "too_big.png"])
def test_bad_upload_shows_a_friendly_error(home, digit_image, name):
    data, words = bad_files(digit_image)[name]
    at = upload(home, name, data)
    errors = [e.value for e in at.error]
    assert len(errors) == 1, errors
    assert errors[0].startswith(f"{plain(name)}: ")
    assert words in errors[0]
    assert "Traceback" not in errors[0] and "Error" not in errors[0]
    assert shown_prediction(at) is None
    assert "digit" not in at.session_state


@pytest.mark.parametrize("name", list(BLANK_FILES))
def test_blank_upload_shows_a_warning(home, name):
    at = upload(home, name, BLANK_FILES[name]())
    warnings = [w.value for w in at.warning]
    assert len(warnings) == 1 and warnings[0].startswith(plain(name)), warnings
    assert not at.error
    assert shown_prediction(at) is None


def test_a_bad_upload_after_a_good_one_clears_the_prediction(home, shipped, digit_image, other_image):
    files = good_files(digit_image, other_image)
    upload(home, "digit.png", files["digit.png"])
    assert shown_prediction(home) == str(expected_prediction(shipped.model, files["digit.png"]))
    data, words = bad_files(digit_image)["truncated.png"]
    upload(home, "truncated.png", data)
    assert shown_prediction(home) is None
    assert words in home.error[0].value
    home.file_uploader(key="upload").set_value(None).run()
    assert not home.exception and not home.error
    assert [i.value for i in home.info][0].startswith("Draw a digit")


def test_upload_limit_is_stated_consistently(home):
    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    limit_mb = config["server"]["maxUploadSize"]
    assert isinstance(limit_mb, int) and limit_mb > 0
    # Browsers check Streamlit's limit in decimal megabytes (10 MB = 10,000,000 bytes): the app's own
    # limit is the same number of bytes, so a file is refused in the browser or not at all.
    assert MAX_UPLOAD_BYTES == limit_mb * 1_000_000
    help_text = home.file_uploader(key="upload").help
    stated = re.findall(r"up to (\d+) MB", help_text)
    assert stated == [str(limit_mb)], help_text
    assert sorted(home.file_uploader(key="upload").allowed_type) == sorted(
        f".{t}" for t in ("png", "jpg", "jpeg", "bmp", "gif", "webp"))


def test_a_file_name_is_shown_as_plain_text_never_as_markdown(home, digit_image, other_image):
    name = "[click me](http://evil.example) **bold** <b>x</b>.png"
    at = upload(home, name, good_files(digit_image, other_image)["digit.png"])
    shown = "\n".join([c.value for c in at.caption] + [m.value for m in at.markdown])
    assert plain(name) in shown
    assert "[click me](http://evil.example)" not in shown and "**bold**" not in shown
    bad = upload(home, name, b"not an image")
    assert bad.error[0].value.startswith(plain(name))


def grid_image() -> Image.Image:
    """A grid of lines: one mark of digit size, and nothing like a digit."""
    from PIL import ImageDraw

    img = Image.new("L", (200, 200), 0)
    draw = ImageDraw.Draw(img)
    for k in range(20, 200, 30):
        draw.line((k, 10, k, 190), fill=255, width=8)
        draw.line((10, k, 190, k), fill=255, width=8)
    return img


def test_the_answer_is_the_models_calibrated_assessment(home, digit_image):
    """The home page's probabilities and its unusual-input warning are the library's assessment of the input."""
    from cnn_core.checkpoint import load_checkpoint
    from cnn_core.uncertainty import assess, load_uncertainty
    from ui.state import default_model_id, shipped_model_paths

    weights = shipped_model_paths()[default_model_id()]
    model, stats = load_checkpoint(weights).model, load_uncertainty(weights)
    assert stats is not None
    outcomes = []
    for name, image in (("digit.png", digit_image), ("grid.png", grid_image())):
        data = encode(image, "PNG")
        at = upload(home, name, data)
        expected = assess(model, stats, preprocess(load_image(data)).tensor)
        assert shown_prediction(at) == str(expected.prediction)
        assert any("Probabilities (calibrated)" in h.body for h in at.get("html"))
        assert any(f"{expected.confidence:.0%}" in m.delta for m in at.metric if m.label == "Prediction")
        warned = any("does not look like the digits" in w.value for w in at.warning)
        assert warned == expected.unusual, name
        outcomes.append(expected.unusual)
    assert outcomes == [False, True]  # both branches of the page are exercised
