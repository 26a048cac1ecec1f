"""The server's web pages: log in, the account's devices (rename, revoke), add a device,
change the password. Pages are jinja2 templates (``webview``: autoescaped, static files).

Nothing needs JavaScript (one static script only shows times in the browser's zone).
Sessions are random 256-bit ids held server-side (a restart logs
everyone out); the cookie is HttpOnly, SameSite=Strict, Secure under HTTPS.
Every form carries a CSRF token: the session's synchronizer token, or for the
login form a token bound by HMAC to a pre-login cookie. Logins are rate-limited
per client address (IPv6 by /64) and per account name; passwords are checked on
a small executor of their own (``passwords.PasswordChecker``), 503 when it is
full. Every value shown is HTML-escaped.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import segno
from aiohttp import web
from markupsafe import Markup

from handoffd.errors import HandoffError, ServerError
from handoffd.server import pairing, ratelimit
from handoffd.server.keys import HUB
from handoffd.server.passwords import BUSY_RETRY_AFTER, PasswordChecker
from handoffd.server.store import Store, check_account_name
from handoffd.server.webview import SECURITY_HEADERS, render, setup_views

logger = logging.getLogger("handoffd.server.web")

COOKIE = "handoff_session"
LOGIN_COOKIE = "handoff_login"
SESSION_TTL = 8 * 3600
LOGIN_FORM_TTL = 3600
MAX_SESSIONS = 10_000
MAX_FORM = 16 * 1024
MAX_NAME = 128
MAX_PASSWORD = 1024
MIN_NEW_PASSWORD = 8
TOO_MANY = "Too many login attempts. Wait a minute, then try again."
BUSY = "The server is busy. Wait a few seconds, then try again."


@dataclass
class _Session:
    account_id: str
    account_name: str
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

    def new(self, account_id: str, account_name: str = "") -> tuple[str, _Session]:
        """A fresh session for ``account_id`` (the oldest is dropped past the bound)."""
        sid = secrets.token_urlsafe(32)
        session = _Session(
            account_id, account_name, secrets.token_urlsafe(32), self.clock() + SESSION_TTL
        )
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

    def drop_others(self, account_id: str, keep: str | None) -> int:
        """Forget every session of ``account_id`` but ``keep`` (after a password change)."""
        gone = [s for s, v in self.sessions.items() if v.account_id == account_id and s != keep]
        for sid in gone:
            del self.sessions[sid]
        return len(gone)

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


def _error_page(
    request: web.Request, session: _Session, message: str, status: int = 400
) -> web.Response:
    return render(
        request, "error.html", title="Devices", session=session, message=message, status=status
    )


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
    """Add the web pages (``/``, ``/login``, ``/logout``, ``/devices``, ``/add-device``,
    ``/account``) and ``/static/`` to ``app``."""
    clock: Callable[[], float] = getattr(config, "clock", time.time)
    invite_ttl = float(getattr(config, "invite_ttl", pairing.INVITE_TTL))
    setup_views(app)
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

    async def limited(request: web.Request, name_key: str | None) -> bool:
        """True when the client's address or the account name is over its password-try limit."""
        state, now = request.app[WEB], clock()
        if await state.by_ip.acquire(ratelimit.client_key(request), now):
            return True
        return name_key is not None and await state.by_name.acquire(name_key, now) > 0

    async def password_ok(name_key: str, name: str, password: str) -> str | None:
        """The account id if ``password`` is right for ``name``; ServerError ``login-busy``."""
        state = app[WEB]
        record = await asyncio.to_thread(store.login_record, name)
        try:
            ok = await state.passwords.check(password, None if record is None else record[1])
        except ServerError as exc:
            if exc.code == "login-busy":
                await state.by_name.give_back(name_key, clock())
            raise
        return record[0] if ok and record is not None else None

    async def index(request: web.Request) -> web.StreamResponse:
        raise web.HTTPSeeOther("/devices" if _session(request) else "/login")

    def login_page(
        request: web.Request, error: str = "", status: int = 200, account: str = ""
    ) -> web.Response:
        nonce = secrets.token_urlsafe(32)
        response = render(
            request, "login.html", title="Log in", status=status, error=error, account=account,
            token=request.app[WEB].login_token(nonce), max_name=MAX_NAME,
            max_password=MAX_PASSWORD,
        )  # fmt: skip
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
        state = request.app[WEB]
        if not state.check_login_token(request.cookies.get(LOGIN_COOKIE), form.get("csrf", "")):
            raise _forbidden()
        name, password = form.get("account", "")[:MAX_NAME], form.get("password", "")[:MAX_PASSWORD]
        # The address pays first: a refused address creates no per-account bucket, so junk
        # names cannot push a victim's bucket out (and buckets below full are never evicted).
        name_key = _name_key(name)
        if await limited(request, name_key):
            logger.warning("login rate-limited", extra={"client": _client(request)})
            return login_page(request, TOO_MANY, 429, name)
        account = None
        if name_key is not None:
            try:
                account_id = await password_ok(name_key, name, password)
            except ServerError as exc:
                if exc.code != "login-busy":
                    raise
                logger.warning("login busy", extra={"client": _client(request)})
                page = login_page(request, BUSY, 503, name)
                page.headers["Retry-After"] = str(BUSY_RETRY_AFTER)
                return page
            if account_id is not None:
                account = await asyncio.to_thread(store.get_account, account_id)
        if account is None:
            logger.info("login failed", extra={"client": _client(request)})
            return login_page(request, "Wrong account name or password.", 401, name)
        state.drop(request.cookies.get(COOKIE))
        sid, _ = state.new(account.account_id, account.name)
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

    async def devices(request: web.Request) -> web.StreamResponse:
        session = _require(request)
        rows = await asyncio.to_thread(store.list_devices, session.account_id)
        hub = request.app.get(HUB)
        online = hub.online(session.account_id) if hub is not None else frozenset()
        return render(
            request, "devices.html", title="Devices", session=session, csrf=session.csrf,
            online=online, active=[d for d in rows if not d.revoked],
            revoked=sorted((d for d in rows if d.revoked), key=lambda d: -(d.revoked_at or 0)),
        )  # fmt: skip

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
            return _error_page(request, session, exc.message)
        raise web.HTTPSeeOther("/devices")

    async def revoke(request: web.Request) -> web.StreamResponse:
        session = _require(request)
        form = await _checked_form(request, session)
        device_id = request.match_info["device"]
        device = await asyncio.to_thread(store.get_device, device_id)
        if device is None or device.account_id != session.account_id:
            return _error_page(request, session, "No such device in this account.", 404)
        if form.get("confirm") != "yes":
            return render(
                request, "revoke.html", title="Revoke a device", session=session, device=device
            )
        try:
            await asyncio.to_thread(store.revoke_device, session.account_id, device_id)
        except HandoffError as exc:
            return _error_page(request, session, exc.message)
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
                request, session, "Too many invites made. Wait a minute, then try again.", 429
            )
            page.headers["Retry-After"] = str(retry)
            return page
        invite = await asyncio.to_thread(
            lambda: store.create_invite(session.account_id, created_by="web", ttl=invite_ttl)
        )
        fingerprint = getattr(config, "fingerprint", None)
        server = public_url(request)
        view = pairing.present(server, fingerprint, invite.secrets, invite.expires_at)
        return render(
            request, "add_device.html", title="Add a device", session=session, view=view,
            qr=_qr_svg(view.qr_url), server=server, code=view.code, fingerprint=fingerprint,
            minutes=max(1, round((view.expires_at - clock()) / 60)),
        )  # fmt: skip

    def account_page(
        request: web.Request, session: _Session, *, error: str = "", status: int = 200,
        done: bool = False,
    ) -> web.Response:  # fmt: skip
        return render(
            request, "account.html", title="Account", session=session, error=error, done=done,
            status=status, min_password=MIN_NEW_PASSWORD, max_password=MAX_PASSWORD,
        )  # fmt: skip

    async def account_get(request: web.Request) -> web.StreamResponse:
        return account_page(request, _require(request))

    async def change_password(request: web.Request) -> web.StreamResponse:
        session = _require(request)
        form = await _checked_form(request, session)
        current = form.get("current", "")[:MAX_PASSWORD]
        new, repeat = form.get("new", ""), form.get("repeat", "")
        if len(new) < MIN_NEW_PASSWORD or len(new) > MAX_PASSWORD:
            why = f"The new password needs {MIN_NEW_PASSWORD} to {MAX_PASSWORD} characters."
            return account_page(request, session, error=why, status=400)
        if new != repeat:
            why = "The new password and its repetition differ."
            return account_page(request, session, error=why, status=400)
        name_key = _name_key(session.account_name)
        if name_key is None or await limited(request, name_key):
            return account_page(request, session, error=TOO_MANY, status=429)
        try:
            account_id = await password_ok(name_key, session.account_name, current)
        except ServerError as exc:
            if exc.code != "login-busy":
                raise
            page = account_page(request, session, error=BUSY, status=503)
            page.headers["Retry-After"] = str(BUSY_RETRY_AFTER)
            return page
        if account_id != session.account_id:
            logger.info("password change refused", extra={"client": _client(request)})
            return account_page(
                request, session, error="The current password is wrong.", status=403
            )
        await asyncio.to_thread(store.set_password, session.account_id, new)
        gone = request.app[WEB].drop_others(session.account_id, request.cookies.get(COOKIE))
        logger.info(
            "password changed from the web sessions_ended=%d", gone,
            extra={"account": session.account_id, "client": _client(request)},
        )  # fmt: skip
        return account_page(request, session, done=True)

    app.router.add_get("/", index)
    app.router.add_get("/login", login_get)
    app.router.add_post("/login", login_post)
    app.router.add_post("/logout", logout)
    app.router.add_get("/devices", devices)
    app.router.add_post("/devices/{device}/rename", rename)
    app.router.add_post("/devices/{device}/revoke", revoke)
    app.router.add_get("/add-device", add_device)
    app.router.add_get("/account", account_get)
    app.router.add_post("/account/password", change_password)


def _qr_svg(url: str) -> Markup:
    """``url`` as an inline SVG QR code (a viewBox, no fixed size: the stylesheet sizes it)."""
    svg = segno.make(url, error="m").svg_inline(
        border=4, omitsize=True, light="#fff", svgclass="qr-code", lineclass=None
    )
    # segno writes the SVG itself from the URL (its own escaping): trusted markup.
    return Markup(svg.replace("<svg ", '<svg role="img" aria-label="QR code of the invite" ', 1))  # noqa: S704
