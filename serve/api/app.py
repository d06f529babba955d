"""The FastAPI app, built by a factory from the gateway's parts; routes live in their routers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from serve.api import docs, files, images, jobs, models
from serve.api.deps import ApiDeps
from serve.api.middleware import add_error_handling

API_TITLE, API_VERSION = "sana-serve", "0.1.0"
API_DESCRIPTION = "OpenAI-style images API for NVIDIA Sana text-to-image models on Ray Serve."


def build_api(deps: ApiDeps) -> FastAPI:
    # /openapi.json and /docs are our own routes, so the schema can carry the configured limits.
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # Serve runs the ASGI lifespan in the replica: the job runner works while the app serves.
        if deps.job_runner is not None:
            deps.job_runner.start()
        try:
            yield
        finally:
            if deps.job_runner is not None:
                await deps.job_runner.stop()

    app = FastAPI(title=API_TITLE, description=API_DESCRIPTION, version=API_VERSION,
                  openapi_url=None, docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.deps = deps
    for router in (images.router, jobs.router, files.router, models.router, docs.router):
        app.include_router(router)
    add_error_handling(app, deps.metrics, deps.replica)
    return app
