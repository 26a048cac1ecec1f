"""STUN/TURN server URLs and the ``/v1/ice`` answer: the shape both sides check (pure).

The server checks its operator's URLs with ``parse_ice_url`` at start; a
device checks the answer with ``check_ice_response`` before handing anything
to its WebRTC stack.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any

from handoffd.errors import ConfigError

__all__ = [
    "DEFAULT_PORTS",
    "MAX_SERVERS",
    "MAX_TTL",
    "MAX_URL",
    "MAX_URLS",
    "IceEntry",
    "IceUrl",
    "bad_url",
    "check_ice_response",
    "is_printable",
    "parse_ice_url",
]

MAX_TTL = 86400
MAX_SERVERS = 8  # entries in an answer
MAX_URLS = 4  # URLs per entry, and --stun / --turn URLs each
MAX_URL = 256
MAX_USERNAME = 256
MAX_CREDENTIAL = 256
DEFAULT_PORTS = {"stun": 3478, "turn": 3478, "turns": 5349}

_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_PORT = re.compile(r"[0-9]{1,5}")
_PRINTABLE = re.compile(r"[\x21-\x7e]+")


def is_printable(text: str) -> bool:
    """True if ``text`` is printable ASCII without spaces (at least one character)."""
    return _PRINTABLE.fullmatch(text) is not None


def bad_url(text: str, why: str) -> ConfigError:
    """The error for an unusable ICE server URL."""
    return ConfigError(f"ICE server URL {text[:MAX_URL]!r}: {why}", code="ice-url-invalid")


@dataclass(frozen=True)
class IceUrl:
    """A parsed ``stun:``/``turn:``/``turns:`` URL (RFC 7064/7065); ``text`` is the URL as given."""

    text: str
    scheme: str
    host: str
    port: int
    transport: str | None

    @property
    def is_turn(self) -> bool:
        """True for ``turn:`` and ``turns:``."""
        return self.scheme != "stun"


def _check_host(text: str, host: str) -> str:
    if not host:
        raise bad_url(text, "no host")
    if host.startswith("["):
        raise bad_url(text, "IPv6 literals are not supported by the WebRTC stack; use a host name")
    if all(part.isdigit() for part in host.split(".")):
        try:
            return str(ipaddress.IPv4Address(host))
        except ValueError:
            raise bad_url(text, f"{host!r} is not an IPv4 address") from None
    labels = host.rstrip(".").split(".")
    if len(host) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise bad_url(text, f"{host!r} is not a host name")
    return host


def parse_ice_url(text: str) -> IceUrl:
    """Check ``stun:host[:port]``, ``turn:host[:port][?transport=udp|tcp]``, ``turns:host[:port][?transport=tcp]``.

    Host: an IPv4 address or a DNS name; port 1 to 65535 (default 3478, 5349
    for ``turns``). Anything else: ``ConfigError(code="ice-url-invalid")``.
    """
    if not isinstance(text, str) or not 0 < len(text) <= MAX_URL:
        raise bad_url(str(text), f"must be 1 to {MAX_URL} characters")
    if not _PRINTABLE.fullmatch(text):
        raise bad_url(text, "spaces or control characters")
    scheme, sep, rest = text.partition(":")
    if not sep or scheme not in DEFAULT_PORTS:
        raise bad_url(text, "the scheme must be stun:, turn: or turns:")
    if rest.startswith("//"):
        raise bad_url(text, f"no '//' after the scheme (write {scheme}:host:port)")
    hostport, qmark, query = rest.partition("?")
    transport: str | None = None
    if qmark:
        if scheme == "stun":
            raise bad_url(text, "a stun: URL takes no query")
        key, eq, value = query.partition("=")
        if key != "transport" or not eq or value not in ("udp", "tcp"):
            raise bad_url(text, "the only query is ?transport=udp or ?transport=tcp")
        if scheme == "turns" and value != "tcp":
            raise bad_url(text, "turns: works over TCP only (?transport=tcp)")
        transport = value
    host, colon, port_text = hostport.rpartition(":")
    if not colon:
        host, port_text = hostport, ""
    elif not _PORT.fullmatch(port_text) or not 0 < int(port_text) <= 65535:
        raise bad_url(text, "the port must be a number from 1 to 65535")
    host = _check_host(text, host)
    port = int(port_text) if port_text else DEFAULT_PORTS[scheme]
    return IceUrl(text=text, scheme=scheme, host=host, port=port, transport=transport)


@dataclass(frozen=True)
class IceEntry:
    """One checked entry of a ``/v1/ice`` answer."""

    urls: tuple[str, ...]
    username: str | None
    credential: str | None


def _token(value: Any, limit: int) -> str | None:
    if isinstance(value, str) and 0 < len(value) <= limit and _PRINTABLE.fullmatch(value):
        return value
    return None


def check_ice_response(data: Any) -> tuple[tuple[IceEntry, ...], int]:
    """Check a ``/v1/ice`` answer strictly; the entries and the TTL, or ValueError saying what is wrong.

    At most 8 entries of 1 to 4 URLs each (``parse_ice_url``), exactly the keys
    ``urls`` (+ ``username`` and ``credential``, both or neither, printable
    ASCII of at most 256 characters; required when a URL is ``turn(s):``);
    ``ttl`` an integer of 1 to 86400 seconds.
    """
    if not isinstance(data, dict) or set(data) != {"ice_servers", "ttl"}:
        raise ValueError("keys")
    ttl, servers = data["ttl"], data["ice_servers"]
    if not isinstance(ttl, int) or isinstance(ttl, bool) or not 0 < ttl <= MAX_TTL:
        raise ValueError("ttl")
    if not isinstance(servers, list) or len(servers) > MAX_SERVERS:
        raise ValueError("ice_servers")
    entries: list[IceEntry] = []
    for item in servers:
        if not isinstance(item, dict) or set(item) not in (
            {"urls"},
            {"urls", "username", "credential"},
        ):
            raise ValueError("server keys")
        urls = item["urls"]
        if not isinstance(urls, list) or not 0 < len(urls) <= MAX_URLS:
            raise ValueError("urls")
        try:
            parsed = [parse_ice_url(u) for u in urls]
        except ConfigError:
            raise ValueError("url") from None
        username = credential = None
        if "username" in item:
            username = _token(item["username"], MAX_USERNAME)
            credential = _token(item["credential"], MAX_CREDENTIAL)
            if username is None or credential is None:
                raise ValueError("credentials")
        elif any(u.is_turn for u in parsed):
            raise ValueError("turn without credentials")
        entries.append(IceEntry(tuple(u.text for u in parsed), username, credential))
    return tuple(entries), ttl
