"""The SDK's HTTP/1.1 on a stream: requests out, answers in (bounded, strict), no aiohttp.

Only what the control API needs: a JSON body with ``Content-Length``; answers with
``Content-Length``, ``Transfer-Encoding: chunked`` (the event stream) or up to the end of the
connection. Anything else is ``ApiError`` ``bad-response``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator
from dataclasses import dataclass

from handoffd.errors import ApiError

MAX_HEAD_LINE = 8 * 1024
MAX_HEADERS = 64
MAX_INFORMATIONAL = 4
HOST = "handoff"


def bad_response(message: str, status: int = 0) -> ApiError:
    """``ApiError`` ``bad-response``: the daemon's answer is not HTTP as expected."""
    return ApiError(message, code="bad-response", status=status)


@dataclass(frozen=True, slots=True)
class Head:
    """An answer's status and headers (names in lower case)."""

    status: int
    headers: dict[str, str]

    @property
    def chunked(self) -> bool:
        """The body comes in chunks."""
        return "chunked" in self.headers.get("transfer-encoding", "").lower()

    @property
    def length(self) -> int | None:
        """The body's ``Content-Length``, if given."""
        text = self.headers.get("content-length")
        if text is None:
            return None
        if not text.isdigit() or len(text) > 18:
            raise bad_response(f"bad Content-Length {text[:40]!r}", self.status)
        return int(text)

    @property
    def keep_alive(self) -> bool:
        """The connection may carry another request (a bounded body, no ``close``)."""
        delimited = self.chunked or self.length is not None
        return delimited and self.headers.get("connection", "").lower() != "close"


def request_bytes(method: str, target: str, body: bytes | None) -> bytes:
    """One request: method, target, ``Host``, and a JSON body if any."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: {HOST}"]
    if body is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + (body or b"")


async def _line(reader: asyncio.StreamReader) -> bytes:
    try:
        line = await reader.readuntil(b"\r\n")
    except asyncio.LimitOverrunError:
        raise bad_response("an HTTP line of the answer is too long") from None
    if len(line) > MAX_HEAD_LINE:
        raise bad_response("an HTTP line of the answer is too long")
    return line[:-2]


async def read_head(reader: asyncio.StreamReader) -> Head:
    """The status line and headers (``IncompleteReadError`` if the connection ends first);
    informational answers (``100 Continue``) before it are skipped, a few at most."""
    for _ in range(MAX_INFORMATIONAL):
        head = await _read_one_head(reader)
        if head.status // 100 != 1:
            return head
    raise bad_response("too many informational answers")


async def _read_one_head(reader: asyncio.StreamReader) -> Head:
    parts = (await _line(reader)).split(b" ", 2)
    if len(parts) < 2 or parts[0] not in (b"HTTP/1.1", b"HTTP/1.0") or not parts[1].isdigit():
        raise bad_response("the answer is not HTTP/1.1")
    status = int(parts[1])
    headers: dict[str, str] = {}
    count = 0
    while line := await _line(reader):
        count += 1
        if count > MAX_HEADERS:
            raise bad_response("the answer has too many headers", status)
        name, sep, value = line.decode("latin-1").partition(":")
        if not sep:
            raise bad_response("a malformed header in the answer", status)
        headers[name.strip().lower()] = value.strip()
    return Head(status, headers)


async def iter_chunks(reader: asyncio.StreamReader, status: int) -> AsyncGenerator[bytes, None]:
    """The data of a chunked body, chunk by chunk, until the last chunk."""
    while True:
        size_text = (await _line(reader)).split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise bad_response("a malformed chunk in the answer", status) from None
        if size == 0:
            while await _line(reader):  # trailers
                pass
            return
        data = await reader.readexactly(size)
        if await reader.readexactly(2) != b"\r\n":
            raise bad_response("a malformed chunk in the answer", status)
        yield data


async def read_body(reader: asyncio.StreamReader, head: Head, max_size: int) -> bytes:
    """The whole body, at most ``max_size`` bytes (else ``bad-response``)."""
    too_large = bad_response("response too large", head.status)
    if head.chunked:
        chunks: list[bytes] = []
        size = 0
        async with contextlib.aclosing(iter_chunks(reader, head.status)) as parts:
            async for chunk in parts:
                size += len(chunk)
                if size > max_size:
                    raise too_large
                chunks.append(chunk)
        return b"".join(chunks)
    length = head.length
    if length is not None:
        if length > max_size:
            raise too_large
        return await reader.readexactly(length)
    data = await reader.read(max_size + 1)
    while data and len(data) <= max_size:
        more = await reader.read(max_size + 1 - len(data))
        if not more:
            break
        data += more
    if len(data) > max_size:
        raise too_large
    return data


async def iter_lines(
    reader: asyncio.StreamReader, head: Head, max_line: int
) -> AsyncGenerator[bytes, None]:
    """The body's lines (``\\n``-terminated), each at most ``max_line`` bytes, until it ends."""
    buffer = b""
    source = iter_chunks(reader, head.status) if head.chunked else _until_eof(reader)
    async with contextlib.aclosing(source) as parts:
        async for data in parts:
            buffer += data
            while (end := buffer.find(b"\n")) >= 0:
                line, buffer = buffer[: end + 1], buffer[end + 1 :]
                if len(line) > max_line:
                    raise bad_response("event line too long", head.status)
                yield line
            if len(buffer) > max_line:
                raise bad_response("event line too long", head.status)


async def _until_eof(reader: asyncio.StreamReader) -> AsyncGenerator[bytes, None]:
    while data := await reader.read(64 * 1024):
        yield data
