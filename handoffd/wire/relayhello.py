"""The hello two devices exchange inside the relay's TLS, once each side has checked the other (pure).

``{"relay": 1, "ok": true}`` accepts the peer; ``{"relay": 1, "ok": false,
"code": <why>}`` refuses it and says why, so neither side hands out a channel
before the other accepted it.
"""

from __future__ import annotations

import json
import re

from handoffd.errors import ProtocolError

__all__ = ["MAX_HELLO", "encode_hello", "parse_hello"]

MAX_HELLO = 256
_CODE_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")


def encode_hello(code: str | None) -> bytes:
    """Our hello: accept (``code`` None) or refuse with ``code``."""
    body: dict[str, object] = {"relay": 1, "ok": code is None}
    if code is not None:
        body["code"] = code
    return json.dumps(body, separators=(",", ":")).encode("ascii")


def parse_hello(data: bytes) -> str | None:
    """None if the peer accepted us, else its (unverified) code; ProtocolError if malformed."""
    try:
        if len(data) > MAX_HELLO:
            raise ValueError("too long")
        hello = json.loads(data)
        if not isinstance(hello, dict) or hello.get("relay") != 1:
            raise ValueError("not a hello")
        if hello.get("ok") is True and set(hello) == {"relay", "ok"}:
            return None
        code = hello.get("code")
        if (
            hello.get("ok") is False
            and set(hello) == {"relay", "ok", "code"}
            and isinstance(code, str)
            and _CODE_RE.fullmatch(code)
        ):
            return code
        raise ValueError("bad fields")
    except (ValueError, RecursionError):
        raise ProtocolError("malformed relay hello", code="hello-malformed") from None
