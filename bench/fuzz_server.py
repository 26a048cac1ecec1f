"""Fuzz the server: its JSON API, its web forms, the device WebSocket and the relay's hello.

Run: .venv/bin/python -m bench.fuzz_server [--cases 100000] [--seed 1]

The real aiohttp application (``make_app`` with the web pages) on a real
SQLite store, served in process on loopback by aiohttp's test server; two
accounts, A (three devices) and B (one). Structure-aware: valid requests,
frames and forms are mutated (JSON fields, strings, types, bodies, headers,
signatures re-made over the mutated request so the handlers after
authentication are reached); raw bytes too.

Properties: no 5xx; every ``/v1`` error is ``{"error": {"code", "message"}}``
with a kebab-case code; nothing logged at ERROR (an unhandled exception);
nothing of account B can be renamed, revoked or signalled from account A;
every WebSocket message from the server is a JSON object with a string
``type``; after a hostile frame an authenticated socket either answers the next
``ping`` or was closed with a fatal error; the server still serves normal
requests at the end.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import WSMsgType
from aiohttp.test_utils import TestServer

from bench.fuzz_common import (
    INTERESTING_STRINGS,
    Report,
    dumps,
    main,
    mutate,
    mutate_json,
    random_bytes,
    random_json,
)
from bench.fuzz_serverkit import Dev, ErrorLog, enroll
from handoffd import identity
from handoffd.server.app import ServerConfig, make_app
from handoffd.server.relay import RelayConfig
from handoffd.server.store import Store
from handoffd.server.web import COOKIE, LOGIN_COOKIE
from handoffd.wire import auth

CODE = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
PASSWORD = "fuzz-password-1"  # noqa: S105 - a throwaway account in a temporary store
TIMEOUT = aiohttp.ClientTimeout(total=30)


class Target:
    """The server app and the fuzzing client."""

    def __init__(self, data: Path, rng: random.Random, report: Report) -> None:
        self.rng, self.report = rng, report
        self.store = Store.open(data)
        account_a = self.store.create_account("fuzz-a", PASSWORD)
        account_b = self.store.create_account("fuzz-b")
        self.account_a = account_a.account_id
        self.a1, self.a2 = (
            enroll(self.store, self.account_a, "a1"),
            enroll(self.store, self.account_a, "a2"),
        )
        self.victim = enroll(self.store, self.account_a, "victim")
        self.b1 = enroll(self.store, account_b.account_id, "b1")
        self.token = self.store.create_invite(self.account_a, created_by="cli").secrets.token
        self.csr = identity.csr_to_pem(identity.make_csr(identity.generate_device_key())).decode()
        config = ServerConfig(
            data_dir=data,
            join_failures_per_minute=1e9,
            join_failure_burst=10**9,
            relay=RelayConfig(join_failures_per_minute=1e9, opens_per_minute=1e9, open_burst=10**9),
        )
        self.server = TestServer(make_app(self.store, config), host="127.0.0.1")
        self.http: aiohttp.ClientSession | None = None
        self.ws_a: aiohttp.ClientWebSocketResponse | None = None
        self.ws_b: aiohttp.ClientWebSocketResponse | None = None
        self.csrf = ""
        self.ping = 0

    async def start(self) -> None:
        await self.server.start_server()
        self.http = aiohttp.ClientSession(
            timeout=TIMEOUT, cookie_jar=aiohttp.CookieJar(unsafe=True)
        )
        await self.login()

    async def close(self) -> None:
        for ws in (self.ws_a, self.ws_b):
            if ws is not None:
                await ws.close()
        if self.http is not None:
            await self.http.close()
        await self.server.close()
        self.store.close()

    def url(self, path: str) -> str:
        return str(self.server.make_url("/")).rstrip("/") + path

    # ---------------------------------------------------------- checks

    def check_http(self, what: str, status: int, body: bytes, path: str, sent: bytes = b"") -> None:
        self.report.count(f"{what}:{status}")
        if status >= 500:
            self.report.finding(f"{what}-{status}", f"{path}: {body[:200]!r} for {sent[:200]!r}")
        if path.startswith("/v1") and status >= 400:
            try:
                err = json.loads(body)["error"]
                ok = CODE.fullmatch(err["code"]) and isinstance(err["message"], str)
            except (ValueError, KeyError, TypeError):
                ok = False
            if not ok:
                self.report.finding(f"{what}-error-shape", f"{path} {status}: {body[:200]!r}")

    def check_ws_message(self, what: str, msg: aiohttp.WSMessage) -> dict[str, Any] | None:
        if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.CLOSING):
            self.report.count(f"{what}:close:{msg.data}")
            return None
        if msg.type != WSMsgType.TEXT:
            self.report.finding(f"{what}-non-text-message", repr(msg)[:200])
            return None
        try:
            data = json.loads(msg.data)
        except ValueError:
            data = None
        if not isinstance(data, dict) or not isinstance(data.get("type"), str):
            self.report.finding(f"{what}-message-not-an-object", str(msg.data)[:200])
            return None
        if data["type"] == "error":
            code = data.get("error", {}).get("code", "")
            self.report.count(f"{what}:error:{code}")
            if not isinstance(code, str) or not CODE.fullmatch(code) or code == "internal":
                self.report.finding(f"{what}-error-{code}", str(msg.data)[:200])
        return data

    # ---------------------------------------------------------- JSON API

    def _api_request(self) -> tuple[str, str, bytes, dict[str, str], bool]:
        rng = self.rng
        a, b = self.a1.id, self.b1.id
        choices: list[tuple[str, str, object]] = [
            ("GET", "/v1/info", None),
            (
                "POST",
                "/v1/join",
                {"token": self.token, "csr": self.csr, "name": "n", "platform": "p"},
            ),
            (
                "POST",
                "/v1/join",
                {"code": "K7QF-ABCD", "csr": self.csr, "name": "n", "platform": "p"},
            ),
            ("POST", "/v1/invites", {}),
            ("POST", "/v1/invites", {"account_id": self.account_a}),
            ("GET", "/v1/devices", None),
            ("PATCH", f"/v1/devices/{rng.choice((a, b, self.victim.id))}", {"name": "renamed"}),
            ("DELETE", f"/v1/devices/{rng.choice((b, self.victim.id))}", None),
            ("GET", f"/v1/crl?account={self.account_a}", None),
            ("GET", f"/v1/crl?account={self.account_a}&format=der", None),
            ("POST", "/v1/renew", {"csr": self.csr}),
            ("GET", "/v1/ice", None),
            ("GET", "/v1/relays", None),
            ("GET", "/", None),
            ("GET", "/devices", None),
            ("GET", "/add-device", None),
        ]
        method, path, value = rng.choice(choices)
        pick = rng.random()
        if pick < 0.15:
            path = rng.choice(
                ("/v1/", "/v1/devices/", "/v1/x", "/v1/crl?account=")
            ) + urllib.parse.quote(rng.choice(INTERESTING_STRINGS), safe="", errors="surrogatepass")
        elif pick < 0.2:
            method = rng.choice(("PUT", "POST", "GET", "DELETE", "OPTIONS"))
        if method == "DELETE":  # the fuzzing devices stay; revoking "victim" is fine
            path = path.replace(self.a1.id, self.victim.id).replace(self.a2.id, self.victim.id)
        if value is None and rng.random() < 0.2:
            value = random_json(rng)
        body = b""
        if value is not None:
            r = rng.random()
            body = (
                dumps(mutate_json(value, rng))
                if r < 0.6
                else mutate(dumps(value), rng)
                if r < 0.85
                else random_bytes(rng, 200)
                if r < 0.95
                else dumps(value)
            )
        headers: dict[str, str] = {"Content-Type": "application/json"}
        signed = rng.random() < 0.7
        if signed:
            key = rng.choice((self.a1.key, self.a2.key))
            headers.update(auth.sign_request(key, method, path, body, now=time.time()))
            if rng.random() < 0.15:
                h = rng.choice(list(headers))
                headers[h] = rng.choice(("", "x", headers[h][:-1], headers[h] + "A", "0" * 200))
        return method, path, body, headers, signed

    async def api_case(self) -> None:
        assert self.http is not None
        method, path, body, headers, _ = self._api_request()
        async with self.http.request(
            method, self.url(path), data=body, headers=headers, allow_redirects=False
        ) as r:
            data = await r.read()
            self.check_http("api", r.status, data, path, body)
            if self.b1.id in path and method in ("PATCH", "DELETE"):
                self.check_b1(f"{method} {path} {r.status} {body[:100]!r}")

    # ---------------------------------------------------------- web forms

    async def login(self) -> None:
        """A real login (one password hash), then the session's CSRF token from /devices."""
        assert self.http is not None
        async with self.http.get(self.url("/login")) as r:
            page = await r.text()
        token = re.search(r'name="csrf" value="([^"]+)"', page)
        if token is None:
            raise RuntimeError("no login form")
        form = {"csrf": token.group(1), "account": "fuzz-a", "password": PASSWORD}
        async with self.http.post(self.url("/login"), data=form, allow_redirects=False) as r:
            if r.status != 303:
                raise RuntimeError(f"login failed: {r.status}")
        async with self.http.get(self.url("/devices")) as r:
            found = re.search(r'name="csrf" value="([^"]+)"', await r.text())
        if found is None:
            raise RuntimeError("no CSRF token on /devices")
        self.csrf = found.group(1)

    async def web_case(self) -> None:
        assert self.http is not None
        rng = self.rng
        target = rng.choice((self.b1.id, self.victim.id, self.a2.id, "x", "../devices"))
        action, form = rng.choice(
            (
                (f"/devices/{target}/rename", {"name": "web-renamed", "csrf": self.csrf}),
                (
                    f"/devices/{rng.choice((self.b1.id, self.victim.id))}/revoke",
                    {"confirm": "yes", "csrf": self.csrf},
                ),
                ("/logout", {"csrf": self.csrf + "x"}),
                ("/login", {"csrf": "0" * 64, "account": "fuzz-a", "password": "wrong"}),
            )
        )
        fields: Any = form
        if rng.random() < 0.8:
            fields = mutate_json(form, rng)
        cookies = None
        if rng.random() < 0.1:
            cookies = {COOKIE: rng.choice(INTERESTING_STRINGS), LOGIN_COOKIE: "x"}
        if isinstance(fields, dict) and all(isinstance(k, str) for k in fields):
            data: Any = {k: v if isinstance(v, str) else json.dumps(v) for k, v in fields.items()}
            data = urllib.parse.urlencode(data, errors="surrogatepass").encode()
        else:
            data = mutate(urllib.parse.urlencode(form).encode(), rng)
        if rng.random() < 0.15:  # raw bytes too, not always UTF-8
            data = mutate(data, rng)
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        async with self.http.post(
            self.url(action), data=data, headers=headers, cookies=cookies, allow_redirects=False
        ) as r:
            body = await r.read()
            self.check_http("web", r.status, body, action)
            if r.status == 303 and self.b1.id in action:
                self.check_b1(f"{action} {r.status} {data[:100]!r}")

    def check_b1(self, what: str) -> None:
        """Account B's device is as enrolled: not renamed, not revoked, by anything of account A."""
        b1 = self.store.get_device(self.b1.id)
        if b1 is None or b1.name != "b1" or b1.revoked:
            self.report.finding("cross-account-change", what)

    # ---------------------------------------------------------- device WebSocket

    async def _auth_ws(
        self, dev: Dev, path: str = "/v1/ws", extra: dict[str, Any] | None = None
    ) -> aiohttp.ClientWebSocketResponse:
        assert self.http is not None
        ws = await self.http.ws_connect(self.url(path), autoping=True)
        challenge = json.loads((await ws.receive(timeout=10)).data)
        nonce = auth.b64d(challenge["nonce"])
        answer = {
            "type": "auth",
            "device_id": dev.id,
            "signature": auth.sign_ws_challenge(dev.key, nonce),
        }
        await ws.send_str(json.dumps({**answer, **(extra or {})}))
        return ws

    async def _online(self) -> None:
        """Device a1 and b1 connected and welcomed (reconnect after a fatal error)."""
        for attr, dev in (("ws_a", self.a1), ("ws_b", self.b1)):
            ws = getattr(self, attr)
            if ws is None or ws.closed:
                ws = await self._auth_ws(dev)
                seen: list[object] = []
                while True:
                    msg = await ws.receive(timeout=10)
                    seen.append(msg.data)
                    data = self.check_ws_message("ws-welcome", msg)
                    if data is not None and data["type"] == "welcome":
                        break
                    if data is None:
                        device = self.store.get_device(dev.id)
                        raise RuntimeError(f"{dev.id} was not welcomed: {seen} {device}")
                setattr(self, attr, ws)

    def _frame(self) -> str | bytes:
        rng = self.rng
        base = rng.choice(
            (
                {"type": "ping", "id": 7},
                {"type": "signal", "to": self.a2.id, "data": "AAAA", "id": "s1"},
                {"type": "signal", "to": self.b1.id, "data": "AAAA"},
                {"type": "relay-open", "to": self.a2.id, "id": 3},
                {"type": "relay-open", "to": self.b1.id},
                {"type": "relay-close", "session": "x" * 43},
                {"type": "relay-data", "data": "AA"},
                {"type": "auth", "device_id": self.a1.id, "signature": "AA"},
            )
        )
        r = rng.random()
        if r < 0.6:
            return dumps(mutate_json(base, rng)).decode()
        if r < 0.85:
            return mutate(dumps(base), rng).decode("utf-8", "replace")
        if r < 0.95:
            return random_bytes(rng, 100)
        return dumps(base).decode()

    async def ws_after_auth_case(self) -> None:
        await self._online()
        assert self.ws_a is not None
        frame = self._frame()
        self.ping += 1
        try:
            if isinstance(frame, bytes):
                await self.ws_a.send_bytes(frame)
            else:
                await self.ws_a.send_str(frame)
            await self.ws_a.send_str(json.dumps({"type": "ping", "id": self.ping}))
        except ConnectionError:  # the server closed it after our hostile frame
            pass
        while True:  # until our pong or the close
            msg = await self.ws_a.receive(timeout=10)
            data = self.check_ws_message("ws", msg)
            if data is None:
                if msg.type not in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.CLOSING):
                    continue
                self.ws_a = None
                return
            if data["type"] == "pong" and data.get("id") == self.ping:
                self.report.count("ws:alive")
                return

    async def drain_b(self) -> None:
        """Whatever reached b1 (account B): never a signal or relay offer from account A."""
        assert self.ws_b is not None
        while True:
            try:
                msg = await self.ws_b.receive(timeout=0.001)
            except TimeoutError:
                return
            data = self.check_ws_message("ws-b", msg)
            if data is None:
                return
            if data["type"] in ("signal", "relay-offer"):
                self.report.finding("cross-account-delivery", str(msg.data)[:200])

    async def ws_before_auth_case(self, path: str) -> None:
        assert self.http is not None
        rng = self.rng
        ws = await self.http.ws_connect(self.url(path), autoping=True)
        try:
            first = self.check_ws_message("ws-pre", await ws.receive(timeout=10))
            if first is None:
                return
            nonce = auth.b64d(first["nonce"])
            dev = rng.choice((self.a1, self.b1))
            answer: dict[str, Any] = {
                "type": "auth",
                "device_id": dev.id,
                "signature": auth.sign_ws_challenge(dev.key, nonce),
            }
            if path == "/v1/relay":
                answer |= {"session": "s" * 43, "token": "t" * 43}
            r = rng.random()
            if r < 0.6:
                await ws.send_str(dumps(mutate_json(answer, rng)).decode())
            elif r < 0.9:
                await ws.send_str(mutate(dumps(answer), rng).decode("utf-8", "replace"))
            else:
                await ws.send_bytes(random_bytes(rng, 100))
            while True:
                msg = await ws.receive(timeout=15)
                data = self.check_ws_message(f"ws-pre{path}", msg)
                if data is None:
                    return
                if data["type"] == "welcome":
                    self.report.count("ws-pre:welcome")
                    return
        finally:
            await ws.close()

    async def sanity(self) -> None:
        """The server still answers a signed request and a WebSocket ping."""
        assert self.http is not None
        headers = auth.sign_request(self.a1.key, "GET", "/v1/devices", b"", now=time.time())
        async with self.http.get(self.url("/v1/devices"), headers=headers) as r:
            if r.status != 200:
                self.report.finding("server-stopped-answering", f"/v1/devices {r.status}")
        await self._online()


