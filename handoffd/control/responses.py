"""JSON responses, bounded request bodies, and the middleware that turns errors into JSON with stable codes."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from handoffd.control import schema
from handoffd.errors import (
    ApiError,
    ConfigError,
    ConflictError,
    HandoffError,
    InvalidRequestError,
    NotFoundError,
    ServerError,
    StoreError,
)

logger = logging.getLogger("handoffd.control")


def json_response(data: Any, status: int = 200) -> web.Response:
    """A compact JSON response."""
    return web.Response(
        body=json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode("utf-8"),
        status=status,
        content_type="application/json",
    )


def error_response(status: int, code: str, message: str) -> web.Response:
    """``{"error": {"code", "message"}}`` with ``status``."""
    return json_response({"error": {"code": code, "message": message}}, status)


async def read_json(request: web.Request) -> dict[str, Any]:
    """The request's JSON object body (bounded, strict): see schema.parse_body."""
    if request.content_length is not None and request.content_length > schema.MAX_BODY:
        raise ApiError(
            f"request body is larger than {schema.MAX_BODY} bytes",
            code="body-too-large",
            status=413,
        )
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise ApiError(
            f"request body is larger than {schema.MAX_BODY} bytes",
            code="body-too-large",
            status=413,
        ) from None
    return schema.parse_body(raw)


# ---------------------------------------------------------------- errors

_STORE_STATUS = {"session-not-found": 404, "handoff-not-found": 404, "store-full": 507}
_HTTP_CODES = {
    404: "not-found",
    405: "method-not-allowed",
    413: "body-too-large",
    415: "unsupported-media-type",
}


def _server_status(exc: ServerError) -> int:
    if exc.code in ("server-unreachable", "server-offline"):
        return 503
    if 400 <= exc.status < 500:
        return 403 if exc.status == 401 else exc.status
    return 502


@web.middleware
async def error_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Turn exceptions into JSON errors with stable codes."""
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.code, exc.message)
    except NotFoundError as exc:
        return error_response(404, exc.code, exc.message)
    except ConflictError as exc:
        return error_response(409, exc.code, exc.message)
    except InvalidRequestError as exc:
        return error_response(400, exc.code, exc.message)
    except ConfigError as exc:
        return error_response(400, exc.code, exc.message)
    except StoreError as exc:
        status = _STORE_STATUS.get(exc.code, 409 if exc.code.startswith("session-") else 500)
        return error_response(status, exc.code, exc.message)
    except ServerError as exc:
        return error_response(_server_status(exc), exc.code, exc.message)
    except HandoffError as exc:
        return error_response(400, exc.code, exc.message)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, "http-error")
        return error_response(exc.status, code, exc.reason)
    except Exception:
        logger.exception("control request failed method=%s path=%s", request.method, request.path)
        return error_response(500, "internal", "internal error; see the daemon's log")
