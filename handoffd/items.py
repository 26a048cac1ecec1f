"""The one model of a session item, shared by the store, the control API, its SDK and the
engine (pure: no I/O)."""

from __future__ import annotations

import base64
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_MIME = "application/octet-stream"
SOURCES = ("text", "data", "path")


@dataclass(frozen=True, slots=True)
class Item:
    """One item of a session. ``source`` says where its content is: ``text`` / ``data`` (here)
    or ``path`` (a file the daemon reads when it hands the session off); ``size`` in bytes
    (0 for a file not yet looked at), ``mtime`` of the file when it was published."""

    type: str
    name: str
    mime: str
    source: str
    size: int
    text: str | None = None
    data: bytes | None = None
    path: str | None = None
    mtime: float | None = None

    @classmethod
    def of_text(cls, type: str, name: str, text: str, *, mime: str = "text/plain") -> Item:
        """An item carrying text."""
        return cls(type, name, mime, "text", len(text.encode("utf-8", "surrogatepass")), text=text)

    @classmethod
    def of_data(cls, type: str, name: str, data: bytes, *, mime: str = DEFAULT_MIME) -> Item:
        """An item carrying bytes (sent base64)."""
        return cls(type, name, mime, "data", len(data), data=data)

    @classmethod
    def of_path(
        cls, type: str, name: str, path: str | os.PathLike[str], *, mime: str = DEFAULT_MIME
    ) -> Item:
        """An item naming a file (made absolute); its size is read when it is published."""
        return cls(type, name, mime, "path", 0, path=os.fspath(Path(path).absolute()))

    def content(self) -> bytes | None:
        """The bytes of a text or data item (None for a file)."""
        if self.text is not None:
            return self.text.encode("utf-8")
        if self.path is None:
            return self.data or b""
        return None

    def to_request(self) -> dict[str, Any]:
        """The form ``POST /v1/sessions`` takes."""
        out: dict[str, Any] = {"type": self.type, "name": self.name, "mime": self.mime}
        if self.text is not None:
            out["text"] = self.text
        if self.data is not None:
            out["data_base64"] = base64.b64encode(self.data).decode("ascii")
        if self.path is not None:
            out["path"] = self.path
        return out

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Item:
        """An item as the control API shows it (``GET /v1/sessions/{id}``)."""
        data = d.get("data_base64")
        return cls(
            type=d["type"],
            name=d["name"],
            mime=d["mime"],
            source=d["source"],
            size=d["size"],
            text=d.get("text"),
            data=None if data is None else base64.b64decode(data),
            path=d.get("path"),
        )
