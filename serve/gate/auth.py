"""Optional API keys (Bearer) and a per-key token-bucket rate limit.

Keys are configured only as SHA-256 digests, so a leaked config does not leak keys. The limit is
per gateway replica: with R replicas a key may get up to R times the configured rate.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import threading
import time
from dataclasses import dataclass

from serve.config import AuthConfig
from serve.errors import RateLimited, Unauthorized


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def configured_digests(config: AuthConfig) -> tuple[str, ...]:
    from_env = os.environ.get(config.key_hashes_env, "")
    extra = tuple(d.strip().lower() for d in from_env.split(",") if d.strip())
    return tuple(config.key_hashes) + extra


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """Token bucket per key: `burst` requests at once, refilled at `per_minute` / 60 per second."""

    def __init__(self, per_minute: float, burst: int, clock=time.monotonic) -> None:
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self.clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    def take(self, key: str) -> float | None:
        """None if the request may go; else seconds until it could."""
        if self.rate <= 0:
            return None
        now = self.clock()
        with self._lock:
            bucket = self._buckets.setdefault(key, _Bucket(self.burst, now))
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
            bucket.updated = now
            if bucket.tokens >= 1.0:
                bucket.tokens -= 1.0
                return None
            return (1.0 - bucket.tokens) / self.rate


class Authenticator:
    def __init__(self, config: AuthConfig) -> None:
        self.enabled = config.enabled
        self.digests = configured_digests(config) if config.enabled else ()
        self.limiter = RateLimiter(config.requests_per_minute, config.burst)
        if self.enabled and not self.digests:
            raise ValueError(f"auth is enabled but no key digests are configured (auth.key_hashes or ${config.key_hashes_env})")

    def check(self, authorization: str | None) -> str | None:
        """The caller's key digest (None when auth is off); raises Unauthorized or RateLimited."""
        if not self.enabled:
            return None
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
        digest = key_digest(token.strip())
        if not any(hmac.compare_digest(digest, known) for known in self.digests):
            raise Unauthorized("invalid API key")
        wait = self.limiter.take(digest)
        if wait is not None:
            raise RateLimited("rate limit exceeded for this API key", retry_after_s=wait)
        return digest
