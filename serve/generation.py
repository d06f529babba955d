"""The generation service: a validated request in, encoded images and their metadata out.

A plain class with no HTTP in it, so the sync endpoint, streaming, jobs and the web page can all
run a generation the same way. It talks to the stage deployments through handles (Ray Serve's
DeploymentHandles in production, fakes in the unit tests) and raises only typed `ApiError`s.

Orchestration passes each stage's DeploymentResponse straight into the next stage's call without
awaiting it, so embeddings and latents move stage to stage through Ray's object store; only the
final pixels come back here, and they are encoded in a thread pool, off the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from functools import wraps
from typing import Any, TypeVar

import numpy as np

from models.binning import bin_size, preset_sizes
from models.pipeline import Defaults, GenerationRequest, ResolvedRequest, resolve_request
from models.registry import SAMPLERS, Sampler
from serve.admission import Admission, Ticket
from serve.checkpoint_specs import CheckpointProfile, checkpoint_profile
from serve.config import AppConfig
from serve.content_credentials import ContentCredentials
from serve.errors import (
    ApiError,
    BadRequest,
    Cancelled,
    DeadlineExceeded,
    ModelNotFound,
    NotFound,
    Overloaded,
    StageFailed,
    is_replica_failure,
    to_api_error,
)
from serve.images import encode_image
from serve.logs import error_text, log_event
from serve.metrics import GatewayMetrics
from serve.payloads import DenoiseSpec, Latents, Pixels
from serve.provenance import Provenance, parameters_text
from serve.schemas import ImageGenerationRequest, Timings
from serve.validation import NATIVE_SIZE, parse_size
from serve.watermark import Watermark
from serve.word_filter import WordFilter

logger = logging.getLogger("sana_serve.generation")


@dataclass(frozen=True)
class RouteHandles:
    denoiser: Any
    decoder: Any


@dataclass(frozen=True)
class StageHandles:
    """How the service reaches the stages: `handle.method.remote(...)` returns an awaitable
    response that may be passed, unawaited, into the next call, and can be cancelled."""

    text_encoder: Any
    routes: dict[str, RouteHandles]
    classifier: Any | None = None
    image_checker: Any | None = None


@dataclass(frozen=True)
class GenerationEvent:
    """A milestone of one generation, for progress reporting (streaming and jobs build on these)."""

    # routed, encoding, denoising, step (detail: step, total), partial_image (index, images, size),
    # decoding, encoding_images, done (timings_ms)
    kind: str
    request_id: str
    elapsed_ms: float
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def stage(self) -> str:
        """The stage a client is told: every `step` is part of `denoising`."""
        return "denoising" if self.kind == "step" else self.kind


EventCallback = Callable[[GenerationEvent], None]


@dataclass(frozen=True)
class GenerationResult:
    images: list[bytes]  # encoded in `output_format`
    output_format: str
    revised_prompt: str  # the prompt as generated, after the safety layers
    route: str
    width: int
    height: int
    seed: int
    timings: Timings
    batch_size: int  # images in the denoiser batch this request ran in
    nodes: dict[str, str]  # stage → node that ran it
    flagged: list[bool | None]  # per image: the image check's verdict; None where it did not run


@dataclass(frozen=True)
class CheckedImages:
    """A request's images after the image safety check: replaced where flagged under `replace`."""

    images: list[np.ndarray]
    flagged: list[bool | None]  # None: not checked (route without the check, or it failed open)
    replaced: list[bool]
    check_ms: float = 0.0  # time spent checking (0 where the route has no check)


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


@dataclass(frozen=True)
class ModelInfo:
    route: str
    resolution: int
    default: bool
    description: str
    sizes: list[tuple[int, int]]  # one per aspect-ratio bin the route serves (see preset_sizes)
    defaults: Defaults  # the sampler's steps and guidance


