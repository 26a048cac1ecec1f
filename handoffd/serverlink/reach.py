"""Why a server could not be reached, said in words; and a server's certificate fingerprint.

``unreachable(url, exc)`` turns what aiohttp, ssl and the socket layer raise
into one ``ServerError(server-unreachable)`` whose message says the cause and
what to do (connection refused, not TLS, certificate not trusted, name not
found, no answer in time), never an exception class name.

``server_fingerprint(url)`` reads the certificate an https server presents
(no verification: the caller compares the fingerprint with what it expects,
e.g. a pairing code's pin tag, and pins it for every later request).
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import socket
import ssl
import urllib.parse

import aiohttp

from handoffd.errors import ServerError

__all__ = ["server_fingerprint", "unreachable"]


def _where(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return parts.netloc or url


def _os_cause(url: str, error: BaseException) -> str | None:
    where = _where(url)
    if isinstance(error, ConnectionRefusedError):
        return (
            f"connection refused by {where}: nothing listens there; "
            "check that handoff-server runs and the port is right"
        )
    if isinstance(error, socket.gaierror):
        return f"cannot find the host of {url}: check the name"
    if isinstance(error, ConnectionResetError) or getattr(error, "errno", None) == errno.ECONNRESET:
        if url.startswith("http:"):
            return (
                f"{where} closed the connection without an HTTP answer: it may speak TLS; "
                f"try https://{where}"
            )
        return f"{where} closed the connection"
    if isinstance(error, TimeoutError):
        return f"no answer from {url} in time: check the address and the network"
    if isinstance(error, OSError) and error.strerror:
        return f"cannot connect to {where}: {error.strerror.lower()}"
    return None


def _tls_cause(url: str, error: BaseException) -> str | None:
    where = _where(url)
    text = str(error).upper()
    if isinstance(error, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in text:
        return (
            f"the certificate of {where} is not trusted by this system (a self-signed server "
            "is trusted through its invite): pair with the whole code as the server shows it "
            "(CODE@server) or its handoff://pair link, or pass --fingerprint"
        )
    if any(
        marker in text
        for marker in ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "HTTP_REQUEST", "UNEXPECTED")
    ):
        return (
            f"{where} does not speak TLS: if the server runs with --insecure-http, "
            f"use http://{where}"
        )
    if isinstance(error, ssl.SSLError):
        return f"the TLS handshake with {where} failed ({error.reason or 'unknown reason'})"
    return None


def unreachable(url: str, exc: BaseException) -> ServerError:
    """``server-unreachable`` with the cause in words."""
    cause: str | None = None
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        cause = _tls_cause(url, exc.certificate_error)
    elif isinstance(exc, aiohttp.ClientConnectorSSLError):
        cause = _tls_cause(url, exc.os_error) or _tls_cause(url, exc)
    elif isinstance(exc, aiohttp.ClientConnectorError):
        cause = _os_cause(url, exc.os_error)
    elif isinstance(exc, aiohttp.ServerDisconnectedError):
        cause = f"{_where(url)} closed the connection without an answer" + (
            f": it may speak TLS; try https://{_where(url)}" if url.startswith("http:") else ""
        )
    elif isinstance(exc, ssl.SSLError):
        cause = _tls_cause(url, exc)
    elif isinstance(exc, aiohttp.ClientOSError | OSError):
        cause = _os_cause(url, exc)
    if cause is None and isinstance(exc, TimeoutError):
        cause = _os_cause(url, exc)
    if cause is None:
        cause = f"cannot reach {url}: {str(exc) or 'the connection failed'}"
    return ServerError(cause, code="server-unreachable")


async def server_fingerprint(url: str, *, timeout: float) -> str:  # noqa: ASYNC109 - connect and close each bounded
    """``sha256:<hex>`` of the certificate the https server at ``url`` presents (unverified)."""
    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname or "", parts.port or 443
    # No CA files are loaded (that would block the loop): nothing is verified here; the
    # caller checks the fingerprint and pins it.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        async with asyncio.timeout(timeout):
            _reader, writer = await asyncio.open_connection(
                host, port, ssl=context, server_hostname=host
            )
    except (OSError, TimeoutError) as exc:
        raise unreachable(url, exc) from None
    try:
        ssl_object = writer.get_extra_info("ssl_object")
        der = None if ssl_object is None else ssl_object.getpeercert(binary_form=True)
    finally:
        writer.close()
        try:
            async with asyncio.timeout(timeout):
                await writer.wait_closed()
        except (OSError, TimeoutError):
            pass
    if not der:
        raise ServerError(f"{_where(url)} presented no certificate", code="server-unreachable")
    return "sha256:" + hashlib.sha256(der).hexdigest()
