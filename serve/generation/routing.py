"""Which route serves a request, at what size, and whether it can take work now."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from models.binning import preset_sizes
from models.pipeline import Defaults
from models.registry import SAMPLERS, Sampler
from serve.checkpoint_specs import CheckpointProfile, checkpoint_profile
from serve.config import AppConfig
from serve.errors import BadRequest, ModelNotFound, NotFound, Overloaded
from serve.gate.validation import NATIVE_SIZE, parse_size
from serve.generation.events import cancel_call
from serve.generation.handles import StageHandles
from serve.schemas import ImageGenerationRequest


@dataclass(frozen=True)
class ModelInfo:
    route: str
    resolution: int
    default: bool
    description: str
    sizes: list[tuple[int, int]]  # one per aspect-ratio bin the route serves (see preset_sizes)
    defaults: Defaults  # the sampler's steps and guidance


class RouteTable:
    """The config's routes with what their checkpoints are (resolution class, sampler), learned
    once per route."""

    def __init__(self, config: AppConfig, stages: StageHandles) -> None:
        self.config, self.stages = config, stages
        self._profiles: dict[str, CheckpointProfile] = {}

    async def profile(self, route: str) -> CheckpointProfile:
        """The route's resolution class and sampler: from the config when it tells (so listing
        routes never waits on a route with no replica yet, like a 4K route before its node joins),
        else asked of the route's Denoiser once."""
        if route not in self._profiles:
            known = checkpoint_profile(self.config.routes[route].checkpoint)
            if known is None:
                known = await self.stages.routes[route].denoiser.profile.remote()
            self._profiles[route] = known
        return self._profiles[route]

    async def resolution(self, route: str) -> int:
        return (await self.profile(route)).resolution

    async def sampler(self, route: str) -> Sampler:
        """The route's sampler: its default steps and guidance, and whether guidance is embedded
        (SANA-Sprint: no negative prompt is encoded)."""
        return SAMPLERS[(await self.profile(route)).sampler]

    async def models(self) -> list[ModelInfo]:
        limits = self.config.gateway.limits
        infos = []
        for name, route in self.config.routes.items():
            resolution, sampler = await self.resolution(name), await self.sampler(name)
            sizes = preset_sizes(resolution, limits.min_side, self.config.max_side(name), limits.max_aspect_ratio)
            infos.append(ModelInfo(name, resolution, name == self.config.default_route, route.description, sizes,
                                   Defaults(sampler.default_steps, sampler.default_guidance)))
        return infos

    async def preflight(self, request: ImageGenerationRequest) -> tuple[str, int, int]:
        """(route, width, height) after the checks that need the route (its size and n limits):
        what a job's submit answers 400 for at once rather than failing the job later."""
        route, width, height = await self.pick_route(request)
        max_images = self.config.max_images(route)
        if not 1 <= request.n <= max_images:
            raise BadRequest(f"n must be in [1, {max_images}] on route {route}", "n")
        loras = self.config.routes[route].loras
        if request.lora is not None and request.lora not in loras:
            offered = ", ".join(sorted(loras)) or "none"
            raise NotFound(f"lora {request.lora!r} does not exist on route {route} (it offers: {offered}); "
                           "GET /v1/models lists each route's adapters", "lora")
        return route, width, height

    async def pick_route(self, request: ImageGenerationRequest) -> tuple[str, int, int]:
        """(route, width, height): the request's `model`, else the route its size calls for."""
        if request.model is not None and request.model not in self.config.routes:
            raise ModelNotFound(f"model {request.model!r} does not exist; GET /v1/models lists the routes", "model")
        if request.size is None or request.size == NATIVE_SIZE:
            route = request.model or self.config.default_route
            resolution = await self.resolution(route)
            return route, resolution, resolution
        width, height = parse_size(request.size)
        route = request.model or self.config.route_for_size(width, height)
        max_side = self.config.max_side(route)
        if max(width, height) > max_side:
            raise BadRequest(f"size {width}x{height} is larger than route {route} serves ({max_side} px a side)",
                             "size")
        return route, width, height

    async def ensure_capacity(self, route: str) -> None:
        """503 + Retry-After, not a hang, when the route cannot take work within its wait: no
        replica placed (no large-memory node) or every replica busy. A quick call to each stage
        stands in line like the request would."""
        wait = self.config.routes[route].capacity_wait_s
        if wait is None:
            return
        handles = self.stages.routes[route]
        probes = [handles.denoiser.ping.remote(), handles.decoder.ping.remote()]
        try:
            await asyncio.wait_for(asyncio.gather(*probes), timeout=wait)
        except asyncio.TimeoutError:
            for probe in probes:
                cancel_call(probe)
            raise Overloaded(f"route {route} has no free capacity right now", retry_after_s=max(wait, 1.0)) from None
