"""Rate limits: token buckets per key, and the client address a limit is keyed by.

``RateLimiter.take`` checks and takes a token in one step, before the work it
guards (a limiter that only counts failures gives the token back with
``refund`` when the work succeeded). The bucket table is bounded without
letting junk keys push out a bucket that is below full: only full buckets
(which are the same as absent ones) are forgotten, and while none is, new
keys are refused. With a bus, the app's ``LIMITERS`` factory makes the same
buckets in Redis instead (``ratelimitredis``), shared by every instance.

The client address is the TCP peer, unless the peer is a configured trusted
reverse proxy: then the right-most address in ``X-Forwarded-For`` that is not
itself a trusted proxy (or ``X-Real-IP``). Limits key an IPv6 client by its
/64 (one host usually has a whole /64) and an IPv4 client by its address.
"""

from __future__ import annotations

import ipaddress
import math
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from aiohttp import web

from handoffd.errors import ConfigError

_EVICT_SCAN = 32
_MAX_FORWARDED = 4096
IPV6_PREFIX = 64
INVITES_PER_MINUTE = 6.0


class RateLimiter:
    """Token buckets per key: ``burst`` at once, ``per_minute`` sustained; at most ``max_keys`` kept."""

    def __init__(self, *, per_minute: float, burst: int, max_keys: int = 10_000) -> None:
        if per_minute <= 0 or burst < 1 or max_keys < 1:
            raise ValueError("per_minute, burst and max_keys must be positive")
        self._rate = per_minute / 60.0
        self._burst = float(burst)
        self._max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def _tokens(self, key: str, now: float) -> float:
        tokens, stamp = self._buckets.get(key, (self._burst, now))
        return min(self._burst, tokens + max(0.0, now - stamp) * self._rate)

    def peek(self, key: str, now: float) -> bool:
        """True if ``key`` has a token left (nothing is taken)."""
        return self._tokens(key, now) >= 1.0

    def retry_after(self, key: str, now: float) -> int:
        """Whole seconds until ``key`` has a token again (0 if it has one)."""
        missing = 1.0 - self._tokens(key, now)
        return 0 if missing <= 0 else math.ceil(missing / self._rate)

    def take(self, key: str, now: float) -> bool:
        """Take one token for ``key``; False (nothing taken) when its bucket is empty or no room."""
        tokens = self._tokens(key, now)
        if key not in self._buckets and not self._make_room(now):
            return False
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            self._buckets.move_to_end(key)
            return False
        self._buckets[key] = (tokens - 1.0, now)
        self._buckets.move_to_end(key)
        return True

    allow = take

    async def acquire(self, key: str, now: float) -> int:
        """0 if a token was taken for ``key``, else seconds to wait (nothing taken)."""
        return 0 if self.take(key, now) else max(1, self.retry_after(key, now))

    async def give_back(self, key: str, now: float) -> None:
        """``refund``, with the shared limiters' signature."""
        self.refund(key, now)

    def refund(self, key: str, now: float) -> None:
        """Give back a token taken for work that turned out not to count (e.g. a success)."""
        if key in self._buckets:
            self._buckets[key] = (min(self._burst, self._tokens(key, now) + 1.0), now)

    def _make_room(self, now: float) -> bool:
        """Forget full buckets among the oldest until a new key fits; False if none is full."""
        if len(self._buckets) < self._max_keys:
            return True
        full = [
            key
            for key, _ in zip(self._buckets, range(_EVICT_SCAN), strict=False)
            if self._tokens(key, now) >= self._burst
        ]
        for key in full:
            del self._buckets[key]
        return len(self._buckets) < self._max_keys


class Limiter(Protocol):
    """A token-bucket limit: in this process (``RateLimiter``) or shared (``ratelimitredis``)."""

    async def acquire(self, key: str, now: float) -> int: ...

    async def give_back(self, key: str, now: float) -> None: ...


LimiterFactory = Callable[[str, float, int], Limiter]
"""(name, per_minute, burst) → a limiter; the name keys a shared one's buckets."""


def local_limiter(name: str, per_minute: float, burst: int) -> Limiter:
    """The in-process limiter (no bus)."""
    return RateLimiter(per_minute=per_minute, burst=burst)


