"""handoff-server's listener as a real process: idle, dripping and handshake-less connections are
closed, one address cannot hold more than its share, descriptor exhaustion does not flood the log,
and TLS 1.2 offers only ECDHE with AEAD."""

from __future__ import annotations

import asyncio
import contextlib
import resource
import shutil
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

from handoffd.server import listener
from tests.support.processes import READY_PREFIX, ServerProcess, read_line

OPENSSL = shutil.which("openssl") or "openssl"
# More than the default 60 s: the listener's idle and drip timeouts run their course, and a server runs out of descriptors.
pytestmark = pytest.mark.timeout(240)


def _tls_client() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the test does not care who answers, only when it hangs up
    return ctx


async def _tls_connect(port: int, host: str = "127.0.0.1") -> asyncio.StreamWriter:
    """A TLS connection (handshake done), bounded."""
    async with asyncio.timeout(20):
        _, writer = await asyncio.open_connection(
            host, port, ssl=_tls_client(), server_hostname="localhost"
        )
    return writer


async def _close_all(writers: Iterable[asyncio.StreamWriter]) -> None:
    """Close and wait: a transport left closing when the test's loop ends warns later."""
    for w in writers:
        w.close()
    for w in writers:
        with contextlib.suppress(ConnectionError, ssl.SSLError, TimeoutError):
            async with asyncio.timeout(10):
                await w.wait_closed()


def _port(server: ServerProcess) -> int:
    return int(server.url.rsplit(":", 1)[1])


async def _closed_within(reader: asyncio.StreamReader, bound: float) -> float:
    """Seconds until the server ends the connection (EOF or reset); fails past ``bound``."""
    started = time.monotonic()
    try:
        async with asyncio.timeout(bound):
            while await reader.read(4096):
                pass
    except (ConnectionError, ssl.SSLError):
        pass
    except TimeoutError:
        raise AssertionError(f"the server kept the connection open for {bound} s") from None
    return time.monotonic() - started


