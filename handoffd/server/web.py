"""The server's web pages: log in, the account's devices (rename, revoke), add a device.

No JavaScript. Sessions are random 256-bit ids held server-side (a restart logs
everyone out); the cookie is HttpOnly, SameSite=Strict, Secure under HTTPS.
Every form carries a per-session CSRF token. Logins are rate-limited per client
address and per account name. Every value shown is HTML-escaped.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import html
import logging
import secrets
import time
from base64 import b64encode
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from handoffd import identity
from handoffd.errors import HandoffError
from handoffd.server import pairing
from handoffd.server.app import HUB
from handoffd.server.store import Store

logger = logging.getLogger("handoffd.server.web")

COOKIE = "handoff_session"
SESSION_TTL = 8 * 3600
MAX_SESSIONS = 10_000
MAX_FORM = 16 * 1024

CSS = """
body{font-family:system-ui,sans-serif;max-width:46rem;margin:2rem auto;padding:0 1rem;color:#1b1f24}
h1{font-size:1.4rem}nav a,nav form{margin-right:1rem;display:inline}
table{border-collapse:collapse;width:100%}td,th{text-align:left;padding:.4rem;border-bottom:1px solid #ddd}
.code{font-family:ui-monospace,monospace;font-size:1.6rem;letter-spacing:.1em}
.qr svg{width:18rem;height:18rem}.err{color:#a40000}.muted{color:#57606a}
button{padding:.3rem .7rem}input{padding:.3rem}
"""
CSS_HASH = "sha256-" + b64encode(hashlib.sha256(CSS.encode()).digest()).decode()
CSP = (
    f"default-src 'none'; style-src '{CSS_HASH}'; img-src data:; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)


@dataclass
class _Session:
    account_id: str
    csrf: str
    expires: float


class WebState:
    """Login sessions and login rate limits (in memory, bounded)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.sessions: OrderedDict[str, _Session] = OrderedDict()
        self.by_ip = pairing.RateLimiter(per_minute=10, burst=10)
        self.by_name = pairing.RateLimiter(per_minute=5, burst=5)

    def new(self, account_id: str) -> tuple[str, _Session]:
        """A fresh session for ``account_id`` (the oldest is dropped past the bound)."""
        sid = secrets.token_urlsafe(32)
        session = _Session(account_id, secrets.token_urlsafe(32), self.clock() + SESSION_TTL)
        self.sessions[sid] = session
        while len(self.sessions) > MAX_SESSIONS:
            self.sessions.popitem(last=False)
        return sid, session

    def get(self, sid: str | None) -> _Session | None:
        """The live session for a cookie value, if any."""
        if not sid:
            return None
        session = self.sessions.get(sid)
        if session is None or session.expires < self.clock():
            self.sessions.pop(sid, None)
            return None
        return session


WEB: web.AppKey[WebState] = web.AppKey("handoff_web", WebState)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _page(
    title: str, body: str, *, session: _Session | None = None, status: int = 200
) -> web.Response:
    nav = ""
    if session is not None:
        nav = (
            '<nav><a href="/devices">Devices</a><a href="/add-device">Add a device</a>'
            f'<form method="post" action="/logout"><input type="hidden" name="csrf" value="{_e(session.csrf)}">'
            "<button>Log out</button></form></nav>"
        )
    text = (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{_e(title)} · handoff</title>'
        f'<meta name="viewport" content="width=device-width"><style>{CSS}</style></head>'
        f"<body>{nav}<h1>{_e(title)}</h1>{body}</body></html>"
    )
    return web.Response(text=text, content_type="text/html", status=status)


@web.middleware
async def _headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    response = await handler(request)
    if not request.path.startswith("/v1/"):
        response.headers.setdefault("Content-Security-Policy", CSP)
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Cache-Control", "no-store")
    return response


def _client(request: web.Request) -> str:
    return request.remote or "?"


def _session(request: web.Request) -> _Session | None:
    return request.app[WEB].get(request.cookies.get(COOKIE))


def _require(request: web.Request) -> _Session:
    session = _session(request)
    if session is None:
        raise web.HTTPSeeOther("/login")
    return session


async def _form(request: web.Request, session: _Session | None) -> dict[str, str]:
    """The POSTed form; 403 unless its CSRF token matches the session's."""
    if request.content_length is not None and request.content_length > MAX_FORM:
        raise web.HTTPRequestEntityTooLarge(max_size=MAX_FORM, actual_size=request.content_length)
    data = await request.post()
    form = {k: v for k, v in data.items() if isinstance(v, str)}
    if session is not None and not hmac.compare_digest(form.get("csrf", ""), session.csrf):
        raise web.HTTPForbidden(text="the form is stale or forged (CSRF check failed)")
    return form


def setup_web(app: web.Application, store: Store, config: object) -> None:
    """Add the web pages to the server's application."""
    clock: Callable[[], float] = getattr(config, "clock", time.time)
    app[WEB] = WebState(clock)
    app.middlewares.append(_headers)

    def public_url(request: web.Request) -> str:
        configured = getattr(config, "public_url", None)
        return str(configured) if configured else f"{request.scheme}://{request.host}"

    async def index(request: web.Request) -> web.StreamResponse:
        raise web.HTTPSeeOther("/devices" if _session(request) else "/login")

    def login_page(error: str = "", status: int = 200) -> web.Response:
        err = f'<p class="err" role="alert">{_e(error)}</p>' if error else ""
        body = (
            f'{err}<form method="post" action="/login">'
            '<p><label>Account <input name="account" autocomplete="username" required></label></p>'
            '<p><label>Password <input name="password" type="password" autocomplete="current-password" required></label></p>'
            "<p><button>Log in</button></p></form>"
        )
        return _page("Log in", body, status=status)

    async def login_get(request: web.Request) -> web.StreamResponse:
        return login_page()

    async def login_post(request: web.Request) -> web.StreamResponse:
        form = await _form(request, None)
        name, password = form.get("account", "")[:128], form.get("password", "")[:1024]
        state, now = request.app[WEB], clock()
        if not (state.by_ip.allow(_client(request), now) and state.by_name.allow(name, now)):
            logger.warning("login rate-limited", extra={"client": _client(request)})
            return login_page("Too many attempts. Wait a minute and try again.", status=429)
        account = await asyncio.to_thread(store.check_login, name, password)
        if account is None:
            return login_page("Wrong account name or password.", status=401)
        sid, _ = state.new(account.account_id)
        response = web.HTTPSeeOther("/devices")
        response.set_cookie(
            COOKIE, sid, httponly=True, samesite="Strict", secure=request.secure, path="/",
            max_age=SESSION_TTL,
        )  # fmt: skip
        raise response

    async def logout(request: web.Request) -> web.StreamResponse:
        session = _require(request)
        await _form(request, session)
        request.app[WEB].sessions.pop(request.cookies.get(COOKIE, ""), None)
        response = web.HTTPSeeOther("/login")
        response.del_cookie(COOKIE, path="/")
        raise response

    async def devices(request: web.Request) -> web.StreamResponse:
        session = _require(request)
        rows = await asyncio.to_thread(store.list_devices, session.account_id)
        hub = request.app.get(HUB)
        online = hub.online(session.account_id) if hub is not None else frozenset()
        csrf = _e(session.csrf)
        lines = []
        for d in rows:
            state = "revoked" if d.revoked else ("online" if d.device_id in online else "offline")
            seen = (
                time.strftime("%Y-%m-%d %H:%M", time.localtime(d.last_seen)) if d.last_seen else "-"
            )
            actions = ""
            if not d.revoked:
                actions = (
                    f'<form method="post" action="/devices/{_e(d.device_id)}/rename">'
                    f'<input type="hidden" name="csrf" value="{csrf}">'
                    f'<input name="name" value="{_e(d.name)}" aria-label="New name" size="12" required>'
                    "<button>Rename</button></form> "
                    f'<form method="post" action="/devices/{_e(d.device_id)}/revoke">'
                    f'<input type="hidden" name="csrf" value="{csrf}">'
                    '<label><input type="checkbox" name="confirm" value="yes" required> sure</label> '
                    "<button>Revoke</button></form>"
                )
            lines.append(
                f"<tr><td>{_e(d.name)}</td><td><code>{_e(identity.format_device_id(d.device_id))}</code></td>"
                f"<td>{_e(d.platform)}</td><td>{_e(state)}</td><td>{_e(seen)}</td><td>{actions}</td></tr>"
            )
        table = (
            "<table><thead><tr><th>Name</th><th>Id</th><th>Platform</th><th>State</th>"
            f"<th>Last seen</th><th></th></tr></thead><tbody>{''.join(lines)}</tbody></table>"
            if lines
            else '<p class="muted">No devices yet. <a href="/add-device">Add one</a>.</p>'
        )
        return _page("Devices", table, session=session)

    async def rename(request: web.Request) -> web.StreamResponse:
        session = _require(request)
        form = await _form(request, session)
        try:
            await asyncio.to_thread(
                store.rename_device,
                session.account_id,
                request.match_info["device"],
                form.get("name", ""),
            )
        except HandoffError as exc:
            return _page(
                "Devices",
                f'<p class="err">{_e(exc.message)}</p><p><a href="/devices">Back</a></p>',
                session=session,
                status=400,
            )
        raise web.HTTPSeeOther("/devices")

    async def revoke(request: web.Request) -> web.StreamResponse:
        session = _require(request)
        form = await _form(request, session)
        if form.get("confirm") != "yes":
            return _page(
                "Devices",
                '<p class="err">Tick "sure" to revoke.</p><p><a href="/devices">Back</a></p>',
                session=session,
                status=400,
            )
        device_id = request.match_info["device"]
        try:
            await asyncio.to_thread(store.revoke_device, session.account_id, device_id)
        except HandoffError as exc:
            return _page(
                "Devices", f'<p class="err">{_e(exc.message)}</p>', session=session, status=400
            )
        hub = request.app.get(HUB)
        if hub is not None:
            await hub.disconnect_revoked([device_id])
        logger.info("device revoked from the web", extra={"device": device_id})
        raise web.HTTPSeeOther("/devices")

    async def add_device(request: web.Request) -> web.StreamResponse:
        session = _require(request)
        invite = await asyncio.to_thread(
            lambda: store.create_invite(session.account_id, created_by="web")
        )
        fingerprint = getattr(config, "fingerprint", None)
        view = pairing.present(public_url(request), fingerprint, invite.secrets, invite.expires_at)
        expires = time.strftime("%H:%M", time.localtime(view.expires_at))
        body = (
            "<p>Scan this code with the new device, or type the short code there.</p>"
            f'<div class="qr">{_svg_inline(view.qr_svg)}</div>'
            f'<p>Code: <span class="code">{_e(view.code)}</span></p>'
            f'<p class="muted">Single use; expires at {_e(expires)}. On the new device run:<br>'
            f"<code>handoff pair {_e(view.code)} --server {_e(public_url(request))}"
            + (f" --fingerprint {_e(fingerprint)}" if fingerprint else "")
            + "</code></p>"
        )
        return _page("Add a device", body, session=session)

    app.router.add_get("/", index)
    app.router.add_get("/login", login_get)
    app.router.add_post("/login", login_post)
    app.router.add_post("/logout", logout)
    app.router.add_get("/devices", devices)
    app.router.add_post("/devices/{device}/rename", rename)
    app.router.add_post("/devices/{device}/revoke", revoke)
    app.router.add_get("/add-device", add_device)


def _svg_inline(svg: str) -> str:
    """segno's SVG document without its XML declaration, safe to inline."""
    start = svg.find("<svg")
    return svg[start:] if start >= 0 else ""
