"""The SDK's lean transport: no aiohttp imported, HTTP/1.1 answers read strictly and bounded."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from handoffd.control.client_http import iter_lines, read_body, read_head, request_bytes
from handoffd.errors import ApiError


def _imported(module: str) -> set[str]:
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", f"import {module}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()}
    assert module in imported  # the check can see what was imported
    return imported


@pytest.mark.parametrize("module", ["handoffd.control.client", "handoffd.control"])
def test_sdk_import_does_not_import_aiohttp(module: str) -> None:
    imported = _imported(module)
    assert not {m for m in imported if m.split(".")[0] in ("aiohttp", "yarl", "multidict")}
    assert not {m for m in imported if m.split(".")[0] == "cryptography"}


@pytest.mark.parametrize("module", ["handoffd.control.answers", "handoffd.control.client_decode"])
def test_models_and_decoding_do_not_import_asyncio(module: str) -> None:
    # A synchronous client (the CLI's quick reads) can decode answers as the SDK does.
    assert "asyncio" not in _imported(module)


def _reader(data: bytes) -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    return reader


def test_request_bytes() -> None:
    assert request_bytes("POST", "/v1/x?a=1", b"{}") == (
        b"POST /v1/x?a=1 HTTP/1.1\r\nHost: handoff\r\nContent-Type: application/json\r\n"
        b"Content-Length: 2\r\n\r\n{}"
    )
    assert request_bytes("GET", "/v1/status", None).endswith(b"Host: handoff\r\n\r\n")


@pytest.mark.asyncio
async def test_answers_by_length_chunks_and_eof() -> None:
    reader = _reader(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: b\r\n\r\n{}rest"
    )
    head = await read_head(reader)
    assert (head.status, head.headers["x-a"], head.keep_alive) == (200, "b", True)
    assert await read_body(reader, head, 100) == b"{}"

    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{"
    reader = _reader(chunked + b'"a\r\n4;x=y\r\n":1}\r\n0\r\n\r\n')
    head = await read_head(reader)
    assert await read_body(reader, head, 100) == b'{"a":1}'

    reader = _reader(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall of it")
    head = await read_head(reader)
    assert not head.keep_alive
    assert await read_body(reader, head, 100) == b"all of it"

    parts = [b'{"a":1}\n{"b"', b":2}", b'\n{"c"']
    body = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"
    reader = _reader(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + body)
    head = await read_head(reader)
    lines = [line async for line in iter_lines(reader, head, 100)]
    assert lines == [b'{"a":1}\n', b'{"b":2}\n']  # the unfinished last line is not an event


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "raw",
    [
        b"SSH-2.0-OpenSSH\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 99999\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 65 + b"\r\n",
        b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + b"x" * 101,
        b"HTTP/1.1 100 Continue\r\n\r\n" * 5,
    ],
)
async def test_malformed_or_oversized_answers_are_bad_response(raw: bytes) -> None:
    async def read() -> bytes:
        reader = _reader(raw)
        return await read_body(reader, await read_head(reader), 100)

    with pytest.raises(ApiError) as info:
        await read()
    assert info.value.code == "bad-response"


@pytest.mark.asyncio
async def test_an_event_line_too_long_is_bad_response() -> None:
    reader = _reader(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + b"x" * 300)
    head = await read_head(reader)
    with pytest.raises(ApiError) as info:
        _ = [line async for line in iter_lines(reader, head, 100)]
    assert info.value.code == "bad-response"
