"""Logging: readable lines by default, JSON lines with --log-format json. Never a secret:
callers log references and field names, and secret values never reach this process's logs."""

from __future__ import annotations

import json
import logging
import sys
import time
from datetime import UTC, datetime

_FIELDS = ("host", "container", "kind", "run", "reason")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in _FIELDS:
            if hasattr(record, key):
                data[key] = getattr(record, key)
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)


class TextFormatter(logging.Formatter):
    """``2026-12-02T09:41:50Z WARNING message``: the date and UTC on every line, so that lines from
    hosts in several time zones, or read days later, say when they happened."""

    converter = time.gmtime  # type: ignore[assignment]  # typeshed's signature omits the default

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(message)s", "%Y-%m-%dT%H:%M:%SZ")


def setup_logging(fmt: str = "text", level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger("consul_reconciler")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    # The SSH library logs a traceback for every failed connection; the controller reports the failure
    # itself, in one line naming the host. Its detail only with -v.
    logging.getLogger("paramiko").setLevel(logging.DEBUG if level <= logging.DEBUG else logging.CRITICAL)
