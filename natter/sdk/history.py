"""A client's history: every operation a Connection makes and every message it shows, as records.

A `Connection` given a `Recorder` reports, for its device (`dev`, "username/device_id"):

- `send` (a new send: `key` = client_msg_id, `thread` or `to`, `text`), `transmit` (the keys
  written on stream number `stream`, first time or again), and the send's outcome: `sent`
  (`thread`, `seq`, `msg_id`), `retry` (refused for now: `code`, `reason`; it goes again),
  `refused` (refused for good), `abandoned` (the connection closed before an answer);
- `hello` (a new stream: `stream`, the `cursors` it resumes from), `connect` (welcomed:
  `node`, `address`), `disconnect` (`reason`);
- `push` (a message arrived: `thread`, `seq`) and `show` (the application took it from the
  connection's events, so it is on screen: `thread`, `seq`, `msg_id`, `sender`, `sdev`,
  `key`, `text`).

`devtools/history.py` checks such a history for lost, duplicated and reordered messages.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import IO, Protocol


class Recorder(Protocol):
    """Where a Connection reports what it did; `fields` are JSON values."""

    def record(self, op: str, **fields: object) -> None: ...


class JsonlRecorder:
    """Appends one JSON object a line to a file: `t` (seconds since it opened), `op`, fields.

    Thread-safe, buffered, flushed by `flush()` and `close()`; several connections (and the
    program driving them) share one.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[str] = path.open("a", encoding="utf-8")
        self._start = time.monotonic()
        self._lock = threading.Lock()
        self.count = 0

    def record(self, op: str, **fields: object) -> None:
        line = json.dumps(
            {"t": round(time.monotonic() - self._start, 4), "op": op, **fields},
            separators=(",", ":"),
            ensure_ascii=False,
        )
        with self._lock:
            self._file.write(line + "\n")
            self.count += 1

    def flush(self) -> None:
        with self._lock:
            self._file.flush()

    def close(self) -> None:
        with self._lock:
            if not self._file.closed:
                self._file.close()
