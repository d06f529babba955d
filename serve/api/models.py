"""GET /v1/models (the routes) and GET /healthz (no key needed: probes carry none)."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from serve.api.deps import ApiDeps, authorize, deps
from serve.schemas import ErrorResponse, LoraCard, ModelCard, ModelList, RouteDefaults, RouteLimits

router = APIRouter()


@router.get("/v1/models", response_model=ModelList, responses={401: {"model": ErrorResponse}},
            dependencies=[Depends(authorize)])
async def models(api: ApiDeps = Depends(deps)) -> ModelList:
    """The routes, with what each serves: its sizes (one per aspect-ratio bin), limits and defaults."""
    limits = api.config.gateway.limits
    return ModelList(data=[
        ModelCard(
            id=info.route, created=0, description=info.description, resolution=info.resolution,
            default_size=f"{info.resolution}x{info.resolution}", default=info.default,
            sizes=[f"{width}x{height}" for width, height in info.sizes],
            limits=RouteLimits(
                min_side=limits.min_side, max_side=api.config.max_side(info.route),
                max_aspect_ratio=limits.max_aspect_ratio, max_images=api.config.max_images(info.route),
                max_steps=limits.max_steps, max_guidance_scale=limits.max_guidance,
                max_prompt_chars=limits.max_prompt_chars,
            ),
            defaults=RouteDefaults(num_inference_steps=info.defaults.steps,
                                   guidance_scale=info.defaults.guidance_scale),
            loras=[LoraCard(id=lora, description=entry.description)
                   for lora, entry in api.config.routes[info.route].loras.items()],
        )
        for info in await api.service.models()
    ])


@router.get("/healthz")
async def healthz(api: ApiDeps = Depends(deps)) -> dict:
    return {"status": "ok", "routes": list(api.service.config.routes)}
