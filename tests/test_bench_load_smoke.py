"""bench/bench_load.py: a short real run (2 browser sessions, 10 s) and its building blocks."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from browser import chromium_path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench" / "bench_load.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_load", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_load"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("bench_load", None)


def frame(**fields) -> bytes:
    from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

    return ForwardMsg(**fields).SerializeToString()


def test_server_messages_count_runs_and_catch_problems(bench):
    from streamlit.proto.Alert_pb2 import Alert
    from streamlit.proto.Delta_pb2 import Delta
    from streamlit.proto.Element_pb2 import Element
    from streamlit.proto.Exception_pb2 import Exception as ExceptionProto
    from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

    messages = bench.ServerMessages()
    messages._on_frame(frame(script_finished=ForwardMsg.FINISHED_SUCCESSFULLY))
    messages._on_frame(frame(script_finished=ForwardMsg.FINISHED_EARLY_FOR_RERUN))  # normal: a newer run follows
    messages._on_frame(frame(delta=Delta(new_element=Element(alert=Alert(body="careful", format=Alert.WARNING)))))
    messages._on_frame("a text frame")
    messages._on_frame(b"\xff\xfe not protobuf")
    assert messages.finished == 1
    assert messages.problems == []

    messages._on_frame(frame(delta=Delta(new_element=Element(
        exception=ExceptionProto(type="OSError", message="cannot write mode I;16 as JPEG")))))
    messages._on_frame(frame(delta=Delta(new_element=Element(alert=Alert(body="boom", format=Alert.ERROR)))))
    messages._on_frame(frame(script_finished=ForwardMsg.FINISHED_WITH_COMPILE_ERROR))
    assert messages.finished == 1
    assert messages.problems == ["exception OSError: cannot write mode I;16 as JPEG", "st.error: boom",
                                 f"script run ended with status {ForwardMsg.FINISHED_WITH_COMPILE_ERROR}"]


def test_rss_of_a_process_tree(bench):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        tree = bench.process_tree(os.getpid())
        assert os.getpid() in tree and child.pid in tree
        own = bench.rss_bytes([os.getpid()])
        assert own > 10 * 2**20  # this pytest process holds torch & co.
        assert bench.rss_bytes(tree) > own
        assert bench.rss_bytes([2**22 + 12345]) == 0  # a process that does not exist counts 0
    finally:
        child.kill()
        child.wait()


def test_strokes_stay_on_the_canvas_and_differ(bench):
    strokes = [bench.stroke(s, n) for s in range(20) for n in range(10)]
    assert all(0.1 < x < 0.9 and 0.1 < y < 0.9 for st in strokes for x, y in st)
    assert len({tuple(st) for st in strokes}) > 150


def test_bench_load_short_run():
    chromium_path()  # bench_load drives a real browser: skipped without chromium, failed in CI
    proc = subprocess.run([sys.executable, str(BENCH), "--sessions", "2", "--seconds", "10"],
                          cwd=ROOT, capture_output=True, text=True, timeout=400)
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr[-3000:]

    def figure(pattern: str) -> float:
        match = re.search(pattern, out, re.MULTILINE)
        assert match, f"{pattern!r} not in:\n{out}"
        return float(match.group(1))

    assert figure(r"^sessions held: (\d+)$") == 2
    assert figure(r"^errors: (\d+)$") == 0
    assert figure(r"^requests served: (\d+) in ") > 0
    assert figure(r"^request latency: median (\d+) ms") > 0
    assert 50 < figure(r"^server peak RSS: (\d+) MiB") < 8192
