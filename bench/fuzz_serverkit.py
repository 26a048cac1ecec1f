"""Helpers of the server fuzzer (``bench.fuzz_server``): an error-log collector and devices
enrolled straight through the store."""

from __future__ import annotations

import logging

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from handoffd import identity
from handoffd.server.store import Store


class ErrorLog(logging.Handler):
    """Collects records at ERROR and above (unhandled exceptions in handlers)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            text += f" {record.exc_info[1]!r}"
        self.records.append(f"{record.name}: {text}")


class Dev:
    """An enrolled device: its key and id."""

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self.key = key
        self.id = identity.device_id_for(key.public_key())


def enroll(store: Store, account_id: str, name: str) -> Dev:
    """A device joined straight through the store."""
    invite = store.create_invite(account_id, created_by="cli")
    key = identity.generate_device_key()
    store.join(
        token=invite.secrets.token,
        csr_pem=identity.csr_to_pem(identity.make_csr(key)),
        name=name,
        platform="fuzz",
    )
    return Dev(key)
