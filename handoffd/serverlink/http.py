"""HTTP and WebSocket plumbing to one handoff-server: the pinned TLS, signed requests, bounded answers.

aiohttp is used here and in the other ``handoffd.serverlink`` modules only
(the device side). TLS: for an ``https`` URL with a pinned fingerprint
(``sha256:<hex>`` from the invite / server.json) the server certificate is
checked by that fingerprint and nothing else (it is self-signed); a mismatch
fails right after the TLS handshake, before any request byte is sent. An
``https`` URL without a pin (a server behind a TLS proxy with a public
certificate) uses the system's CA verification. ``http`` only when the URL
says so (tests, a proxy on the same host).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
import yarl
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from handoffd.errors import HandoffError, ServerError
from handoffd.serverlink import reach
from handoffd.wire import auth
from handoffd.wire.invite import check_fingerprint, check_server_url
from handoffd.wire.messages import bad_response

__all__ = ["MAX_RESPONSE", "ServerHttp", "field", "pem_field"]

MAX_RESPONSE = 1024 * 1024


def field(obj: Any, key: str, kind: type | tuple[type, ...]) -> Any:
    """``obj[key]`` if ``obj`` is a dict and the value has type ``kind``; ``server-bad-response`` otherwise."""
    if not isinstance(obj, dict) or not isinstance(obj.get(key), kind):
        raise bad_response(f"response (field {key})")
    return obj[key]


def pem_field(obj: Any, key: str) -> bytes:
    """A PEM text field as bytes."""
    return str(field(obj, key, str)).encode("ascii", "replace")


def fingerprint_mismatch() -> ServerError:
    """The error for a server whose certificate is not the pinned one."""
    return ServerError(
        "the server's TLS certificate does not match the pinned fingerprint",
        code="server-fingerprint-mismatch",
    )


class ServerHttp:
    """One server's base URL, TLS pin and HTTP session; every failure is a ``ServerError``."""

    def __init__(self, server_url: str, *, fingerprint: str | None, timeout: float) -> None:
        try:
            self.url = check_server_url(server_url)
            self.fingerprint = check_fingerprint(fingerprint) if fingerprint else None
        except HandoffError as exc:
            raise ServerError(exc.message, code="server-url-invalid") from None
        self.ssl: aiohttp.Fingerprint | bool = True
        if self.url.startswith("https:") and self.fingerprint:
            self.ssl = aiohttp.Fingerprint(bytes.fromhex(self.fingerprint[len("sha256:") :]))
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    def session(self) -> aiohttp.ClientSession:
        """The shared aiohttp session (made on first use); ``client-closed`` once closed."""
        if self._closed:
            raise ServerError("client is closed", code="client-closed")
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                headers={"User-Agent": "handoffd"},
            )
        return self._session

    async def close(self) -> None:
        """Close the HTTP session (idempotent)."""
        self._closed = True
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()
            # aiohttp's graceful-shutdown note: TLS transports finish closing a few
            # loop iterations later; without this they leak if the loop ends now.
            await asyncio.sleep(0.02)

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: dict[str, Any] | None = None,
        signer: Ed25519PrivateKey | None = None,
        raw: bool = False,
    ) -> Any:
        """One request (signed by ``signer`` if given); JSON (or raw bytes) back; ServerError for every failure."""
        data = b"" if body is None else json.dumps(body, separators=(",", ":")).encode("utf-8")
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        if signer is not None:
            headers.update(auth.sign_request(signer, method, path, data, now=time.time()))
        url = yarl.URL(self.url + path, encoded=True)
        session = self.session()
        try:
            async with session.request(
                method, url, data=data or None, headers=headers, ssl=self.ssl
            ) as resp:
                payload = await _read_bounded(resp)
                if resp.status >= 400:
                    raise _error_from(resp.status, payload)
        except aiohttp.ServerFingerprintMismatch:
            raise fingerprint_mismatch() from None
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise reach.unreachable(self.url, exc) from exc
        if raw:
            return payload
        try:
            return json.loads(payload)
        except ValueError:
            raise bad_response("JSON body") from None

    def ws_url(self, path: str) -> yarl.URL:
        """The ``ws(s)://`` URL of ``path`` on this server."""
        base = (
            "wss" + self.url[len("https") :]
            if self.url.startswith("https:")
            else ("ws" + self.url[len("http") :])
        )
        return yarl.URL(base + path, encoded=True)


async def _read_bounded(resp: aiohttp.ClientResponse) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > MAX_RESPONSE:
            raise bad_response("response (too large)")
        chunks.append(chunk)
    return b"".join(chunks)


def _error_from(status: int, payload: bytes) -> ServerError:
    try:
        error = json.loads(payload)["error"]
        code, message = str(error["code"])[:64], str(error["message"])[:300]
    except (ValueError, KeyError, TypeError):
        return ServerError(
            f"server answered HTTP {status}", code="server-bad-response", status=status
        )
    return ServerError(message, code=code, status=status)
