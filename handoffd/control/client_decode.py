"""The SDK's answers decoded (the daemon's JSON, its errors with their codes) and its
not-running errors; no I/O, no asyncio: a synchronous client can use it too."""

from __future__ import annotations

import json
import os
from typing import Any, TypeVar

import msgspec

from handoffd.errors import ApiError, HandoffError

T = TypeVar("T")


class DaemonNotRunning(HandoffError):  # noqa: N818 - the name is the API
    """Nothing answers on the control socket: the daemon is not running (for this home)."""

    default_code = "daemon-not-running"


def not_running(socket_path: str | os.PathLike[str], exc: OSError) -> HandoffError:
    """What a failed connect to ``socket_path`` means: another user's socket, or no daemon."""
    if isinstance(exc, PermissionError):
        return HandoffError(
            f"no permission to use the control socket {os.fspath(socket_path)}: "
            "it belongs to another user",
            code="daemon-permission-denied",
        )
    return DaemonNotRunning(
        f"handoffd is not running (nothing listens on {os.fspath(socket_path)}); "
        "start it with `handoffd` (add --home DIR if you use one) "
        "or install the service with `handoff service install`"
    )


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
