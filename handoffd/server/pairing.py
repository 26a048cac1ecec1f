"""Making pairing invites: new secrets, how they are stored, what is shown.

Pure except for randomness; no clock reads (callers pass ``now``). The invite
URL and short code themselves (and their parser) are ``handoffd.wire.invite``,
shared with the devices; the names are re-exported here for the server's code.

Wrong secrets for a located invite count against that invite, which locks
after ``MAX_FAILURES``; guesses that locate nothing are limited per client
address.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from handoffd.server.ratelimit import RateLimiter  # re-exported: it lived here
from handoffd.wire.invite import (
    CODE_ALPHABET,
    CODE_LEN,
    LOCATOR_LEN,
    Invite,
    check_fingerprint,
    check_server_url,
    expiry_text,
    format_code,
    invite_url,
    is_token,
    normalize_code,
    page_url,
    pair_command,
    pairs_in_browser,
    parse_invite,
)
from handoffd.wire.qr import qr_svg, qr_terminal

__all__ = [
    "CODE_ALPHABET",
    "CODE_LEN",
    "INVITE_TTL",
    "LOCATOR_LEN",
    "MAX_FAILURES",
    "TOKEN_BYTES",
    "Invite",
    "InviteSecrets",
    "InviteView",
    "RateLimiter",
    "check_fingerprint",
    "check_server_url",
    "expiry_text",
    "format_code",
    "invite_url",
    "is_token",
    "new_secrets",
    "normalize_code",
    "page_url",
    "pair_command",
    "pairs_in_browser",
    "parse_invite",
    "present",
    "qr_svg",
    "qr_terminal",
    "secret_hash",
]

INVITE_TTL = 600.0
MAX_FAILURES = 5
TOKEN_BYTES = 32


@dataclass(frozen=True)
class InviteSecrets:
    """A freshly made invite's secrets (plaintext: shown once, never stored)."""

    token: str
    code: str

    @property
    def locator(self) -> str:
        """The public part of the short code that finds the invite."""
        return self.code[:LOCATOR_LEN]


@dataclass(frozen=True)
class InviteView:
    """What a user is shown for an invite: URLs, short code, expiry, QR as SVG, and the whole
    command to type on the new device (``handoff pair CODE-TAG@server``).

    ``url`` is the ``handoff://pair`` URL; ``page_url`` the browser pairing
    page (``<server>/pair#token=…``) when a browser can pair there (https, or
    http on loopback), else None. The QR holds ``qr_url``: the page URL when
    there is one (a phone camera opens it; ``handoff pair`` parses it too).
    """

    url: str
    code: str
    expires_at: float
    qr_svg: str
    command: str
    page_url: str | None = None

    @property
    def qr_url(self) -> str:
        """What the QR code holds."""
        return self.page_url or self.url


def new_secrets() -> InviteSecrets:
    """A new 256-bit token and a new 60-bit short code (canonical, without dashes)."""
    code = "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LEN))
    return InviteSecrets(token=secrets.token_urlsafe(TOKEN_BYTES), code=code)


def secret_hash(secret: str) -> bytes:
    """How a token or a code's secret part is stored: SHA-256 (the values are random, not passwords)."""
    return hashlib.sha256(secret.encode("ascii")).digest()


def present(
    server_url: str,
    fingerprint: str | None,
    invite_secrets: InviteSecrets,
    expires_at: float,
) -> InviteView:
    """Everything to show for a new invite."""
    url = invite_url(server_url, invite_secrets.token, fingerprint)
    page = (
        page_url(server_url, invite_secrets.token, fingerprint)
        if pairs_in_browser(server_url)
        else None
    )
    return InviteView(
        url=url,
        code=format_code(invite_secrets.code),
        expires_at=expires_at,
        qr_svg=qr_svg(page or url),
        command=pair_command(server_url, invite_secrets.code, fingerprint),
        page_url=page,
    )
