"""The server's web pages: log in, the account's devices (rename, revoke), add a device.

No JavaScript. Sessions are random 256-bit ids held server-side (a restart logs
everyone out); the cookie is HttpOnly, SameSite=Strict, Secure under HTTPS.
Every form carries a CSRF token: the session's synchronizer token, or for the
login form a token bound by HMAC to a pre-login cookie. Logins are rate-limited
per client address (IPv6 by /64) and per account name; passwords are checked on
a small executor of their own (``passwords.PasswordChecker``), 503 when it is
full. Every value shown is HTML-escaped.
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
from collections.abc import Callable
from dataclasses import dataclass

import segno
from aiohttp import web

from handoffd import identity
from handoffd.errors import HandoffError, ServerError
from handoffd.server import pairing, ratelimit
from handoffd.server.keys import HUB
from handoffd.server.passwords import BUSY_RETRY_AFTER, PasswordChecker
from handoffd.server.store import Device, Store, check_account_name

logger = logging.getLogger("handoffd.server.web")

COOKIE = "handoff_session"
LOGIN_COOKIE = "handoff_login"
SESSION_TTL = 8 * 3600
LOGIN_FORM_TTL = 3600
MAX_SESSIONS = 10_000
MAX_FORM = 16 * 1024
MAX_NAME = 128
MAX_PASSWORD = 1024

CSS = """
body{font-family:system-ui,sans-serif;max-width:62rem;margin:2rem auto;padding:0 1rem;color:#1b1f24;line-height:1.45}
h1{font-size:1.4rem}nav{margin-bottom:1rem}nav a,nav form{margin-right:1rem;display:inline}
table{border-collapse:collapse;width:100%}td,th{text-align:left;padding:.4rem;border-bottom:1px solid #d0d7de;vertical-align:top}
td form{display:inline-block;margin:0 .3rem .3rem 0;white-space:nowrap}
.code{font-family:ui-monospace,monospace;font-size:1.6rem;letter-spacing:.1em}
.qr svg{width:18rem;height:18rem;display:block;shape-rendering:crispEdges}.err{color:#a40000}.muted{color:#57606a}
.revoked{color:#a40000}.online{color:#116329}
button{padding:.3rem .7rem}input{padding:.3rem}label{display:block;margin-bottom:.6rem}
button.danger{background:#a40000;color:#fff;border:1px solid #8a0000;border-radius:3px}
"""
CSS_HASH = "sha256-" + b64encode(hashlib.sha256(CSS.encode()).digest()).decode()
CSP = (
    f"default-src 'none'; style-src '{CSS_HASH}'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}


@dataclass
class _Session:
    account_id: str
    csrf: str
    expires: float


class WebState:
    """Login sessions, the login-form secret and login rate limits (in memory, bounded)."""

    def __init__(
        self,
        clock: Callable[[], float] = time.time,
        *,
        name_per_minute: float = 5.0,
        address_per_minute: float = 10.0,
        limiters: ratelimit.LimiterFactory = ratelimit.local_limiter,
    ) -> None:
        self.clock = clock
        self.sessions: OrderedDict[str, _Session] = OrderedDict()
        self.by_ip = limiters("login-address", address_per_minute, 10)
        self.by_name = limiters("login-name", name_per_minute, 5)
        self.passwords = PasswordChecker()
        self._login_key = secrets.token_bytes(32)

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

    def drop(self, sid: str | None) -> None:
        """Forget a session (logout)."""
        if sid:
            self.sessions.pop(sid, None)

    def login_token(self, nonce: str) -> str:
        """The login form's CSRF token for the pre-login cookie ``nonce``."""
        mac = hmac.new(self._login_key, b"handoff/v1/web-login\x00" + nonce.encode(), "sha256")
        return mac.hexdigest()

    def check_login_token(self, nonce: str | None, token: str) -> bool:
        """True if ``token`` was made for ``nonce`` by this server (constant time)."""
        if not nonce or len(nonce) > 128 or not nonce.isascii():  # ours are token_urlsafe
            return False
        return _same_text(token, self.login_token(nonce))


def _same_text(given: str, expected: str) -> bool:
    """Constant-time equality of any two strings (compare_digest takes only ASCII ``str``)."""
    # surrogatepass: a lone surrogate from the client is just unequal, never an exception.
    return hmac.compare_digest(
        given.encode("utf-8", "surrogatepass"), expected.encode("utf-8", "surrogatepass")
    )


WEB: web.AppKey[WebState] = web.AppKey("handoff_web", WebState)


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _utc(ts: float | None, fmt: str = "%Y-%m-%d %H:%M") -> str:
    return time.strftime(fmt, time.gmtime(ts)) + " UTC" if ts else "-"


def _csrf_field(token: str) -> str:
    return f'<input type="hidden" name="csrf" value="{_e(token)}">'


def _page(
    title: str, body: str, *, session: _Session | None = None, status: int = 200
) -> web.Response:
    nav = ""
    if session is not None:
        nav = (
            '<nav><a href="/devices">Devices</a><a href="/add-device">Add a device</a>'
            f'<form method="post" action="/logout">{_csrf_field(session.csrf)}'
            "<button>Log out</button></form></nav>"
        )
    text = (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{_e(title)} · handoff</title>'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head>'
        f"<body>{nav}<main><h1>{_e(title)}</h1>{body}</main></body></html>"
    )
    return web.Response(text=text, content_type="text/html", status=status)


def _error_page(session: _Session, message: str, status: int = 400) -> web.Response:
    body = f'<p class="err" role="alert">{_e(message)}</p><p><a href="/devices">Back to the devices</a></p>'
    return _page("Devices", body, session=session, status=status)


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """Every page response (errors and redirects too) carries the security headers."""
    if request.path.startswith("/v1/"):
        return
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)


def _client(request: web.Request) -> str:
    return ratelimit.client_address(request)


def _name_key(name: str) -> str | None:
    """The per-account limit's key, or None for a name no account can have (no bucket then)."""
    try:
        return check_account_name(name).lower()
    except ServerError:
        return None


def _session(request: web.Request) -> _Session | None:
    return request.app[WEB].get(request.cookies.get(COOKIE))


def _require(request: web.Request) -> _Session:
    session = _session(request)
    if session is None:
        raise web.HTTPSeeOther("/login")
    return session


def _forbidden() -> web.HTTPForbidden:
    return web.HTTPForbidden(
        text="The form is stale or forged (CSRF check failed). Reload the page and try again."
    )


async def _form(request: web.Request) -> dict[str, str]:
    """The POSTed form's text fields (bounded)."""
    if request.content_length is not None and request.content_length > MAX_FORM:
        raise web.HTTPRequestEntityTooLarge(max_size=MAX_FORM, actual_size=request.content_length)
    try:
        data = await request.post()
    except UnicodeDecodeError:  # aiohttp decodes the whole urlencoded body strictly
        raise web.HTTPBadRequest(text="The form is not valid UTF-8.") from None
    return {k: v for k, v in data.items() if isinstance(v, str)}


async def _checked_form(request: web.Request, session: _Session) -> dict[str, str]:
    """The POSTed form; 403 unless its CSRF token matches the session's."""
    form = await _form(request)
    if not _same_text(form.get("csrf", ""), session.csrf):
        raise _forbidden()
    return form


def setup_web(app: web.Application, store: Store, config: object) -> None:
    """Add the web pages (``/``, ``/login``, ``/logout``, ``/devices``, ``/add-device``) to ``app``."""
    clock: Callable[[], float] = getattr(config, "clock", time.time)
    invite_ttl = float(getattr(config, "invite_ttl", pairing.INVITE_TTL))
    app[WEB] = WebState(
        clock,
        name_per_minute=float(getattr(config, "login_name_per_minute", 5.0)),
        address_per_minute=float(getattr(config, "login_address_per_minute", 10.0)),
        limiters=ratelimit.limiter_factory(app),
    )
    if ratelimit.INVITE_LIMITS not in app:
        app[ratelimit.INVITE_LIMITS] = ratelimit.InviteLimits.made_by(
            ratelimit.limiter_factory(app)
        )

    async def close_checker(app: web.Application) -> None:
        app[WEB].passwords.close()

    app.on_cleanup.append(close_checker)
    app.on_response_prepare.append(_security_headers)

    def public_url(request: web.Request) -> str:
        configured = getattr(config, "public_url", None)
        return str(configured) if configured else f"{request.scheme}://{request.host}"

    def secure(request: web.Request) -> bool:
        # Behind a TLS proxy (--insecure-http --public-url https://...) the browser sees HTTPS.
        return request.secure or public_url(request).startswith("https:")

    async def index(request: web.Request) -> web.StreamResponse:
        raise web.HTTPSeeOther("/devices" if _session(request) else "/login")

    def login_page(
        request: web.Request, error: str = "", status: int = 200, account: str = ""
    ) -> web.Response:
        nonce = secrets.token_urlsafe(32)
        err = f'<p class="err" role="alert">{_e(error)}</p>' if error else ""
        body = (
            f'{err}<form method="post" action="/login">{_csrf_field(request.app[WEB].login_token(nonce))}'
            f'<label>Account <input name="account" autocomplete="username" value="{_e(account)}" '
            f'maxlength="{MAX_NAME}" required></label>'
            '<label>Password <input name="password" type="password" autocomplete="current-password" '
            f'maxlength="{MAX_PASSWORD}" required></label>'
            "<p><button>Log in</button></p></form>"
        )
        response = _page("Log in", body, status=status)
        response.set_cookie(
            LOGIN_COOKIE, nonce, httponly=True, samesite="Strict", secure=secure(request),
            path="/login", max_age=LOGIN_FORM_TTL,
        )  # fmt: skip
        return response

    async def login_get(request: web.Request) -> web.StreamResponse:
        if _session(request) is not None:
            raise web.HTTPSeeOther("/devices")
        return login_page(request)

    async def login_post(request: web.Request) -> web.StreamResponse:
        form = await _form(request)
        state, now = request.app[WEB], clock()
        if not state.check_login_token(request.cookies.get(LOGIN_COOKIE), form.get("csrf", "")):
            raise _forbidden()
        name, password = form.get("account", "")[:MAX_NAME], form.get("password", "")[:MAX_PASSWORD]
        # The address pays first: a refused address creates no per-account bucket, so junk
        # names cannot push a victim's bucket out (and buckets below full are never evicted).
        name_key = _name_key(name)
        if await state.by_ip.acquire(ratelimit.client_key(request), now) or (
            name_key is not None and await state.by_name.acquire(name_key, now)
        ):
            logger.warning("login rate-limited", extra={"client": _client(request)})
            return login_page(
                request, "Too many login attempts. Wait a minute, then try again.", 429, name
            )
        account = None
        if name_key is not None:
            record = await asyncio.to_thread(store.login_record, name)
            try:
                ok = await state.passwords.check(password, None if record is None else record[1])
            except ServerError as exc:
                if exc.code != "login-busy":
                    raise
                await state.by_name.give_back(name_key, now)
                logger.warning("login busy", extra={"client": _client(request)})
                page = login_page(
                    request, "The server is busy. Wait a few seconds, then try again.", 503, name
                )
                page.headers["Retry-After"] = str(BUSY_RETRY_AFTER)
                return page
            if ok and record is not None:
                account = await asyncio.to_thread(store.get_account, record[0])
        if account is None:
            logger.info("login failed", extra={"client": _client(request)})
            return login_page(request, "Wrong account name or password.", 401, name)
        state.drop(request.cookies.get(COOKIE))
        sid, _ = state.new(account.account_id)
        logger.info("login", extra={"account": account.account_id, "client": _client(request)})
        response = web.HTTPSeeOther("/devices")
        response.set_cookie(
            COOKIE, sid, httponly=True, samesite="Strict", secure=secure(request), path="/",
            max_age=SESSION_TTL,
        )  # fmt: skip
        response.del_cookie(LOGIN_COOKIE, path="/login")
        raise response

    async def logout(request: web.Request) -> web.StreamResponse:
        session = _require(request)
        await _checked_form(request, session)
        request.app[WEB].drop(request.cookies.get(COOKIE))
        response = web.HTTPSeeOther("/login")
        response.del_cookie(COOKIE, path="/")
        raise response

    def device_row(d: Device, online: frozenset[str], csrf: str) -> str:
        if d.revoked:
            state = f'<span class="revoked">revoked {_e(_utc(d.revoked_at))}</span>'
        elif d.device_id in online:
            state = '<span class="online">online</span>'
        else:
            state = "offline"
        actions = ""
        if not d.revoked:
            path = f"/devices/{_e(d.device_id)}"
            actions = (
                f'<form method="post" action="{path}/rename">{_csrf_field(csrf)}'
                f'<input name="name" value="{_e(d.name)}" aria-label="New name for {_e(d.name)}" '
                'size="12" maxlength="64" required> <button>Rename</button></form>'
                f'<form method="post" action="{path}/revoke">{_csrf_field(csrf)}'
                f'<button aria-label="Revoke {_e(d.name)}">Revoke</button></form>'
            )
        return (
            f"<tr><td>{_e(d.name)}</td><td><code>{_e(identity.format_device_id(d.device_id))}</code></td>"
            f"<td>{_e(d.platform)}</td><td>{_e(_utc(d.created_at))}</td>"
            f"<td>{_e(_utc(d.last_seen))}</td><td>{state}</td><td>{actions}</td></tr>"
        )

    async def devices(request: web.Request) -> web.StreamResponse:
        session = _require(request)
        rows = await asyncio.to_thread(store.list_devices, session.account_id)
        hub = request.app.get(HUB)
        online = hub.online(session.account_id) if hub is not None else frozenset()
        lines = [device_row(d, online, session.csrf) for d in rows]
        body = (
            "<table><thead><tr><th>Name</th><th>Id</th><th>Platform</th><th>Created</th>"
            '<th>Last seen</th><th>State</th><th><span class="muted">Actions</span></th></tr></thead>'
            f"<tbody>{''.join(lines)}</tbody></table>"
            if lines
            else '<p class="muted">No devices yet. <a href="/add-device">Add one</a>.</p>'
        )
        return _page("Devices", body, session=session)

    async def rename(request: web.Request) -> web.StreamResponse:
        session = _require(request)
        form = await _checked_form(request, session)
        try:
            await asyncio.to_thread(
                store.rename_device,
                session.account_id,
                request.match_info["device"],
                form.get("name", "")[:MAX_NAME],
            )
        except HandoffError as exc:
            return _error_page(session, exc.message)
        raise web.HTTPSeeOther("/devices")

    async def revoke(request: web.Request) -> web.StreamResponse:
        session = _require(request)
        form = await _checked_form(request, session)
        device_id = request.match_info["device"]
        device = await asyncio.to_thread(store.get_device, device_id)
        if device is None or device.account_id != session.account_id:
            return _error_page(session, "No such device in this account.", 404)
        if form.get("confirm") != "yes":
            body = (
                f"<p>Revoke <strong>{_e(device.name)}</strong> "
                f"(<code>{_e(identity.format_device_id(device.device_id))}</code>)? "
                "It is cut off at once and can never connect again; to use it again, pair it anew.</p>"
                f'<form method="post" action="/devices/{_e(device.device_id)}/revoke">'
                f'{_csrf_field(session.csrf)}<input type="hidden" name="confirm" value="yes">'
                '<button class="danger">Yes, revoke it</button> <a href="/devices">Cancel</a></form>'
            )
            return _page("Revoke a device", body, session=session)
        try:
            await asyncio.to_thread(store.revoke_device, session.account_id, device_id)
        except HandoffError as exc:
            return _error_page(session, exc.message)
        hub = request.app.get(HUB)
        if hub is not None:
            await hub.disconnect_revoked([device_id])
        logger.info("device revoked from the web", extra={"device": device_id})
        raise web.HTTPSeeOther("/devices")

    async def add_device(request: web.Request) -> web.StreamResponse:
        session = _require(request)
        limits = request.app[ratelimit.INVITE_LIMITS]
        retry = await limits.take(session.account_id, f"web:{session.csrf}", clock())
        if retry:
            logger.info("invite rate-limited from the web", extra={"account": session.account_id})
            page = _error_page(
                session, "Too many invites made. Wait a minute, then try again.", 429
            )
            page.headers["Retry-After"] = str(retry)
            return page
        invite = await asyncio.to_thread(
            lambda: store.create_invite(session.account_id, created_by="web", ttl=invite_ttl)
        )
        fingerprint = getattr(config, "fingerprint", None)
        server = public_url(request)
        view = pairing.present(server, fingerprint, invite.secrets, invite.expires_at)
        command = f"handoff pair {view.code} --server {server}"
        if fingerprint:
            command += f" --fingerprint {fingerprint}"
        minutes = max(1, round((view.expires_at - clock()) / 60))
        body = (
            "<p>Scan this code with the new device's camera, or type the short code there.</p>"
            f'<div class="qr">{_qr_svg(view.qr_url)}</div>'
            f'<p>Code: <span class="code">{_e(view.code)}</span></p>'
            f"<p>Single use; expires at {_e(_utc(view.expires_at, '%H:%M'))} "
            f"(in {minutes} minute{'s' if minutes != 1 else ''}).</p>"
            f'<p class="muted">Or, on the new device, run:<br><code>{_e(command)}</code></p>'
            '<p><a href="/add-device">Make another invite</a> · <a href="/devices">Back to the devices</a></p>'
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


def _qr_svg(url: str) -> str:
    """``url`` as an inline SVG QR code (a viewBox, no fixed size: the stylesheet sizes it)."""
    svg = segno.make(url, error="m").svg_inline(
        border=4, omitsize=True, light="#fff", svgclass="qr-code", lineclass=None
    )
    return svg.replace("<svg ", '<svg role="img" aria-label="QR code of the invite" ', 1)