async def arun(cases: int, seed: int) -> Report:
    rng = random.Random(seed)
    report = Report("fuzz_server")
    errors = ErrorLog()
    logging.getLogger().addHandler(errors)
    with tempfile.TemporaryDirectory(prefix="hfuzz-") as tmp:
        target = Target(Path(tmp) / "data", rng, report)
        await target.start()
        started = time.monotonic()
        try:
            for i in range(cases):
                kind = i % 10
                if kind < 4:
                    await target.api_case()
                elif kind < 6:
                    await target.web_case()
                elif kind < 8:
                    await target.ws_after_auth_case()
                    await target.drain_b()
                elif kind == 8:
                    await target.ws_before_auth_case("/v1/ws")
                else:
                    await target.ws_before_auth_case("/v1/relay")
                report.cases += 1
                for line in errors.records:
                    report.finding(f"logged-error:{line[:60]}", line)
                errors.records.clear()
            await target.sanity()
        finally:
            report.seconds = time.monotonic() - started
            await target.close()
            logging.getLogger().removeHandler(errors)
    return report


def run(cases: int, seed: int) -> Report:
    """``cases`` cases: 40 % JSON API, 20 % web forms, 20 % authenticated WebSocket, 20 % hellos."""
    return asyncio.run(arun(cases, seed))


if __name__ == "__main__":
    main("fuzz_server", run)
