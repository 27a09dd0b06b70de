"""Run CNN Explorer as N app processes behind nginx on this machine, and stop them all cleanly.

    python deploy/run_cluster.py [--processes 3] [--port 8080]         # Ctrl-C stops everything

Starts N ``cnn-explorer`` processes (``python -m cnn_core.cli``: the same command the package
installs) on free loopback ports, then a private nginx (Debian's binary, its own config, logs and
temporary files in a fresh folder; the system's nginx is not touched) serving
``deploy/nginx/cnn-explorer.conf`` on 127.0.0.1:PORT with its upstream pointed at those processes.
While it runs, a process that dies is started again on its port, as systemd's ``Restart=always``
would; nginx sends its visitors to the others meanwhile. Ctrl-C or SIGTERM stops nginx, then the
app processes (SIGTERM, SIGKILL after 10 s), and removes the folder unless ``--keep``.

:class:`Cluster` is the same thing as a context manager for tests and benchmarks.
"""

from __future__ import annotations

import argparse
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

ROOT = Path(__file__).resolve().parent.parent
SITE_CONF = ROOT / "deploy" / "nginx" / "cnn-explorer.conf"
STOP_TIMEOUT_S = 10.0
# urllib without the environment's proxy settings: every request here goes to loopback.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))

_UPSTREAM_SERVER = re.compile(r"^(\s*)server\s+127\.0\.0\.1:\d+(\s+[^;]*)?;[^\n]*\n", re.MULTILINE)
_UPSTREAM_BLOCK = re.compile(r"upstream\s+cnn_explorer\s*\{[^}]*\}")
_LISTEN = re.compile(r"^(\s*)listen\s+80;", re.MULTILINE)


class ClusterError(RuntimeError):
    """The cluster could not be started (a process that never became healthy, nginx refusing its config...)."""


# --------------------------------------------------------------------------- configuration


def render_site(template: str, app_ports: list[int], listen_port: int) -> str:
    """The site configuration with its upstream servers on ``app_ports`` and listening on 127.0.0.1:``listen_port``.

    Only the ``server 127.0.0.1:...`` lines of ``upstream cnn_explorer`` and the ``listen 80;`` line
    change; anything else in the file is served as written. Raises ValueError when the file no
    longer has exactly one of each, so that an edited template fails loudly here, not in nginx.
    """
    if not app_ports:
        raise ValueError("at least one app port is needed")
    blocks = _UPSTREAM_BLOCK.findall(template)
    if len(blocks) != 1:
        raise ValueError(f"expected one `upstream cnn_explorer {{...}}` block, found {len(blocks)}")
    block = blocks[0]
    servers = list(_UPSTREAM_SERVER.finditer(block))
    if not servers:
        raise ValueError("the upstream block has no `server 127.0.0.1:PORT ...;` line")
    first = servers[0]
    indent, options = first.group(1), first.group(2) or ""
    lines = "".join(f"{indent}server 127.0.0.1:{port}{options};\n" for port in app_ports)
    without = _UPSTREAM_SERVER.sub("", block)  # unchanged up to where the first server line was
    new_block = without[:first.start()] + lines + without[first.start():]
    site, n_listen = _LISTEN.subn(rf"\g<1>listen 127.0.0.1:{listen_port};", template.replace(block, new_block))
    if n_listen != 1:
        raise ValueError(f"expected one `listen 80;` line, found {n_listen}")
    return site


def render_main(workdir: Path, site_path: Path, run_as_root: bool) -> str:
    """A complete nginx.conf for a private nginx: pid, logs and temporary files under ``workdir``."""
    # As root, nginx's workers switch to an unprivileged user (`nobody` by default); the folders they
    # write request bodies to must then be theirs (see Cluster._prepare_workdir).
    user = "user nobody nogroup;\n" if run_as_root else ""
    temp = "\n".join(f"    {kind}_temp_path {workdir / 'tmp' / kind};"
                     for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return f"""# Written by deploy/run_cluster.py for one run; the site configuration is {SITE_CONF.name}.
{user}worker_processes 1;
daemon off;
pid {workdir / 'nginx.pid'};
error_log {workdir / 'error.log'} warn;

events {{
    worker_connections 1024;
}}

http {{
    log_format cnnx '$remote_addr [$time_local] "$request" $status $body_bytes_sent '
                    'upstream=$upstream_addr upstream_status=$upstream_status time=$request_time '
                    'cookie=$cookie_cnnx_route';
    access_log {workdir / 'access.log'} cnnx;
{temp}
    include {site_path};
}}
"""


def nginx_binary() -> Path | None:
    """Debian's nginx (``apt-get install nginx``), or None when it is not installed."""
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None)
    return Path(found) if found else None


