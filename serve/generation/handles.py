"""How the generation service reaches the stage deployments."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class RouteHandles:
    denoiser: Any
    decoder: Any


@dataclass(frozen=True)
class StageHandles:
    """How the service reaches the stages: `handle.method.remote(...)` returns an awaitable
    response that may be passed, unawaited, into the next call, and can be cancelled (Ray Serve's
    DeploymentHandles in production, fakes in the unit tests)."""

    text_encoder: Any
    routes: dict[str, RouteHandles]
    classifier: Any | None = None
    image_checker: Any | None = None
