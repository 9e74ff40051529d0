"""Structured logs: one JSON object per line (or plain text), fields passed as ``extra``.

``setup_logging`` is called once by :mod:`detector.runtime.build`; every daemon component gets
the returned logger (or a child of it) injected, never a global. A call such as
``log.info("kafka partitions assigned", extra={"partitions": [0, 2]})`` becomes
``{"ts": "2026-01-01T00:00:00.123Z", "level": "INFO", "logger": "podguard.source",
"msg": "kafka partitions assigned", "partitions": [0, 2]}``.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import IO, Any

_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for k, v in record.__dict__.items():
            if k not in _STANDARD and not k.startswith("_"):
                doc[k] = v
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record)
        extras = {k: v for k, v in record.__dict__.items()
                  if k not in _STANDARD and not k.startswith("_")}
        if extras:
            base += " " + " ".join(f"{k}={v}" for k, v in extras.items())
        return base


def setup_logging(*, fmt: str = "json", level: str = "INFO",
                  stream: IO[str] | None = None) -> logging.Logger:
    """The ``podguard`` logger with one handler on ``stream`` (stderr by default)."""
    log = logging.getLogger("podguard")
    for h in list(log.handlers):
        log.removeHandler(h)
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter(
        "%(asctime)s %(levelname)s %(name)s: %(message)s"))
    log.addHandler(handler)
    log.setLevel(level)
    log.propagate = False
    # kafka-python logs every reconnect attempt at WARNING/ERROR: keep only real errors
    logging.getLogger("kafka").setLevel(logging.CRITICAL)
    return log
