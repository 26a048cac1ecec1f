"""The transfer adapter: drives ``proto.transfer`` cores over a ``Channel``; file staging.

Layers, bottom up:

- pure helpers: peer-supplied name validation (``check_name``, ``unique_names``),
  the receiver's policy (``decide``), manifests (``build_manifest`` reads files,
  ``sign_offer`` / ``open_offer``);
- ``Staging``: blocking file work of the receiver (call through
  ``asyncio.to_thread``): ``partial/<handoff-id>/<index>`` files (dirs 0700),
  resume by re-hashing up to the checkpoint (anything past it is truncated),
  the atomic commit into ``inbox/<handoff-id>/``;
- ``Link``: one authenticated channel to a peer. One reader task feeds the
  exchange running on it; **one handoff at a time per channel** (each exchange
  starts with hello + offer), and the channel stays open between exchanges
  (a warm connection) so the next handoff skips the WebRTC setup;
- ``run_sender`` / ``run_receiver``: one exchange each, driving a
  ``SenderCore`` / ``ReceiverCore``; disk reads, writes, fsyncs and hashing run
  in threads, checkpoints are recorded through a callback before the core may
  acknowledge.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import logging
import os
import secrets
import shutil
import stat
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from handoffd import identity
from handoffd.config import is_type_word
from handoffd.control.schema import APP_ID_RE
from handoffd.deadlines import RESUMED_WAIT_IN, STALL_TIMEOUT, StallWatch
from handoffd.errors import (
    HandoffError,
    ProtocolError,
    StoreError,
    TransportError,
    VerificationError,
)

# The receiver's policy lives in handoffd.policy; re-exported for existing importers.
from handoffd.policy import DISK_MARGIN as DISK_MARGIN
from handoffd.policy import MAX_HANDOFF_BYTES as MAX_HANDOFF_BYTES
from handoffd.policy import Decision as Decision
from handoffd.policy import decide as decide
from handoffd.proto import codec
from handoffd.proto import messages as m
from handoffd.proto import transfer as core
from handoffd.text import file_name_problem, has_non_utf8, name_problem
from handoffd.transport.base import Channel

logger = logging.getLogger("handoffd.transfer")

PURPOSE_MANIFEST = "manifest"
MAX_NAME_BYTES = 255
RESERVED_NAMES = frozenset({"manifest.json"})
CHECKPOINT_EVERY = 1024 * 1024
READ_BLOCK = 1024 * 1024
OFFER_TIMEOUT = 30.0
DELIVERED_TIMEOUT = 120.0
HELLO_TIMEOUT = 10.0
SEND_TIMEOUT = 60.0
# A peer may not run ahead of the window by more than this (bytes queued to one exchange).
MAX_QUEUED = 2 * core.DEFAULT_WINDOW + 1024 * 1024
HANDOFF_ID_LEN = 32


class TransferError(HandoffError):
    """An exchange ended without delivering; ``code`` says why, ``retry`` whether to try again."""

    default_code = "transfer-failed"

    def __init__(self, message: str, *, code: str | None = None, retry: bool = True) -> None:
        super().__init__(message, code=code)
        self.retry = retry


class PathSwitchError(TransferError):
    """The sender stopped at a chunk boundary to continue over a better channel."""

    default_code = "path-switch"


# ---------------------------------------------------------------- names (pure)


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


@dataclass(frozen=True, slots=True)
class ItemSpec:
    """One session item as the sender knows it (content inline or a file path)."""

    type: str
    name: str
    mime: str
    text: str | None = None
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
    items: Sequence[ItemSpec],
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


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _mkdir_private(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)


@dataclass
class ItemWriter:
    """An open partial file of one item: where it continues, its running hash."""

    fd: int
    offset: int
    hasher: Any


class Staging:
    """Partial files and the inbox of one daemon home. Every method blocks: use a thread."""

    def __init__(self, partial: Path, inbox: Path) -> None:
        self.partial = partial
        self.inbox = inbox

    def partial_dir(self, handoff_id: str) -> Path:
        """``partial/<handoff-id>``."""
        return self.partial / check_handoff_id(handoff_id)

    def inbox_dir(self, handoff_id: str) -> Path:
        """``inbox/<handoff-id>``."""
        return self.inbox / check_handoff_id(handoff_id)

    def open_item(self, handoff_id: str, index: int, checkpoint: int) -> ItemWriter:
        """Open item ``index`` to continue at ``checkpoint``: truncate past it, re-hash up to it.

        If the file holds fewer bytes than the checkpoint claims, start again at 0.
        """
        directory = self.partial_dir(handoff_id)
        _mkdir_private(self.partial)
        _mkdir_private(directory)
        path = directory / str(int(index))
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            size = os.fstat(fd).st_size
            offset = checkpoint if 0 <= checkpoint <= size else 0
            os.ftruncate(fd, offset)
            hasher = hashlib.sha256()
            position = 0
            while position < offset:
                block = os.pread(fd, min(READ_BLOCK, offset - position), position)
                if not block:
                    raise OSError("partial file shrank while re-hashing")
                hasher.update(block)
                position += len(block)
        except BaseException:
            os.close(fd)
            raise
        return ItemWriter(fd=fd, offset=offset, hasher=hasher)

    @staticmethod
    def write(writer: ItemWriter, offset: int, chunks: Sequence[bytes]) -> None:
        """Write consecutive chunks at ``offset`` and hash them."""
        if offset != writer.offset:
            raise OSError(f"write at {offset}, expected {writer.offset}")
        for data in chunks:
            view = memoryview(data)
            while view:
                n = os.pwrite(writer.fd, view, writer.offset)
                writer.offset += n
                view = view[n:]
            writer.hasher.update(data)

    @staticmethod
    def sync(writer: ItemWriter) -> None:
        """Make what was written durable."""
        os.fsync(writer.fd)

    @staticmethod
    def close_item(writer: ItemWriter) -> None:
        """Close the file (idempotent)."""
        if writer.fd >= 0:
            os.close(writer.fd)
            writer.fd = -1

    def commit(
        self, handoff_id: str, files: Sequence[tuple[int, str]], manifest_json: Mapping[str, Any]
    ) -> Path:
        """Move the verified partial files into ``inbox/<id>/`` under their names, atomically.

        The files are renamed into ``inbox/.tmp-<id>/`` with ``manifest.json``,
        everything is fsynced, then one ``os.replace`` makes the directory appear.
        """
        src = self.partial_dir(handoff_id)
        final = self.inbox_dir(handoff_id)
        tmp = self.inbox / f".tmp-{handoff_id}"
        _mkdir_private(self.inbox)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(mode=0o700)
        for index, name in files:
            target = tmp / check_name(name)
            source = src / str(int(index))
            if not source.exists():  # an empty item never written
                source.touch(mode=0o600)
            os.replace(source, target)
        identity.write_private_file(
            tmp / "manifest.json",
            json.dumps(manifest_json, ensure_ascii=False, indent=1).encode("utf-8"),
        )
        _fsync_dir(tmp)
        os.replace(tmp, final)
        _fsync_dir(self.inbox)
        shutil.rmtree(src, ignore_errors=True)
        return final

    def committed_manifest(self, handoff_id: str) -> dict[str, Any] | None:
        """``inbox/<id>/manifest.json`` if a commit finished (e.g. before a crash), else None."""
        path = self.inbox_dir(handoff_id) / "manifest.json"
        try:
            data = json.loads(path.read_bytes()[: 4 * 1024 * 1024])
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def discard_partial(self, handoff_id: str) -> None:
        """Delete ``partial/<id>``."""
        shutil.rmtree(self.partial_dir(handoff_id), ignore_errors=True)

    def discard_item(self, handoff_id: str, index: int) -> None:
        """Delete one partial item (after a hash mismatch)."""
        with contextlib.suppress(FileNotFoundError):
            (self.partial_dir(handoff_id) / str(int(index))).unlink()

    def discard_inbox(self, handoff_id: str) -> None:
        """Delete ``inbox/<id>``."""
        shutil.rmtree(self.inbox_dir(handoff_id), ignore_errors=True)

    def held_bytes(self, handoff_id: str) -> int:
        """Bytes currently in ``partial/<id>``."""
        try:
            return sum(p.stat().st_size for p in self.partial_dir(handoff_id).iterdir())
        except OSError:
            return 0

    def free_bytes(self) -> int:
        """Free space where partial files go."""
        _mkdir_private(self.partial)
        return shutil.disk_usage(self.partial).free

    def partial_ids(self) -> list[str]:
        """Handoff ids with a partial directory."""
        try:
            names = [p.name for p in self.partial.iterdir()]
        except FileNotFoundError:
            return []
        return [n for n in names if len(n) == HANDOFF_ID_LEN and set(n) <= set("0123456789abcdef")]

    def clean_tmp(self) -> None:
        """Remove ``inbox/.tmp-*`` left by a crash during a commit."""
        try:
            for p in self.inbox.iterdir():
                if p.name.startswith(".tmp-"):
                    shutil.rmtree(p, ignore_errors=True)
        except FileNotFoundError:
            pass


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


class Exchange:
    """One handoff running on a link: the link's reader feeds it messages."""

    def __init__(self, handoff_id: str, role: str) -> None:
        self.handoff_id = handoff_id
        self.role = role
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.queued = 0
        self.core: core.SenderCore | core.ReceiverCore | None = None

    def feed(self, data: bytes | None) -> bool:
        """Queue a message (None: the link closed); False if the peer outran the window."""
        if data is not None:
            self.queued += len(data)
            if self.queued > MAX_QUEUED:
                return False
        self.queue.put_nowait(data)
        return True

    async def next(self, timeout: float) -> bytes | None:  # noqa: ASYNC109 - core's timer
        """The next message, None if the link closed; TimeoutError after ``timeout``."""
        async with asyncio.timeout(max(0.0, timeout)):
            data = await self.queue.get()
        if data is not None:
            self.queued -= len(data)
        return data


