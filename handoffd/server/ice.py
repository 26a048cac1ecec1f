"""ICE servers (STUN/TURN) the server advertises, and TURN credentials (coturn ``use-auth-secret``).

The operator configures STUN and TURN URLs and, for TURN, the secret shared
with coturn (its ``static-auth-secret``). A device asks ``GET /v1/ice`` and
gets time-limited TURN credentials in the "TURN REST API" scheme coturn
implements::

    username   = "<expiry, Unix seconds>:<device id>"
    credential = base64(HMAC-SHA1(secret, username))

coturn recomputes the credential from the username and its own copy of the
secret, and refuses the allocation once the expiry has passed. Nothing is
stored: a revoked device keeps a credential it already has until it expires
(at most ``ttl`` seconds), but gets no new one.

The URL check (``parse_ice_url``) and the answer's check
(``check_ice_response``) are shared by the server (at start) and the
daemon's client (``handoffd.serverclient.ServerClient.ice_servers``).
"""

from __future__ import annotations

import base64
import ipaddress
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes, hmac

from handoffd.errors import ConfigError

__all__ = [
    "DEFAULT_TTL",
    "MAX_SERVERS",
    "MAX_URLS",
    "IceConfig",
    "IceEntry",
    "IceUrl",
    "check_ice_response",
    "parse_ice_url",
    "read_secret_file",
    "turn_credential",
]

DEFAULT_TTL = 3600
MIN_TTL = 60
MAX_TTL = 86400
MAX_SERVERS = 8  # entries in an answer
MAX_URLS = 4  # URLs per entry, and --stun / --turn URLs each
MAX_URL = 256
MAX_USERNAME = 256
MAX_CREDENTIAL = 256
MIN_SECRET = 16
MAX_SECRET = 1024
DEFAULT_PORTS = {"stun": 3478, "turn": 3478, "turns": 5349}

_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_PORT = re.compile(r"[0-9]{1,5}")
_PRINTABLE = re.compile(r"[\x21-\x7e]+")


def _bad_url(text: str, why: str) -> ConfigError:
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
        raise _bad_url(text, "no host")
    if host.startswith("["):
        raise _bad_url(text, "IPv6 literals are not supported by the WebRTC stack; use a host name")
    if all(part.isdigit() for part in host.split(".")):
        try:
            return str(ipaddress.IPv4Address(host))
        except ValueError:
            raise _bad_url(text, f"{host!r} is not an IPv4 address") from None
    labels = host.rstrip(".").split(".")
    if len(host) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise _bad_url(text, f"{host!r} is not a host name")
    return host


def parse_ice_url(text: str) -> IceUrl:
    """Check ``stun:host[:port]``, ``turn:host[:port][?transport=udp|tcp]``, ``turns:host[:port][?transport=tcp]``.

    Host: an IPv4 address or a DNS name; port 1 to 65535 (default 3478, 5349
    for ``turns``). Anything else: ``ConfigError(code="ice-url-invalid")``.
    """
    if not isinstance(text, str) or not 0 < len(text) <= MAX_URL:
        raise _bad_url(str(text), f"must be 1 to {MAX_URL} characters")
    if not _PRINTABLE.fullmatch(text):
        raise _bad_url(text, "spaces or control characters")
    scheme, sep, rest = text.partition(":")
    if not sep or scheme not in DEFAULT_PORTS:
        raise _bad_url(text, "the scheme must be stun:, turn: or turns:")
    if rest.startswith("//"):
        raise _bad_url(text, f"no '//' after the scheme (write {scheme}:host:port)")
    hostport, qmark, query = rest.partition("?")
    transport: str | None = None
    if qmark:
        if scheme == "stun":
            raise _bad_url(text, "a stun: URL takes no query")
        key, eq, value = query.partition("=")
        if key != "transport" or not eq or value not in ("udp", "tcp"):
            raise _bad_url(text, "the only query is ?transport=udp or ?transport=tcp")
        if scheme == "turns" and value != "tcp":
            raise _bad_url(text, "turns: works over TCP only (?transport=tcp)")
        transport = value
    host, colon, port_text = hostport.rpartition(":")
    if not colon:
        host, port_text = hostport, ""
    elif not _PORT.fullmatch(port_text) or not 0 < int(port_text) <= 65535:
        raise _bad_url(text, "the port must be a number from 1 to 65535")
    host = _check_host(text, host)
    port = int(port_text) if port_text else DEFAULT_PORTS[scheme]
    return IceUrl(text=text, scheme=scheme, host=host, port=port, transport=transport)


