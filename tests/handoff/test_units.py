"""Pure and single-process pieces of the handoff engine: names, policy, offers, staging, expiry."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import os
import stat
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from handoffd import identity
from handoffd.config import Settings
from handoffd.errors import ProtocolError
from handoffd.handoff.expiry import expire
from handoffd.handoff.offer import (
    build_manifest,
    check_name,
    new_handoff_id,
    open_offer,
    read_chunks,
    sign_offer,
    unique_names,
)
from handoffd.handoff.policy import decide
from handoffd.handoff.retry import backoff
from handoffd.handoff.staging import Staging
from handoffd.handoff.tables import EngineDB, InboxEntry
from handoffd.items import Item
from handoffd.proto import codec
from handoffd.proto import messages as m
from handoffd.proto.transfer import NeedData
from handoffd.store import Store

NOW = dt.datetime.now(dt.UTC)

# ---------------------------------------------------------------- names


@pytest.mark.parametrize(
    "name",
    [
        "",
        ".",
        "..",
        "../etc/passwd",
        "a/b",
        "a\\b",
        "x..y",
        "nul\x00byte",
        "bell\x07",
        "esc\x1b[31m",
        "del\x7f",
        "c1\x9b",
        "é" * 128,  # 256 bytes
        "\udc80",
        # Shown as something else: bidi overrides and isolates, zero-width, BOM, line breaks.
        "\u202etxt.exe",
        "a\u2066b",
        "a\u200bb",
        "a\u200db",
        "\ufeffx",
        "a\u2028b",
        "a\u2029b",
    ],
)
def test_hostile_names_are_refused(name: str) -> None:
    with pytest.raises(ProtocolError) as err:
        check_name(name)
    assert err.value.code == "bad-item-name"


@pytest.mark.parametrize(
    "name", ["a.txt", "notes", ".hidden", "日本語.md", "x" * 255, "a b (1).pdf"]
)
def test_ordinary_names_pass(name: str) -> None:
    assert check_name(name) == name


def test_unique_names_deduplicate_and_avoid_reserved() -> None:
    names = unique_names(["a.txt", "A.TXT", "a.txt", "manifest.json", "b"])
    assert names == ["a.txt", "A (2).TXT", "a (3).txt", "manifest (2).json", "b"]
    assert len({n.casefold() for n in names}) == len(names)
    with pytest.raises(ProtocolError):
        unique_names(["ok", "../bad"])


# ---------------------------------------------------------------- policy


def _manifest(*items: tuple[str, int]) -> m.Manifest:
    return m.Manifest(
        handoff_id=new_handoff_id(),
        session_id="s" * 32,
        app_id="org.example",
        title="t",
        context=b"{}",
        items=tuple(
            m.ItemEntry(index=i, type=t, name=f"n{i}", mime="text/plain", size=s, sha256=b"\0" * 32)
            for i, (t, s) in enumerate(items)
        ),
        sender="A" * 32,
        recipient="B" * 32,
        created_ms=0,
    )


def test_decide() -> None:
    man = _manifest(("message", 10), ("document", 1000))
    free = 10**12
    assert decide(man, Settings(), free_bytes=free).indexes == (0, 1)
    assert (
        decide(man, Settings(handoff_enabled=False), free_bytes=free).reason == "handoff-disabled"
    )
    only_docs = decide(man, Settings(accept_types=("document",)), free_bytes=free)
    assert (only_docs.indexes, only_docs.reason) == ((1,), None)
    assert decide(man, Settings(accept_types=("url",)), free_bytes=free).reason == (
        "type-not-accepted"
    )
    assert decide(man, Settings(), free_bytes=free, max_bytes=500).reason == "too-large"
    assert decide(man, Settings(), free_bytes=100, margin=0).reason == "no-disk-space"
    # What is already held on disk does not need space again.
    assert decide(man, Settings(), free_bytes=100, held=1000, margin=0).reason is None
    assert decide(_manifest(), Settings(accept_types=("url",)), free_bytes=free).indexes == ()


def test_backoff_grows_and_is_bounded() -> None:
    for attempt in range(1, 20):
        delay = backoff(attempt, base=1.0, cap=60.0)
        ceiling = min(60.0, 2.0 ** (attempt - 1))
        assert ceiling / 2 <= delay <= ceiling


# ---------------------------------------------------------------- offers


def _device(ca: identity.AccountCA) -> tuple[Ed25519PrivateKey, bytes, str]:
    key = identity.generate_device_key()
    device_id = identity.device_id_for(key.public_key())
    cert = identity.build_device_cert(ca, key.public_key(), device_id=device_id, now=NOW)
    return key, identity.cert_to_der(cert), device_id


def test_offer_sign_and_verify(tmp_path: Path) -> None:
    ca = identity.create_account_ca(identity.new_account_id(), now=NOW)
    trust = identity.TrustAnchor.from_ca(ca.cert)
    a_key, a_der, a_id = _device(ca)
    _, _, b_id = _device(ca)
    doc = tmp_path / "doc.bin"
    doc.write_bytes(os.urandom(3000))
    manifest, sources = build_manifest(
        handoff_id=new_handoff_id(),
        session_id="0" * 32,
        app_id="org.example",
        title="t",
        context={"k": 1},
        items=[
            Item.of_text("message", "m.txt", "hello"),
            Item.of_path("document", "doc.bin", doc),
        ],
        sender=a_id,
        recipient=b_id,
        now=time.time(),
    )
    assert manifest.items[1].sha256 == hashlib.sha256(doc.read_bytes()).digest()
    assert manifest.items[0].size == 5
    offer = sign_offer(a_key, a_der, manifest)
    assert open_offer(offer, trust=trust, me=b_id, peer=a_id, now=time.time()) == manifest
    # Only the addressed device, only from the signer, only untampered.
    for kwargs in ({"me": a_id, "peer": b_id}, {"me": b_id, "peer": b_id}):
        with pytest.raises(ProtocolError):
            open_offer(offer, trust=trust, now=time.time(), **kwargs)
    tampered = m.Offer(
        manifest=offer.manifest.replace(b"m.txt", b"x.txt"),
        signature=offer.signature,
        cert=offer.cert,
    )
    with pytest.raises(ProtocolError) as err:
        open_offer(tampered, trust=trust, me=b_id, peer=a_id, now=time.time())
    assert err.value.code == "offer-invalid"
    other_ca = identity.create_account_ca(identity.new_account_id(), now=NOW)
    with pytest.raises(ProtocolError):
        open_offer(
            offer,
            trust=identity.TrustAnchor.from_ca(other_ca.cert),
            me=b_id,
            peer=a_id,
            now=time.time(),
        )
    # The sender reads what the manifest promised, and notices a file that changed.
    chunks = read_chunks(sources[1], [NeedData(1, 0, 1000), NeedData(1, 1000, 2000)])
    assert b"".join(chunks) == doc.read_bytes()
    doc.write_bytes(b"shorter")
    with pytest.raises(Exception, match="changed"):
        read_chunks(sources[1], [NeedData(1, 0, 10)])
    assert isinstance(codec.decode(codec.encode(offer)), m.Offer)


def test_offer_with_a_context_that_is_not_utf8_is_refused() -> None:
    ca = identity.create_account_ca(identity.new_account_id(), now=NOW)
    trust = identity.TrustAnchor.from_ca(ca.cert)
    a_key, a_der, a_id = _device(ca)
    _, _, b_id = _device(ca)
    manifest = dataclasses.replace(
        _manifest(("message", 1)), sender=a_id, recipient=b_id, context=b'{"k": "\\ud800"}'
    )
    offer = sign_offer(a_key, a_der, manifest)  # a hostile sender signs whatever it likes
    with pytest.raises(ProtocolError) as err:
        open_offer(offer, trust=trust, me=b_id, peer=a_id, now=time.time())
    assert err.value.code == "manifest-bad-context"


@pytest.mark.parametrize(
    ("title", "refused"),
    [("\u202eevil", True), ("a\u2029b", True), ("会議\u3000メモ", False), ("a\u00a0b", False)],
)
def test_offer_titles_follow_the_name_rule(title: str, *, refused: bool) -> None:
    ca = identity.create_account_ca(identity.new_account_id(), now=NOW)
    trust = identity.TrustAnchor.from_ca(ca.cert)
    a_key, a_der, a_id = _device(ca)
    _, _, b_id = _device(ca)
    manifest = dataclasses.replace(
        _manifest(("message", 1)), sender=a_id, recipient=b_id, title=title
    )
    offer = sign_offer(a_key, a_der, manifest)
    if not refused:
        assert open_offer(offer, trust=trust, me=b_id, peer=a_id, now=time.time()) == manifest
        return
    with pytest.raises(ProtocolError) as err:
        open_offer(offer, trust=trust, me=b_id, peer=a_id, now=time.time())
    assert err.value.code == "manifest-bad-title"


# ---------------------------------------------------------------- staging


def test_staging_resume_truncates_past_checkpoint_and_rehashes(tmp_path: Path) -> None:
    staging = Staging(tmp_path / "partial", tmp_path / "inbox")
    hid = new_handoff_id()
    data = os.urandom(300_000)
    w = staging.open_item(hid, 0, 0)
    Staging.write(w, 0, [data[:100_000], data[100_000:200_000]])
    Staging.sync(w)
    Staging.close_item(w)
    # A crash after the checkpoint at 150000 left 200000 bytes; one of them corrupted.
    path = staging.partial_dir(hid) / "0"
    with path.open("r+b") as f:
        f.seek(170_000)
        f.write(b"X")
    w = staging.open_item(hid, 0, 150_000)
    assert w.offset == 150_000
    assert path.stat().st_size == 150_000
    Staging.write(w, 150_000, [data[150_000:]])
    Staging.close_item(w)
    assert w.hasher.digest() == hashlib.sha256(data).digest()
    assert path.read_bytes() == data
    # A checkpoint claiming more than the file holds starts over.
    w2 = staging.open_item(hid, 1, 10)
    assert w2.offset == 0
    Staging.close_item(w2)
    assert stat.S_IMODE(staging.partial_dir(hid).stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_staging_batches_open_write_sync_close_and_closes_what_it_opened_on_failure(
    tmp_path: Path,
) -> None:
    staging = Staging(tmp_path / "partial", tmp_path / "inbox")
    hid = new_handoff_id()
    writers = staging.open_items(hid, {0: 0, 1: 0, 2: 0})
    assert sorted(writers) == [0, 1, 2]
    Staging.write_many([(writers[i], 0, [f"item {i}".encode()]) for i in (0, 1, 2)])
    Staging.sync_many(list(writers.values()))
    Staging.close_many(list(writers.values()))
    Staging.close_many(list(writers.values()))  # idempotent
    assert all(w.fd == -1 for w in writers.values())
    for i in (0, 1, 2):
        assert (staging.partial_dir(hid) / str(i)).read_bytes() == f"item {i}".encode()
    # Item 1's path is a directory: opening fails, and item 0, opened first, is closed again.
    (staging.partial_dir(hid) / "1").unlink()
    (staging.partial_dir(hid) / "1").mkdir()
    before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(IsADirectoryError):
        staging.open_items(hid, {0: 0, 1: 0})
    assert len(os.listdir("/proc/self/fd")) == before


def test_staging_commit_is_one_rename(tmp_path: Path) -> None:
    staging = Staging(tmp_path / "partial", tmp_path / "inbox")
    hid = new_handoff_id()
    for index, payload in enumerate((b"one", b"two")):
        w = staging.open_item(hid, index, 0)
        Staging.write(w, 0, [payload])
        Staging.close_item(w)
    final = staging.commit(hid, [(0, "a.txt"), (1, "1"), (2, "empty")], {"id": hid})
    assert final == tmp_path / "inbox" / hid
    assert sorted(p.name for p in final.iterdir()) == ["1", "a.txt", "empty", "manifest.json"]
    assert (final / "a.txt").read_bytes() == b"one"
    assert (final / "1").read_bytes() == b"two"
    assert (final / "empty").read_bytes() == b""
    assert json.loads((final / "manifest.json").read_text()) == {"id": hid}
    assert not staging.partial_dir(hid).exists()
    assert not any(p.name.startswith(".tmp-") for p in (tmp_path / "inbox").iterdir())
    assert stat.S_IMODE(final.stat().st_mode) == 0o700
    assert staging.committed_manifest(hid) == {"id": hid}
    with pytest.raises(ProtocolError):
        staging.partial_dir("../../etc")


# ---------------------------------------------------------------- expiry


def test_expiry_removes_and_remembers(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "state.db")
    try:
        db = EngineDB(store)  # its tables are migration 2 of the store's schema
        staging = Staging(tmp_path / "partial", tmp_path / "inbox")
        now = time.time()
        old_entry, new_entry, resumed = new_handoff_id(), new_handoff_id(), new_handoff_id()
        for hid, received, state in (
            (old_entry, now - 1000, "received"),
            (new_entry, now - 10, "received"),
            (resumed, now - 1000, "resumed"),
        ):
            staging.commit(hid, [], {"id": hid})
            store.create_handoff(hid, direction="in", peer="P" * 32, state="delivered")
            db.add_inbox(
                InboxEntry(hid, "s", "app", "t", {}, "P" * 32, "p", (), state, received, None)
            )
        stale, fresh, orphan = new_handoff_id(), new_handoff_id(), new_handoff_id()
        for hid in (stale, fresh, orphan):
            Staging.close_item(staging.open_item(hid, 0, 0))
            db.set_checkpoint(hid, 0, 0)
        store.create_handoff(stale, direction="in", peer="P" * 32, state="retrying")
        store.create_handoff(fresh, direction="in", peer="P" * 32, state="retrying")
        old = now - 1000
        os.utime(staging.partial_dir(orphan), (old, old))
        # "stale" was last updated long ago.
        with store.transaction() as conn:
            conn.execute("UPDATE handoffs SET updated_at = ? WHERE id = ?", (old, stale))

        gone = expire(store, db, staging, now=now, inbox_ttl=500, partial_ttl=500)
        assert sorted(gone) == sorted(
            [(old_entry, "inbox"), (stale, "partial"), (orphan, "partial")]
        )
        assert not staging.inbox_dir(old_entry).exists()
        assert staging.inbox_dir(new_entry).exists()
        assert staging.inbox_dir(resumed).exists()
        assert not staging.partial_dir(stale).exists()
        assert not staging.partial_dir(orphan).exists()
        assert staging.partial_dir(fresh).exists()
        assert db.checkpoints(stale) == {}
        assert db.checkpoints(fresh) == {0: 0}
        for hid in (old_entry, stale, orphan):
            assert db.is_expired(hid)
        assert not db.is_expired(new_entry)
        assert [e.id for e in db.inbox(states=("received", "resumed"))] != []
        assert old_entry not in {e.id for e in db.inbox(states=("received", "resumed"))}
        record = store.get_handoff(stale)
        assert record is not None
        assert record.state == "failed"
        assert json.loads(record.error or "{}")["code"] == "expired"
        # A second sweep finds nothing more.
        assert expire(store, db, staging, now=now, inbox_ttl=500, partial_ttl=500) == []
    finally:
        store.close()


def test_refusals_final_and_reasons() -> None:
    from handoffd.errors import TransportError
    from handoffd.handoff.records import error_json as _error_json
    from handoffd.handoff.records import error_text as _error_text
    from handoffd.handoff.retry import path_error as _path_error
    from handoffd.handoff.retry import reason as _reason
    from handoffd.handoff.retry import refusal_is_final as _refusal_is_final
    from handoffd.transport.base import PeerAuthError, PeerRefusedError
    from handoffd.transport.connector import NoPathError

    revoked = PeerRefusedError("peer refused: revoked", peer_code="cert-revoked")
    busy = PeerRefusedError("peer refused: busy", peer_code="busy")
    assert _refusal_is_final(revoked)
    assert _refusal_is_final(PeerRefusedError("x", peer_code="envelope-replayed"))
    assert _refusal_is_final(PeerAuthError("bad answer", code="answer-mismatch"))
    assert not _refusal_is_final(busy)
    assert not _refusal_is_final(TransportError("ice", code="ice-failed"))
    assert _reason(revoked) == "cert-revoked"
    assert _reason(TransportError("x", code="ice-failed")) is None

    # The stored error keeps the peer's reason next to our code; an equal reason is not repeated.
    text = _error_text(revoked.code, revoked.message, _reason(revoked))
    assert _error_json(text) == {
        "code": "peer-refused",
        "message": "peer refused: revoked",
        "reason": "cert-revoked",
    }
    assert "reason" not in (_error_json(_error_text("no-path", "x", "no-path")) or {})

    # No path: the peer's refusal first; all "no-route" means not found; else the last real error.
    no_route = TransportError("no plausible path", code="no-route")
    ice = TransportError("ice", code="ice-failed")
    assert _path_error(NoPathError("x", attempts=[("direct", revoked), ("relay", ice)])) is revoked
    assert (
        _path_error(NoPathError("x", attempts=[("direct", no_route), ("relay", no_route)])).code
        == "peer-not-found"
    )
    assert _path_error(NoPathError("x", attempts=[("direct", ice), ("relay", no_route)])) is ice
