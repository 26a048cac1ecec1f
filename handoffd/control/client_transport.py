"""The SDK's transport: HTTP/1.1 over the daemon's Unix socket with asyncio streams (no aiohttp,
so the SDK and the CLI import fast), bounded answers, errors with stable codes.

Connections are kept alive and reused; each is opened by ``connector.open_own_socket`` (the
socket's directory and its server's uid checked before a byte is sent).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import urllib.parse
from collections.abc import AsyncGenerator, Mapping
from pathlib import Path
from typing import Any, Self, TypeVar

from handoffd.control.client_decode import DaemonNotRunning, decode_answer, decode_as, not_running
from handoffd.control.client_http import (
    iter_lines,
    read_body,
    read_head,
    request_bytes,
)
from handoffd.control.connector import open_own_socket
from handoffd.errors import HandoffError
from handoffd.paths import Paths

__all__ = [
    "MAX_EVENT_LINE",
    "MAX_RESPONSE",
    "ControlTransport",
    "DaemonNotRunning",
    "decode_answer",
    "decode_as",
]

MAX_RESPONSE = 64 * 1024 * 1024
MAX_EVENT_LINE = 1024 * 1024
T = TypeVar("T")

_Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class ControlTransport:
    """The connection to one daemon's control socket: ``request()``, errors with stable codes."""

    def __init__(
        self,
        socket: str | os.PathLike[str] | None = None,
        *,
        home: str | os.PathLike[str] | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.socket_path = (
            Path(socket) if socket is not None else Paths.resolve(home).control_socket
        )
        self._timeout = timeout
        self._idle: list[_Conn] = []
        self._streams: set[asyncio.StreamWriter] = set()
        self._closed = False

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the kept-alive connections and any event stream (idempotent)."""
        self._closed = True
        writers = [w for _, w in self._idle] + list(self._streams)
        self._idle.clear()
        self._streams.clear()
        for writer in writers:
            await _close(writer)

    async def _connect(self) -> _Conn:
        if self._closed:
            raise HandoffError("client is closed", code="client-closed")
        try:
            async with asyncio.timeout(self._timeout):
                return await open_own_socket(self.socket_path)
        except (PermissionError, FileNotFoundError, ConnectionRefusedError) as exc:
            raise not_running(self.socket_path, exc) from None
        except TimeoutError:
            raise self._timed_out() from None

    def _timed_out(self) -> HandoffError:
        return HandoffError(
            f"the daemon did not answer within {self._timeout:g} s ({self.socket_path})",
            code="daemon-timeout",
        )

    async def request(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        *,
        params: Mapping[str, str] | None = None,
    ) -> Any:
        """One request; the decoded JSON answer; ApiError with the daemon's code on an error."""
        status, payload = await self._exchange(method, _target(path, params), _json(body))
        return decode_answer(status, payload)

    async def request_as(
        self,
        model: type[T],
        method: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        *,
        params: Mapping[str, str] | None = None,
    ) -> T:
        """One request; the answer decoded as ``model`` (``answers``); errors as ``request``."""
        status, payload = await self._exchange(method, _target(path, params), _json(body))
        return decode_as(model, status, payload)

    async def _exchange(self, method: str, target: str, body: bytes | None) -> tuple[int, bytes]:
        while True:
            reused = bool(self._idle)
            reader, writer = self._idle.pop() if reused else await self._connect()
            started = False
            try:
                async with asyncio.timeout(self._timeout):
                    writer.write(request_bytes(method, target, body))
                    await writer.drain()
                    head = await read_head(reader)
                    started = True
                    payload = await read_body(reader, head, MAX_RESPONSE)
            except (asyncio.IncompleteReadError, ConnectionError) as exc:
                await _close(writer)
                if reused and not started:
                    continue  # the daemon closed an idle connection: once more on a new one
                raise HandoffError(
                    "the daemon closed the connection", code="daemon-disconnected"
                ) from exc
            except TimeoutError:
                await _close(writer)
                raise self._timed_out() from None
            except BaseException:
                await _close(writer)
                raise
            if head.keep_alive and not self._closed:
                self._idle.append((reader, writer))
            else:
                await _close(writer)
            return head.status, payload

    async def stream_lines(
        self, path: str, params: Mapping[str, str] | None = None
    ) -> AsyncGenerator[bytes, None]:
        """``GET path`` on a connection of its own; the answer's lines until it ends."""
        reader, writer = await self._connect()
        self._streams.add(writer)
        try:
            try:
                async with asyncio.timeout(self._timeout):
                    writer.write(request_bytes("GET", _target(path, params), None))
                    await writer.drain()
                    head = await read_head(reader)
                    if head.status >= 400:
                        decode_answer(head.status, await read_body(reader, head, MAX_RESPONSE))
            except TimeoutError:
                raise self._timed_out() from None
            except (asyncio.IncompleteReadError, ConnectionError) as exc:
                raise HandoffError(
                    "the daemon closed the connection", code="daemon-disconnected"
                ) from exc
            try:
                async with contextlib.aclosing(iter_lines(reader, head, MAX_EVENT_LINE)) as lines:
                    async for line in lines:
                        yield line
            except (asyncio.IncompleteReadError, ConnectionError):
                return  # the daemon went away: the stream ends
        finally:
            self._streams.discard(writer)
            await _close(writer)


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError, OSError):
        await writer.wait_closed()


def _target(path: str, params: Mapping[str, str] | None) -> str:
    return path + ("?" + urllib.parse.urlencode(params) if params else "")


def _json(body: Mapping[str, Any] | None) -> bytes | None:
    return None if body is None else json.dumps(body).encode("utf-8")
