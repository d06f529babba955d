"""What the routers need from the gateway, attached to the FastAPI app by the factory."""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Callable

from fastapi import Request

from serve.auth import Authenticator
from serve.config import AppConfig
from serve.generation import GenerationService, StageHandles
from serve.metrics import GatewayMetrics
from serve.validation import RequestValidator


@dataclass(frozen=True)
class ApiDeps:
    service: GenerationService
    validator: RequestValidator
    auth: Authenticator
    admit: Callable[[], AbstractContextManager[None]]  # a slot for one generation, or Overloaded
    metrics: GatewayMetrics


def build_deps(config: AppConfig, stages: StageHandles, metrics: GatewayMetrics,
               admit: Callable[[], AbstractContextManager[None]]) -> ApiDeps:
    """The routers' dependencies from the config: what the Gateway wires, and the unit tier too."""
    largest_n = max(config.max_images(route) for route in config.routes)  # the schema's n bound
    return ApiDeps(
        service=GenerationService(config, stages, metrics),
        validator=RequestValidator(config.gateway.limits, largest_n),
        auth=Authenticator(config.auth),
        admit=admit,
        metrics=metrics,
    )


def deps(request: Request) -> ApiDeps:
    return request.app.state.deps


def authorize(request: Request) -> str | None:
    """FastAPI dependency: the caller's key digest; Unauthorized or RateLimited otherwise."""
    return deps(request).auth.check(request.headers.get("authorization"))