OnIncoming = Callable[["Link", Exchange, bytes], None]
OnNotice = Callable[["Link", str], None]


class Link:
    """An authenticated channel to one peer, reused for successive handoffs (warm)."""

    def __init__(
        self,
        channel: Channel,
        *,
        on_incoming: OnIncoming,
        on_resumed: OnNotice,
    ) -> None:
        self.channel = channel
        self.peer_id = channel.peer.device_id
        self._on_incoming = on_incoming
        self._on_resumed = on_resumed
        self.exchange: Exchange | None = None
        self.last_used = time.monotonic()
        self._reader: asyncio.Task[None] | None = None
        self._closed = asyncio.Event()
        self._send_lock = asyncio.Lock()
        self.reserved = False
        """Taken by a handoff about to ``begin`` a sending exchange on it: no other may take it."""
        self.used = False
        """True once an exchange began on it (ours, or the peer's hello): until then it is new."""
        self._heard = asyncio.Event()

    @property
    def closed(self) -> bool:
        """True once the link (or its channel) closed."""
        return self._closed.is_set() or self.channel.closed

    @property
    def busy(self) -> bool:
        """True while an exchange runs (including a sender waiting for ``resumed``)."""
        ex = self.exchange
        return self.reserved or (ex is not None and (ex.core is None or not ex.core.finished))

    @property
    def lingering(self) -> bool:
        """True while only a delivered sender waits for ``resumed`` (a new handoff may take over)."""
        ex = self.exchange
        return (
            ex is not None
            and ex.role == "sender"
            and ex.core is not None
            and ex.core.state == core.State.DELIVERED
        )

    def take_over(self) -> None:
        """End a lingering exchange so a new one can start (its resumed comes by notice)."""
        ex = self.exchange
        if ex is not None and self.lingering:
            self.exchange = None
            ex.feed(None)

    def reserve(self) -> None:
        """Take this idle (or lingering) link for the exchange about to begin on it."""
        self.take_over()
        self.reserved = True

    def release(self) -> None:
        """Give back a reservation that was not used (idempotent)."""
        self.reserved = False

    async def probe(self, within: float) -> bool:
        """True if the peer is heard (its ``pong``, or anything else) within ``within`` seconds
        of a ``ping`` sent on this link."""
        self._heard.clear()
        try:
            async with asyncio.timeout(within):
                await self.send(m.Ping(nonce=0))
                await self._heard.wait()
        except (TimeoutError, HandoffError):
            return False
        return True

    def start(self) -> None:
        """Start reading."""
        if self._reader is None:
            self._reader = asyncio.create_task(self._read(), name=f"link-{self.peer_id[:8]}")

    async def wait_closed(self) -> None:
        """Until the link closes."""
        await self._closed.wait()

    def begin(self, handoff_id: str, role: str) -> Exchange:
        """Start an exchange (the link must be idle, or reserved for it)."""
        self.reserved = False
        if self.busy:
            raise TransportError("link is busy", code="link-busy")
        self.exchange = Exchange(handoff_id, role)
        self.used = True
        self.last_used = time.monotonic()
        return self.exchange

    def end(self, exchange: Exchange) -> None:
        """The exchange is over; the link is idle (warm) again."""
        if self.exchange is exchange:
            self.exchange = None
        self.last_used = time.monotonic()

    async def send(self, msg: Any) -> None:
        """Encode and send one message (timeout: a stalled channel is closed)."""
        data = codec.encode(msg)
        async with self._send_lock:
            try:
                async with asyncio.timeout(SEND_TIMEOUT):
                    await self.channel.send(data)
            except TimeoutError:
                await self.close()
                raise TransportError("send stalled", code="send-stalled") from None

    async def _read(self) -> None:
        try:
            while True:
                data = await self.channel.recv()
                self.last_used = time.monotonic()
                self._heard.set()
                ex = self.exchange
                if (
                    ex is not None
                    and ex.core is not None
                    and (ex.core.finished or _ready_for_next(ex, data))
                ):
                    # Over, or only waiting in delivered while a new exchange starts.
                    ex.feed(None)
                    self.exchange = ex = None
                if ex is not None:
                    if not ex.feed(data):
                        logger.warning("peer outran the window", extra={"peer": self.peer_id})
                        break
                    continue
                self._idle_message(data)
        except TransportError:
            pass
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("link reader failed")
        finally:
            self._closed.set()
            if self.exchange is not None:
                self.exchange.feed(None)
            with contextlib.suppress(Exception):
                await self.channel.close()

    def _idle_message(self, data: bytes) -> None:
        try:
            msg = codec.decode(data)
        except ProtocolError:
            logger.info("undecodable message on an idle link", extra={"peer": self.peer_id})
            return
        if isinstance(msg, m.Hello):
            exchange = Exchange("", "receiver")
            self.exchange = exchange
            self.used = True
            self._on_incoming(self, exchange, data)
        elif isinstance(msg, m.Ping):
            task = asyncio.ensure_future(self._pong(msg.nonce))
            _BACKGROUND.add(task)
            task.add_done_callback(_BACKGROUND.discard)
        elif isinstance(msg, m.Resumed):
            self._on_resumed(self, msg.handoff_id)

    async def _pong(self, nonce: int) -> None:
        with contextlib.suppress(HandoffError):
            await self.send(m.Pong(nonce=nonce))

    async def close(self) -> None:
        """Close the channel and stop reading (idempotent)."""
        self._closed.set()
        reader, self._reader = self._reader, None
        with contextlib.suppress(Exception):
            await self.channel.close()
        if reader is not None and reader is not asyncio.current_task():
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        if self.exchange is not None:
            self.exchange.feed(None)