class _Progress:
    """Emits events and honours cancellation for one generation; remembers the stage calls in
    flight so that a cancel (or the caller's task being cancelled) stops them all."""

    def __init__(self, request_id: str, started: float, on_event: EventCallback | None,
                 cancel: asyncio.Event | None) -> None:
        self.request_id, self.started, self.on_event = request_id, started, on_event
        self.cancel = cancel or asyncio.Event()
        self.in_flight: list[Any] = []
        self.failure: ApiError | None = None  # why the service itself stopped it (deadline, queue budget)

    @property
    def wanted(self) -> bool:
        return self.on_event is not None

    def elapsed_ms(self) -> float:
        return round((time.perf_counter() - self.started) * 1000, 3)

    def emit(self, kind: str, **detail: Any) -> None:
        self.check()
        if self.on_event is not None:
            self.on_event(GenerationEvent(kind, self.request_id, self.elapsed_ms(), detail))

    def check(self) -> None:
        if self.cancel.is_set():
            raise self.stopped()

    def stopped(self) -> ApiError:
        return self.failure or Cancelled("the generation was cancelled")

    def abort(self, failure: ApiError) -> None:
        """Stop the generation with `failure` (a 504 or 503) instead of Cancelled."""
        if not self.cancel.is_set():
            self.failure = failure
            self.cancel.set()

    def track(self, response: Any) -> Any:
        if response is not None:
            self.in_flight.append(response)
        return response

    def cancel_in_flight(self) -> None:
        for response in self.in_flight:
            _cancel(response)
        self.in_flight.clear()

    async def result(self, response: Awaitable[Any]) -> Any:
        """`await response`, unless cancellation comes first: then Cancelled."""
        call = asyncio.ensure_future(response)
        cancelled = asyncio.ensure_future(self.cancel.wait())
        try:
            await asyncio.wait({call, cancelled}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            cancelled.cancel()
            if not call.done():
                call.cancel()
        if not call.done() or call.cancelled():
            raise self.stopped()
        return call.result()

    async def items(self, stream: AsyncIterator[Any]) -> AsyncIterator[Any]:
        """The items of a streaming stage call, until it ends or cancellation comes."""
        iterator = aiter(stream)
        while True:
            try:
                item = await self.result(anext(iterator))
            except StopAsyncIteration:
                return
            yield item


def _cancel(response: Any) -> None:
    cancel = getattr(response, "cancel", None)
    if cancel is not None:
        cancel()


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
        words = config.safety.word_filter
        self.word_filter = (
            WordFilter.from_lists(words.use_default_list, words.extra_words, list(words.extra_files))
            if words.enabled else None
        )
        self.admission = Admission(config.gateway.admission, config.queue_budgets(), metrics.shed)
        self._profiles: dict[str, CheckpointProfile] = {}
        self._encode_pool = ThreadPoolExecutor(config.gateway.image_encode_threads, thread_name_prefix="image-encode")
        marking = config.gateway.watermark
        self.watermark = Watermark(marking.payload) if marking.enabled else None
        self.credentials = ContentCredentials(config.gateway.c2pa) if config.gateway.c2pa is not None else None

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
        progress = _Progress(request_id, started, on_event, cancel)
        deadline = None
        if timeout_s is not None:
            left = max(0.0, timeout_s - (time.perf_counter() - started))
            deadline = asyncio.get_running_loop().call_later(left, progress.abort, DeadlineExceeded(
                f"the request did not finish within its X-Request-Timeout of {timeout_s:g} s; its work was cancelled"))
        try:
            return await self._generate(request, request_id, started, progress, shed, admitted)
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
        route, width, height = await self.preflight(request)
        ticket = self.admission.admit(route, request.n, shed=shed)
        if ticket.estimate.wait_s is not None:
            self.metrics.queue_wait(route, ticket.estimate.wait_s)
        return Admitted(width, height, ticket)

    async def _generate(self, request: ImageGenerationRequest, request_id: str, started: float,
                        progress: _Progress, shed: bool, admitted: Admitted | None) -> GenerationResult:
        # 1. Route and size; n within the route's limit; admission.
        admitted = admitted or await self.admit(request, shed)
        with admitted.ticket as ticket:
            return await self._admitted(request, request_id, started, progress, admitted.route, admitted.width,
                                        admitted.height, ticket)

    async def _admitted(self, request: ImageGenerationRequest, request_id: str, started: float,
                        progress: _Progress, route: str, width: int, height: int, ticket: Ticket) -> GenerationResult:
        queue_timer = None
        if ticket.drop_after_s is not None:  # still queued well past the budget: dropped, not left to time out
            queue_timer = asyncio.get_running_loop().call_later(ticket.drop_after_s, self._queue_timeout, ticket,
                                                                progress)
        try:
            return await self._stages_and_images(request, request_id, started, progress, route, width, height, ticket)
        finally:
            if queue_timer is not None:
                queue_timer.cancel()

    def _queue_timeout(self, ticket: Ticket, progress: _Progress) -> None:
        if not ticket.is_started:
            progress.abort(self.admission.queue_timeout(ticket))

    async def _stages_and_images(self, request: ImageGenerationRequest, request_id: str, started: float,
                                 progress: _Progress, route: str, width: int, height: int,
                                 ticket: Ticket) -> GenerationResult:
        resolution, sampler = await self.resolution(route), await self.sampler(route)
        progress.emit("routed", route=route, size=f"{width}x{height}")

        # 2. Capacity: a route that cannot take work within its wait answers 503 now, not later.
        await self.ensure_capacity(route)

        # 3. Safety, first layer: blocklisted words become ❤️ (the classifier runs in step 5).
        prompt, negative = await self._filter_words(request.prompt, request.negative_prompt)

        # 4. Defaults, seed, and the aspect-ratio bin the image is generated at.
        resolved = resolve_request(
            GenerationRequest(
                prompt=prompt,
                negative_prompt=negative,
                width=width,
                height=height,
                num_images=request.n,
                steps=request.num_inference_steps,
                guidance_scale=request.guidance_scale,
                seed=request.seed,
            ),
            resolution,
            Defaults(sampler.default_steps, sampler.default_guidance),
        )
        bin_wh = bin_size(width, height, resolution)

        # 5. Stages: (classifier ∥ encode) → denoise → decode, retried if a replica dies mid-call.
        pixels, revised_prompt = await self._run_stages(route, resolved, bin_wh, progress, ticket,
                                                        request.partial_images or 0, request.output_format,
                                                        request.lora, request.lora_scale)

        # 6. The image safety check (on routes that have it): flagged images replaced or flagged.
        checked = await self._check_images(route, pixels.images, progress)

        # 7. Watermark and encode images off the event loop (a placeholder gets neither the
        # watermark nor the parameters: it was not generated).
        progress.emit("encoding_images")
        encode_started = time.perf_counter()
        provenance = self._provenance(route, resolved, revised_prompt, request)
        images = await self._encode_images(
            checked.images, request.output_format, [Provenance() if r else provenance for r in checked.replaced],
            [None if r else self.watermark for r in checked.replaced])
        image_encode_ms = (time.perf_counter() - encode_started) * 1000

        # 8. Timings, metrics, log.
        timings = _timings(pixels, checked.check_ms, image_encode_ms, (time.perf_counter() - started) * 1000)
        self.metrics.request_done(route, timings.model_dump(), resolved.num_images)
        log_event(logger, "request_done", request_id=request_id, route=route, n=resolved.num_images,
                  size=f"{width}x{height}", seed=resolved.seed, timings_ms=timings.model_dump(),
                  flagged=sum(1 for f in checked.flagged if f))
        progress.emit("done", timings_ms=timings.model_dump())
        return GenerationResult(
            images=images,
            output_format=request.output_format,
            revised_prompt=revised_prompt,
            route=route,
            width=width,
            height=height,
            seed=resolved.seed,
            timings=timings,
            batch_size=pixels.timings["denoise"].batch_size,
            nodes={name: timing.node for name, timing in pixels.timings.items()},
            flagged=checked.flagged,
        )

    # --- routes -------------------------------------------------------------------------------

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

    @_typed_errors
    async def models(self) -> list[ModelInfo]:
        limits = self.config.gateway.limits
        infos = []
        for name, route in self.config.routes.items():
            resolution, sampler = await self.resolution(name), await self.sampler(name)
            sizes = preset_sizes(resolution, limits.min_side, self.config.max_side(name), limits.max_aspect_ratio)
            infos.append(ModelInfo(name, resolution, name == self.config.default_route, route.description, sizes,
                                   Defaults(sampler.default_steps, sampler.default_guidance)))
        return infos

    @_typed_errors
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
                _cancel(probe)
            raise Overloaded(f"route {route} has no free capacity right now", retry_after_s=max(wait, 1.0)) from None

    # --- safety -------------------------------------------------------------------------------

    async def _filter_words(self, prompt: str, negative: str) -> tuple[str, str]:
        """Blocklisted words → ❤️ in both prompts (in a thread: long prompts take a while)."""
        if self.word_filter is None:
            return prompt, negative
        (prompt, hits), (negative, negative_hits) = await asyncio.to_thread(
            lambda: (self.word_filter.apply(prompt), self.word_filter.apply(negative))
        )
        if hits or negative_hits:
            self.metrics.safety_replacement("word_filter")
        return prompt, negative

    async def _screen(self, prompt: str, progress: _Progress) -> tuple[str, Any]:
        """(prompt to generate, its encoding). The classifier runs in parallel with the encoding of
        the prompt, so a safe prompt costs no classifier latency in series; a flagged one is
        replaced and re-encoded."""
        encoded = self.stages.text_encoder.encode.remote(prompt, True)
        if self.stages.classifier is None:
            return prompt, encoded
        settings = self.config.safety.classifier
        score = await progress.result(progress.track(self.stages.classifier.score.remote(prompt)))
        if score <= settings.threshold:
            return prompt, encoded
        self.metrics.safety_replacement("classifier")
        _cancel(encoded)
        return settings.replacement, self.stages.text_encoder.encode.remote(settings.replacement, True)

    async def _check_images(self, route: str, images: np.ndarray, progress: _Progress,
                            preview: bool = False) -> CheckedImages:
        """The image safety check on a request's images (or a preview's), when the route has it.
        Flagged images become the placeholder under `replace`. A checker replica that dies is
        retried like a stage; if the check still fails: 503 (closed) or the images unchecked
        (open), logged and counted either way."""
        unchecked = CheckedImages(list(images), [None] * len(images), [False] * len(images))
        checker, settings = self.stages.image_checker, self.config.safety.image_checker
        if checker is None or not self.config.routes[route].image_check:
            return unchecked
        kind = "preview" if preview else "image"
        started = time.perf_counter()
        retries_left = self.config.gateway.stage_retries
        while True:
            try:
                scores = await progress.result(progress.track(checker.check.remote(images)))
                break
            except Exception as exc:  # noqa: BLE001 - the checker's or Ray's failure: the policy decides
                if exc is progress.failure or isinstance(exc, Cancelled):
                    raise
                if retries_left > 0 and is_replica_failure(exc):
                    retries_left -= 1
                    continue
                self.metrics.image_check(route, kind, f"failed_{settings.on_error}", len(images))
                log_event(logger, "image_check_failed", logging.ERROR, request_id=progress.request_id, route=route,
                          kind=kind, on_error=settings.on_error, error=error_text(exc))
                if settings.on_error == "closed":
                    raise StageFailed("the image safety check is unavailable, so no image is returned; retry later",
                                      retry_after_s=5.0) from exc
                return replace(unchecked, check_ms=(time.perf_counter() - started) * 1000)
        flagged = [score > settings.threshold for score in scores]
        replaced = [f and settings.action == "replace" for f in flagged]
        for verdict, result in ((True, "flagged"), (False, "passed")):
            if count := flagged.count(verdict):
                self.metrics.image_check(route, kind, result, count)
        if any(flagged):
            log_event(logger, "image_flagged", logging.WARNING, request_id=progress.request_id, route=route,
                      kind=kind, action=settings.action, scores=[round(score, 4) for score in scores])
        placeholder = np.array(settings.placeholder_rgb, np.uint8)
        return CheckedImages(
            [np.broadcast_to(placeholder, image.shape).copy() if r else image for image, r in zip(images, replaced)],
            list(flagged), replaced, (time.perf_counter() - started) * 1000)

    # --- stages -------------------------------------------------------------------------------

    async def _run_stages(self, route: str, resolved: ResolvedRequest, bin_wh: tuple[int, int],
                          progress: _Progress, ticket: Ticket, partial_images: int,
                          output_format: str, lora: str | None = None,
                          lora_scale: float | None = None) -> tuple[Pixels, str]:
        handles = self.stages.routes[route]
        spec = DenoiseSpec(
            seed=resolved.seed,
            num_images=resolved.num_images,
            width=bin_wh[0],
            height=bin_wh[1],
            steps=resolved.steps,
            guidance_scale=resolved.guidance_scale,
            progress=progress.wanted,
            preview_steps=preview_steps(resolved.steps, partial_images) if progress.wanted else (),
            lora=lora,
            lora_scale=1.0 if lora_scale is None else lora_scale,
        )
        # Classifier-free guidance needs the negative prompt; embedded guidance (Sprint) has none.
        negative_wanted = resolved.uses_guidance and not (await self.sampler(route)).embedded_guidance
        progress.emit("encoding")
        prompt_text, prompt = await self._screen(resolved.prompt, progress)
        retries_left = self.config.gateway.stage_retries
        while True:
            try:
                # The encodings go into the denoiser call unawaited (through Ray's object store).
                negative = progress.track(self.stages.text_encoder.encode.remote(resolved.negative_prompt, False)
                                          if negative_wanted else None)
                progress.track(prompt)
                # With an adapter, Serve routes to a replica that holds it (model multiplexing).
                denoiser = handles.denoiser.options(stream=True, multiplexed_model_id=lora or "")
                stream = progress.track(denoiser.denoise.remote(spec, prompt, negative))
                latents = await self._denoise(route, stream, resolved, progress, ticket, output_format)
                progress.emit("decoding")
                pixels = await progress.result(progress.track(
                    handles.decoder.decode.remote(latents, resolved.width, resolved.height)))
                return pixels, prompt_text
            except Exception as exc:  # noqa: BLE001
                if retries_left <= 0 or not is_replica_failure(exc):
                    raise
                retries_left -= 1
                self.metrics.stage_retry(route)
                progress.cancel_in_flight()
                prompt = self.stages.text_encoder.encode.remote(prompt_text, True)
                log_event(logger, "stage_retry", logging.WARNING, request_id=progress.request_id, route=route,
                          error=error_text(exc))

    async def _denoise(self, route: str, stream: Any, resolved: ResolvedRequest, progress: _Progress,
                       ticket: Ticket, output_format: str) -> Latents:
        """The denoiser's final latents; on the way, a `step` event per solver step and a preview
        decode (on the route's Decoder, in the background) for each preview it streams."""
        progress.emit("denoising", step=0, total=resolved.steps)
        previews: list[asyncio.Future[None]] = []
        latents = None
        try:
            async for item in progress.items(stream):
                ticket.started()  # out of the queue: the denoiser reports the first step to everyone
                if isinstance(item, Latents):
                    latents = item
                    continue
                if not progress.wanted:
                    continue
                if item.step == 1:
                    self.metrics.first_event(route, progress.elapsed_ms())
                progress.emit("step", step=item.step, total=item.total)
                if item.preview is not None:
                    after = previews[-1] if previews else None
                    previews.append(asyncio.ensure_future(self._preview(
                        route, item.preview, len(previews), resolved, progress, output_format, after)))
            # Previews come before the result: they are small and already under way.
            await progress.result(asyncio.gather(*previews))
        finally:
            for task in previews:
                task.cancel()
        if latents is None:
            raise RuntimeError("the denoiser's stream ended without latents")
        return latents

    async def _preview(self, route: str, clean: Any, index: int, resolved: ResolvedRequest, progress: _Progress,
                       output_format: str, after: asyncio.Future[None] | None) -> None:
        """Decode a predicted clean latent at reduced size and emit it once the preview before it
        (`after`) is out: decodes overlap, but a later one can finish first and clients expect
        `partial_image_index` in order. A failed preview is logged, never the request's failure."""
        max_side = self.config.gateway.preview_max_side
        try:
            pixels = await self.stages.routes[route].decoder.preview.remote(
                clean, resolved.width, resolved.height, max_side)
            # Previews are checked like the images (a failed check withholds the preview, closed).
            checked = await self._check_images(route, pixels, progress, preview=True)
            images = await self._encode_images(checked.images, output_format)
        except Cancelled:
            raise
        except Exception as exc:  # noqa: BLE001
            log_event(logger, "preview_failed", logging.WARNING, request_id=progress.request_id, error=error_text(exc))
            images = None
        if after is not None:
            await after
        if images is None:
            return
        height, width = pixels.shape[1:3]
        progress.emit("partial_image", index=index, images=images, size=f"{width}x{height}", format=output_format)

    async def _encode_images(self, images: Any, output_format: str, provenances: list[Provenance] | None = None,
                             watermarks: list[Watermark | None] | None = None) -> list[bytes]:
        """Encode uint8 images [n, H, W, 3] in the encode pool (each marked AI-generated, see
        serve.provenance, and signed when C2PA is configured; with its parameters and watermark
        where given)."""
        loop = asyncio.get_running_loop()
        provenances = provenances or [Provenance()] * len(images)
        watermarks = watermarks or [None] * len(images)
        return list(await asyncio.gather(*(
            loop.run_in_executor(self._encode_pool, encode_image, image, output_format, provenance, watermark,
                                 self.credentials)
            for image, provenance, watermark in zip(images, provenances, watermarks)
        )))

    def _provenance(self, route: str, resolved: ResolvedRequest, prompt: str,
                    request: ImageGenerationRequest) -> Provenance:
        """The file's provenance: the request as generated (the prompt after the safety filter)."""
        if not self.config.gateway.provenance_parameters:
            return Provenance()
        sampler = SAMPLERS[self._profiles[route].sampler]
        return Provenance(parameters_text(
            prompt=prompt, negative_prompt="" if sampler.embedded_guidance else resolved.negative_prompt,
            steps=resolved.steps, sampler=sampler.name, guidance_scale=resolved.guidance_scale, seed=resolved.seed,
            width=resolved.width, height=resolved.height, model=route, lora=request.lora, lora_scale=request.lora_scale,
        ))


def preview_steps(steps: int, partial_images: int) -> tuple[int, ...]:
    """0-based steps after which to preview: `partial_images` evenly spaced before the last step
    (whose result is the image itself); fewer when there are too few steps."""
    chosen = {round(i * steps / (partial_images + 1)) - 1 for i in range(1, partial_images + 1)}
    return tuple(sorted(step for step in chosen if 0 <= step < steps - 1))


def _timings(pixels: Pixels, image_check_ms: float, image_encode_ms: float, total_ms: float) -> Timings:
    stage_ms = {name: pixels.timings[name].compute_ms for name in ("encode", "denoise", "decode")}
    return Timings(
        queue=round(max(0.0, total_ms - sum(stage_ms.values()) - image_check_ms - image_encode_ms), 3),
        image_check=round(image_check_ms, 3),
        image_encode=round(image_encode_ms, 3),
        total=round(total_ms, 3),
        **stage_ms,
    )
