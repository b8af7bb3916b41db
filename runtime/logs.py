"""Process logging: plain `process: message` lines for people, or one JSON object per line with correlation ids.

Ids travel in a contextvar (`log_context`, `bind`), so everything logged while an event, a payout or a
webhook delivery is handled carries them: processor code, the connectors it calls and the libraries
under them. Contextvars do not cross into pool threads by themselves: submit with
`contextvars.copy_context().run` (processors/provider_lane.py does).
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from contextlib import contextmanager
from datetime import datetime, timezone
from types import MappingProxyType
from typing import Any, Iterator, Mapping, TextIO

FORMATS = ("text", "json")
# The ids an operator greps for, in this order after the fixed fields (others follow, sorted).
ID_FIELDS = ("correlation_id", "event_id", "payout_id", "payee_id", "run_id")
_EMPTY: Mapping[str, Any] = MappingProxyType({})
_context: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar("ledger_log_context", default=_EMPTY)
# Attributes every LogRecord has; anything else on a record came from `extra=`.
_RECORD_FIELDS = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message", "asctime", "taskName", "ledger_context",
    "color_message"}  # uvicorn's copy of the message with terminal colours


def current_context() -> dict[str, Any]:
    """The ids bound in this context (a copy)."""
    return dict(_context.get())


@contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Add these fields (None values are skipped) to every log line inside the block, then restore."""
    token = _context.set(MappingProxyType({**_context.get(), **_known(fields)}))
    try:
        yield
    finally:
        _context.reset(token)


def bind(**fields: Any) -> contextvars.Token:
    """Add these fields for the rest of the current context (a thread, an asyncio task); `unbind(token)` undoes."""
    return _context.set(MappingProxyType({**_context.get(), **_known(fields)}))


def unbind(token: contextvars.Token) -> None:
    _context.reset(token)


def _known(fields: Mapping[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in fields.items() if value is not None and value != ""}


class _StampContext(logging.Filter):
    """Take the context when the record is handled, in the thread that logged it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "ledger_context"):
            record.ledger_context = _context.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts, level, logger, process, message, the ids, extra fields, exc_info."""

    def __init__(self, process: str) -> None:
        super().__init__()
        self.process = process

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "process": self.process,
            "message": record.getMessage(),
        }
        fields = {**getattr(record, "ledger_context", _context.get()),
                  **{name: value for name, value in record.__dict__.items() if name not in _RECORD_FIELDS}}
        for name in ID_FIELDS:
            if name in fields:
                line[name] = fields.pop(name)
        for name in sorted(fields):
            line.setdefault(name, fields[name])  # an extra never overwrites a fixed field
        if record.exc_info:
            line["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack_info"] = self.formatStack(record.stack_info)
        # default=str: a datetime or a Money in `extra=` is written as its text, never dropped
        return json.dumps(line, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """`process: message`, as the processors have always printed (tracebacks follow on their own lines)."""

    def __init__(self, process: str) -> None:
        super().__init__(f"{process}: %(message)s")


def configure_logging(log_format: str, process: str, level: int = logging.INFO,
                      stream: TextIO | None = None) -> logging.Handler:
    """Route every logger of this process to one handler on `stream` (default stderr) in `log_format`.

    `level` applies to the project's loggers (`ledger.*`); libraries (Faust, aiokafka, uvicorn's error
    log) log warnings and worse, so their start-up chatter does not bury ours. Calling it again replaces
    the handler it installed before. Python warnings are logged too, so in json mode every line parses.
    """
    if log_format not in FORMATS:
        raise ValueError(f"LEDGER_LOG_FORMAT must be one of {', '.join(FORMATS)}, got {log_format!r}")
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter(process) if log_format == "json" else TextFormatter(process))
    handler.addFilter(_StampContext())
    handler._ledger_handler = True  # type: ignore[attr-defined] - so a second call finds and replaces it
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_ledger_handler", False)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("ledger").setLevel(level)
    logging.captureWarnings(True)
    return handler
