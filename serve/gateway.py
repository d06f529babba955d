"""Gateway: the ingress deployment. Wiring (stage handles → generation service → HTTP app), and
draining on shutdown. Everything else lives elsewhere: the API in `serve/api/`, orchestration in
`serve/generation/`, admission and validation in `serve/gate/`.
"""

from __future__ import annotations

from fastapi import FastAPI
from ray import serve
from ray.serve.handle import DeploymentHandle

from serve.api.app import build_api
from serve.api.deps import build_deps
from serve.config import AppConfig
from serve.generation.handles import RouteHandles, StageHandles
from serve.metrics import ServeMetrics


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
        image_checker: DeploymentHandle | None = None,
    ) -> None:
        stages = StageHandles(text_encoder, {name: RouteHandles(**handles) for name, handles in routes.items()},
                              classifier, image_checker)
        replica = serve.get_replica_context().replica_id.unique_id
        self.deps = build_deps(config, stages, ServeMetrics(), job_store, replica)

    def __serve_build_asgi_app__(self) -> FastAPI:
        # Called by Serve in the replica after __init__: the app's routes reach this replica's
        # service through app.state, not through methods of this class.
        return build_api(self.deps)

    def drain(self) -> int:
        """Stop taking work: new generations get 503 + Retry-After, this replica's job workers stop
        claiming. Returns the generations still in flight (they run to the end)."""
        self.deps.service.admission.draining = True
        if self.deps.job_runner is not None:
            self.deps.job_runner.stop_claiming()
        return self.deps.service.admission.inflight

    def inflight(self) -> int:
        return self.deps.service.admission.inflight
