"""A lean, synchronous control-API client for the CLI's quick reads (``status``, ``devices``).

The SDK's ``HandoffClient`` loads aiohttp (about half a second of imports);
a one-shot ``GET`` needs only ``http.client`` over the Unix socket. The same
checks as the SDK's connector run before a byte is sent: the socket's
directory must be private (``home-unsafe``) and the daemon must run as our
uid (``daemon-wrong-user``). Answers are bounded and decoded into the answer models
(``client_decode.decode_as``), as the SDK does; msgspec and the models import fast.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import socket
from pathlib import Path
from typing import TypeVar

from handoffd.control.client_decode import decode_as, not_running
from handoffd.errors import ApiError, HandoffError
from handoffd.ownership import check_private_dir
from handoffd.paths import Paths
from handoffd.peercred import check_socket_server

__all__ = ["MAX_ANSWER", "get_as"]

T = TypeVar("T")

MAX_ANSWER = 16 * 1024 * 1024
TIMEOUT = 30.0


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("handoff", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            check_private_dir(self._path.parent)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(os.fspath(self._path))
            check_socket_server(sock, self._path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


def get_as(model: type[T], path: str, *, home: str | None = None, timeout: float = TIMEOUT) -> T:
    """``GET path`` on the daemon of ``home``, decoded as ``model`` (``client_decode.decode_as``,
    as the SDK does); HandoffError/ApiError with its code."""
    sock_path = Paths.resolve(home).control_socket
    conn = _UnixConnection(sock_path, timeout)
    try:
        try:
            conn.request("GET", path, headers={"Accept": "application/json"})
        except (FileNotFoundError, ConnectionRefusedError, PermissionError) as exc:
            raise not_running(sock_path, exc) from None
        try:
            resp = conn.getresponse()
            payload = resp.read(MAX_ANSWER + 1)
        except (OSError, http.client.HTTPException) as exc:
            raise HandoffError(
                "the daemon closed the connection", code="daemon-disconnected"
            ) from exc
    finally:
        conn.close()
    if len(payload) > MAX_ANSWER:
        raise ApiError("response too large", code="bad-response", status=resp.status)
    return decode_as(model, resp.status, payload)