LIMITERS: web.AppKey[LimiterFactory] = web.AppKey("handoff_limiters", LimiterFactory)  # type: ignore[arg-type]


def limiter_factory(app: web.Application) -> LimiterFactory:
    """The app's limiter factory (in-process unless a bus set a shared one)."""
    return app.get(LIMITERS, local_limiter)


class InviteLimits:
    """Invite creation: per creator (a device, a web session) and per account, ``take`` both."""

    def __init__(
        self,
        *,
        per_minute: float = INVITES_PER_MINUTE,
        per_creator: Limiter | None = None,
        per_account: Limiter | None = None,
    ) -> None:
        if per_creator is None:
            per_creator = RateLimiter(per_minute=per_minute, burst=5)
        if per_account is None:
            per_account = RateLimiter(per_minute=per_minute, burst=10)
        self.per_creator, self.per_account = per_creator, per_account

    async def take(self, account_id: str, creator: str, now: float) -> int:
        """0 if an invite may be made now (both tokens taken), else seconds to wait (none taken)."""
        retry = await self.per_creator.acquire(creator, now)
        if retry:
            return retry
        retry = await self.per_account.acquire(account_id, now)
        if retry:
            await self.per_creator.give_back(creator, now)
        return retry

    @classmethod
    def made_by(
        cls, factory: LimiterFactory, per_minute: float = INVITES_PER_MINUTE
    ) -> InviteLimits:
        """Both limits from ``factory`` (in-process or shared)."""
        return cls(
            per_creator=factory("invite-creator", per_minute, 5),
            per_account=factory("invite-account", per_minute, 10),
        )


INVITE_LIMITS: web.AppKey[InviteLimits] = web.AppKey("handoff_invite_limits", InviteLimits)


def limit_key(address: str) -> str:
    """The key a client address is limited by: IPv4 as is, IPv6 as its /64 (text otherwise)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, IPV6_PREFIX), strict=False))
    return str(ip)


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # "[v6]:port"
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:  # "v4:port"
        text = text.split(":", 1)[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


@dataclass(frozen=True)
class TrustedProxies:
    """The reverse proxies whose forwarding headers are believed (none by default)."""

    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()

    @classmethod
    def parse(cls, texts: Iterable[str]) -> TrustedProxies:
        """From addresses or networks (``127.0.0.1``, ``10.0.0.0/8``); ConfigError if malformed."""
        networks = []
        for text in texts:
            try:
                networks.append(ipaddress.ip_network(text.strip(), strict=False))
            except ValueError:
                raise ConfigError(
                    f"--trusted-proxy must be an address or network, not {text!r:.80}",
                    code="bad-trusted-proxy",
                ) from None
        return cls(tuple(networks))

    def trusts(self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None) -> bool:
        """True if ``ip`` is one of the trusted proxies."""
        if ip is None:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip.version == net.version and ip in net for net in self.networks)

    def client(self, remote: str | None, headers: Mapping[str, str]) -> str:
        """The client's address: the peer, or what a trusted proxy peer says it forwarded for."""
        peer = remote or "unknown"
        if not self.networks or not self.trusts(_ip(peer)):
            return peer
        forwarded = headers.get("X-Forwarded-For", "")
        if forwarded and len(forwarded) <= _MAX_FORWARDED:
            hops = [h for h in forwarded.split(",") if h.strip()]
            for hop in reversed(hops):
                ip = _ip(hop)
                if ip is None:
                    return peer
                if not self.trusts(ip):
                    return str(ip)
            first = _ip(hops[0]) if hops else None
            return peer if first is None else str(first)
        real = _ip(headers.get("X-Real-IP", "")[:64])
        return peer if real is None else str(real)


TRUSTED_PROXIES: web.AppKey[TrustedProxies] = web.AppKey("handoff_trusted_proxies", TrustedProxies)


def client_address(request: web.Request) -> str:
    """The request's client address (see ``TrustedProxies.client``)."""
    trusted = request.app.get(TRUSTED_PROXIES) or TrustedProxies()
    return trusted.client(request.remote, request.headers)


def client_key(request: web.Request) -> str:
    """The key per-address limits use for this request's client (IPv6 by /64)."""
    return limit_key(client_address(request))
