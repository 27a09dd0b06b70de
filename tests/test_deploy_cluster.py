"""The deploy recipe: nginx in front of several app processes (deploy/), run for real on loopback.

What is checked: the site file is valid for Debian's nginx as shipped; sticky sessions keep every
request of a visitor on one process; uploads past the app's 10 MiB are refused by nginx; websockets
from another site's pages are refused by nginx; and when an app process dies, its visitors reconnect
to another process and keep drawing while everyone else goes on undisturbed (light clients and a
real Chromium page). Needs Debian's nginx (apt-get install nginx): skipped without it, failed when
CNN_EXPLORER_REQUIRE_NGINX=1 (CI). The browser test also needs chromium, as the other browser tests.
"""

from __future__ import annotations

import asyncio
import http.client
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from deploy.run_cluster import SITE_CONF, Cluster, established_connections, nginx_binary, render_main, render_site

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))  # bench_proxy_load's light clients, imported by the tests that use them

TIMEOUT_S = 90.0  # a first script run on a busy 2-core machine takes seconds
MIB = 2**20
DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only, whatever the environment


def need_nginx() -> Path:
    """Debian's nginx; skips the test without it, or fails it when CNN_EXPLORER_REQUIRE_NGINX=1."""
    nginx = nginx_binary()
    if nginx is not None:
        return nginx
    reason = "no nginx (Debian: apt-get install nginx)"
    if os.environ.get("CNN_EXPLORER_REQUIRE_NGINX") == "1":
        pytest.fail(f"CNN_EXPLORER_REQUIRE_NGINX=1 but {reason}")
    pytest.skip(reason)


def run_async(make_coroutine):
    """Run ``make_coroutine()`` to completion in a thread of its own and return its result.

    A thread, because the browser tests' sync Playwright may own this thread's event loop.
    """
    result: dict[str, object] = {}

    def target() -> None:
        try:
            result["value"] = asyncio.run(make_coroutine())
        except BaseException as e:  # re-raised in the test's thread
            result["error"] = e

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]  # type: ignore[misc]
    return result.get("value")


@pytest.fixture
def cluster():
    """Two app processes of this checkout behind nginx, on loopback; stopped after the test."""
    need_nginx()
    with Cluster(2, startup_timeout_s=240) as c:
        yield c


# --------------------------------------------------------------------------- configuration, no processes


def test_render_site_points_the_upstream_at_the_given_ports():
    site = render_site(SITE_CONF.read_text(), [9101, 9102, 9103, 9104], 8123)
    servers = re.findall(r"^\s*server 127\.0\.0\.1:(\d+) max_fails=1 fail_timeout=10s;$", site, re.MULTILINE)
    assert servers == ["9101", "9102", "9103", "9104"]
    assert re.search(r"^\s*listen 127\.0\.0\.1:8123;$", site, re.MULTILINE)
    assert "listen 80;" not in site
    # Everything else is served as written: the shipped file minus the lines that changed.
    kept = [line for line in SITE_CONF.read_text().splitlines() if "server 127.0.0.1:" not in line and "listen 80;" not in line]
    assert kept == [line for line in site.splitlines() if "server 127.0.0.1:" not in line and "listen 127.0.0.1:" not in line]


def test_render_site_refuses_a_template_it_cannot_rewrite():
    template = SITE_CONF.read_text()
    with pytest.raises(ValueError, match="upstream"):
        render_site(template.replace("upstream cnn_explorer", "upstream other"), [9101], 8123)
    with pytest.raises(ValueError, match="listen"):
        render_site(template.replace("listen 80;", "listen 8080;"), [9101], 8123)
    with pytest.raises(ValueError, match="port"):
        render_site(template, [], 8123)


def test_render_main_keeps_every_file_in_the_work_folder(tmp_path):
    main = render_main(tmp_path, tmp_path / "site.conf", run_as_root=False)
    paths = re.findall(r"(/\S+);", main)
    assert paths and all(p.startswith(str(tmp_path)) for p in paths)
    assert f"include {tmp_path / 'site.conf'};" in main
    assert "user " not in main
    assert "user nobody nogroup;" in render_main(tmp_path, tmp_path / "site.conf", run_as_root=True)


def test_established_connections_counts_open_connections_per_port():
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        assert established_connections([port]) == {port: 0}
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
        accepted = [server.accept()[0] for _ in clients]
        try:
            assert established_connections([port, 1]) == {port: 3, 1: 0}
        finally:
            for s in clients + accepted:
                s.close()