# Short fire-and-forget replies (pongs) owned here until done.
_BACKGROUND: set[asyncio.Task[Any]] = set()


def _ready_for_next(ex: Exchange, data: bytes) -> bool:
    """True if ``ex`` only lingers (delivered, waiting for resumed) and ``data`` starts a new one."""
    c = ex.core
    if c is None or c.state != core.State.DELIVERED or ex.role != "receiver":
        return False
    try:
        return isinstance(codec.decode(data), m.Hello)
    except ProtocolError:
        return False


def make_hello(device_id: str, trust: identity.TrustAnchor | None) -> m.Hello:
    """Our hello, carrying our CRL for gossip."""
    crl = None if trust is None or trust.crl is None else identity.crl_to_der(trust.crl)
    if crl is not None and len(crl) > m.MAX_CRL:
        crl = None  # too large to gossip: peers fetch it from the server instead
    return m.Hello(
        version=m.PROTOCOL_VERSION,
        device_id=device_id,
        crl_number=0 if trust is None else trust.crl_number,
        crl=crl,
        features=(),
    )


# ---------------------------------------------------------------- driving a core


async def _flush(link: Link, c: core.SenderCore | core.ReceiverCore) -> None:
    for msg in c.outgoing():
        await link.send(msg)


async def _step(
    ex: Exchange, c: core.SenderCore | core.ReceiverCore, loop_time: Callable[[], float]
) -> bool:
    """Wait for the next message or timer and feed it, plus whatever else is queued.

    False if the link closed before anything arrived.
    """
    deadline = c.next_timer()
    try:
        data = await ex.next(60.0 if deadline is None else deadline - loop_time())
    except TimeoutError:
        c.timer(loop_time())
        return True
    if data is None:
        return False
    c.receive_bytes(data, loop_time())
    for _ in range(64):
        if ex.queue.empty() or c.finished:
            break
        more = ex.queue.get_nowait()
        if more is None:
            ex.queue.put_nowait(None)  # seen on the next step
            break
        ex.queued -= len(more)
        c.receive_bytes(more, loop_time())
    return True


