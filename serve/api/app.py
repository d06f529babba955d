"""The FastAPI app, built by a factory from the gateway's parts; routes live in their routers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from serve.api import docs, files, images, jobs, models, page
from serve.api.deps import ApiDeps
from serve.api.middleware import add_error_handling
from serve.logs import error_text, log_event

logger = logging.getLogger("sana_serve.api")

API_TITLE, API_VERSION = "sana-serve", "0.1.0"
API_DESCRIPTION = "OpenAI-style images API for NVIDIA Sana text-to-image models on Ray Serve."


def build_api(deps: ApiDeps) -> FastAPI:
    # /openapi.json and /docs are our own routes, so the schema can carry the configured limits.
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # Serve runs the ASGI lifespan in the replica: the job runner and the file sweeper work
        # while the app serves.
        if deps.job_runner is not None:
            deps.job_runner.start()
        sweeper = asyncio.ensure_future(_sweep_files(deps))
        try:
            yield
        finally:
            sweeper.cancel()
            if deps.job_runner is not None:
                await deps.job_runner.stop()

    app = FastAPI(title=API_TITLE, description=API_DESCRIPTION, version=API_VERSION,
                  openapi_url=None, docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.deps = deps
    for router in (images.router, jobs.router, files.router, models.router, docs.router, page.router):
        app.include_router(router)
    add_error_handling(app, deps.metrics, deps.replica)
    return app


async def _sweep_files(deps: ApiDeps) -> None:
    """Expired files go, then the oldest while over `files.max_bytes` (every replica sweeps the
    shared folder; removals that race are harmless)."""
    every_s = min(300.0, max(10.0, deps.config.files.ttl_s / 10))
    while True:
        await asyncio.sleep(every_s)
        try:
            await asyncio.to_thread(deps.files.sweep)
        except Exception as exc:  # noqa: BLE001 - a full or read-only disk must not stop serving
            log_event(logger, "file_sweep_failed", logging.WARNING, error=error_text(exc))