def test_the_site_file_is_valid_in_debians_stock_nginx_conf(tmp_path):
    """Dropped into conf.d/ of Debian's own /etc/nginx (copied, with its paths moved), `nginx -t` accepts it."""
    nginx = need_nginx()
    if not Path("/etc/nginx/nginx.conf").is_file():
        pytest.skip("no /etc/nginx/nginx.conf to test the site file in")
    etc = tmp_path / "etc-nginx"
    shutil.copytree("/etc/nginx", etc, symlinks=True)
    conf = (etc / "nginx.conf").read_text().replace("/etc/nginx/", f"{etc}/").replace("/run/nginx.pid", f"{etc}/nginx.pid")
    (etc / "nginx.conf").write_text(conf)
    for default_site in (etc / "sites-enabled").glob("*"):
        default_site.unlink()  # the recipe removes Debian's default site: both listen on port 80
    shutil.copy(SITE_CONF, etc / "conf.d" / SITE_CONF.name)
    check = subprocess.run([str(nginx), "-t", "-p", str(etc), "-c", str(etc / "nginx.conf"), "-e", str(etc / "error.log")],
                           capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stderr
    assert "test is successful" in check.stderr


# --------------------------------------------------------------------------- a running cluster


def test_every_request_of_a_visitor_goes_to_one_process(cluster):
    from bench_proxy_load import LightSession

    async def visit() -> dict[str, str]:
        session = LightSession(cluster.url, 7)
        await session.open(TIMEOUT_S)
        await session.draw(TIMEOUT_S)
        for _ in range(3):  # further requests of the same browser: static files, health checks...
            request = urllib.request.Request(f"{cluster.url}/_stcore/health", headers=session._cookie_header())
            DIRECT.open(request, timeout=10).read()
        await session.close()
        return session.cookies

    cookies = run_async(visit)
    route = cookies.get("cnnx_route", "")
    assert re.fullmatch(r"[0-9a-f]{32}", route), cookies  # set by nginx on the first response
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the websocket's line is written when nginx has closed it
        lines = [line for line in cluster.access_log().splitlines() if f"cookie={route}" in line]
        if any("/_stcore/stream" in line for line in lines):
            break
        time.sleep(0.1)
    assert len(lines) == 5, cluster.access_log()  # health check before the websocket, the websocket, three more
    upstreams = {line.split("upstream=", 1)[1].split()[0] for line in lines}
    assert len(upstreams) == 1 and upstreams <= {f"127.0.0.1:{p}" for p in cluster.app_ports}, lines


BOUNDARY = "cnnx-test-boundary"
PART_HEAD = (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="digit.png"\r\n'
             "Content-Type: image/png\r\n\r\n").encode()
PART_TAIL = f"\r\n--{BOUNDARY}--\r\n".encode()


def upload(url: str, session_id: str, cookies: dict[str, str], body_size: int) -> tuple[int, str]:
    """PUT a file to a session's upload endpoint as the browser does, the whole request body ``body_size`` bytes.

    Returns the status and who answered (the Server header, or the body of nginx's error page).
    """
    body = PART_HEAD + b"\0" * (body_size - len(PART_HEAD) - len(PART_TAIL)) + PART_TAIL
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}",
               "Cookie": "; ".join(f"{k}={v}" for k, v in cookies.items()),
               "X-Xsrftoken": cookies.get("_streamlit_xsrf", "")}
    try:
        connection.request("PUT", f"/_stcore/upload_file/{session_id}/file-{body_size}", body=body, headers=headers)
        response = connection.getresponse()
        return response.status, (response.getheader("Server") or "") + response.read().decode(errors="replace")
    except (ConnectionResetError, BrokenPipeError):  # nginx may refuse and close before the whole body is sent
        return 413, "nginx (closed the connection while the body was being sent)"
    finally:
        connection.close()


def test_uploads_go_through_and_past_the_apps_limit_nginx_refuses_them(cluster):
    from bench_proxy_load import LightSession

    async def scenario() -> tuple[tuple[int, str], tuple[int, str]]:
        session = LightSession(cluster.url, 5)
        await session.open(TIMEOUT_S)
        try:
            # The browser's request for a file of the largest size the app accepts is exactly 10 MiB; Streamlit
            # (server.maxUploadSize = 10) stores it. One byte more and nginx answers before the app sees it.
            at_limit = await asyncio.to_thread(upload, cluster.url, session.session_id, session.cookies, 10 * MIB)
            past = await asyncio.to_thread(upload, cluster.url, session.session_id, session.cookies, 10 * MIB + 1)
        finally:
            await session.close()
        return at_limit, past

    at_limit, past = run_async(scenario)
    assert at_limit[0] == 204, at_limit
    assert past[0] == 413 and "nginx" in past[1], past
    time.sleep(0.2)
    lines = [line for line in cluster.access_log().splitlines() if "/_stcore/upload_file/" in line]
    assert len(lines) == 2, cluster.access_log()
    assert "upstream=127.0.0.1:" in lines[0] and "upstream=- " in lines[1], lines


def test_nginx_refuses_a_websocket_from_another_sites_page(cluster):
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidStatus

    ws_url = cluster.url.replace("http://", "ws://") + "/_stcore/stream"

    async def handshake(origin: str | None) -> int:
        try:
            async with connect(ws_url, origin=origin, subprotocols=["streamlit"], proxy=None, open_timeout=30):
                return 101
        except InvalidStatus as e:
            return e.response.status_code

    assert run_async(lambda: handshake("http://evil.example.org")) == 403
    assert run_async(lambda: handshake(cluster.url)) == 101  # the app's own page
    assert run_async(lambda: handshake(None)) == 101  # not a browser page: Streamlit lets it in too
    time.sleep(0.2)
    refused = [line for line in cluster.access_log().splitlines() if "/_stcore/stream" in line and " 403 " in line]
    assert len(refused) == 1 and "upstream=- " in refused[0], cluster.access_log()


