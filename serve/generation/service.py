"""The generation service: a validated request in, encoded images and their metadata out.

A plain class with no HTTP in it, so the sync endpoint, streaming, jobs and the web page all run
a generation the same way. It reads as the numbered steps of one request (`_run`); each step
lives beside it in this package: routing and capacity (`routing`), the prompt's safety layers
(`prompt_safety`), the stage calls with retries and previews (`stage_calls`), the image check and
encoding (`image_steps`), progress and cancellation (`events`). It talks to the stage deployments
through handles (`handles`) and raises only typed `ApiError`s.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import wraps
from typing import Any, TypeVar

from models.binning import bin_size
from models.pipeline import Defaults, GenerationRequest, resolve_request
from serve.config import AppConfig
from serve.errors import ApiError, Cancelled, DeadlineExceeded, to_api_error
from serve.gate.admission import Admission, Ticket
from serve.generation.events import EventCallback, Progress
from serve.generation.handles import StageHandles
from serve.generation.image_steps import ImageSteps
from serve.generation.prompt_safety import PromptSafety
from serve.generation.result import GenerationResult, timings
from serve.generation.routing import ModelInfo, RouteTable
from serve.generation.stage_calls import StageCalls
from serve.logs import log_event
from serve.metrics import GatewayMetrics
from serve.schemas import ImageGenerationRequest

logger = logging.getLogger("sana_serve.generation")


@dataclass(frozen=True)
class Admitted:
    """A request's size and its admission ticket (which knows the route; finished when the
    generation ends)."""

    width: int
    height: int
    ticket: Ticket

    @property
    def route(self) -> str:
        return self.ticket.route


_Method = TypeVar("_Method", bound=Callable[..., Awaitable[Any]])


def _typed_errors(method: _Method) -> _Method:
    """The service's callers see ApiErrors only: a stage's or Ray's exception is mapped here."""

    @wraps(method)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return await method(*args, **kwargs)
        except ApiError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise to_api_error(exc) from exc

    return wrapper  # type: ignore[return-value]


