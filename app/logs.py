"""How natter processes log: JSON lines (or plain text), with request ids, never secrets.

The standard library's logging with a JSON formatter, rather than structlog: every module
(and every library natter uses: grpc, aiohttp, SQLAlchemy) already logs through the
standard `logging` module with lazy `%s` arguments, so one formatter on the root handler
turns all of it into JSON lines without touching a call site, and without a dependency.

Each line carries the time (UTC), level, logger, message, the role and node, and the
request id — of the RPC or device stream being served, the same in every process that
call reaches in cluster mode (it travels in `x-natter-request-id` metadata). Message text
is never logged, bearer tokens are masked if a message ever holds one, and SQL parameters
are hidden by the store.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

from natter.rpc import request_id
from natter.settings import Settings

QUIET = ("sqlalchemy", "aiosqlite", "asyncpg", "asyncmy", "aiohttp.access", "hpack", "asyncio")
_BEARER = re.compile(r"(?i)(bearer\s+|natter\.bearer\.)[A-Za-z0-9_\-.~+/=]+")


def redact(text: str) -> str:
    return _BEARER.sub(r"\1[redacted]", text)


class JsonFormatter(logging.Formatter):
    """One JSON object per record."""

    def __init__(self, role: str, node: str) -> None:
        super().__init__()
        self.role = role
        self.node = node

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
            "role": self.role,
        }
        if self.node:
            out["node"] = self.node
        rid = getattr(record, "request_id", "-")
        if rid != "-":
            out["request_id"] = rid
        if record.exc_info:
            out["error"] = redact(self.formatException(record.exc_info))
        return json.dumps(out, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class _RequestId(logging.Filter):
    """Stamps each record with the request id of the task that logs it."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return True


def configure(settings: Settings) -> None:
    """Route every logger to stderr in the configured format and level."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_RequestId())
    if settings.log_format == "text":
        handler.setFormatter(TextFormatter())
    else:
        handler.setFormatter(JsonFormatter(settings.role, settings.node_id))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.log_level.upper())
    # Libraries that would log statements, rows or payloads at DEBUG: never below WARNING,
    # whatever the level, so message text cannot reach the log through them.
    for name in QUIET:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
    logging.captureWarnings(True)
