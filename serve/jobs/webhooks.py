"""Webhooks: signed POSTs about a job to the URL its client gave, retried with backoff.

Signed the Standard Webhooks way: `webhook-id`, `webhook-timestamp` (Unix seconds) and
`webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">` with the configured
secret, so receivers can use any Standard Webhooks library (or `verify_signature` below) and refuse
replays by timestamp. Sent only to hosts the config allows, never following redirects, so a
client cannot make the cluster call an address of its choosing.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import os
import secrets
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import httpx

from serve.config import WebhookConfig
from serve.errors import BadRequest
from serve.logs import error_text, log_event

logger = logging.getLogger("sana_serve.webhooks")

EVENTS = ("started", "completed", "failed", "cancelled")
DEFAULT_EVENTS = ("completed", "failed", "cancelled")


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    digest = hmac.new(secret.encode(), f"{message_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def verify_signature(secret: str, headers: Mapping[str, str], body: bytes, tolerance_s: float = 300,
                     now: float | None = None) -> bool:
    """What a receiver does: the signature matches and the timestamp is recent."""
    try:
        message_id, timestamp = headers["webhook-id"], int(headers["webhook-timestamp"])
        signatures = headers["webhook-signature"].split()
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance_s:
        return False
    expected = sign(secret, message_id, timestamp, body)
    return any(hmac.compare_digest(expected, candidate) for candidate in signatures)


class WebhookSender:
    def __init__(self, config: WebhookConfig, on_attempt: Callable[[str], None] = lambda result: None,
                 sleep: Callable[[float], Any] = asyncio.sleep) -> None:
        self.config, self.on_attempt, self.sleep = config, on_attempt, sleep

    @property
    def secret(self) -> str | None:
        return os.environ.get(self.config.secret_env) or None

    def check(self, webhook: Mapping[str, Any]) -> None:
        """400 naming `webhook` unless its URL may be called and webhooks can be signed."""
        url = webhook["url"]
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise BadRequest("webhook.url must be an http(s) URL", "webhook")
        if not self.allowed(url):
            raise BadRequest(f"webhook.url: host {parts.netloc!r} is not in the server's allowed webhook hosts",
                             "webhook")
        if self.secret is None:
            raise BadRequest("webhooks are not enabled on this server (no signing secret configured)", "webhook")

    def allowed(self, url: str) -> bool:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        try:
            port = parts.port
        except ValueError:
            return False
        names = {host, f"{host}:{port}"} if port is not None else {host}
        return any(allowed.lower() in names for allowed in self.config.allowed_hosts)

    async def deliver(self, url: str, event_type: str, data: dict[str, Any], request_id: str = "") -> bool:
        """POST the event until a 2xx answer or `max_attempts` tries; whether it was delivered."""
        secret = self.secret
        if secret is None or not self.allowed(url):  # the config changed since the job was accepted
            self.on_attempt("refused")
            log_event(logger, "webhook_refused", logging.WARNING, request_id=request_id, url=url)
            return False
        message_id = f"msg_{secrets.token_hex(12)}"
        body = json.dumps({"type": event_type, "timestamp": int(time.time()), "data": data}).encode()
        delay = self.config.backoff_s
        async with httpx.AsyncClient(timeout=self.config.timeout_s, follow_redirects=False) as client:
            for attempt in range(1, self.config.max_attempts + 1):
                timestamp = int(time.time())
                headers = {"content-type": "application/json", "webhook-id": message_id,
                           "webhook-timestamp": str(timestamp), "webhook-signature": sign(secret, message_id, timestamp, body)}
                try:
                    status = (await client.post(url, content=body, headers=headers)).status_code
                    problem = None if 200 <= status < 300 else f"HTTP {status}"
                except httpx.HTTPError as exc:
                    problem = error_text(exc)
                if problem is None:
                    self.on_attempt("delivered")
                    log_event(logger, "webhook_delivered", request_id=request_id, webhook_event=event_type, attempt=attempt)
                    return True
                last = attempt == self.config.max_attempts
                self.on_attempt("failed" if last else "retried")
                log_event(logger, "webhook_attempt_failed", logging.WARNING, request_id=request_id, webhook_event=event_type,
                          attempt=attempt, problem=problem)
                if not last:
                    await self.sleep(delay)
                    delay *= 2
        return False
