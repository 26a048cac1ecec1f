"""RelayChannel's TLS 1.3 over an in-memory pipe: who is refused, and with which code (pure unit tests)."""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl

import pytest

from handoffd import identity
from handoffd.errors import HandoffError, TransportError
from handoffd.proto.framing import HEADER
from handoffd.transport import relay, tlskey
from handoffd.transport.base import LocalIdentity, PeerAuthError, PeerRefusedError
from handoffd.transport.relay import RelayChannel
from handoffd.wire import relayhello
from tests.transport.helpers import Account, Device, utcnow

pytestmark = pytest.mark.timeout(60)


class End:
    """One end of an in-memory message pipe (a stand-in for the server relay)."""

    def __init__(self) -> None:
        self.inbox: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.other: End | None = None
        self.sent: list[bytes] = []
        self.closed = False

    @property
    def error(self) -> HandoffError | None:
        return None

    async def send(self, data: bytes) -> None:
        if self.closed or self.other is None or self.other.closed:
            raise TransportError("pipe closed", code="relay-lost")
        self.sent.append(data)
        await self.other.inbox.put(data)

    async def recv(self) -> bytes | None:
        if self.closed:
            return None
        return await self.inbox.get()

    async def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.other is not None:
                await self.other.inbox.put(None)


def pipe() -> tuple[End, End]:
    a, b = End(), End()
    a.other, b.other = b, a
    return a, b


async def connect(
    client: LocalIdentity, server: LocalIdentity, *, expect_server: str, expect_client: str
) -> tuple[RelayChannel | BaseException, RelayChannel | BaseException]:
    a, b = pipe()
    deadline = asyncio.get_running_loop().time() + 10
    results = await asyncio.gather(
        RelayChannel.establish(
            a, client, server_side=False, expected_peer=expect_server, deadline=deadline
        ),
        RelayChannel.establish(
            b, server, server_side=True, expected_peer=expect_client, deadline=deadline
        ),
        return_exceptions=True,
    )
    for r in results:
        if isinstance(r, RelayChannel):
            await r.close()
    assert a.closed
    assert b.closed
    return results[0], results[1]


@pytest.fixture
def account() -> Account:
    return Account()


@pytest.mark.asyncio
async def test_mutual_tls13_with_ed25519(account: Account) -> None:
    c, s = account.device(), account.device()
    a, b = pipe()
    deadline = asyncio.get_running_loop().time() + 10
    client, server = await asyncio.gather(
        RelayChannel.establish(
            a, c.local, server_side=False, expected_peer=s.id, deadline=deadline
        ),
        RelayChannel.establish(b, s.local, server_side=True, expected_peer=c.id, deadline=deadline),
    )
    try:
        assert client._ssl.version() == server._ssl.version() == "TLSv1.3"
        assert client.peer.device_id == s.id
        assert server.peer.device_id == c.id
        await client.send(b"secret")
        assert await server.recv() == b"secret"
        assert b"secret" not in b"".join(a.sent)
    finally:
        await client.close()
        await server.close()


def _device_of_other_account() -> Device:
    return Account().device()


@pytest.mark.asyncio
async def test_other_account_refused_by_tls(account: Account) -> None:
    ours, theirs = account.device(), _device_of_other_account()
    # A foreign client that knows our CA (so it does not refuse first): our TLS server refuses it.
    intruder = LocalIdentity(
        key=theirs.key, cert_der=identity.cert_to_der(theirs.cert), trust=account.trust
    )
    client, server = await connect(
        intruder, ours.local, expect_server=ours.id, expect_client=theirs.id
    )
    assert isinstance(server, PeerAuthError)
    assert server.code == "tls-cert-untrusted"
    assert isinstance(client, PeerRefusedError)
    assert client.peer_code.startswith(("tlsv1-alert", "sslv3-alert", "tlsv13-alert"))
    # A server from another account: our TLS client refuses it.
    client, server = await connect(
        ours.local, theirs.local, expect_server=theirs.id, expect_client=ours.id
    )
    assert isinstance(client, PeerAuthError)
    assert client.code == "tls-cert-untrusted"
    assert isinstance(server, PeerRefusedError)
    assert server.peer_code.startswith(("tlsv1-alert", "sslv3-alert", "tlsv13-alert"))


@pytest.mark.asyncio
async def test_wrong_device_refused(account: Account) -> None:
    c, s, other = account.device(), account.device(), account.device()
    client, server = await connect(c.local, s.local, expect_server=other.id, expect_client=c.id)
    assert isinstance(client, PeerAuthError)
    assert client.code == "cert-wrong-device"
    assert isinstance(server, PeerRefusedError)
    assert server.peer_code == "cert-wrong-device"


@pytest.mark.asyncio
async def test_revoked_and_expired_refused_by_our_check(account: Account) -> None:
    c, s = account.device(), account.device()
    revoking = LocalIdentity(
        key=s.key, cert_der=identity.cert_to_der(s.cert), trust=account.trust_revoking(c)
    )
    client, server = await connect(c.local, revoking, expect_server=s.id, expect_client=c.id)
    assert isinstance(server, PeerAuthError)
    assert server.code == "cert-revoked"
    assert isinstance(client, PeerRefusedError)
    assert client.peer_code == "cert-revoked"

    old = account.device(issued=utcnow() - dt.timedelta(days=40))
    client, server = await connect(old.local, s.local, expect_server=s.id, expect_client=old.id)
    assert isinstance(server, PeerAuthError)
    assert server.code == "cert-expired"
    # Within the clock skew our check accepts what OpenSSL's strict time check would refuse.
    fresh = account.device(issued=utcnow() + dt.timedelta(minutes=2))
    client, server = await connect(fresh.local, s.local, expect_server=s.id, expect_client=fresh.id)
    assert isinstance(client, RelayChannel)
    assert isinstance(server, RelayChannel)


@pytest.mark.asyncio
async def test_malformed_hello_and_oversize_frame(account: Account) -> None:
    c, s = account.device(), account.device()
    a, b = pipe()
    deadline = asyncio.get_running_loop().time() + 10
    orig = relayhello.encode_hello
    try:
        relayhello.encode_hello = lambda code: b"{not json"
        results = await asyncio.gather(
            RelayChannel.establish(
                a, c.local, server_side=False, expected_peer=s.id, deadline=deadline
            ),
            RelayChannel.establish(
                b, s.local, server_side=True, expected_peer=c.id, deadline=deadline
            ),
            return_exceptions=True,
        )
    finally:
        relayhello.encode_hello = orig
    assert {getattr(r, "code", None) for r in results} == {"hello-malformed"}

    a, b = pipe()
    client, server = await asyncio.gather(
        RelayChannel.establish(
            a, c.local, server_side=False, expected_peer=s.id, deadline=deadline
        ),
        RelayChannel.establish(b, s.local, server_side=True, expected_peer=c.id, deadline=deadline),
    )
    try:
        client._ssl.write(HEADER.pack(64 * 1024 + 1) + b"x" * 100)  # a length over the bound
        await client._flush()
        with pytest.raises(TransportError) as oversize:
            await server.recv()
        assert oversize.value.code == "frame-oversize"
    finally:
        await client.close()
        await server.close()


def test_key_loading_without_memfd(account: Account) -> None:
    device = account.device()
    for memfd in (True, False):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        tlskey.load_chain(ctx, identity.cert_to_pem(device.cert), device.key, memfd=memfd)
    ctx = relay.tls_context(device.local, server_side=True)
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_3
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    assert not ctx.check_hostname
    assert len(ctx.get_ca_certs()) == 1  # the account CA is the only root
