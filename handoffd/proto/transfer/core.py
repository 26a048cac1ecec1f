"""What both transfer machines share: queues, hello, ping/idle timers, errors, cancel, and
the dispatch of a peer message through the machine's transition table."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from handoffd.errors import Blame, ProtocolError
from handoffd.proto import codec
from handoffd.proto import messages as m
from handoffd.proto.transfer.events import TERMINAL, Cancelled, Event, Failed, PeerHello, State

DEFAULT_WINDOW = m.DEFAULT_WINDOW
"""Default flow-control window: item bytes sent but not yet acknowledged as durable."""
PING_INTERVAL = 5.0
"""Seconds without sending anything before a ping goes out."""
IDLE_TIMEOUT = 30.0
"""Seconds without hearing from the peer before the exchange fails (``peer-timeout``)."""


def peer_error(code: str, message: str) -> ProtocolError:
    """The error for something the peer sent against the rules (blame: peer)."""
    return ProtocolError(message, code=code, blame=Blame.PEER)


def misuse(message: str) -> ProtocolError:
    """The error for a call that breaks the adapter contract (blame: local)."""
    return ProtocolError(message, code="misuse", blame=Blame.LOCAL)


Handler = Callable[[Any, Any], None]


class Core:
    """What both machines share: queues, hello, ping/idle timers, errors, cancel."""

    TABLE: ClassVar[Mapping[tuple[State, str], Handler]] = {}

    def __init__(self, hello: m.Hello, *, now: float, window: int) -> None:
        if not m.MIN_WINDOW <= window <= m.MAX_WINDOW:
            raise ValueError(f"bad window {window}")
        self.state = State.IDLE
        self.handoff_id = ""
        self.peer_hello: m.Hello | None = None
        self._window = window
        self._hello = dataclasses.replace(hello, window=window)
        self._out: list[m.Message] = []
        self._events: list[Event] = []
        self._last_rx = now
        self._last_tx = now
        self._pings = 0

    # -------------------------------------------------------- adapter API

    def outgoing(self) -> list[m.Message]:
        """Messages to send now, in order (drains the queue)."""
        out, self._out = self._out, []
        return out

    def events(self) -> list[Event]:
        """What happened and what the adapter must do, in order (drains the queue)."""
        ev, self._events = self._events, []
        return ev

    @property
    def finished(self) -> bool:
        """True once the exchange reached a terminal state (delivered is not one: resumed may follow)."""
        return self.state in TERMINAL

    def receive(self, msg: m.Message, now: float) -> None:
        """Feed one decoded message from the peer; never raises for what the peer sent."""
        tag = codec.tag_of(msg)
        self._last_rx = now
        if isinstance(msg, m.Ping):
            self._send(m.Pong(nonce=msg.nonce), now)
            return
        if isinstance(msg, m.Pong) or self.finished:
            return
        try:
            if isinstance(msg, m.Error):
                self._fail(msg.code, f"peer reported: {msg.message}", Blame.PEER, notify=False)
            elif isinstance(msg, m.Cancel):
                self._on_cancel(msg)
            else:
                handler = self.TABLE.get((self.state, tag))
                if handler is None:
                    raise peer_error(
                        "unexpected-message", f"{tag} is not valid in state {self.state}"
                    )
                if self.peer_hello is None and tag != "hello":
                    raise peer_error("hello-first", f"{tag} before hello")
                handler(self, msg)
        except ProtocolError as exc:
            self.protocol_error(exc, now)

    def receive_bytes(self, data: bytes, now: float) -> None:
        """Decode and feed one message; an undecodable one fails the exchange."""
        try:
            msg = m.decode(data, max_size=m.WIRE_MAX)
        except ProtocolError as exc:
            self._last_rx = now
            if not self.finished:
                self.protocol_error(exc, now)
            return
        self.receive(msg, now)

    def protocol_error(self, exc: ProtocolError, now: float | None = None) -> None:
        """Fail with ``exc`` and tell the peer why (an ``error`` message)."""
        self._fail(exc.code, exc.message, exc.blame, notify=True, now=now)

    def cancel(self, reason: str, now: float) -> None:
        """Give the handoff up and tell the peer (no-op once delivered or finished)."""
        if self.finished or self.state == State.DELIVERED:
            return
        self._send(m.Cancel(handoff_id=self.handoff_id, reason=reason[:64]), now)
        self.state = State.CANCELLED
        self._events.append(Cancelled(reason=reason, by_peer=False))

    def next_timer(self) -> float | None:
        """When ``timer`` should next be called (None once finished)."""
        if self.finished:
            return None
        return min(self._last_tx + PING_INTERVAL, self._last_rx + IDLE_TIMEOUT)

    def timer(self, now: float) -> None:
        """Send a keepalive when we were quiet; fail (peer-timeout) when the peer was."""
        if self.finished:
            return
        if now - self._last_rx >= IDLE_TIMEOUT:
            self._fail("peer-timeout", "the peer went silent", Blame.PEER, notify=False)
            return
        if now - self._last_tx >= PING_INTERVAL:
            self._pings += 1
            self._send(m.Ping(nonce=self._pings), now)

    # -------------------------------------------------------- internals

    def _send(self, msg: m.Message, now: float | None = None) -> None:
        self._out.append(msg)
        if now is not None:
            self._last_tx = now

    def _fail(
        self, code: str, message: str, blame: Blame, *, notify: bool, now: float | None = None
    ) -> None:
        if self.finished:
            return
        if notify:
            self._send(m.Error(code=code[:64], message=message[:1024]), now)
        self.state = State.FAILED
        self._events.append(Failed(code=code, message=message, blame=blame))

    def _check_id(self, handoff_id: str) -> None:
        if handoff_id != self.handoff_id:
            raise peer_error("wrong-handoff", "message is for another handoff")

    def _on_cancel(self, msg: m.Cancel) -> None:
        if self.state == State.DELIVERED:
            return  # too late: the receiver has committed it
        if self.handoff_id:
            self._check_id(msg.handoff_id)
        self.state = State.CANCELLED
        self._events.append(Cancelled(reason=msg.reason, by_peer=True))

    def _on_hello(self, msg: m.Hello) -> None:
        if self.peer_hello is not None:
            raise peer_error("duplicate-hello", "hello sent twice")
        if msg.version != m.PROTOCOL_VERSION:
            raise peer_error("version-mismatch", f"peer speaks version {msg.version}")
        self.peer_hello = msg
        # Both sides keep to the smaller window (the receiver's Accept confirms it).
        self._window = min(self._window, msg.window)
        self._events.append(PeerHello(hello=msg))
