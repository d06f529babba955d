"""Server-sent events: framing, and the keep-alive comments proxies need on quiet streams."""

from __future__ import annotations

import json
from typing import Any

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # no proxy buffering
KEEP_ALIVE = b": keep-alive\n\n"


def sse_event(event: str, data: dict[str, Any], event_id: int | None = None) -> bytes:
    """One event; `data` as one line of JSON (no raw newlines can break the frame)."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()