@dataclass
class SendReport:
    """What a sender exchange did (for the record and the proofs in tests)."""

    accepted: dict[int, int] = dataclasses.field(default_factory=dict)
    total: int = 0
    skipped: int = 0
    data_bytes: int = 0
    channel_bytes: int = 0


@dataclass(frozen=True, slots=True)
class SenderHooks:
    """Callbacks of a sender exchange (all on the event loop)."""

    on_peer_hello: Callable[[m.Hello], Awaitable[None]]
    on_transferring: Callable[[SendReport], Awaitable[None]]
    on_progress: Callable[[int, int], None]
    on_delivered: Callable[[SendReport], Awaitable[None]]
    on_resumed: Callable[[], Awaitable[None]]


async def run_sender(
    link: Link,
    *,
    hello: m.Hello,
    offer: m.Offer,
    manifest: m.Manifest,
    sources: Mapping[int, SourceItem],
    hooks: SenderHooks,
    resumed_wait: float,
    cancelled: Callable[[], bool] = lambda: False,
    switch: Callable[[], bool] = lambda: False,
    stall: float = STALL_TIMEOUT,
) -> SendReport:
    """One sending exchange: offer, stream, until delivered (then linger for ``resumed``).

    Returns once delivered and either resumed or ``resumed_wait`` passed; raises
    TransferError (declined: retry False, code = the peer's reason) otherwise.
    If the task is cancelled and ``cancelled()`` says the user asked for it, the
    peer is told (``cancel``) before the CancelledError goes on. While streaming,
    ``switch()`` is asked at each chunk boundary; True ends this exchange with
    ``PathSwitchError`` so the caller can carry on over a better channel (the receiver
    keeps what it acknowledged; the next offer resumes from there). A receiver that lets
    the stream make no progress for ``stall`` seconds ends it (``stalled``, retried).
    """
    loop = asyncio.get_running_loop()
    ex = link.begin(manifest.handoff_id, "sender")
    c = core.SenderCore(hello, offer, manifest, now=loop.time())
    ex.core = c
    report = SendReport()
    start_bytes = link.channel.bytes_sent
    delivered_at: float | None = None
    answer_by = loop.time() + OFFER_TIMEOUT
    watch = StallWatch(loop.time())
    try:
        c.start(loop.time())
        while True:
            events = c.events()
            needs = [e for e in events if isinstance(e, core.NeedData)]
            if needs:
                await _read_for(c, needs, sources)
            for event in events:
                if isinstance(event, core.PeerHello):
                    await hooks.on_peer_hello(event.hello)
                elif isinstance(event, core.Accepted):
                    report.accepted = dict(event.resume)
                    report.total = sum(sources[i].entry.size for i in event.resume)
                    report.skipped = sum(event.resume.values())
                    await hooks.on_transferring(report)
                elif isinstance(event, core.Progress):
                    hooks.on_progress(event.done, event.total)
                elif isinstance(event, core.Delivered):
                    delivered_at = loop.time()
                    report.data_bytes = c.sent_bytes
                    report.channel_bytes = link.channel.bytes_sent - start_bytes
                    await hooks.on_delivered(report)
                elif isinstance(event, core.Resumed):
                    await hooks.on_resumed()
                    return report
                elif isinstance(event, core.Declined):
                    raise TransferError(event.message or "declined", code=event.reason, retry=False)
                elif isinstance(event, core.Cancelled):
                    raise TransferError(
                        f"cancelled by the peer: {event.reason}",
                        code="peer-cancelled",
                        retry=False,
                    )
                elif isinstance(event, core.Failed):
                    raise TransferError(event.message, code=event.code)
            await _flush(link, c)
            report.data_bytes = c.sent_bytes
            report.channel_bytes = link.channel.bytes_sent - start_bytes
            if events:
                continue  # handling events may have made more
            if c.state == core.State.STREAMING and switch():
                raise PathSwitchError("a better path is ready", code="path-switch")
            now = loop.time()
            if delivered_at is not None and now - delivered_at >= resumed_wait:
                return report
            watch.observe((c.state, c.sent_bytes, c.done), now)
            if c.state == core.State.STREAMING and watch.quiet_for(now) >= stall:
                raise TransferError(f"no progress for {stall:g} s", code="stalled")
            if c.state == core.State.AWAIT_ANSWER and now > answer_by:
                raise TransferError("the peer did not answer the offer", code="offer-timeout")
            if not await _step(ex, c, loop.time):
                if delivered_at is not None:
                    return report
                raise TransferError("connection lost", code="connection-lost")
    except asyncio.CancelledError:
        if cancelled() and not c.finished:
            c.cancel("cancelled", loop.time())
            with contextlib.suppress(HandoffError, TimeoutError):
                async with asyncio.timeout(2.0):
                    await asyncio.shield(_flush(link, c))
        raise
    finally:
        link.end(ex)


