"""Structured logs: one JSON object per line on stdout, with known secrets scrubbed."""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
from typing import Any

_SECRET_FIELD_MARKERS = ("key", "secret", "token", "password", "authorization")
_secrets: set[str] = set()
_secrets_lock = threading.Lock()
_configured = False


def register_secret(value: str) -> None:
    """Makes the formatter replace this value wherever it would appear in a log line."""
    if value and len(value) >= 6:
        with _secrets_lock:
            _secrets.add(value)


def _is_secret_field(name: str) -> bool:
    lowered = name.lower()
    # Object keys and page tokens are not secrets; credentials are.
    return any(
        marker in lowered for marker in _SECRET_FIELD_MARKERS
    ) and lowered not in {
        "s3_key",
        "delta_key",
        "key",
        "next_token",
    }


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name, value in getattr(record, "fields", {}).items():
            entry[name] = "[redacted]" if _is_secret_field(name) else value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        line = json.dumps(entry, default=str, sort_keys=True)
        with _secrets_lock:
            for secret in _secrets:
                line = line.replace(secret, "[redacted]")
        return line


class _StdoutHandler(logging.StreamHandler):
    """Writes to whatever sys.stdout is at the time, so redirected or captured output sees the lines."""

    @property
    def stream(self) -> Any:
        return sys.stdout

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def get_logger(name: str) -> logging.Logger:
    global _configured
    logger = logging.getLogger(name)
    root = logging.getLogger("receipt_label")
    if not _configured:
        handler = _StdoutHandler()
        handler.setFormatter(JsonFormatter())
        root.addHandler(handler)
        root.setLevel(os.environ.get("LOG_LEVEL", "INFO").upper())
        # The Lambda runtime's root handler would print every line a second time, unformatted.
        root.propagate = False
        _configured = True
    return logger


def log(logger: logging.Logger, level: int, message: str, **fields: Any) -> None:
    logger.log(level, message, extra={"fields": fields})
