"""What the routers need from the gateway, attached to the FastAPI app by the factory."""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Callable

from fastapi import Request

from serve.auth import Authenticator
from serve.generation import GenerationService
from serve.metrics import GatewayMetrics
from serve.validation import RequestValidator


@dataclass(frozen=True)
class ApiDeps:
    service: GenerationService
    validator: RequestValidator
    auth: Authenticator
    admit: Callable[[], AbstractContextManager[None]]  # a slot for one generation, or Overloaded
    metrics: GatewayMetrics


def deps(request: Request) -> ApiDeps:
    return request.app.state.deps


def authorize(request: Request) -> str | None:
    """FastAPI dependency: the caller's key digest; Unauthorized or RateLimited otherwise."""
    return deps(request).auth.check(request.headers.get("authorization"))


def request_id(request: Request) -> str:
    return request.state.request_id