async def _read_for(
    c: core.SenderCore, needs: Sequence[core.NeedData], sources: Mapping[int, SourceItem]
) -> None:
    """Read what NeedData events ask for (per item, in one thread hop) and hand it to the core."""
    by_item: dict[int, list[core.NeedData]] = {}
    for need in needs:
        by_item.setdefault(need.index, []).append(need)
    for index, group in by_item.items():
        chunks = await asyncio.to_thread(read_chunks, sources[index], group)
        now = asyncio.get_running_loop().time()
        for need, data in zip(group, chunks, strict=True):
            c.data_ready(need.index, need.offset, data, now)


@dataclass(frozen=True, slots=True)
class Verdict:
    """The service's answer to an offer: accept from offsets, decline, or already delivered."""

    resume: Mapping[int, int] | None = None
    names: Mapping[int, str] | None = None
    decline: tuple[str, str] | None = None
    delivered: bool = False


@dataclass(frozen=True, slots=True)
class ReceiverHooks:
    """Callbacks of a receiving exchange (all on the event loop)."""

    on_peer_hello: Callable[[m.Hello], Awaitable[None]]
    on_offer: Callable[[m.Offer, m.Manifest], Awaitable[Verdict]]
    checkpoint: Callable[[str, int, int], Awaitable[None]]
    on_progress: Callable[[str, int, int], None]
    commit: Callable[[m.Manifest, Mapping[int, str]], Awaitable[None]]
    on_failed: Callable[[str, str, str], Awaitable[None]]


