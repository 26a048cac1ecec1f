"""The pairing invite both sides speak: the ``handoff://pair`` URL and the short code.

Pure. An invite has two secrets, either of which lets one device join once:

- a **token** of 256 bits (base64url), carried in the QR code's URL
  ``handoff://pair?server=<url>&token=<token>&fp=sha256:<hex>``, or in the
  browser pairing page's URL ``<server>/pair#token=<token>&fp=sha256:<hex>``
  (the token in the fragment: a browser never sends it to the server, so it
  stays out of access logs and Referer headers; docs/browser.md);
- a **short code** of 12 characters from Crockford's base32 alphabet, shown
  ``LLLL-SSSS-SSSS``: the first group (20 bits) locates the invite, the other
  two (40 bits) are the secret.

A **pairing code** is the short code with a fourth group, the **pin tag**
(20 bits of ``HMAC-SHA256(key=secret, "handoff-pin-v1:" + fingerprint)``), and
the server after an ``@``: ``LLLL-SSSS-SSSS-TTTT@host:8443``. It is one word
a person can type, and it pins the server's self-signed certificate without
its 64-hex fingerprint: the device reads the certificate's fingerprint, and
sends the code only if the tag matches it (docs/security.md, "Pairing codes").
A bare ``host[:port]`` after the ``@`` means https; ``http://`` must be
written out.

The server makes invites (``handoffd.server.pairing``); a device parses them.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
import urllib.parse
from dataclasses import dataclass

from handoffd.errors import HandoffError

__all__ = [
    "CODE_ALPHABET",
    "CODE_LEN",
    "LOCATOR_LEN",
    "MAX_INVITE_TEXT",
    "SECRET_LEN",
    "TAG_LEN",
    "Invite",
    "check_fingerprint",
    "check_server_url",
    "expiry_text",
    "format_code",
    "invite_url",
    "is_token",
    "normalize_code",
    "page_url",
    "pair_command",
    "pairing_code",
    "pairs_in_browser",
    "parse_invite",
    "pin_tag",
    "short_server",
]

CODE_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford: no I, L, O, U
LOCATOR_LEN = 4
SECRET_LEN = 8
CODE_LEN = LOCATOR_LEN + SECRET_LEN
TAG_LEN = 4
MAX_INVITE_TEXT = 2048
_TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{22,128}")
_FP_RE = re.compile(r"sha256:[0-9a-f]{64}")
# Crockford decoding: letters people confuse with digits.
_CONFUSABLE = str.maketrans({"O": "0", "I": "1", "L": "1"})


def _malformed(message: str) -> HandoffError:
    return HandoffError(message, code="invite-malformed")


@dataclass(frozen=True)
class Invite:
    """A parsed invite: where to join, and the token or the short code (one of them)."""

    server_url: str
    token: str | None
    code: str | None
    fingerprint: str | None
    tag: str | None = None
    """The pin tag of a pairing code: the fingerprint is learnt from the server and checked."""


def format_code(code: str) -> str:
    """The code grouped for humans: ``LLLL-SSSS-SSSS``."""
    return "-".join(code[i : i + 4] for i in range(0, len(code), 4))


def normalize_code(text: str) -> str:
    """Canonical code from what a human typed (case, dashes, spaces, O/I/L); raise if invalid."""
    cleaned = text.strip().upper().replace("-", "").replace(" ", "").translate(_CONFUSABLE)
    if len(cleaned) != CODE_LEN or not set(cleaned) <= set(CODE_ALPHABET):
        raise _malformed(
            "not an invite code: expected a code like K7QF-2M9X-HT4P-9Q2C@example.org:8443 "
            "or a handoff://pair link"
        )
    return cleaned


def pin_tag(code: str, fingerprint: str) -> str:
    """The 4-character tag binding the code's secret to ``fingerprint`` (``sha256:<hex>``)."""
    secret = normalize_code(code)[LOCATOR_LEN:].encode("ascii")
    mac = hmac.new(secret, b"handoff-pin-v1:" + fingerprint.encode("ascii"), hashlib.sha256)
    bits = int.from_bytes(mac.digest()[:3], "big") >> 4  # the first 20 bits
    return "".join(CODE_ALPHABET[(bits >> shift) & 31] for shift in (15, 10, 5, 0))