class GenerationService:
    """Route → capacity → safety → resolve → stages (with retry) → image check → watermark and
    encode, for one request."""

    def __init__(self, config: AppConfig, stages: StageHandles, metrics: GatewayMetrics) -> None:
        self.config = config
        self.stages = stages
        self.metrics = metrics
        self.routes = RouteTable(config, stages)
        self.admission = Admission(config.gateway.admission, config.queue_budgets(), metrics.shed)
        self.prompt_safety = PromptSafety(config, stages, metrics)
        self.image_steps = ImageSteps(config, stages, metrics)
        self.stage_calls = StageCalls(config, stages, metrics, self.prompt_safety, self.image_steps)

    @_typed_errors
    async def generate(
        self,
        request: ImageGenerationRequest,
        *,
        request_id: str,
        received_at: float | None = None,
        on_event: EventCallback | None = None,
        cancel: asyncio.Event | None = None,
        timeout_s: float | None = None,
        shed: bool = True,
        admitted: Admitted | None = None,
    ) -> GenerationResult:
        """Run one validated request. `on_event` hears each milestone; setting `cancel` stops the
        generation (and its in-flight stage call) with `Cancelled`. Past `timeout_s` (from
        receipt) it stops with DeadlineExceeded (504). With `shed` (not for queued jobs) admission
        may refuse it, or drop it while queued past the route's budget, with Overloaded (503).
        `admitted` is what `admit` gave when the caller had to know before it started."""
        started = time.perf_counter() if received_at is None else received_at
        progress = Progress(request_id, started, on_event, cancel)
        deadline = None
        if timeout_s is not None:
            left = max(0.0, timeout_s - (time.perf_counter() - started))
            deadline = asyncio.get_running_loop().call_later(left, progress.abort, DeadlineExceeded(
                f"the request did not finish within its X-Request-Timeout of {timeout_s:g} s; its work was cancelled"))
        try:
            admitted = admitted or await self.admit(request, shed)
            with admitted.ticket as ticket:
                return await self._queued(request, progress, admitted, ticket)
        except BaseException as exc:
            # Cancelled by the caller, or the caller's task was (its HTTP client went away), or
            # stopped by its deadline or queue budget: nothing upstream keeps working for nobody.
            if exc is progress.failure or isinstance(exc, (Cancelled, asyncio.CancelledError)):
                progress.cancel_in_flight()
                self.metrics.generation_cancelled()
                log_event(logger, "request_cancelled", request_id=request_id,
                          reason=progress.failure.type if progress.failure else "cancelled")
            raise
        finally:
            if deadline is not None:
                deadline.cancel()

    @_typed_errors
    async def admit(self, request: ImageGenerationRequest, shed: bool = True) -> Admitted:
        """Route, size and n checked, and a place taken in the route's admission; Overloaded (503)
        when the route's queue is longer than its budget."""
        route, width, height = await self.routes.preflight(request)
        ticket = self.admission.admit(route, request.n, shed=shed)
        if ticket.estimate.wait_s is not None:
            self.metrics.queue_wait(route, ticket.estimate.wait_s)
        return Admitted(width, height, ticket)

    @_typed_errors
    async def models(self) -> list[ModelInfo]:
        return await self.routes.models()

    @_typed_errors
    async def preflight(self, request: ImageGenerationRequest) -> tuple[str, int, int]:
        return await self.routes.preflight(request)

    async def _queued(self, request: ImageGenerationRequest, progress: Progress, admitted: Admitted,
                      ticket: Ticket) -> GenerationResult:
        """`_run`, dropped with the route's queue timeout if it is still queued well past its
        budget rather than left to time out."""
        queue_timer = None
        if ticket.drop_after_s is not None:
            queue_timer = asyncio.get_running_loop().call_later(ticket.drop_after_s, self._queue_timeout, ticket,
                                                                progress)
        try:
            return await self._run(request, progress, admitted, ticket)
        finally:
            if queue_timer is not None:
                queue_timer.cancel()

    def _queue_timeout(self, ticket: Ticket, progress: Progress) -> None:
        if not ticket.is_started:
            progress.abort(self.admission.queue_timeout(ticket))

    async def _run(self, request: ImageGenerationRequest, progress: Progress, admitted: Admitted,
                   ticket: Ticket) -> GenerationResult:
        # 1. Route and size (checked, and a place taken, at admission).
        route, width, height = admitted.route, admitted.width, admitted.height
        resolution, sampler = await self.routes.resolution(route), await self.routes.sampler(route)
        progress.emit("routed", route=route, size=f"{width}x{height}")

        # 2. Capacity: a route that cannot take work within its wait answers 503 now, not later.
        await self.routes.ensure_capacity(route)

        # 3. Safety, first layer: blocklisted words become ❤️ (the classifier runs in step 5).
        prompt, negative = await self.prompt_safety.filter_words(request.prompt, request.negative_prompt)

        # 4. Defaults, seed, and the aspect-ratio bin the image is generated at.
        resolved = resolve_request(
            GenerationRequest(prompt=prompt, negative_prompt=negative, width=width, height=height,
                              num_images=request.n, steps=request.num_inference_steps,
                              guidance_scale=request.guidance_scale, seed=request.seed),
            resolution,
            Defaults(sampler.default_steps, sampler.default_guidance),
        )
        bin_wh = bin_size(width, height, resolution)

        # 5. Stages: (classifier ∥ encode) → denoise → decode, retried if a replica dies mid-call.
        pixels, revised_prompt = await self.stage_calls.run(route, sampler, resolved, bin_wh, progress, ticket,
                                                            request)

        # 6. The image safety check (on routes that have it): flagged images replaced or flagged.
        checked = await self.image_steps.check(route, pixels.images, progress)

        # 7. Watermark and encode images off the event loop, marked with their provenance.
        progress.emit("encoding_images")
        encode_started = time.perf_counter()
        provenance = self.image_steps.provenance(route, sampler, resolved, revised_prompt, request)
        images = await self.image_steps.finish(checked, request.output_format, provenance)
        image_encode_ms = (time.perf_counter() - encode_started) * 1000

        # 8. Timings, metrics, log.
        spent = timings(pixels, checked.check_ms, image_encode_ms, (time.perf_counter() - progress.started) * 1000)
        self.metrics.request_done(route, spent.model_dump(), resolved.num_images)
        log_event(logger, "request_done", request_id=progress.request_id, route=route, n=resolved.num_images,
                  size=f"{width}x{height}", seed=resolved.seed, timings_ms=spent.model_dump(),
                  flagged=sum(1 for f in checked.flagged if f))
        progress.emit("done", timings_ms=spent.model_dump())
        return GenerationResult(
            images=images, output_format=request.output_format, revised_prompt=revised_prompt, route=route,
            width=width, height=height, seed=resolved.seed, timings=spent,
            batch_size=pixels.timings["denoise"].batch_size,
            nodes={name: timing.node for name, timing in pixels.timings.items()}, flagged=checked.flagged,
        )