async def _get_info(url: str, *, source: str = "127.0.0.1") -> int:
    """``GET /v1/info``'s status over a fresh TLS connection from ``source``, closed and
    waited for (a client library's pooled transports may outlive the test's loop)."""
    host, port = url.split("://", 1)[1].rsplit(":", 1)
    async with asyncio.timeout(30):
        reader, writer = await asyncio.open_connection(
            host.strip("[]"),
            int(port),
            ssl=_tls_client(),
            server_hostname="localhost",
            local_addr=(source, 0),
        )
        try:
            writer.write(b"GET /v1/info HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            await writer.drain()
            status = await reader.readline()
            await reader.read()
        finally:
            await _close_all((writer,))
    parts = status.split()
    if len(parts) < 2 or not parts[1].isdigit():
        raise ConnectionError(f"not an HTTP answer: {status[:80]!r}")
    return int(parts[1])


@pytest.fixture
def plain_server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A server with the default connection options."""
    proc = ServerProcess(tmp_path / "data").start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.mark.asyncio
async def test_silent_dripping_and_handshakeless_connections_are_closed(
    plain_server: ServerProcess,
) -> None:
    port = _port(plain_server)
    # Sends nothing after the TLS handshake.
    idle_r, idle_w = await asyncio.open_connection(
        "127.0.0.1", port, ssl=_tls_client(), server_hostname="localhost"
    )
    # Drips one header line every 5 s and never ends the header.
    drip_r, drip_w = await asyncio.open_connection(
        "127.0.0.1", port, ssl=_tls_client(), server_hostname="localhost"
    )
    # Never starts TLS.
    raw_r, raw_w = await asyncio.open_connection("127.0.0.1", port)

    async def drip() -> None:
        drip_w.write(b"GET /v1/info HTTP/1.1\r\nHost: localhost\r\n")
        for i in range(100):
            await asyncio.sleep(5)
            drip_w.write(b"X-Drip-%d: x\r\n" % i)
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                await drip_w.drain()

    dripper = asyncio.create_task(drip())
    try:
        # Defaults: idle 30 s, handshake 10 s. Before: the first two stayed open for good
        # (seen after 130 s) and the third for asyncio's 60 s.
        results = await asyncio.gather(
            _closed_within(idle_r, 3 * listener.IDLE_TIMEOUT),
            _closed_within(drip_r, 3 * listener.IDLE_TIMEOUT),
            _closed_within(raw_r, 4 * listener.HANDSHAKE_TIMEOUT),
            return_exceptions=True,
        )
    finally:
        dripper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await dripper
        await _close_all((idle_w, drip_w, raw_w))
    kept = [
        name
        for name, r in zip(("idle", "drip", "no-tls"), results, strict=True)
        if not isinstance(r, float)
    ]
    assert not kept, f"kept open: {kept} {results}"
    # The server still serves.
    assert await _get_info(plain_server.url) == 200


@pytest.mark.asyncio
async def test_one_address_gets_its_share_and_no_more(plain_server: ServerProcess) -> None:
    port = _port(plain_server)
    cap = listener.MAX_PER_ADDRESS
    held: list[asyncio.StreamWriter] = []
    try:
        for _ in range(cap):  # TLS up, then idle: each holds a connection until the idle timeout
            _, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=_tls_client(), server_hostname="localhost"
            )
            held.append(writer)
        # The next one from the same address is reset at accept, before TLS.
        with pytest.raises((ConnectionError, ssl.SSLError)):
            held.append(await _tls_connect(port))
        # Another address is served meanwhile.
        assert await _get_info(plain_server.url, source="127.0.0.2") == 200
    finally:
        await _close_all(held)
    # Closing them gives the slots back.
    deadline = time.monotonic() + 30
    while True:
        try:
            assert await _get_info(plain_server.url) == 200
            break
        except (ConnectionError, ssl.SSLError, TimeoutError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


def _spawn(data: Path, log_path: Path, soft: int, hard: int, *extra: str) -> subprocess.Popen[str]:
    """``serve`` on 127.0.0.1:0 started with RLIMIT_NOFILE (soft, hard)."""
    argv = [
        sys.executable,
        "-m",
        "handoffd.server.cli",
        "serve",
        "--data",
        str(data),
        "--listen",
        "127.0.0.1:0",
        *extra,
    ]
    with log_path.open("w") as log:
        return subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard)),
        )


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=20)
    if proc.stdout is not None:
        proc.stdout.close()


def test_the_soft_descriptor_limit_is_raised_to_the_hard_one(tmp_path: Path) -> None:
    proc = _spawn(tmp_path / "data", tmp_path / "server.log", 256, 4096)
    try:
        assert proc.stdout is not None
        line = read_line(proc.stdout, 30)
        assert line.startswith(READY_PREFIX), (tmp_path / "server.log").read_text()
        limits = Path(f"/proc/{proc.pid}/limits").read_text()
        row = next(x for x in limits.splitlines() if x.startswith("Max open files"))
        assert row.split()[3:5] == ["4096", "4096"], row
    finally:
        _stop(proc)


def test_out_of_descriptors_is_logged_a_few_times_not_per_accept(tmp_path: Path) -> None:
    log_path = tmp_path / "server.log"
    # Caps above the descriptor limit: accept itself runs out of descriptors.
    proc = _spawn(
        tmp_path / "data",
        log_path,
        128,
        128,
        "--max-connections",
        "5000",
        "--max-connections-per-address",
        "0",
    )
    socks: list[socket.socket] = []
    try:
        assert proc.stdout is not None
        line = read_line(proc.stdout, 30)
        assert line.startswith(READY_PREFIX), log_path.read_text()
        url = line.split("url=", 1)[1].split()[0]
        port = int(url.rsplit(":", 1)[1])
        for _ in range(300):  # far past 128 descriptors; the kernel queues what is not accepted
            s = socket.socket()
            s.settimeout(2)
            try:
                s.connect(("127.0.0.1", port))
            except OSError:
                s.close()
                break
            socks.append(s)
        time.sleep(5)  # while out of descriptors (before: ~2,400 traceback lines a second)
        lines = log_path.read_text().splitlines()
        accept_lines = [x for x in lines if "out of" in x and "resource" in x]
        assert accept_lines, "the exhaustion was not logged at all"
        assert len(lines) < 60, f"{len(lines)} log lines in 5 s"
        for s in socks:
            s.close()
        socks.clear()
        # It recovers once the descriptors are free again.
        deadline = time.monotonic() + 60
        while True:
            try:
                status = asyncio.run(_get_info(url))
                break
            except (ConnectionError, ssl.SSLError, TimeoutError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        assert status == 200
    finally:
        for s in socks:
            s.close()
        _stop(proc)
    assert "Traceback" not in log_path.read_text()


def _s_client(port: int, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [OPENSSL, "s_client", "-connect", f"127.0.0.1:{port}", *args],
        input="",
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.mark.parametrize(
    "cipher",
    [
        "AES128-SHA",
        "ECDHE-ECDSA-AES128-SHA",
        "ECDHE-ECDSA-AES256-SHA384",
        "ECDHE-ECDSA-AES128-SHA256",
    ],
)
def test_tls12_cbc_suites_are_refused(server: ServerProcess, cipher: str) -> None:
    result = _s_client(_port(server), "-tls1_2", "-cipher", cipher)
    assert "Cipher is (NONE)" in result.stdout or result.returncode != 0, result.stdout
    assert f"Cipher    : {cipher}" not in result.stdout


@pytest.mark.parametrize(
    "cipher",
    [
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
    ],
)
def test_tls12_ecdhe_aead_suites_work(server: ServerProcess, cipher: str) -> None:
    result = _s_client(_port(server), "-tls1_2", "-cipher", cipher)
    assert f"Cipher    : {cipher}" in result.stdout, result.stdout + result.stderr


def test_tls13_works(server: ServerProcess) -> None:
    result = _s_client(_port(server), "-tls1_3")
    assert "TLSv1.3" in result.stdout, result.stdout + result.stderr
