"""Real PostgreSQL, Redis and nginx started by the tests as their own processes on loopback.

Debian's packages (``postgresql``, ``redis-server``, ``nginx``) provide the
programs; the system services are never used. Each server gets a temporary
directory and a free loopback port, runs as an unprivileged user when the
tests run as root (PostgreSQL refuses root), and is stopped by PID.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

UNPRIVILEGED = "nobody"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 30.0) -> None:
    """Wait until something accepts on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def _as_user() -> list[str]:
    """argv prefix running a program unprivileged when we are root."""
    if os.geteuid() != 0:
        return []
    return ["setpriv", f"--reuid={UNPRIVILEGED}", "--regid=nogroup", "--clear-groups", "--"]


def _private_dir(prefix: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    if os.geteuid() == 0:
        user = pwd.getpwnam(UNPRIVILEGED)
        os.chown(path, user.pw_uid, user.pw_gid)
    return path


def pg_bin() -> Path:
    """Debian's PostgreSQL programs (the newest installed major version)."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4])
    )
    if not found:
        raise AssertionError("PostgreSQL is not installed (Debian package postgresql)")
    return Path(found[-1]).parent


@dataclass
class PostgresServer:
    """A PostgreSQL cluster in a temporary directory, on 127.0.0.1 (trust auth, user handoff)."""

    root: Path = field(default_factory=lambda: _private_dir("handoff-pg-"))
    port: int = field(default_factory=free_port)

    @property
    def data(self) -> Path:
        return self.root / "data"

    def url(self, database: str = "postgres") -> str:
        """A connection URL for ``database``."""
        return f"postgresql://handoff@127.0.0.1:{self.port}/{database}"

    def _run(self, *argv: str, timeout: float = 120) -> None:
        subprocess.run([*_as_user(), *argv], check=True, timeout=timeout, capture_output=True)

    def init(self) -> PostgresServer:
        """initdb, then start."""
        self._run(
            str(pg_bin() / "initdb"),
            "-D",
            str(self.data),
            "-U",
            "handoff",
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "-N",
        )
        return self.start()

    def start(self) -> PostgresServer:
        """Start the cluster and wait until it accepts connections."""
        options = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} "
            "-c fsync=off -c synchronous_commit=off -c max_connections=200"
        )
        self._run(
            str(pg_bin() / "pg_ctl"),
            "-D",
            str(self.data),
            "-o",
            options,
            "-l",
            str(self.root / "log"),
            "-w",
            "-t",
            "60",
            "start",
        )
        wait_port(self.port)
        return self

    def stop(self) -> None:
        """Stop the cluster (fast shutdown: clients are disconnected)."""
        if (self.data / "postmaster.pid").exists():
            self._run(str(pg_bin() / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def create_database(self) -> str:
        """A new empty database; its URL."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def destroy(self) -> None:
        """Stop and remove everything."""
        try:
            self.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


@dataclass
class RedisServer:
    """``redis-server`` on 127.0.0.1 with no persistence."""

    root: Path = field(default_factory=lambda: _private_dir("handoff-redis-"))
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        """Start it (again, on the same port) and wait until it accepts."""
        argv = [
            *_as_user(),
            shutil.which("redis-server") or "/usr/bin/redis-server",
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.root),
            "--logfile",
            str(self.root / "log"),
        ]
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
        wait_port(self.port)
        return self

    def stop(self) -> None:
        """Stop it (SIGTERM, then SIGKILL)."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=15)

    def destroy(self) -> None:
        """Stop and remove its directory."""
        try:
            self.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


NGINX_MAIN = """\
worker_processes 1;
daemon off;
pid {root}/nginx.pid;
error_log {root}/error.log info;
events {{ worker_connections 4096; }}
http {{
    access_log {root}/access.log;
    client_body_temp_path {root}/body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
    include {site};
}}
"""
DEPLOY_NGINX = Path(__file__).resolve().parents[1] / "deploy" / "nginx.conf"


def render_site(upstreams: list[str], port: int, cert: Path, key: Path) -> str:
    """deploy/nginx.conf (the file users copy) with this test's addresses, ports and files."""
    text = DEPLOY_NGINX.read_text()
    servers = "".join(f"    server {u} max_fails=1 fail_timeout=5s;\n" for u in upstreams)
    text, n = re.subn(r"(?m)^    server 127\.0\.0\.1:800\d .*\n", "", text)
    assert n == 2, "deploy/nginx.conf: expected two example upstream servers"
    text = text.replace("upstream handoff {\n", "upstream handoff {\n" + servers, 1)
    replacements = {
        "    listen 443 ssl;\n": f"    listen 127.0.0.1:{port} ssl;\n",
        "    listen [::]:443 ssl;\n": "",
        "/etc/handoff-server/tls/server.crt": str(cert),
        "/etc/handoff-server/tls/server.key": str(key),
    }
    for old, new in replacements.items():
        assert old in text, f"deploy/nginx.conf: {old!r} not found"
        text = text.replace(old, new)
    return text


@dataclass
class NginxServer:
    """nginx terminating TLS on 127.0.0.1 and balancing HTTP and WebSockets over ``upstreams``."""

    upstreams: list[str]
    cert: Path
    key: Path
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="handoff-nginx-")))
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> NginxServer:
        """Write the configuration and start nginx in the foreground (as a child)."""
        site = self.root / "site.conf"
        site.write_text(render_site(self.upstreams, self.port, self.cert, self.key))
        conf = self.root / "nginx.conf"
        conf.write_text(NGINX_MAIN.format(root=self.root, site=site))
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        self.proc = subprocess.Popen(
            [nginx, "-c", str(conf), "-p", str(self.root), "-e", str(self.root / "error.log")],
            stdin=subprocess.DEVNULL,
        )
        wait_port(self.port)
        return self

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def stop(self) -> None:
        """Stop nginx (SIGQUIT lets the master stop its workers)."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGQUIT)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=15)
        shutil.rmtree(self.root, ignore_errors=True)
