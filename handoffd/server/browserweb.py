"""The browser device's page: ``/pair`` and ``/app/`` (static files, no build step).

A browser becomes a device of the account by opening the invite's page URL
(``<server>/pair#token=…``, the QR code's content): the page makes an
Ed25519 key with WebCrypto (non-extractable, kept in IndexedDB), builds a
PKCS#10 CSR signed by that key and joins with ``POST /v1/join`` as
``platform=browser``, exactly like a daemon. From then on ``/app/`` is that
device (docs/browser.md).

Everything is served from ``handoffd/server/browserapp/`` (read once at
setup), under a strict Content-Security-Policy: scripts only from this origin
(no inline script), no third-party requests, no framing.
"""

from __future__ import annotations

import re
from pathlib import Path

from aiohttp import web

__all__ = ["APP_DIR", "CSP", "setup_browser"]

APP_DIR = Path(__file__).with_name("browserapp")
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' blob: data:; media-src 'self' blob:; manifest-src 'self'; "
    "worker-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cross-Origin-Opener-Policy": "same-origin",
}
_TYPES = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".css": "text/css",
    ".webmanifest": "application/manifest+json",
    ".svg": "image/svg+xml",
}
_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,40}\.(?:js|css|webmanifest|svg)")
MAX_FILE = 512 * 1024
# Answered to a share POSTed to /app/share that no service worker took (the app not opened
# since it was installed, or a browser without service workers). The body is never read.
NO_WORKER_PAGE = b"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Handoff: share not received</title>
<link rel="stylesheet" href="/app/app.css"></head>
<body><main><h1>The share did not reach Handoff</h1>
<p>Shared files go from this browser straight to your device, end-to-end encrypted: the
server never receives them, and it has not kept anything you shared.</p>
<p>Open <a href="/app/">Handoff</a> once (so this browser can take shares itself), then share
again.</p></main></body></html>
"""


def _load(directory: Path) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    for path in sorted(directory.iterdir()):
        if path.is_file() and (path.name == "index.html" or _NAME.fullmatch(path.name)):
            data = path.read_bytes()
            if len(data) > MAX_FILE:
                raise ValueError(f"{path} is larger than {MAX_FILE} bytes")
            files[path.name] = data
    if "index.html" not in files:
        raise ValueError(f"{directory} has no index.html")
    return files


def _response(name: str, data: bytes) -> web.Response:
    content_type = _TYPES[Path(name).suffix]
    response = web.Response(body=data, content_type=content_type, charset="utf-8")
    response.headers.update(HEADERS)
    # The page is the device's code: always revalidated, so a fixed server is picked up.
    response.headers["Cache-Control"] = "no-store" if name == "index.html" else "no-cache"
    if name == "sw.js":
        response.headers["Service-Worker-Allowed"] = "/app/"
    return response


def setup_browser(app: web.Application, directory: Path = APP_DIR) -> None:
    """Add ``/pair``, ``/app/``, ``/app/share`` (GET and POST) and ``/app/{file}`` to ``app``."""
    files = _load(directory)

    async def page(request: web.Request) -> web.StreamResponse:
        return _response("index.html", files["index.html"])

    async def asset(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        data = files.get(name)
        if data is None or name == "index.html":
            raise web.HTTPNotFound(text="no such file")
        return _response(name, data)

    async def app_root(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("/app/")

    async def share_without_worker(request: web.Request) -> web.StreamResponse:
        # The service worker (sw.js) takes the share target's POST in the browser; this
        # answers only when it did not. The body (the shared files) is never read, and the
        # connection is closed so that it is not drained either.
        response = web.Response(
            status=409, body=NO_WORKER_PAGE, content_type="text/html", charset="utf-8"
        )
        response.headers.update(HEADERS)
        response.headers["Cache-Control"] = "no-store"
        response.force_close()
        return response

    app.router.add_get("/pair", page)
    app.router.add_get("/app", app_root)
    app.router.add_get("/app/", page)
    app.router.add_get("/app/share", page)  # the PWA share target, after sw.js kept the share
    app.router.add_post("/app/share", share_without_worker)
    app.router.add_get("/app/{name}", asset)
