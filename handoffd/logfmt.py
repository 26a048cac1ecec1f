"""The one log format of ``handoffd`` and ``handoff-server``: one ``key=value`` line per event.

``ts=... level=... logger=... event="..." key=value ...``: the words of the
message before its first ``k=v`` part become ``event``; ``extra`` fields and a
traceback (``exc=``) follow. Under journald (``JOURNAL_STREAM`` set) the line
starts with ``<priority>`` and has no ``ts`` (the journal stamps it).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import sys

__all__ = ["KeyValueFormatter", "setup_logging"]

_LOG_FIELDS = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message"}
_SYSLOG_PRIORITY = {"DEBUG": 7, "INFO": 6, "WARNING": 4, "ERROR": 3, "CRITICAL": 2}


class KeyValueFormatter(logging.Formatter):
    """One line per event: ``ts=... level=... logger=... event="..." key=value ...``."""

    def __init__(self, *, journal: bool = False) -> None:
        super().__init__()
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        """Render the record (message words become ``event``, its ``k=v`` parts stay fields)."""
        message = record.getMessage().replace("\n", " ")
        words = message.split(" ")
        split = next((i for i, w in enumerate(words) if "=" in w), len(words))
        event, fields = " ".join(words[:split]), " ".join(words[split:])
        parts = []
        if self.journal:
            parts.append(f"<{_SYSLOG_PRIORITY.get(record.levelname, 6)}>")
        else:
            ts = dt.datetime.fromtimestamp(record.created, dt.UTC)
            parts.append(f"ts={ts.strftime('%Y-%m-%dT%H:%M:%S.%fZ')}")
        parts += [f"level={record.levelname.lower()}", f"logger={record.name}"]
        parts.append(f"event={json.dumps(event)}")
        if fields:
            parts.append(fields)
        extra = {k: v for k, v in record.__dict__.items() if k not in _LOG_FIELDS}
        parts.extend(f"{k}={json.dumps(str(v))}" for k, v in extra.items())
        if record.exc_info:
            parts.append(f"exc={json.dumps(self.formatException(record.exc_info))}")
        line = " ".join(parts)
        return line.replace("> ", ">", 1) if self.journal else line


def setup_logging(level: int | str = logging.INFO) -> None:
    """Logs on stderr in the one format (journald-friendly when ``JOURNAL_STREAM`` is set)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(KeyValueFormatter(journal=bool(os.environ.get("JOURNAL_STREAM"))))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper() if isinstance(level, str) else level)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
