"""A session cannot park unbounded data in the server through the upload endpoint (files no widget asked for).

The attack of the issue, for real: a browser session PUTs many files under new file ids with its own
cookie and XSRF token; the server must keep at most ui.uploads.MAX_FILES_PER_SESSION of them.
Needs chromium (for a real session): skipped without it, failed if CNN_EXPLORER_REQUIRE_BROWSER=1.
"""

from __future__ import annotations

import re
import urllib.request
import uuid

from browser import TIMEOUT_MS, wait_for_script_idle

from ui.uploads import MAX_FILES_PER_SESSION

FILES = 30
FILE_BYTES = 1_000_000
METRICS_TTL_MS = 5_500  # Streamlit caches its cache_memory_bytes metrics for 5 s


def stored_upload_bytes(url: str) -> int:
    """What the server's own metrics say its upload store holds, in bytes (0 when it holds nothing)."""
    with urllib.request.urlopen(f"{url}/_stcore/metrics", timeout=10) as r:
        text = r.read().decode()
    found = [int(float(v)) for v in re.findall(r'cache_memory_bytes\{[^}]*UploadedFileManager[^}]*\}\s+(\S+)', text)]
    return sum(found)


def test_stray_uploads_are_bounded_per_session(browser, app_server):
    from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

    context = browser.new_context()
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    session: dict[str, str] = {}

    def on_frame(payload) -> None:
        if isinstance(payload, bytes):
            try:
                msg = ForwardMsg.FromString(payload)
            except Exception:  # not a ForwardMsg: nothing to read
                return
            if msg.WhichOneof("type") == "new_session":
                session["id"] = msg.new_session.initialize.session_id

    page.on("websocket", lambda ws: ws.on("framereceived", on_frame))
    page.goto(app_server.url)
    wait_for_script_idle(page)
    assert session.get("id"), "no session id seen on the websocket"
    xsrf = next(c["value"] for c in context.cookies() if c["name"] == "_streamlit_xsrf")
    page.wait_for_timeout(METRICS_TTL_MS)
    before = stored_upload_bytes(app_server.url)
    for i in range(FILES):
        response = page.request.put(
            f"{app_server.url}/_stcore/upload_file/{session['id']}/{uuid.uuid4()}",
            headers={"X-Xsrftoken": xsrf},
            multipart={"file": {"name": f"stray{i}.bin", "mimeType": "application/octet-stream",
                                "buffer": bytes([i]) * FILE_BYTES}},
        )
        assert response.ok, f"upload {i}: HTTP {response.status}"  # the endpoint takes them: the attack is real
    page.wait_for_timeout(METRICS_TTL_MS)  # the server recomputes its memory metrics at most every 5 s
    held = stored_upload_bytes(app_server.url) - before
    assert 0 < held <= MAX_FILES_PER_SESSION * FILE_BYTES, f"{held:,} bytes held for one session"
    context.close()
