"""The service's logging: the format and level of the whole process tree, and call ids on lines.

The controller's state-change lines name a channel (`controller.states`,
`controller.channel`); an operator looks for the call id the API handed out. A filter on
the one handler adds ``call`` to every record that names a channel the service created,
from a map the service fills when it creates the channel. The format reaches the workers
and the ingest process through the environment (`protocol.logline`).
"""

from __future__ import annotations

import logging
import os

from wholecall.protocol import logline


class CallNames(logging.Filter):
    """channel id -> the service's call id, added as ``call`` to the records about it.

    Written by the event loop, read by whichever thread logs: single dict operations,
    atomic under the GIL, and never an iteration."""

    def __init__(self) -> None:
        super().__init__()
        self.names: dict[int, str] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        channel = getattr(record, "channel", None)
        if channel is not None and getattr(record, "call", None) is None:
            name = self.names.get(channel)
            if name is not None:
                record.call = name
        return True


CALL_NAMES = CallNames()
"""The service process's map (one service per process)."""


def setup(log_format: str, level: str) -> logging.Handler:
    """Configure this process and, through the environment, every child it starts."""
    os.environ[logline.ENV_FORMAT] = log_format
    os.environ[logline.ENV_LEVEL] = level
    handler = logline.configure(log_format, level)
    handler.addFilter(CALL_NAMES)
    return handler


def announce(log_format: str, text: str, event: str, **fields: object) -> None:
    """A line on stdout for whoever started the service (its address, that it stopped): as
    printed text, or as one JSON line like the logs so a log shipper reading both streams
    parses every line. Not a log record: it shows whatever the log level."""
    if log_format != "json":
        print(text, flush=True)
        return
    record = logging.LogRecord("wholecall.service", logging.INFO, __file__, 0, text, None, None)
    record.event = event
    for name, value in fields.items():
        setattr(record, name, value)
    print(logline.JsonLines().format(record), flush=True)
