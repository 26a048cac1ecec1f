"""The SDK's transport: aiohttp on the daemon's socket, bounded answers, errors with codes."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Self, TypeVar

import aiohttp
import msgspec

from handoffd.control.connector import OwnSocketConnector
from handoffd.errors import ApiError, HandoffError
from handoffd.paths import Paths

MAX_RESPONSE = 64 * 1024 * 1024
MAX_EVENT_LINE = 1024 * 1024
BASE_URL = "http://handoff"
T = TypeVar("T")


class DaemonNotRunning(HandoffError):  # noqa: N818 - the name is the API
    """Nothing answers on the control socket: the daemon is not running (for this home)."""

    default_code = "daemon-not-running"


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
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connection pool (idempotent)."""
        self._closed = True
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def _get_session(self) -> aiohttp.ClientSession:
        if self._closed:
            raise HandoffError("client is closed", code="client-closed")
        if self._session is None:
            self._session = aiohttp.ClientSession(
                base_url=BASE_URL,
                connector=OwnSocketConnector(path=os.fspath(self.socket_path)),
                timeout=aiohttp.ClientTimeout(total=self._timeout),
            )
        return self._session

    def _not_running(self, exc: BaseException) -> HandoffError:
        if isinstance(exc, aiohttp.ClientConnectorError) and isinstance(
            exc.os_error, PermissionError
        ):
            return HandoffError(
                f"no permission to use the control socket {self.socket_path}: "
                "it belongs to another user",
                code="daemon-permission-denied",
            )
        return DaemonNotRunning(
            f"handoffd is not running (nothing listens on {self.socket_path}); "
            "start it with `handoffd` (add --home DIR if you use one) "
            "or install the service with `handoff service install`"
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
        status, payload = await self._exchange(method, path, body, params)
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
        """One request; the answer decoded as ``model`` (``models``); errors as ``request``."""
        status, payload = await self._exchange(method, path, body, params)
        return decode_as(model, status, payload)

    async def _exchange(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None,
        params: Mapping[str, str] | None,
    ) -> tuple[int, bytes]:
        session = self._get_session()
        data = None if body is None else json.dumps(body).encode("utf-8")
        headers = {"Content-Type": "application/json"} if data is not None else None
        try:
            async with session.request(
                method, path, data=data, headers=headers, params=params
            ) as resp:
                return resp.status, await read_bounded(resp)
        except (aiohttp.ClientConnectorError, FileNotFoundError, ConnectionRefusedError) as exc:
            raise self._not_running(exc) from None
        except aiohttp.ServerDisconnectedError as exc:
            raise HandoffError(
                "the daemon closed the connection", code="daemon-disconnected"
            ) from exc


async def read_bounded(resp: aiohttp.ClientResponse) -> bytes:
    """The answer's body, at most ``MAX_RESPONSE`` bytes (else ApiError ``bad-response``)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(256 * 1024):
        size += len(chunk)
        if size > MAX_RESPONSE:
            raise ApiError("response too large", code="bad-response", status=resp.status)
        chunks.append(chunk)
    return b"".join(chunks)


def decode_answer(status: int, payload: bytes) -> Any:
    """The decoded JSON answer; the daemon's error (or ``bad-response``) as ApiError."""
    try:
        result = json.loads(payload) if payload else None
    except ValueError:
        result = None
    if status >= 400:
        error = result.get("error") if isinstance(result, dict) else None
        if isinstance(error, dict) and isinstance(error.get("code"), str):
            raise ApiError(str(error.get("message", "")), code=error["code"], status=status)
        raise ApiError(f"the daemon answered HTTP {status}", code="bad-response", status=status)
    if result is None and payload:
        raise ApiError("the daemon sent malformed JSON", code="bad-response", status=status)
    return result


def decode_as(model: type[T], status: int, payload: bytes) -> T:
    """The answer as ``model``; the daemon's error (or ``bad-response``) as ApiError."""
    if status >= 400:
        decode_answer(status, payload)
    try:
        return msgspec.json.decode(payload, type=model)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise ApiError(
            f"the daemon's answer is not as documented: {exc}", code="bad-response", status=status
        ) from None