def test_when_a_process_dies_its_visitors_reconnect_elsewhere_and_the_others_go_on(cluster):
    from bench_proxy_load import LightSession

    async def scenario() -> None:
        sessions: list[LightSession] = []
        # Sessions land by the hash of their cookie: open them until both processes hold some.
        while len(sessions) < 24 and not all(cluster.sessions_per_app()):
            session = LightSession(cluster.url, len(sessions))
            await session.open(TIMEOUT_S)
            sessions.append(session)
        spread = cluster.sessions_per_app()
        assert all(spread) and sum(spread) == len(sessions), spread
        for session in sessions:
            assert (await session.draw(TIMEOUT_S)).prediction is not None

        cluster.kill_app(0)
        deadline = time.monotonic() + 15
        while sum(s.closed for s in sessions) < spread[0] and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        gone = [s for s in sessions if s.closed]
        stayed = [s for s in sessions if not s.closed]
        assert len(gone) == spread[0] and len(stayed) == spread[1]

        # Everyone on the other process goes on in the same session, undisturbed.
        for session in stayed:
            assert (await session.draw(TIMEOUT_S)).prediction is not None
        # A visitor of the dead process reconnects as its browser does, with the same cookie (so the
        # same hash key): nginx sends it to the live process, which serves the page and new strokes.
        for session in gone:
            again = LightSession(cluster.url, session.index, cookies=session.cookies)
            await again.open(TIMEOUT_S)
            assert (await again.draw(TIMEOUT_S)).prediction is not None
            sessions.append(again)
        newcomer = LightSession(cluster.url, 99)
        await newcomer.open(TIMEOUT_S)
        assert (await newcomer.draw(TIMEOUT_S)).prediction is not None
        sessions.append(newcomer)
        assert cluster.sessions_per_app() == [0, len(stayed) + len(gone) + 1]
        for session in sessions:
            await session.close()

    run_async(scenario)
    assert cluster.apps[1].alive()


# Every change of the app's connection state, recorded in the page (Streamlit keeps it on its root element).
RECORD_CONNECTION_STATES = """() => {
  window.__connectionStates = [];
  const app = document.querySelector('[data-testid="stApp"]');
  new MutationObserver(() => window.__connectionStates.push(app.getAttribute('data-test-connection-state')))
    .observe(app, {attributes: true, attributeFilter: ['data-test-connection-state']});
}"""


def test_a_browser_on_a_dead_process_reconnects_to_another_and_keeps_drawing(cluster, browser):
    from browser import VIEWPORT, assert_no_errors, follow_script_runs, script_rerun, wait_for_script_idle

    page = browser.new_page(viewport=VIEWPORT)
    try:
        runs = follow_script_runs(page)
        before = cluster.sessions_per_app()
        page.goto(cluster.url)
        canvas = page.locator("canvas.upper-canvas").first
        canvas.wait_for(state="visible", timeout=TIMEOUT_S * 1000)
        wait_for_script_idle(page, int(TIMEOUT_S * 1000))
        box = canvas.bounding_box()

        def draw(points: list[tuple[float, float]]) -> None:
            with script_rerun(page, int(TIMEOUT_S * 1000)):
                page.mouse.move(box["x"] + points[0][0], box["y"] + points[0][1])
                page.mouse.down()
                for x, y in points[1:]:
                    page.mouse.move(box["x"] + x, box["y"] + y)
                page.mouse.up()

        prediction = page.get_by_test_id("stMetric").filter(has_text="Prediction").get_by_test_id("stMetricValue")
        draw([(140, 50 + 20 * i) for i in range(10)])
        assert prediction.first.inner_text().strip().isdigit()
        after = cluster.sessions_per_app()
        mine = [i for i in range(2) if after[i] > before[i]]
        assert len(mine) == 1, (before, after)
        served_before = runs.finished

        page.evaluate(RECORD_CONNECTION_STATES)
        cluster.kill_app(mine[0])
        page.wait_for_function("() => window.__connectionStates.length > 0", timeout=15_000)
        wait_for_script_idle(page, 30_000)  # connected again
        states = page.evaluate("() => window.__connectionStates")
        assert states[0] != "CONNECTED" and states[-1] == "CONNECTED", states  # Streamlit showed it reconnecting
        assert cluster.sessions_per_app()[1 - mine[0]] == after[1 - mine[0]] + 1  # now on the live process

        draw([(60 + 16 * i, 140) for i in range(10)])  # the next stroke is answered there
        assert runs.finished > served_before
        assert prediction.first.inner_text().strip().isdigit()
        assert_no_errors(page, "the home page after its process died")
    finally:
        page.close()
