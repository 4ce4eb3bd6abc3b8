"""Structured log: one logfmt line per event on stderr, naming what it concerns."""

from __future__ import annotations

import sys
import time
from typing import TextIO


def _value(value: object) -> str:
    text = str(value)
    if not text or any(c in text for c in ' ="\\\n'):
        quoted = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return '"' + quoted + '"'
    return text


def line(level: str, event: str, fields: dict) -> str:
    now = time.time()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"
    parts = [f"time={stamp}", f"level={level}", f"event={_value(event)}"]
    parts += [f"{key}={_value(val)}" for key, val in fields.items() if val is not None]
    return " ".join(parts)


class Log:
    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr

    def _emit(self, level: str, event: str, fields: dict) -> None:
        self.stream.write(line(level, event, fields) + "\n")
        self.stream.flush()

    def info(self, event: str, **fields: object) -> None:
        self._emit("info", event, fields)

    def warn(self, event: str, **fields: object) -> None:
        self._emit("warn", event, fields)

    def error(self, event: str, **fields: object) -> None:
        self._emit("error", event, fields)
