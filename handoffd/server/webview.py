"""How the server's web pages look: jinja2 templates (autoescaped), static files, headers.

Templates live in ``handoffd/server/templates/`` and static files (the stylesheet, the
script that shows times in the browser's time zone) in ``handoffd/server/static/``,
served at ``/static/``. A page is ``render(name, title=…, session=…, **values)``; every
value is HTML-escaped unless it is ``markupsafe.Markup``. The Content-Security-Policy
allows only this origin's stylesheet and scripts (no inline script or style).
"""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import Any

import jinja2
from aiohttp import web
from markupsafe import Markup

from handoffd import identity

HERE = Path(__file__).resolve().parent
TEMPLATES_DIR = HERE / "templates"
STATIC_DIR = HERE / "static"
STATIC_PREFIX = "/static"

CSP = (
    "default-src 'none'; style-src 'self'; script-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}


def utc(ts: float | None, fmt: str = "%Y-%m-%d %H:%M") -> str:
    """``ts`` in UTC for reading (``-`` when unknown)."""
    return time.strftime(fmt, time.gmtime(ts)) + " UTC" if ts else "-"


def iso(ts: float) -> str:
    """``ts`` as an ISO 8601 UTC time (a ``<time datetime>``)."""
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def short_id(device_id: str) -> str:
    """The first two groups of a device id, for narrow screens (the full id is on demand)."""
    grouped = identity.format_device_id(device_id)
    head = "-".join(grouped.split("-")[:2])
    return head if head == grouped else head + "…"


def csrf_field(token: str) -> Markup:
    """The hidden CSRF field of a form."""
    return Markup('<input type="hidden" name="csrf" value="{}">').format(token)


def when(ts: float | None) -> Markup:
    """A ``<time>`` element: UTC in the page, the browser's zone once the script ran."""
    if not ts:
        return Markup("-")
    return Markup('<time datetime="{}">{}</time>').format(iso(ts), utc(ts))


def device_id(value: str) -> Markup:
    """A device id shortened, with the full grouped id as its title."""
    return Markup('<code class="devid" title="{}">{}</code>').format(
        identity.format_device_id(value), short_id(value)
    )


def make_environment(*extra_dirs: Path) -> jinja2.Environment:
    """The template environment: this package's templates (after ``extra_dirs``), autoescaped.

    Every template is read and compiled here, once: rendering a page touches no file.
    """
    sources: dict[str, str] = {}
    for folder in (TEMPLATES_DIR, *reversed(extra_dirs)):
        for path in folder.glob("*.html"):
            sources[path.name] = path.read_text(encoding="utf-8")
    env = jinja2.Environment(
        loader=jinja2.DictLoader(sources),
        auto_reload=False,
        cache_size=-1,
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(iso=iso, utc=utc, short_id=short_id, grouped=identity.format_device_id)
    env.globals.update(csrf_field=csrf_field, when=when, device_id=device_id)
    for name in sources:
        env.get_template(name)
    return env


TEMPLATES: web.AppKey[jinja2.Environment] = web.AppKey("handoff_templates", jinja2.Environment)


def setup_views(app: web.Application) -> jinja2.Environment:
    """Put the template environment on ``app`` and serve ``/static/`` (once)."""
    if TEMPLATES not in app:
        app[TEMPLATES] = make_environment()
        app.router.add_static(STATIC_PREFIX, STATIC_DIR, follow_symlinks=False)
    return app[TEMPLATES]


def render(
    request: web.Request, name: str, *, title: str, status: int = 200, **values: Any
) -> web.Response:
    """The page ``name`` (a template) as an HTML response."""
    values.setdefault("session", None)
    text = request.app[TEMPLATES].get_template(name).render(title=title, **values)
    return web.Response(text=text, content_type="text/html", status=status)
