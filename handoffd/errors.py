"""The one exception root of handoffd, and its families.

Every error carries a stable, machine-readable ``code`` (kebab-case, part of the
API: the control API and the server put it in ``{"error": {"code": ...}}``) and a
human ``message``. Protocol errors also say who broke the rules: ``Blame.PEER``
when the other side sent something invalid, ``Blame.LOCAL`` when we did.
"""

from __future__ import annotations

from enum import StrEnum


class Blame(StrEnum):
    """Who broke a protocol rule."""

    LOCAL = "local"
    PEER = "peer"


class HandoffError(Exception):
    """Root of every exception handoffd raises on purpose."""

    default_code = "error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code

    def __str__(self) -> str:
        return f"{self.message} [{self.code}]"


class ConfigError(HandoffError):
    """Settings or paths are invalid."""

    default_code = "config-invalid"


class KeyFileError(HandoffError):
    """A key file is missing, unreadable, malformed or unsafely readable."""

    default_code = "key-file"


class IdentityError(HandoffError):
    """A certificate, CSR or CRL could not be made or parsed."""

    default_code = "identity"


class VerificationError(IdentityError):
    """A peer's certificate, CRL or signature did not verify; ``code`` says why."""

    default_code = "verification-failed"


class EnvelopeError(VerificationError):
    """A signed envelope was rejected; ``code`` says why."""

    default_code = "envelope-invalid"


class ProtocolError(HandoffError):
    """A wire rule was broken; ``blame`` says by whom."""

    default_code = "protocol"

    def __init__(self, message: str, *, code: str | None = None, blame: Blame = Blame.PEER) -> None:
        super().__init__(message, code=code)
        self.blame = blame


class TransportError(HandoffError):
    """A connection could not be made or was lost."""

    default_code = "transport"


class StoreError(HandoffError):
    """Local state could not be read or written."""

    default_code = "store"


class ServerError(HandoffError):
    """The server refused a request or could not be reached; ``status`` is the HTTP status."""

    default_code = "server"

    def __init__(self, message: str, *, code: str | None = None, status: int = 0) -> None:
        super().__init__(message, code=code)
        self.status = status


class ApiError(HandoffError):
    """A control API request failed; ``status`` is the HTTP status to answer with."""

    default_code = "bad-request"

    def __init__(self, message: str, *, code: str | None = None, status: int = 400) -> None:
        super().__init__(message, code=code)
        self.status = status


class TransferError(HandoffError):
    """An exchange ended without delivering; ``code`` says why, ``retry`` whether to try again."""

    default_code = "transfer-failed"

    def __init__(self, message: str, *, code: str | None = None, retry: bool = True) -> None:
        super().__init__(message, code=code)
        self.retry = retry


class PathSwitchError(TransferError):
    """The sender stopped at a chunk boundary to continue over a better channel."""

    default_code = "path-switch"


class NotFoundError(HandoffError):
    """A thing a request named does not exist (the control API answers 404)."""

    default_code = "not-found"


class ConflictError(HandoffError):
    """A request conflicts with the current state (the control API answers 409)."""

    default_code = "conflict"


class InvalidRequestError(HandoffError):
    """A request is invalid in itself (the control API answers 400)."""

    default_code = "bad-request"