def short_server(server_url: str) -> str:
    """The server as written after ``@`` in a pairing code: ``host[:port]`` for https, else the URL."""
    url = check_server_url(server_url)
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "https" and parts.path in ("", "/"):
        return parts.netloc
    return url


def pairing_code(server_url: str, code: str, fingerprint: str | None) -> str:
    """``LLLL-SSSS-SSSS-TTTT@host:port`` (no tag without a fingerprint to pin)."""
    shown = normalize_code(code) + (pin_tag(code, fingerprint) if fingerprint else "")
    return f"{format_code(shown)}@{short_server(server_url)}"


def pair_command(server_url: str, code: str, fingerprint: str | None) -> str:
    """The whole command to type on the new device."""
    return f"handoff pair {pairing_code(server_url, code, fingerprint)}"


def _split_code(text: str) -> tuple[str, str | None]:
    """(canonical 12-character code, pin tag or None) from what a human typed."""
    cleaned = text.strip().upper().replace("-", "").replace(" ", "").translate(_CONFUSABLE)
    if len(cleaned) == CODE_LEN + TAG_LEN and set(cleaned) <= set(CODE_ALPHABET):
        return cleaned[:CODE_LEN], cleaned[CODE_LEN:]
    return normalize_code(text), None


def _server_from_code(text: str) -> str:
    """The server URL written after ``@`` (https unless the scheme is given)."""
    text = text.strip()
    if not text:
        raise _malformed("nothing after '@': expected the server, like CODE@example.org:8443")
    if "://" not in text:
        text = "https://" + text
    return check_server_url(text)


def expiry_text(expires_at: float, now: float) -> str:
    """How every ``handoff``/``handoff-server`` output writes an invite's expiry (local time):
    ``in 10 min (at 14:05), single use``."""
    minutes = max(0, round((expires_at - now) / 60))
    at = time.strftime("%H:%M", time.localtime(expires_at))
    return f"in {minutes} min (at {at}), single use"


def is_token(text: str) -> bool:
    """True if ``text`` has the shape of an invite token."""
    return _TOKEN_RE.fullmatch(text) is not None


def check_server_url(url: str) -> str:
    """Return ``url`` without a trailing slash if it is a plain http(s) origin (+ optional path)."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise _malformed("server URL does not parse") from exc
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise _malformed("server URL must be http(s)://host[:port]")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise _malformed("server URL must not carry credentials, a query or a fragment")
    if port == 0 or any(c.isspace() or ord(c) < 0x20 for c in url):
        raise _malformed("server URL is invalid")
    return url.rstrip("/")


def check_fingerprint(fp: str) -> str:
    """Return ``fp`` if it is ``sha256:<64 lowercase hex>``."""
    fp = fp.strip().lower()
    if not _FP_RE.fullmatch(fp):
        raise _malformed("fingerprint must be sha256:<64 hex digits>")
    return fp


def invite_url(server_url: str, token: str, fingerprint: str | None) -> str:
    """The ``handoff://pair?...`` URL for the QR code."""
    query = [("server", server_url), ("token", token)]
    if fingerprint:
        query.append(("fp", fingerprint))
    return "handoff://pair?" + urllib.parse.urlencode(query, safe=":/")


def page_url(server_url: str, token: str, fingerprint: str | None) -> str:
    """The browser pairing page's URL, ``<server>/pair#token=…[&fp=…]`` (also parsed by ``parse_invite``)."""
    fragment = [("token", token)]
    if fingerprint:
        fragment.append(("fp", fingerprint))
    return f"{server_url.rstrip('/')}/pair#" + urllib.parse.urlencode(fragment, safe=":")