async def run_receiver(
    link: Link,
    ex: Exchange,
    first: bytes,
    *,
    hello: m.Hello,
    staging: Staging,
    hooks: ReceiverHooks,
    stall: float = STALL_TIMEOUT,
    resumed_wait: float = RESUMED_WAIT_IN,
) -> None:
    """One receiving exchange on ``link``, starting with the peer's hello ``first``; it ends
    after ``stall`` seconds without progress (``stalled``), or ``resumed_wait`` after delivery."""
    loop = asyncio.get_running_loop()
    c = core.ReceiverCore(hello, now=loop.time())
    ex.core = c
    rx = _Receiving(c, ex, staging, hooks, loop.time)
    watch = StallWatch(loop.time())
    try:
        c.start(loop.time())
        c.receive_bytes(first, loop.time())
        while True:
            events = c.events()
            await rx.handle(events)
            await _flush(link, c)
            if c.finished:
                return
            if events:
                continue
            watch.observe((c.state, c.done), loop.time())
            if c.state == core.State.DELIVERED:
                if watch.quiet_for(loop.time()) >= resumed_wait:
                    return  # the app's resumed, if it comes, goes by notice
            elif watch.quiet_for(loop.time()) >= stall:
                for index in list(rx.writers):
                    await rx.checkpoint(index)  # what arrived is kept for the resume
                raise TransferError(f"no progress for {stall:g} s", code="stalled")
            if not await _step(ex, c, loop.time):
                if c.state not in (core.State.DELIVERED, core.State.DECLINED):
                    await hooks.on_failed(ex.handoff_id, "connection-lost", "connection lost")
                return
    except TransportError as exc:
        # The channel failed under us (a send after the peer left, a path switch): what was
        # acknowledged is durable, the next offer resumes from there.
        if c.state not in (core.State.DELIVERED, core.State.DECLINED):
            await hooks.on_failed(ex.handoff_id, "connection-lost", f"connection lost: {exc.code}")
    except (ProtocolError, OSError, TransferError, StoreError) as exc:
        # The peer is told why (it retries; its next offer meets the receiver's policy, e.g.
        # no-disk-space), and the link is closed whatever recording the failure does.
        if isinstance(exc, OSError):
            logger.warning("receive failed on disk: %s", exc, extra={"peer": link.peer_id})
            exc = ProtocolError(f"receiver storage error: {exc.strerror}", code="receiver-io-error")
        elif isinstance(exc, StoreError):
            logger.warning(
                "receive failed on the state database: %s",
                exc.message,
                extra={"peer": link.peer_id},
            )
        logger.info("receive failed: %s", exc.code, extra={"peer": link.peer_id})
        try:
            with contextlib.suppress(HandoffError):
                await link.send(m.Error(code=exc.code[:64], message=exc.message[:1024]))
            await hooks.on_failed(ex.handoff_id, exc.code, exc.message)
        finally:
            await link.close()
    finally:
        rx.close()
        link.end(ex)


