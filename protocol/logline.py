"""The one log line format of every wholecall process: text, or JSON lines.

`wholecall serve --log-format json` must give an operator's log shipper one JSON object
per line from the whole process tree: the service, its workers and its ingest process
all write to the same stderr. So the format is chosen once, by the environment variable
`WHOLECALL_LOG_FORMAT` (``text`` or ``json``) that children inherit, and every process
calls `configure()` instead of `logging.basicConfig`. It lives in protocol/ because it
is a contract between processes, like the messages, and every layer may import it.

A JSON line carries ``ts`` (UTC, ISO 8601, ms), ``level``, ``event``, ``logger``, ``msg``
and, where they apply, ``call`` (the service's call id), ``channel``, ``recording`` (the
file name relative to the recordings directory), ``worker``, ``job``, ``old``/``new``
(state changes) and ``cause``. A log call gives them as ``extra={...}``; ``event`` is
``"log"`` for a line that names none. State changes are ``call_state`` and
``recording_state`` lines.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any, TextIO

FORMATS = ("text", "json")
ENV_FORMAT = "WHOLECALL_LOG_FORMAT"
ENV_LEVEL = "WHOLECALL_LOG"
TEXT = "%(asctime)s %(name)s %(levelname)s %(message)s"
#: Fields a log call may give as `extra`, in the order a JSON line lists them.
FIELDS = ("call", "channel", "recording", "worker", "job", "old", "new", "cause")


class JsonLines(logging.Formatter):
    """One JSON object per record; a multi-line message or traceback stays one line."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "event": getattr(record, "event", "log"),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name in FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                out[name] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


class Defaults(logging.Filter):
    """Fields every record of this process carries unless it names its own (a worker's index)."""

    def __init__(self, **fields: Any) -> None:
        super().__init__()
        self.fields = fields

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in self.fields.items():
            if getattr(record, name, None) is None:
                setattr(record, name, value)
        return True


def configure(fmt: str | None = None, level: str | None = None, text: str = TEXT, stream: TextIO | None = None,
              **defaults: Any) -> logging.Handler:
    """Set up the root logger of this process: format from `fmt` or $WHOLECALL_LOG_FORMAT
    (default text), level from `level` or $WHOLECALL_LOG (default WARNING).

    Replaces handlers an earlier call installed, so a process may call it again once its
    settings are known. `defaults` are fields every JSON line gets (``worker=3``)."""
    fmt = (fmt or os.environ.get(ENV_FORMAT) or "text").lower()
    if fmt not in FORMATS:
        raise ValueError(f"log format must be text or json, got {fmt!r}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonLines() if fmt == "json" else logging.Formatter(text))
    if defaults:
        handler.addFilter(Defaults(**defaults))
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_wholecall", False):
            root.removeHandler(old)
    handler._wholecall = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel((level or os.environ.get(ENV_LEVEL) or "WARNING").upper())
    return handler
