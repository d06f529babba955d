"""Gateway: the ingress deployment. Wiring (stage handles → generation service → HTTP app) and
admission (how many generations one replica takes at once). Everything else lives elsewhere:
the API in `serve/api/`, orchestration in `serve/generation.py`, validation in `serve/validation.py`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from fastapi import FastAPI
from ray import serve
from ray.serve.handle import DeploymentHandle

from serve.api.app import build_api
from serve.api.deps import build_deps
from serve.config import AppConfig
from serve.errors import Overloaded
from serve.generation import RouteHandles, StageHandles
from serve.metrics import ServeMetrics


class Admission:
    """At most `max_inflight` generations at once in this replica (0: no cap). Past it, 503 with
    a Retry-After of a typical request's time (a moving average of admitted requests)."""

    def __init__(self, max_inflight: int, clock=time.perf_counter) -> None:
        self.max_inflight = max_inflight
        self.clock = clock
        self.inflight = 0
        self.typical_s = 1.0

    @contextmanager
    def slot(self) -> Iterator[None]:
        if self.max_inflight and self.inflight >= self.max_inflight:
            raise Overloaded("the server is busy; retry later", retry_after_s=max(1.0, self.typical_s))
        self.inflight += 1
        started = self.clock()
        try:
            yield
        finally:
            self.inflight -= 1
        self.typical_s = 0.8 * self.typical_s + 0.2 * (self.clock() - started)


@serve.deployment(name="Gateway", ray_actor_options={"num_cpus": 0}, max_ongoing_requests=64)
@serve.ingress()
class Gateway:
    def __init__(
        self,
        config: AppConfig,
        text_encoder: DeploymentHandle,
        routes: dict[str, dict[str, DeploymentHandle]],
        classifier: DeploymentHandle | None = None,
        job_store: DeploymentHandle | None = None,
    ) -> None:
        stages = StageHandles(text_encoder, {name: RouteHandles(**handles) for name, handles in routes.items()},
                              classifier)
        self.admission = Admission(config.gateway.max_inflight)
        replica = serve.get_replica_context().replica_id.unique_id
        self.deps = build_deps(config, stages, ServeMetrics(), self.admission.slot, job_store, replica)

    def __serve_build_asgi_app__(self) -> FastAPI:
        # Called by Serve in the replica after __init__: the app's routes reach this replica's
        # service through app.state, not through methods of this class.
        return build_api(self.deps)
