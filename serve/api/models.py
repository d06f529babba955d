"""GET /v1/models (the routes) and GET /healthz (no key needed: probes carry none)."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from serve.api.deps import ApiDeps, authorize, deps
from serve.schemas import ErrorResponse, ModelCard, ModelList

router = APIRouter()


@router.get("/v1/models", response_model=ModelList, responses={401: {"model": ErrorResponse}},
            dependencies=[Depends(authorize)])
async def models(api: ApiDeps = Depends(deps)) -> ModelList:
    return ModelList(data=[
        ModelCard(id=info.route, created=0, resolution=info.resolution,
                  default_size=f"{info.resolution}x{info.resolution}", default=info.default)
        for info in await api.service.models()
    ])


@router.get("/healthz")
async def healthz(api: ApiDeps = Depends(deps)) -> dict:
    return {"status": "ok", "routes": list(api.service.config.routes)}