def pairs_in_browser(server_url: str) -> bool:
    """True if a browser can pair at ``server_url``: WebCrypto needs https, or http on loopback."""
    parts = urllib.parse.urlsplit(server_url)
    if parts.scheme == "https":
        return True
    return parts.scheme == "http" and parts.hostname in ("localhost", "127.0.0.1", "::1")


def parse_invite(
    text: str, server_url: str | None = None, fingerprint: str | None = None
) -> Invite:
    """Parse an invite URL, a pairing code (``CODE@server``), or a code with ``server_url``.

    Raises HandoffError(code="invite-malformed") for anything else, saying what
    the text looks like (a web address, not a code, a code without its server).
    """
    text = text.strip()
    if not text or len(text) > MAX_INVITE_TEXT:
        raise _malformed("invite is empty or too long")
    lowered = text.lower()
    if lowered.startswith("handoff:"):
        return _parse_url(text)
    if lowered.startswith(("https:", "http:")):
        base, sep, _fragment = text.partition("#")
        if sep and base.endswith("/pair"):
            return _parse_page_url(text)  # the browser pairing page's URL (the QR holds it)
        raise _malformed(
            "that is a web address, not an invite: use the code the server shows "
            "(like K7QF-2M9X-HT4P-9Q2C@example.org:8443) or its handoff://pair link; "
            "make one with `handoff invite` on a paired device or `handoff-server invite ACCOUNT`"
        )
    code_text, at, server_text = text.partition("@")
    code, tag = _split_code(code_text)
    if at:
        server_url = _server_from_code(server_text)
    if server_url is None:
        raise _malformed(
            "this code does not say which server to join: type it whole, as shown "
            "(CODE@server), or add --server URL"
        )
    url = check_server_url(server_url)
    return Invite(
        server_url=url,
        token=None,
        code=code,
        fingerprint=check_fingerprint(fingerprint) if fingerprint else None,
        tag=tag if url.startswith("https:") else None,
    )


def _parse_page_url(text: str) -> Invite:
    """``<server>/pair#token=…[&fp=…]``: the browser pairing page's URL (``page_url``)."""
    base, sep, fragment = text.partition("#")
    if not sep or not base.endswith("/pair"):
        raise _malformed("invite URL must be <server>/pair#token=...")
    fields = _fields(fragment, "invite URL fragment")
    if set(fields) - {"token", "fp"} or "token" not in fields:
        raise _malformed("invite URL fragment needs token (and optionally fp) only")
    if not is_token(fields["token"]):
        raise _malformed("invite token is malformed")
    return Invite(
        server_url=check_server_url(base.removesuffix("/pair")),
        token=fields["token"],
        code=None,
        fingerprint=check_fingerprint(fields["fp"]) if "fp" in fields else None,
    )


def _fields(query: str, what: str) -> dict[str, str]:
    try:
        pairs = urllib.parse.parse_qsl(
            query, keep_blank_values=True, strict_parsing=True, max_num_fields=8
        )
    except ValueError as exc:
        raise _malformed(f"{what} does not parse") from exc
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise _malformed(f"{what} has repeated fields")
    return dict(pairs)


def _parse_url(text: str) -> Invite:
    try:
        parts = urllib.parse.urlsplit(text)
    except ValueError as exc:
        raise _malformed("invite URL does not parse") from exc
    if parts.scheme != "handoff" or parts.netloc != "pair" or parts.path not in ("", "/"):
        raise _malformed("invite URL must be handoff://pair?...")
    if parts.fragment:
        raise _malformed("invite URL must not have a fragment")
    fields = _fields(parts.query, "invite URL query")
    if not set(fields) <= {"server", "token", "fp"}:
        raise _malformed("invite URL has unknown or repeated fields")
    if "server" not in fields or "token" not in fields:
        raise _malformed("invite URL needs server and token")
    if not is_token(fields["token"]):
        raise _malformed("invite token is malformed")
    return Invite(
        server_url=check_server_url(fields["server"]),
        token=fields["token"],
        code=None,
        fingerprint=check_fingerprint(fields["fp"]) if "fp" in fields else None,
    )