class _Receiving:
    """The receiver adapter's state for one exchange: open partial files and their hashes."""

    def __init__(
        self,
        c: core.ReceiverCore,
        ex: Exchange,
        staging: Staging,
        hooks: ReceiverHooks,
        now: Callable[[], float],
    ) -> None:
        self.c = c
        self.ex = ex
        self.staging = staging
        self.hooks = hooks
        self.now = now
        self.writers: dict[int, ItemWriter] = {}
        self.unsynced: dict[int, int] = {}
        self.manifest: m.Manifest | None = None
        self.names: Mapping[int, str] = {}

    def close(self) -> None:
        for writer in self.writers.values():
            with contextlib.suppress(OSError):
                Staging.close_item(writer)

    async def handle(self, events: Sequence[core.Event]) -> None:
        """Act on the core's events: writes first (batched per item), then the rest in order."""
        writes: dict[int, list[core.WriteData]] = {}
        for event in events:
            if isinstance(event, core.WriteData):
                writes.setdefault(event.index, []).append(event)
        for index, group in writes.items():
            writer = self.writers[index]
            await asyncio.to_thread(Staging.write, writer, group[0].offset, [w.data for w in group])
            self.unsynced[index] = self.unsynced.get(index, 0) + sum(len(w.data) for w in group)
            if self.unsynced[index] >= CHECKPOINT_EVERY:
                await self.checkpoint(index)
        for event in events:
            if isinstance(event, core.PeerHello):
                await self.hooks.on_peer_hello(event.hello)
            elif isinstance(event, core.OfferReceived):
                await self.offer(event.offer, event.manifest)
            elif isinstance(event, core.Progress):
                self.hooks.on_progress(self.ex.handoff_id, event.done, event.total)
            elif isinstance(event, core.ItemComplete):
                await self.complete(event.index)
            elif isinstance(event, core.CheckpointNeeded) and event.index in self.writers:
                await self.checkpoint(event.index)
            elif isinstance(event, core.Commit) and self.manifest is not None:
                for writer in self.writers.values():
                    await asyncio.to_thread(Staging.close_item, writer)
                await self.hooks.commit(self.manifest, self.names)
                self.c.committed(self.now())
            elif isinstance(event, core.Failed):
                await self.hooks.on_failed(self.ex.handoff_id, event.code, event.message)
            elif isinstance(event, core.Cancelled):
                await self.hooks.on_failed(self.ex.handoff_id, "cancelled", event.reason)

    async def offer(self, offer: m.Offer, manifest: m.Manifest) -> None:
        self.manifest = manifest
        self.ex.handoff_id = manifest.handoff_id
        verdict = await self.hooks.on_offer(offer, manifest)
        if verdict.decline is not None:
            self.c.decline(verdict.decline[0], verdict.decline[1], self.now())
            return
        if verdict.delivered or not verdict.resume:
            self.c.already_delivered(self.now())
            return
        self.names = dict(verdict.names or {})
        for index, offset in verdict.resume.items():
            self.writers[index] = await asyncio.to_thread(
                self.staging.open_item, manifest.handoff_id, index, offset
            )
        resume = {i: w.offset for i, w in self.writers.items()}
        for index, offset in resume.items():
            if offset != verdict.resume[index]:
                await self.hooks.checkpoint(manifest.handoff_id, index, offset)
        self.c.accept(resume, self.now())

    async def checkpoint(self, index: int) -> None:
        """fsync, record the checkpoint, and only then let the core acknowledge."""
        writer = self.writers[index]
        await asyncio.to_thread(Staging.sync, writer)
        await self.hooks.checkpoint(self.ex.handoff_id, index, writer.offset)
        self.unsynced[index] = 0
        self.c.checkpoint_done(index, writer.offset, self.now())

    async def complete(self, index: int) -> None:
        """All bytes of ``index`` are here: make them durable, check the hash."""
        await self.checkpoint(index)
        manifest = self.manifest
        entry = (
            None
            if manifest is None
            else next((i for i in manifest.items if i.index == index), None)
        )
        writer = self.writers[index]
        ok = entry is not None and writer.hasher.digest() == entry.sha256
        if not ok:
            logger.warning(
                "item does not match its hash", extra={"handoff": self.ex.handoff_id, "item": index}
            )
            await asyncio.to_thread(Staging.close_item, writer)
            await asyncio.to_thread(self.staging.discard_item, self.ex.handoff_id, index)
            await self.hooks.checkpoint(self.ex.handoff_id, index, 0)
        self.c.item_verified(index, ok, self.now())
