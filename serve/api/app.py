"""The FastAPI app, built by a factory from the gateway's parts; routes live in their routers."""

from __future__ import annotations

from fastapi import FastAPI

from serve.api import docs, images, models
from serve.api.deps import ApiDeps
from serve.api.middleware import add_error_handling

API_TITLE, API_VERSION = "sana-serve", "0.1.0"
API_DESCRIPTION = "OpenAI-style images API for NVIDIA Sana text-to-image models on Ray Serve."


def build_api(deps: ApiDeps) -> FastAPI:
    # /openapi.json and /docs are our own routes, so the schema can carry the configured limits.
    app = FastAPI(title=API_TITLE, description=API_DESCRIPTION, version=API_VERSION,
                  openapi_url=None, docs_url=None, redoc_url=None)
    app.state.deps = deps
    for router in (images.router, models.router, docs.router):
        app.include_router(router)
    add_error_handling(app, deps.metrics)
    return app