# --------------------------------------------------------------------------- processes


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def healthy(url: str) -> bool:
    """True when ``url``/_stcore/health answers 200."""
    try:
        with _DIRECT.open(f"{url}/_stcore/health", timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def app_command(port: int, app_root: Path | None = None) -> list[str]:
    """One app process on 127.0.0.1:``port``, headless.

    The ``cnn-explorer`` command of this checkout; with ``app_root``, ``streamlit run`` on the app.py
    of that other copy of the project (benchmarks measure an earlier version that way).
    """
    where = ["--server.port", str(port), "--server.address", "127.0.0.1", "--server.headless", "true"]
    if app_root is None:
        return [sys.executable, "-m", "cnn_core.cli", *where]
    return [sys.executable, "-m", "streamlit", "run", str(app_root / "app.py"), *where]


def stop_process(process: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    """Send ``sig``, wait up to STOP_TIMEOUT_S, then SIGKILL."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT_S)


def established_connections(ports: list[int]) -> dict[int, int]:
    """How many established TCP connections go to each of ``ports`` on this machine (from /proc/net/tcp*).

    Behind nginx every open websocket is one connection from nginx to the process that holds its
    session (nginx keeps no other connection open to the app processes), so this tells how the
    sessions are spread, without asking the processes.
    """
    counts = dict.fromkeys(ports, 0)
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            remote_port = int(fields[2].rsplit(":", 1)[1], 16)
            if fields[3] == "01" and remote_port in counts:  # 01: ESTABLISHED
                counts[remote_port] += 1
    return counts


@dataclass
class AppProcess:
    """One app process of the cluster."""

    port: int
    log_path: Path
    app_root: Path | None = None  # None: this checkout, through the cnn-explorer command
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        """Start (or start again) the process; output is appended to its log file."""
        with open(self.log_path, "ab") as log:  # a file, not a pipe nobody reads (a full pipe blocks the server)
            self.process = subprocess.Popen(app_command(self.port, self.app_root), cwd=self.app_root or ROOT,
                                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


@dataclass
class Cluster:
    """N app processes and a private nginx in front of them, on loopback.

    ``with Cluster(2) as c:`` starts everything and waits until nginx answers; ``c.url`` is the
    public address; leaving the block stops everything.
    """

    processes: int = 3
    port: int = 0  # nginx's port on 127.0.0.1; 0: a free one
    proxy: bool = True  # False: the app processes alone, no nginx (benchmarks' "direct" runs)
    app_root: Path | None = None  # another copy of the project to serve (see app_command)
    keep: bool = False  # keep the folder with the configuration and logs after stopping
    startup_timeout_s: float = 180.0
    apps: list[AppProcess] = field(default_factory=list)
    workdir: Path | None = None
    nginx: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """Where visitors go: nginx, or without the proxy the first app process."""
        return f"http://127.0.0.1:{self.port}" if self.proxy else self.apps[0].url

    @property
    def app_ports(self) -> list[int]:
        return [app.port for app in self.apps]

    def __enter__(self) -> Cluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # ------------------------------------------------------------------ start

    def start(self) -> None:
        """Start the app processes, wait until each is healthy, then start nginx and wait until it answers."""
        nginx = nginx_binary()
        if nginx is None and self.proxy:
            raise ClusterError("nginx is not installed (Debian: apt-get install nginx)")
        if self.processes < 1:
            raise ClusterError("at least one app process is needed")
        self.workdir = Path(tempfile.mkdtemp(prefix="cnn-explorer-cluster-"))
        self.port = self.port or free_port()
        self.apps = [AppProcess(free_port(), self.workdir / f"app-{i}.log", self.app_root)
                     for i in range(self.processes)]
        for app in self.apps:  # all at once: each spends seconds importing torch
            app.start()
        deadline = time.monotonic() + self.startup_timeout_s
        for app in self.apps:
            self._wait(lambda app=app: healthy(app.url), deadline, f"app process on port {app.port}", app)
        if nginx is not None and self.proxy:
            self._start_nginx(nginx)
            self._wait(lambda: healthy(self.url), deadline, f"nginx on port {self.port}")

    def _wait(self, ready, deadline: float, what: str, app: AppProcess | None = None) -> None:
        while time.monotonic() < deadline:
            if app is not None and not app.alive():
                raise ClusterError(f"{what} exited before serving:\n{app.log()[-3000:]}")
            if self.nginx is not None and app is None and self.nginx.poll() is not None:
                raise ClusterError(f"nginx exited with code {self.nginx.returncode}:\n{self.error_log()[-3000:]}")
            if ready():
                return
            time.sleep(0.25)  # polling an HTTP endpoint: there is no event to wait on
        raise ClusterError(f"{what} did not answer within {self.startup_timeout_s:.0f} s")

    def _prepare_workdir(self, run_as_root: bool) -> None:
        assert self.workdir is not None
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (self.workdir / "tmp" / kind).mkdir(parents=True, exist_ok=True)
        if run_as_root:
            # nginx's workers run as nobody: they must reach the folder and write request bodies there.
            nobody = pwd.getpwnam("nobody")
            self.workdir.chmod(0o711)
            (self.workdir / "tmp").chmod(0o711)
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
                os.chown(self.workdir / "tmp" / kind, nobody.pw_uid, nobody.pw_gid)

    def _start_nginx(self, nginx: Path) -> None:
        assert self.workdir is not None
        run_as_root = os.geteuid() == 0
        self._prepare_workdir(run_as_root)
        site = self.workdir / SITE_CONF.name
        site.write_text(render_site(SITE_CONF.read_text(), self.app_ports, self.port))
        main = self.workdir / "nginx.conf"
        main.write_text(render_main(self.workdir, site, run_as_root))
        # -e: nginx opens its error log before reading the configuration; the default one is the system's.
        base = [str(nginx), "-p", str(self.workdir), "-c", str(main), "-e", str(self.workdir / "error.log")]
        check = subprocess.run([*base, "-t", "-q"], capture_output=True, text=True, timeout=30)
        if check.returncode != 0:
            raise ClusterError(f"nginx refused the configuration:\n{check.stderr}")
        with open(self.workdir / "nginx.out", "wb") as out:
            self.nginx = subprocess.Popen(base, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    # ------------------------------------------------------------------ while running

    def error_log(self) -> str:
        """nginx's error log so far."""
        try:
            return (self.workdir / "error.log").read_text(errors="replace") if self.workdir else ""
        except OSError:
            return ""

    def access_log(self) -> str:
        """nginx's access log so far (a websocket's line is written when it closes)."""
        try:
            return (self.workdir / "access.log").read_text(errors="replace") if self.workdir else ""
        except OSError:
            return ""

    def kill_app(self, index: int) -> None:
        """SIGKILL one app process, as a crash or the kernel's OOM killer would."""
        process = self.apps[index].process
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT_S)

    def sessions_per_app(self) -> list[int]:
        """Open websockets per app process, in the order of :attr:`apps` (see :func:`established_connections`)."""
        counts = established_connections(self.app_ports)
        return [counts[port] for port in self.app_ports]

    def restart_dead(self, timeout_s: float = 120.0) -> list[int]:
        """Start again every app process that has exited; returns their indices."""
        dead = [i for i, app in enumerate(self.apps) if not app.alive()]
        for i in dead:
            self.apps[i].start()
        deadline = time.monotonic() + timeout_s
        for i in dead:
            app = self.apps[i]
            self._wait(lambda app=app: healthy(app.url), deadline, f"app process on port {app.port}", app)
        return dead

    # ------------------------------------------------------------------ stop

    def stop(self) -> None:
        """Stop nginx (fast shutdown: open websockets would hold a graceful one forever), then the apps."""
        if self.nginx is not None:
            stop_process(self.nginx, signal.SIGTERM)
        for app in self.apps:
            if app.process is not None:
                stop_process(app.process, signal.SIGTERM)
        if self.workdir is not None and not self.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    """Run the cluster until Ctrl-C or SIGTERM; returns the exit code."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--processes", type=int, default=3, help="app processes (default 3)")
    p.add_argument("--port", type=int, default=8080, help="nginx's port on 127.0.0.1 (default 8080; 0: a free one)")
    p.add_argument("--keep", action="store_true", help="keep the folder with the configuration and logs")
    a = p.parse_args(argv)
    if a.processes < 1:
        p.error("--processes must be at least 1")

    stopping = False

    def request_stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    cluster = Cluster(a.processes, a.port, keep=a.keep)
    try:
        print(f"starting {a.processes} app processes and nginx...", flush=True)
        cluster.start()
        print(f"CNN Explorer: {cluster.url}  (app processes on ports {', '.join(map(str, cluster.app_ports))}; "
              f"configuration and logs in {cluster.workdir})\nCtrl-C stops everything.", flush=True)
        while not stopping:
            if cluster.nginx is not None and cluster.nginx.poll() is not None:
                print(f"nginx exited with code {cluster.nginx.returncode}:\n{cluster.error_log()[-2000:]}",
                      file=sys.stderr)
                return 1
            if not all(app.alive() for app in cluster.apps):
                died = [app.port for app in cluster.apps if not app.alive()]
                print(f"app process on port(s) {died} exited; starting it again", flush=True)
                cluster.restart_dead()
            time.sleep(1)  # a supervisor's poll: nothing to wait on across both kinds of process
        return 0
    except ClusterError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        print("stopping...", flush=True)
        cluster.stop()


if __name__ == "__main__":
    raise SystemExit(main())
