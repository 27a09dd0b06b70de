"""The deploy benchmarks (bench/bench_proxy_load.py, bench_latency.py, bench_cold.py, bench_bytes.py).

Their building blocks are checked against what they must produce (the light client's canvas is a
digit the app's own preprocessing reads; websocket messages are followed as the server means them),
then each benchmark runs once for real with tiny sizes and must finish without errors and print its
table. No figure is asserted beyond "measured": speed goals live in the benchmarks' output.
Needs chromium (the page benchmarks) and nginx (proxy runs), as the other browser and deploy tests.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
sys.path.insert(0, str(BENCH))

import bench_latency  # noqa: E402 - the benchmarks live outside the package, on the path set just above
import bench_proxy_load  # noqa: E402


def frame(**fields) -> bytes:
    from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

    return ForwardMsg(**fields).SerializeToString()


def new_element(**element) -> dict:
    from streamlit.proto.Delta_pb2 import Delta
    from streamlit.proto.Element_pb2 import Element

    return {"delta": Delta(new_element=Element(**element))}


def require(tool: str, path: Path | None, env: str, install: str) -> None:
    """Skip without ``tool``, or fail when the environment variable ``env`` is 1 (CI)."""
    if path is not None and path.is_file() and os.access(path, os.X_OK):
        return
    reason = f"no {tool} ({install})"
    if os.environ.get(env) == "1":
        pytest.fail(f"{env}=1 but {reason}")
    pytest.skip(reason)


def need_chromium() -> None:
    require("chromium", bench_latency.CHROMIUM, "CNN_EXPLORER_REQUIRE_BROWSER", "apt-get install chromium")


def need_nginx() -> None:
    from deploy.run_cluster import nginx_binary

    require("nginx", nginx_binary(), "CNN_EXPLORER_REQUIRE_NGINX", "apt-get install nginx")


# --------------------------------------------------------------------------- the light client's canvas


def test_a_light_clients_drawing_is_a_digit_the_app_reads():
    from cnn_core.preprocess import preprocess

    drawing = bench_proxy_load.Drawing()
    drawing.add(bench_proxy_load.stroke_pixels(0, 0))
    image = Image.open(io.BytesIO(drawing.png()))
    assert image.size == (280, 280) and image.mode == "RGBA"
    pixels = np.asarray(image)
    x, y = (round(v) for v in bench_proxy_load.stroke_pixels(0, 0)[3])
    assert tuple(pixels[y, x]) == (255, 255, 255, 255)  # on the stroke: white
    assert tuple(pixels[2, 2]) == (0, 0, 0, 255)  # a corner: black background
    assert 0.005 < (pixels[..., 0] > 127).mean() < 0.2
    assert not preprocess(pixels).blank


def test_the_canvas_value_is_sent_as_the_canvas_sends_it():
    drawing = bench_proxy_load.Drawing()
    for n in range(3):
        drawing.add(bench_proxy_load.stroke_pixels(1, n))
    value = json.loads(drawing.widget_json())
    assert set(value) == {"drawing"} and set(value["drawing"]) == {"raw", "data"}
    assert [o["type"] for o in value["drawing"]["raw"]["objects"]] == ["Path"] * 3
    header, encoded = value["drawing"]["data"].split(",", 1)
    assert header == "data:image/png;base64"
    assert base64.b64decode(encoded) == drawing.png()


def test_a_drawing_starts_afresh_after_a_dozen_strokes_and_is_never_empty():
    drawing = bench_proxy_load.Drawing()
    counts = []
    for n in range(30):
        drawing.add(bench_proxy_load.stroke_pixels(2, n))
        counts.append(len(drawing.strokes))
    assert max(counts) == bench_proxy_load.STROKES_PER_DRAWING and min(counts) == 1
    assert counts[bench_proxy_load.STROKES_PER_DRAWING] == 1


# --------------------------------------------------------------------------- following the server's messages


def test_a_light_session_learns_the_page_and_catches_problems():
    from streamlit.proto.Alert_pb2 import Alert
    from streamlit.proto.BidiComponent_pb2 import BidiComponent
    from streamlit.proto.Delta_pb2 import Delta
    from streamlit.proto.Element_pb2 import Element
    from streamlit.proto.Exception_pb2 import Exception as ExceptionProto
    from streamlit.proto.ForwardMsg_pb2 import ForwardMsg
    from streamlit.proto.Metric_pb2 import Metric
    from streamlit.proto.NewSession_pb2 import Initialize, NewSession

    session = bench_proxy_load.LightSession("http://127.0.0.1:1")
    session.run = bench_proxy_load.Run(sent_at=0.0)
    session._on_frame(frame(new_session=NewSession(page_script_hash="abc", initialize=Initialize(session_id="s-1"))))
    session._on_frame(frame(delta=Delta(fragment_id="frag", new_element=Element(
        bidi_component=BidiComponent(id="$$ID-0f-canvas")))))
    session._on_frame(frame(delta=Delta(new_element=Element(bidi_component=BidiComponent(id="$$ID-0f-other")))))
    session._on_frame(frame(**new_element(metric=Metric(label="Confidence", body="97%"))))
    session._on_frame(frame(**new_element(metric=Metric(label="Prediction", body="7"))))
    session._on_frame(frame(script_finished=ForwardMsg.FINISHED_FRAGMENT_RUN_SUCCESSFULLY))
    assert (session.page_hash, session.session_id, session.canvas_id, session.canvas_fragment) == (
        "abc", "s-1", "$$ID-0f-canvas", "frag")
    assert session.run.prediction == "7" and session.run.status == ForwardMsg.FINISHED_FRAGMENT_RUN_SUCCESSFULLY
    assert session.problems == [] and session.run.bytes > 0

    session._on_frame(frame(**new_element(exception=ExceptionProto(type="ValueError", message="bad"))))
    session._on_frame(frame(**new_element(alert=Alert(body="careful", format=Alert.WARNING))))
    session._on_frame(frame(**new_element(alert=Alert(body="boom", format=Alert.ERROR))))
    session._on_frame(frame(script_finished=ForwardMsg.FINISHED_EARLY_FOR_RERUN))  # normal: a newer run follows
    session._on_frame(frame(script_finished=ForwardMsg.FINISHED_WITH_COMPILE_ERROR))
    assert session.problems == ["exception ValueError: bad", "st.error: boom",
                                f"script run ended with status {ForwardMsg.FINISHED_WITH_COMPILE_ERROR}"]


def test_a_pages_wire_finds_each_runs_prediction_and_end():
    from streamlit.proto.ForwardMsg_pb2 import ForwardMsg
    from streamlit.proto.Metric_pb2 import Metric

    wire = bench_latency.PageWire()
    wire._on_frame(frame(**new_element(metric=Metric(label="Prediction", body="3"))))
    wire._on_frame(frame(script_finished=ForwardMsg.FINISHED_SUCCESSFULLY))
    mark = wire.mark()
    assert wire.prediction_after(mark) is None and wire.finished_after(mark) is None
    wire._on_frame("a text frame")
    wire._on_frame(b"\xff\xfe not protobuf")
    wire._on_frame(frame(script_finished=ForwardMsg.FINISHED_EARLY_FOR_RERUN))
    wire._on_frame(frame(**new_element(metric=Metric(label="Prediction", body="8"))))
    wire._on_frame(frame(script_finished=ForwardMsg.FINISHED_FRAGMENT_RUN_SUCCESSFULLY))
    predicted, finished = wire.prediction_after(mark), wire.finished_after(mark)
    assert predicted.value == "8" and finished.status == ForwardMsg.FINISHED_FRAGMENT_RUN_SUCCESSFULLY
    assert predicted.at <= finished.at and wire.problems == []
    assert sum(f.size for f in wire.frames[mark:]) > 0


# --------------------------------------------------------------------------- the benchmarks, tiny


def bench(script: str, *args: str, timeout_s: float = 900) -> str:
    """Run a benchmark; fail with its output unless it exits 0; return what it printed."""
    run = subprocess.run([sys.executable, str(BENCH / script), *args], cwd=ROOT, capture_output=True, text=True,
                         timeout=timeout_s)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    assert re.search(r"^errors: 0$", run.stdout, re.MULTILINE), run.stdout
    return run.stdout


def figure(pattern: str, out: str) -> float:
    match = re.search(pattern, out, re.MULTILINE)
    assert match, f"{pattern!r} not in:\n{out}"
    return float(match.group(1))


def test_bench_proxy_load_short_run():
    need_nginx()
    out = bench("bench_proxy_load.py", "--processes", "2", "--sessions", "4", "--seconds", "5", "--think", "0.2")
    assert figure(r"^sessions held: (\d+)$", out) == 4
    assert figure(r"^strokes served: (\d+) in ", out) >= 4
    spread = re.search(r"^open websockets per app process once all had opened: \[(\d+), (\d+)\]$", out, re.MULTILINE)
    assert spread and int(spread[1]) + int(spread[2]) == 4, out
    assert 50 < figure(r"^app peak RSS: (\d+) MiB", out) < 8192


def test_bench_latency_short_run():
    need_chromium()
    need_nginx()
    out = bench("bench_latency.py", "--strokes", "2", "--warmup", "1", "--others", "2", "--think", "0.5",
                "--processes", "2")
    rows = re.findall(r"^(direct|proxy) +(\d+) +(\d+) +(\d+) / +(\d+) +(\d+) / +(\d+) +(\d+) / +(\d+)", out,
                      re.MULTILINE)
    assert [(r[0], r[1], r[2]) for r in rows] == [("direct", "0", "2"), ("direct", "2", "2"), ("proxy", "0", "2"),
                                                  ("proxy", "2", "2")], out
    for row in rows:
        prediction, finished, shown = int(row[3]), int(row[5]), int(row[7])
        assert 0 < prediction <= finished <= shown, row  # in the order they happen


def test_bench_cold_short_run():
    need_chromium()
    out = bench("bench_cold.py", "--targets", "direct", "--rounds", "2")
    rows = re.findall(r"^(.+?) +(\d+\.\d\d) +(\d+\.\d\d) +(\d+\.\d\d)$", out, re.MULTILINE)
    pages = [r[0] for r in rows if r[0] != "slowest"]
    assert len(pages) >= 3 and len(set(pages)) == len(pages), out  # every page once, home and the others
    for page, _, median, worst in rows:
        assert float(median) <= float(worst), (page, out)  # two warm switches: their median, then the slower
    assert figure(r"server start to healthy (\d+\.\d) s", out) > 0


def test_bench_bytes_short_run():
    need_chromium()
    out = bench("bench_bytes.py", "--top", "2")
    rows = re.findall(r"^(.+?) +(\d+\.\d)(?: \(\d+ media\))? +(\d+\.\d)(?: \(\d+ media\))?  (.*)$", out, re.MULTILINE)
    assert len(rows) >= 3, out
    assert all(float(r[1]) > 0 and float(r[2]) > 0 for r in rows), out
