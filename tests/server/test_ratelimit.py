"""Unit tests of the pure parts: token buckets, limit keys, trusted proxies, the password checker."""

from __future__ import annotations

import asyncio

import pytest

from handoffd.errors import ConfigError, ServerError
from handoffd.server import passwords
from handoffd.server.ratelimit import InviteLimits, RateLimiter, TrustedProxies, limit_key


def test_take_is_check_and_act_and_refund_gives_back() -> None:
    limiter = RateLimiter(per_minute=60, burst=2)
    assert limiter.take("a", 0.0)
    assert limiter.take("a", 0.0)
    assert not limiter.take("a", 0.0)
    assert limiter.retry_after("a", 0.0) == 1
    limiter.refund("a", 0.0)
    assert limiter.take("a", 0.0)
    assert limiter.take("a", 1.0)  # refilled at 1 per second


def test_buckets_below_full_are_never_evicted() -> None:
    limiter = RateLimiter(per_minute=1, burst=2, max_keys=3)
    assert limiter.take("victim", 0.0)
    assert limiter.take("victim", 0.0)
    assert limiter.take("j1", 0.0)
    assert limiter.take("j2", 0.0)
    # The table is full of buckets below full: a new key is refused, the victim kept.
    assert not limiter.take("j3", 1.0)
    assert not limiter.take("victim", 1.0)
    # Once the junk buckets have refilled (full = same as absent) they make room.
    assert limiter.take("j4", 120.0)
    assert len(limiter) <= 3
    assert limiter.peek("victim", 120.0)


def test_limit_key_groups_ipv6_by_64() -> None:
    assert limit_key("2001:db8:1:2:aaaa::1") == limit_key("2001:db8:1:2:ffff::9")
    assert limit_key("2001:db8:1:2::1") != limit_key("2001:db8:1:3::1")
    assert limit_key("2001:db8:1:2::1") == "2001:db8:1:2::/64"
    assert limit_key("::ffff:192.0.2.1") == "192.0.2.1"
    assert limit_key("192.0.2.1") == "192.0.2.1"
    assert limit_key("unknown") == "unknown"


def test_trusted_proxy_headers() -> None:
    none = TrustedProxies()
    assert none.client("10.0.0.1", {"X-Forwarded-For": "192.0.2.1"}) == "10.0.0.1"
    proxies = TrustedProxies.parse(["10.0.0.0/8", "::1"])
    fwd = {"X-Forwarded-For": "198.51.100.1, 192.0.2.1, 10.0.0.2"}
    assert proxies.client("10.0.0.1", fwd) == "192.0.2.1"  # right-most untrusted
    assert proxies.client("192.0.2.9", fwd) == "192.0.2.9"  # the peer is no proxy
    assert proxies.client("::1", {"X-Real-IP": "2001:db8::5"}) == "2001:db8::5"
    assert proxies.client("10.0.0.1", {"X-Forwarded-For": "junk"}) == "10.0.0.1"
    assert proxies.client("10.0.0.1", {}) == "10.0.0.1"
    assert proxies.client("10.0.0.1", {"X-Forwarded-For": "[2001:db8::7]:443"}) == "2001:db8::7"
    with pytest.raises(ConfigError):
        TrustedProxies.parse(["proxy.example"])


@pytest.mark.asyncio
async def test_invite_limits_per_creator_and_account() -> None:
    limits = InviteLimits(
        per_creator=RateLimiter(per_minute=1, burst=2),
        per_account=RateLimiter(per_minute=1, burst=3),
    )
    assert [await limits.take("acct", "dev1", 0.0) for _ in range(3)][:2] == [0, 0]
    assert await limits.take("acct", "dev2", 0.0) == 0  # the account's third
    assert await limits.take("acct", "dev3", 0.0) > 0  # the account is out
    assert await limits.take("other", "dev3", 0.0) == 0  # dev3 was not charged by the refusal


@pytest.mark.asyncio
async def test_password_checker_is_bounded_and_safe_concurrently() -> None:
    encoded = passwords.hash_password("right")
    checker = passwords.PasswordChecker(workers=2, max_pending=4)
    try:
        tries = [checker.check("right" if i % 2 else "wrong", encoded) for i in range(6)]
        results = await asyncio.gather(*tries, return_exceptions=True)
        busy = [r for r in results if isinstance(r, ServerError)]
        assert [b.code for b in busy] == ["login-busy", "login-busy"]
        assert [r for r in results if isinstance(r, bool)] == [False, True, False, True]
        assert await checker.check("right", None) is False  # unknown account: dummy work
        assert checker.pending == 0
    finally:
        checker.close()
        checker.close()
    with pytest.raises(ServerError):
        await checker.check("right", encoded)
