"""Structured logs: one JSON object per line, with the event name and the request id when known."""

from __future__ import annotations

import json
import logging
from typing import Any

MAX_ERROR_CHARS = 500


def log_event(logger: logging.Logger, event: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log `{"event": event, **fields}` as one JSON line; values that are not JSON become strings."""
    if logger.isEnabledFor(level):
        logger.log(level, json.dumps({"event": event, **fields}, ensure_ascii=False, default=str))


def error_text(exc: BaseException) -> str:
    """An exception as a log field: its repr and its causes', bounded (stage errors can carry long
    tracebacks). A typed API error keeps the exception it was mapped from as its cause."""
    parts = [repr(exc)]
    while exc.__cause__ is not None and len(parts) < 3:
        exc = exc.__cause__
        parts.append(repr(exc))
    return " <- ".join(parts)[:MAX_ERROR_CHARS]
