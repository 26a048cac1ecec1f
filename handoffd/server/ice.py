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
(``check_ice_response``) are shared with the devices: ``handoffd.wire.ice``.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes, hmac

from handoffd import ownership
from handoffd.errors import ConfigError
from handoffd.wire.ice import MAX_TTL, MAX_URLS, bad_url, is_printable, parse_ice_url

__all__ = [
    "DEFAULT_TTL",
    "IceConfig",
    "read_secret_file",
    "turn_credential",
]

DEFAULT_TTL = 3600
MIN_TTL = 60
MIN_SECRET = 16
MAX_SECRET = 1024


def read_secret_file(path: Path) -> bytes:
    """The TURN shared secret: the file's one line, stripped; refused if group or others can read it."""
    data = ownership.read_private_file(
        path, limit=MAX_SECRET + 2, what="TURN secret file", code="turn-secret", error=ConfigError
    )
    secret = data.strip(b" \t\r\n")
    if not MIN_SECRET <= len(secret) <= MAX_SECRET or not is_printable(secret.decode("latin-1")):
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
                    raise bad_url(
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
