"""LAN signaling v2 against impostors (issue 16, finding 8): whoever answers on a copied or
guessed address gets no offer, hence none of the caller's ids, and its refusals end nothing."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import msgpack
import pytest
import pytest_asyncio

from handoffd import envelope
from handoffd import identity as idn
from handoffd.errors import TransportError
from handoffd.transport import sigauth, webrtc
from handoffd.transport.base import PeerAuthError, PeerRefusedError
from handoffd.transport.signaling import (
    KIND_HELLO,
    KIND_PROOF,
    SignalingServer,
    client_context,
    encode_frame,
    read_frame,
    send_offer,
    server_tls,
)
from tests.transport.helpers import Account, Device

# More than the default 60 s: real TLS signaling against impostor listeners, waiting out refusals.
pytestmark = pytest.mark.timeout(90)

ROOT = Path(__file__).resolve().parents[2]


def _secrets(account: Account, caller: Device) -> dict[str, bytes]:
    """What an impostor must never learn about the caller."""
    return {
        "caller certificate": caller.local.cert_der,
        "caller id": caller.id.encode(),
        "account id": idn.ca_account_id(account.ca.cert).encode(),
        "caller key": caller.key.public_key().public_bytes_raw(),
    }


def _offer_from(caller: Device, to: str) -> bytes:
    """A real signed offer envelope (it carries the caller's certificate)."""
    return envelope.seal(
        caller.key,
        caller.local.cert_der,
        purpose=webrtc.PURPOSE_OFFER,
        recipient=to,
        payload=b"v=0 sdp",
        now=time.time(),
    )


@pytest.fixture
def impostor(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """The impostor process (tests/transport/impostor.py): its port and what it recorded."""
    record = tmp_path / "impostor.bin"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.transport.impostor", str(record)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().split()
        assert line[:1] == ["ready"], line
        yield int(line[1]), record
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


@pytest.mark.asyncio
async def test_impostor_process_gets_no_identity_and_its_refusal_is_not_final(
    impostor: tuple[int, Path],
) -> None:
    port, record = impostor
    account = Account()
    caller, target = account.device(), account.device()
    offer = _offer_from(caller, target.id)
    for name, value in _secrets(account, caller).items():
        assert value in offer, name  # what the old protocol handed to whoever answered
    with pytest.raises(TransportError) as e:
        await send_offer(
            "127.0.0.1", port, offer, local=caller.local, peer_device_id=target.id, timeout=10
        )
    # Its "cert-revoked" came before any proof: transient, and its text is not kept.
    assert not isinstance(e.value, PeerRefusedError | PeerAuthError)
    assert e.value.code == "signaling-refused"
    assert "cert-revoked" not in str(e.value)
    assert "ATTACKER" not in str(e.value)

    async def recorded() -> bytes:
        for _ in range(600):  # the impostor writes its record once the caller hung up
            data = record.read_bytes() if record.exists() else b""
            if b"--connection--" in data:
                return data
            await asyncio.sleep(0.05)
        raise AssertionError("the impostor recorded nothing")

    wire = await recorded()
    assert len(wire) > len(b"\n--connection--\n")  # it was dialed and read the hello
    for name, value in _secrets(account, caller).items():
        assert value not in wire, name


@pytest_asyncio.fixture
async def account_of_three() -> AsyncIterator[tuple[Account, Device, Device, Device]]:
    account = Account()
    yield account, account.device(), account.device(), account.device()


class Recorder:
    """An on_offer that keeps the offers it was given."""

    def __init__(self) -> None:
        self.offers: list[bytes] = []

    async def __call__(self, offer: bytes) -> bytes:
        self.offers.append(offer)
        return b"answer"


@pytest.mark.asyncio
async def test_another_device_of_the_account_cannot_pose_as_the_target(
    account_of_three: tuple[Account, Device, Device, Device],
) -> None:
    """A device of the account (say, one that copied the target's advertisement) proves only
    itself: the caller sees the wrong device id and never sends the offer."""
    _, caller, target, insider = account_of_three
    handler = Recorder()
    server = SignalingServer("127.0.0.1", 0, handler, local=lambda: insider.local)
    await server.start()
    try:
        with pytest.raises(TransportError) as e:
            await send_offer(
                "127.0.0.1",
                server.port,
                _offer_from(caller, target.id),
                local=caller.local,
                peer_device_id=target.id,
                timeout=10,
            )
        assert e.value.code == "signaling-unauthenticated"
        assert "wrong-device" in e.value.message
        assert handler.offers == []
        # The same listener, dialed as itself, works: the check is the device id.
        got = await send_offer(
            "127.0.0.1",
            server.port,
            _offer_from(caller, insider.id),
            local=caller.local,
            peer_device_id=insider.id,
            timeout=10,
        )
        assert got == b"answer"
        assert len(handler.offers) == 1
    finally:
        await server.close()


@pytest.mark.asyncio
async def test_a_stranger_gets_no_proof_and_a_revoked_target_is_not_believed() -> None:
    account, other = Account(), Account()
    caller, target = account.device(), account.device()
    handler = Recorder()
    # A listener of another account: the caller's hello is not its account's.
    foreign = other.device()
    server = SignalingServer("127.0.0.1", 0, handler, local=lambda: foreign.local)
    await server.start()
    try:
        with pytest.raises(TransportError) as e:
            await send_offer(
                "127.0.0.1",
                server.port,
                _offer_from(caller, target.id),
                local=caller.local,
                peer_device_id=target.id,
                timeout=10,
            )
        assert e.value.code == "signaling-refused"
        # A stranger's raw hello (random MAC) gets an error, never the listener's certificate.
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", server.port, ssl=client_context(), server_hostname=""
        )
        hello = msgpack.packb({"v": 2, "nonce": bytes(32), "mac": bytes(32)}, use_bin_type=True)
        writer.write(encode_frame(KIND_HELLO, hello))
        kind, body = await asyncio.wait_for(read_frame(reader), 10)
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
        assert kind != KIND_PROOF
        assert foreign.local.cert_der not in body
        assert handler.offers == []
    finally:
        await server.close()
    # The target itself, but revoked in the caller's CRL: its proof fails, nothing is sent.
    revoked_view = account.device(trust=account.trust_revoking(target))
    server = SignalingServer("127.0.0.1", 0, handler, local=lambda: target.local)
    await server.start()
    try:
        with pytest.raises(TransportError) as e:
            await send_offer(
                "127.0.0.1",
                server.port,
                _offer_from(revoked_view, target.id),
                local=revoked_view.local,
                peer_device_id=target.id,
                timeout=10,
            )
        assert e.value.code == "signaling-unauthenticated"
        assert "cert-revoked" in e.value.message
        assert handler.offers == []
    finally:
        await server.close()


class Interceptor:
    """A man in the middle that terminates the caller's TLS with its own certificate and
    opens its own TLS to the real listener; ``remac`` (it holds the account CA key, like a
    revoked device) re-makes the hello for its own session. Keeps what the caller sends."""

    def __init__(self, target: int, trust: idn.TrustAnchor | None) -> None:
        self.target, self.trust = target, trust
        self.from_caller = bytearray()
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> int:
        ctx, _ = await asyncio.to_thread(server_tls)
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=ctx)
        return int(self.server.sockets[0].getsockname()[1])

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def _serve(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        lr, lw = await asyncio.open_connection(
            "127.0.0.1", self.target, ssl=client_context(), server_hostname=""
        )
        try:
            kind, body = await read_frame(cr)
            self.from_caller += body
            if self.trust is not None:
                der = lw.get_extra_info("ssl_object").getpeercert(binary_form=True)
                body, _ = sigauth.make_hello(self.trust, der)
            lw.write(encode_frame(kind, body))
            kind, body = await read_frame(lr)
            cw.write(encode_frame(kind, body))  # the listener's proof or its refusal
            await cw.drain()
            with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
                async with asyncio.timeout(5):
                    while data := await cr.read(65536):
                        self.from_caller += data
        finally:
            lw.close()
            cw.close()


@pytest.mark.asyncio
@pytest.mark.parametrize("remac", [False, True])
async def test_a_relaying_man_in_the_middle_gets_nothing(remac: bool) -> None:
    account = Account()
    caller, target = account.device(), account.device()
    handler = Recorder()
    server = SignalingServer("127.0.0.1", 0, handler, local=lambda: target.local)
    await server.start()
    try:
        mitm = Interceptor(server.port, account.trust if remac else None)
        async with mitm as port:
            with pytest.raises(TransportError) as e:
                await send_offer(
                    "127.0.0.1",
                    port,
                    _offer_from(caller, target.id),
                    local=caller.local,
                    peer_device_id=target.id,
                    timeout=10,
                )
        # Forwarded as is, the hello names the interceptor's TLS certificate: the listener
        # refuses it. Re-made, the listener's proof names the listener's: the caller refuses.
        assert e.value.code == ("signaling-unauthenticated" if remac else "signaling-refused")
        assert handler.offers == []
        for name, value in _secrets(account, caller).items():
            assert value not in mitm.from_caller, name
    finally:
        await server.close()
