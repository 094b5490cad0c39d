"""Log lines as text or JSON on stderr, with credentials scrubbed from anything printed."""

from __future__ import annotations

import json
import logging
import re
import sys
import time

_SECRET_PATTERNS = (
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+"),
    re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]+"),  # a JWT
    re.compile(r"(?i)((?:token|password|authorization)[\"']?\s*[:=]\s*[\"']?)[^\s\"',;]+"),
    re.compile(r"(?i)(\b[a-z][a-z0-9+.-]*://)[^/@\s]+@"),  # user:password@ in a URL
)


def scrub(text: str) -> str:
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(_redact, text)
    return text


def _redact(match: re.Match[str]) -> str:
    kept = match.group(1) if match.groups() else ""
    return kept + ("<redacted>@" if match.group(0).endswith("@") else "<redacted>")


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return scrub(f"{record.levelname.lower()}: {record.getMessage()}")


def json_line(level: str, message: str, created: float | None = None, **fields: object) -> str:
    """One JSON log line: time (UTC), level, msg, then any fields; the message scrubbed."""
    moment = time.gmtime(time.time() if created is None else created)
    return json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", moment), "level": level,
                       "msg": scrub(message), **fields})


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json_line(record.levelname.lower(), record.getMessage(), record.created)


def configure(log_format: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter() if log_format == "json" else _TextFormatter())
    root = logging.getLogger("calico_crd_hook")
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    root.propagate = False
