"""Loading a device or ephemeral key into an ``ssl.SSLContext`` without the key touching disk."""

from __future__ import annotations

import os
import secrets
import ssl
import tempfile
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from handoffd import identity


def load_chain(
    ctx: ssl.SSLContext,
    cert_pem: bytes,
    key: Ed25519PrivateKey,
    *,
    memfd: bool | None = None,
    label: str = "handoff-tls",
) -> None:
    """Load ``cert_pem`` and ``key`` into ``ctx``; the key never touches disk unencrypted.

    ``load_cert_chain`` only reads files: on Linux a memfd (no disk at all);
    elsewhere a 0600 file in a private temporary directory holding the key
    encrypted under a random one-time password, removed right after loading.
    """
    use_memfd = hasattr(os, "memfd_create") if memfd is None else memfd
    if use_memfd and os.path.isdir("/proc/self/fd"):
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        fd = os.memfd_create(label, os.MFD_CLOEXEC)
        try:
            view = memoryview(cert_pem + pem)
            while view:
                view = view[os.write(fd, view) :]
            ctx.load_cert_chain(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
        return
    password = secrets.token_bytes(32)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(password),
    )
    with tempfile.TemporaryDirectory(prefix=f"{label}-") as tmp:
        path = Path(tmp) / "chain.pem"
        identity.write_private_file(path, cert_pem + pem)
        ctx.load_cert_chain(path, password=password)


__all__ = ["load_chain"]