def read_secret_file(path: Path) -> bytes:
    """The TURN shared secret: the file's one line, stripped; refused if group or others can read it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise ConfigError(f"no TURN secret file at {path}", code="turn-secret-missing") from None
    except OSError as exc:
        raise ConfigError(
            f"cannot open the TURN secret file {path}: {exc.strerror}",
            code="turn-secret-unreadable",
        ) from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"{path} is not a regular file", code="turn-secret-unreadable")
        if st.st_mode & 0o077:
            mode = stat.S_IMODE(st.st_mode)
            raise ConfigError(
                f"the TURN secret file {path} has mode {mode:04o}, readable by others; "
                f"fix with: chmod 600 {path}",
                code="turn-secret-permissions",
            )
        data = f.read(MAX_SECRET + 2)
    secret = data.strip(b" \t\r\n")
    if not MIN_SECRET <= len(secret) <= MAX_SECRET or not _PRINTABLE.fullmatch(
        secret.decode("latin-1")
    ):
        raise ConfigError(
            f"the TURN secret in {path} must be one line of {MIN_SECRET} to {MAX_SECRET} printable "
            "ASCII characters without spaces (e.g. from: openssl rand -hex 32)",
            code="turn-secret-malformed",
        )
    return secret


def turn_credential(secret: bytes, username: str) -> str:
    """base64(HMAC-SHA1(secret, username)): coturn's ``use-auth-secret`` password for ``username``."""
    mac = hmac.HMAC(secret, hashes.SHA1())  # noqa: S303 - the scheme coturn implements (RFC 2104 HMAC)
    mac.update(username.encode("ascii"))
    return base64.b64encode(mac.finalize()).decode("ascii")


@dataclass(frozen=True)
class IceConfig:
    """The operator's ICE servers (``serve --stun/--turn/--turn-secret-file/--turn-ttl``).

    Validated on construction (``ConfigError``): URLs as ``parse_ice_url``,
    STUN URLs under ``stun``, TURN URLs under ``turn`` (at most 4 each), TURN
    needs the secret, ``ttl`` 60 to 86400 s. The secret is never shown in a repr.
    """

    stun: tuple[str, ...] = ()
    turn: tuple[str, ...] = ()
    secret: bytes | None = field(default=None, repr=False)
    ttl: int = DEFAULT_TTL

    def __post_init__(self) -> None:
        for kind, urls in (("stun", self.stun), ("turn", self.turn)):
            if len(urls) > MAX_URLS:
                raise ConfigError(f"at most {MAX_URLS} --{kind} URLs", code="ice-too-many-urls")
            for text in urls:
                if parse_ice_url(text).is_turn != (kind == "turn"):
                    raise _bad_url(
                        text,
                        "a stun: URL for --stun" if kind == "stun" else "a turn(s): URL for --turn",
                    )
            if len(set(urls)) != len(urls):
                raise ConfigError(f"a --{kind} URL is given twice", code="ice-url-invalid")
        if self.turn and self.secret is None:
            raise ConfigError(
                "--turn needs --turn-secret-file (coturn's static-auth-secret)",
                code="turn-secret-missing",
            )
        if self.secret is not None and not self.turn:
            raise ConfigError("--turn-secret-file without --turn", code="turn-secret-unused")
        if (
            not isinstance(self.ttl, int)
            or isinstance(self.ttl, bool)
            or not MIN_TTL <= self.ttl <= MAX_TTL
        ):
            raise ConfigError(
                f"--turn-ttl must be {MIN_TTL} to {MAX_TTL} seconds", code="turn-ttl-invalid"
            )

    @property
    def configured(self) -> bool:
        """True when any STUN or TURN server is configured."""
        return bool(self.stun or self.turn)

    def servers_for(self, device_id: str, *, now: float) -> list[dict[str, Any]]:
        """The ``ice_servers`` list of ``/v1/ice`` for ``device_id`` (TURN credentials valid ``ttl`` s)."""
        servers: list[dict[str, Any]] = []
        if self.stun:
            servers.append({"urls": list(self.stun)})
        if self.turn and self.secret is not None:
            username = f"{int(now) + self.ttl}:{device_id}"
            servers.append(
                {
                    "urls": list(self.turn),
                    "username": username,
                    "credential": turn_credential(self.secret, username),
                }
            )
        return servers


# ---------------------------------------------------------------- the client's check


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
