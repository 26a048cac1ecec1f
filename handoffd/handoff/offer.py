"""Offers: peer-supplied names and ids (pure), manifests built from session items (blocking
file hashing), signing and verifying an offer, and reading the sender's chunks (blocking)."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import secrets
import stat
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from handoffd import identity
from handoffd.config import APP_ID_RE, is_type_word
from handoffd.errors import HandoffError, ProtocolError, TransferError, VerificationError
from handoffd.items import Item
from handoffd.proto import codec
from handoffd.proto import messages as m
from handoffd.proto import transfer as core
from handoffd.text import file_name_problem, has_non_utf8, name_problem

PURPOSE_MANIFEST = "manifest"
MAX_NAME_BYTES = 255
RESERVED_NAMES = frozenset({"manifest.json"})
READ_BLOCK = 1024 * 1024
HANDOFF_ID_LEN = 32


def check_name(name: object) -> str:
    """A peer-supplied file name, or ProtocolError(bad-item-name) (blame peer).

    One path component by handoffd.text.file_name_problem: 1..255 UTF-8 bytes, not
    ``.``/``..``, no ``/``, ``\\``, ``..``, nor a control, format or line-separator character.
    """
    if not isinstance(name, str):
        raise ProtocolError("item name is not a string", code="bad-item-name")
    problem = file_name_problem(name)
    if problem is not None:
        raise ProtocolError(f"item name {problem}", code="bad-item-name")
    return name


def unique_names(names: Iterable[str]) -> list[str]:
    """Validate each name and make them distinct (``a.txt``, ``a (2).txt``, …), avoiding reserved."""
    taken: set[str] = {n.casefold() for n in RESERVED_NAMES}
    out: list[str] = []
    for raw in names:
        name = check_name(raw)
        candidate, n = name, 1
        stem, dot, ext = name.rpartition(".")
        if not stem:
            stem, dot, ext = name, "", ""
        while candidate.casefold() in taken:
            n += 1
            candidate = f"{stem} ({n}){dot}{ext}"
            if len(candidate.encode("utf-8")) > MAX_NAME_BYTES:
                candidate = f"item-{len(out)}-{n}"
        taken.add(candidate.casefold())
        out.append(candidate)
    return out


def check_handoff_id(value: str) -> str:
    """A handoff id from a peer or a URL: 32 lowercase hex digits; ProtocolError otherwise."""
    if len(value) != HANDOFF_ID_LEN or not set(value) <= set("0123456789abcdef"):
        raise ProtocolError("malformed handoff id", code="bad-handoff-id")
    return value


def new_handoff_id() -> str:
    """A random 128-bit handoff id."""
    return secrets.token_hex(16)


# ---------------------------------------------------------------- manifests


@dataclass(frozen=True, slots=True)
class SourceItem:
    """Where the sender reads an item: inline ``data`` or a file ``path`` of ``size`` bytes."""

    entry: m.ItemEntry
    data: bytes | None = None
    path: str | None = None


def _hash_file(path: str) -> tuple[int, bytes]:
    h = hashlib.sha256()
    size = 0
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise TransferError(f"{path} is not a regular file", code="item-file-not-regular")
        while block := os.read(fd, READ_BLOCK):
            h.update(block)
            size += len(block)
    finally:
        os.close(fd)
    return size, h.digest()


def build_manifest(
    *,
    handoff_id: str,
    session_id: str,
    app_id: str,
    title: str,
    context: Mapping[str, Any],
    items: Sequence[Item],
    sender: str,
    recipient: str,
    now: float,
) -> tuple[m.Manifest, dict[int, SourceItem]]:
    """The manifest (sizes and SHA-256 of every item) and where to read each item. Blocking."""
    entries: list[m.ItemEntry] = []
    sources: dict[int, SourceItem] = {}
    for index, item in enumerate(items):
        data: bytes | None = None
        if item.path is not None:
            try:
                size, digest = _hash_file(item.path)
            except OSError as exc:
                raise TransferError(
                    f"cannot read {item.path}: {exc.strerror}", code="item-file-unreadable"
                ) from None
        else:
            data = item.text.encode("utf-8") if item.text is not None else (item.data or b"")
            size, digest = len(data), hashlib.sha256(data).digest()
        entry = m.ItemEntry(
            index=index,
            type=item.type,
            name=item.name,
            mime=item.mime,
            size=size,
            sha256=digest,
        )
        entries.append(entry)
        sources[index] = SourceItem(entry=entry, data=data, path=item.path)
    manifest = m.Manifest(
        handoff_id=handoff_id,
        session_id=session_id,
        app_id=app_id,
        title=title,
        context=json.dumps(context, separators=(",", ":"), ensure_ascii=False).encode("utf-8"),
        items=tuple(entries),
        sender=sender,
        recipient=recipient,
        created_ms=int(now * 1000),
    )
    return manifest, sources


def sign_offer(key: Ed25519PrivateKey, cert_der: bytes, manifest: m.Manifest) -> m.Offer:
    """The offer: canonical manifest bytes signed under ``handoff/v1/manifest``."""
    raw = codec.encode(manifest)
    return m.Offer(manifest=raw, signature=identity.sign(key, PURPOSE_MANIFEST, raw), cert=cert_der)


def open_offer(
    offer: m.Offer, *, trust: identity.TrustAnchor, me: str, peer: str, now: float
) -> m.Manifest:
    """Verify an offer from ``peer`` to ``me``; its manifest, or ProtocolError with a code."""
    try:
        cert = identity.load_cert(offer.cert)
        verified = identity.verify_device_cert(
            cert,
            trust,
            now=dt.datetime.fromtimestamp(now, dt.UTC),
            expected_device=peer,
            self_device=me,
        )
        key = verified.cert.public_key()
        if not isinstance(key, Ed25519PublicKey):  # pragma: no cover - verified above
            raise VerificationError("not an Ed25519 key", code="cert-invalid")
        identity.verify_signature(key, PURPOSE_MANIFEST, offer.manifest, offer.signature)
    except HandoffError as exc:
        raise ProtocolError(f"offer does not verify: {exc.message}", code="offer-invalid") from exc
    manifest = codec.decode(offer.manifest)
    if not isinstance(manifest, m.Manifest):
        raise ProtocolError("offer carries no manifest", code="offer-invalid")
    if manifest.sender != peer or manifest.recipient != me:
        raise ProtocolError("manifest names other devices", code="offer-wrong-device")
    check_handoff_id(manifest.handoff_id)
    if not APP_ID_RE.fullmatch(manifest.app_id):
        raise ProtocolError("manifest has a bad app id", code="manifest-bad-app-id")
    if len(manifest.title) > 256 or name_problem(manifest.title) is not None:
        raise ProtocolError("manifest has a bad title", code="manifest-bad-title")
    for item in manifest.items:
        if not is_type_word(item.type):
            raise ProtocolError(f"item {item.index} has a bad type", code="manifest-bad-item")
        if item.size < 0 or len(item.sha256) != 32:
            raise ProtocolError(f"item {item.index} is malformed", code="manifest-bad-item")
    indexes = [i.index for i in manifest.items]
    if sorted(indexes) != list(range(len(indexes))):
        raise ProtocolError("manifest item indexes must be 0..n-1", code="manifest-bad-index")
    context = manifest_context(manifest)
    if not isinstance(context, dict):
        raise ProtocolError("manifest context is not a JSON object", code="manifest-bad-context")
    return manifest


def manifest_context(manifest: m.Manifest) -> Any:
    """The manifest's context decoded from JSON; ProtocolError if it is not JSON."""
    try:
        context = json.loads(manifest.context.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ProtocolError("manifest context is not JSON", code="manifest-bad-context") from None
    if has_non_utf8(context):  # a "\ud800" escape: valid JSON, not storable text
        raise ProtocolError("manifest context is not UTF-8", code="manifest-bad-context")
    return context


# ---------------------------------------------------------------- staging (blocking)


def read_chunks(source: SourceItem, requests: Sequence[core.NeedData]) -> list[bytes]:
    """The bytes ``requests`` ask for from one item. Blocking."""
    if source.data is not None:
        return [source.data[r.offset : r.offset + r.length] for r in requests]
    if source.path is None:  # pragma: no cover - build_manifest sets one
        raise TransferError("item has no content", code="internal", retry=False)
    out: list[bytes] = []
    fd = os.open(source.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if os.fstat(fd).st_size != source.entry.size:
            raise TransferError(
                f"{source.path} changed since the handoff started",
                code="source-changed",
                retry=False,
            )
        for r in requests:
            data = os.pread(fd, r.length, r.offset)
            if len(data) != r.length:
                raise TransferError(f"{source.path} shrank", code="source-changed", retry=False)
            out.append(data)
    finally:
        os.close(fd)
    return out


# ---------------------------------------------------------------- the link


def sources_for(items: Sequence[Item], manifest: m.Manifest) -> dict[int, SourceItem]:
    """Where each manifest item is read: the session's item of the same name (TransferError
    ``source-changed``, not retried, if one is gone or changed size)."""
    by_name = {i.name: i for i in items}
    out: dict[int, SourceItem] = {}
    for entry in manifest.items:
        item = by_name.get(entry.name)
        if item is None:
            raise TransferError(f"item {entry.name!r} is gone", code="source-changed", retry=False)
        if item.path is not None:
            out[entry.index] = SourceItem(entry=entry, path=item.path)
            continue
        data = item.text.encode("utf-8") if item.text is not None else (item.data or b"")
        if len(data) != entry.size:
            raise TransferError(f"item {entry.name!r} changed", code="source-changed", retry=False)
        out[entry.index] = SourceItem(entry=entry, data=data)
    return out
