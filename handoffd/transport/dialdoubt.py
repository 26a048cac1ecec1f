"""A dialer's early "this path is not working" hint to the connector racing it.

The connector gives the next dialer a head start only while the one before it may still
win. A dialer that learns early that its path is unlikely (the WebRTC dialer: the peer's
answer arrived, yet no ICE pair succeeded shortly after) calls ``doubt()``; the connector
that started it then starts the next dialer at once, while the doubted one keeps trying (the
first authenticated channel still wins). Carried in a context variable, so dialers keep
their signature; outside a connector's race ``doubt()`` does nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_HOOK: ContextVar[Callable[[], None] | None] = ContextVar("handoffd_dial_doubt", default=None)


def doubt() -> None:
    """Tell the racing connector (if any) that this dial is unlikely to succeed soon."""
    hook = _HOOK.get()
    if hook is not None:
        hook()


@contextmanager
def doubting_calls(hook: Callable[[], None]) -> Iterator[None]:
    """Tasks created inside the block call ``hook`` when they ``doubt()``."""
    token = _HOOK.set(hook)
    try:
        yield
    finally:
        _HOOK.reset(token)
