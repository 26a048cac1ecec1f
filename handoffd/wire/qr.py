"""An invite URL as a QR code (SVG for pages and the control API, block characters for a terminal)."""

from __future__ import annotations

import io
from typing import TextIO

import segno


def qr_svg(url: str) -> str:
    """The invite URL as an SVG QR code (a standalone SVG document)."""
    buf = io.BytesIO()
    segno.make(url, error="m").save(buf, kind="svg", scale=4, border=2, xmldecl=False)
    return buf.getvalue().decode("utf-8")


def qr_terminal(url: str, out: TextIO | None = None) -> None:
    """Print the invite URL as a QR code with block characters."""
    segno.make(url, error="m").terminal(out=out, compact=True)
