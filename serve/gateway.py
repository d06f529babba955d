"""Gateway: the HTTP API in front of the stage deployments.

A request goes: parse and validate → pick a route → orchestrate the stages → encode images.
Orchestration passes each stage's DeploymentResponse straight into the next stage's call without
awaiting it, so embeddings and latents move stage to stage through Ray's object store; only the
final pixels come back here, and they are encoded in a thread pool, off the event loop.
"""


import asyncio
import json
import logging
import math
import re
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException

from models.binning import bin_size
from models.pipeline import (
    MAX_SEED,
    Defaults,
    GenerationRequest,
    ResolvedRequest,
    resolve_request,
)
from serve import metrics
from serve.auth import Authenticator
from serve.checkpoints import checkpoint_resolution
from serve.config import AppConfig, Limits
from serve.errors import (
    ApiError,
    BadRequest,
    ModelNotFound,
    Overloaded,
    PayloadTooLarge,
    UnsupportedMediaType,
    error_response,
    is_replica_failure,
    to_api_error,
)
from serve.images import encode_b64
from serve.payloads import DenoiseSpec, Pixels
from serve.schemas import (
    ErrorResponse,
    ImageData,
    ImageGenerationRequest,
    ImageGenerationResponse,
    ModelCard,
    ModelList,
    Timings,
)
from serve.word_filter import WordFilter

logger = logging.getLogger("sana_serve.gateway")

API_TITLE, API_VERSION = "sana-serve", "0.1.0"
API_DESCRIPTION = "OpenAI-style images API for NVIDIA Sana text-to-image models on Ray Serve."
# /openapi.json and /docs are served by the Gateway itself, so the schema can carry this
# deployment's configured limits.
app = FastAPI(title=API_TITLE, description=API_DESCRIPTION, version=API_VERSION, openapi_url=None, docs_url=None,
              redoc_url=None)

_SIZE = re.compile(r"^(\d{1,5})x(\d{1,5})$")
_ERRORS = {status: {"model": ErrorResponse} for status in (400, 401, 404, 413, 415, 429, 503)}
_REQUEST_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": ImageGenerationRequest.model_json_schema()}},
    }
}


@app.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    # Unknown paths (404) and wrong methods (405) in the same JSON shape as every other error.
    error = ApiError(str(exc.detail))
    error.status, error.type = exc.status_code, "invalid_request_error"
    response = error_response(error, request.headers.get("x-request-id"))
    for name, value in (exc.headers or {}).items():
        response.headers[name] = value
    return response


@app.exception_handler(Exception)
async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    logger.error(json.dumps({"event": "unhandled_error", "path": request.url.path, "error": repr(exc)[:500]}))
    return error_response(to_api_error(exc), request.headers.get("x-request-id"))


@dataclass(frozen=True)
class RouteInfo:
    name: str
    resolution: int
    defaults: Defaults


@dataclass(frozen=True)
class RouteHandles:
    denoiser: DeploymentHandle
    decoder: DeploymentHandle


def parse_size(size: str, limits: Limits) -> tuple[int, int]:
    """(width, height) of a "WIDTHxHEIGHT" string within the gateway's limits."""
    match = _SIZE.match(size)
    if not match:
        raise BadRequest(f'size must look like "1024x768" (WIDTHxHEIGHT), got {size!r}', "size")
    width, height = int(match[1]), int(match[2])
    for side in (width, height):
        if not limits.min_side <= side <= limits.max_side:
            raise BadRequest(f"size: each side must be in [{limits.min_side}, {limits.max_side}]", "size")
    if max(width, height) / min(width, height) > limits.max_aspect_ratio:
        raise BadRequest(f"size: aspect ratio above {limits.max_aspect_ratio}:1", "size")
    return width, height


def check_limits(body: ImageGenerationRequest, limits: Limits) -> None:
    """Range checks that the schema's types cannot express; each names its field."""
    if not body.prompt.strip():
        raise BadRequest("prompt must not be empty", "prompt")
    for name, text in (("prompt", body.prompt), ("negative_prompt", body.negative_prompt)):
        if len(text) > limits.max_prompt_chars:
            raise BadRequest(f"{name} is longer than {limits.max_prompt_chars} characters", name)
    if body.num_inference_steps is not None and not 1 <= body.num_inference_steps <= limits.max_steps:
        raise BadRequest(f"num_inference_steps must be in [1, {limits.max_steps}]", "num_inference_steps")
    if body.guidance_scale is not None and not (
        math.isfinite(body.guidance_scale) and 0 <= body.guidance_scale <= limits.max_guidance
    ):
        raise BadRequest(f"guidance_scale must be in [0, {limits.max_guidance}]", "guidance_scale")
    if body.seed is not None and not 0 <= body.seed <= MAX_SEED:
        raise BadRequest(f"seed must be in [0, {MAX_SEED}]", "seed")


def _validation_error(exc: ValidationError) -> BadRequest:
    first = exc.errors()[0]
    loc = first.get("loc", ())
    field = str(loc[0]) if loc else None  # the request's own field; deeper parts are type internals
    message = first.get("msg", "invalid value")
    if first.get("type") == "extra_forbidden":
        message = "unknown field"
    return BadRequest(f"{field}: {message}" if field else message, field)


def _reject_constant(name: str) -> float:
    # json.loads accepts NaN and Infinity by default; JSON does not.
    raise ValueError(f"{name} is not valid JSON")


def request_schema(limits: Limits, max_images: int) -> dict:
    """The request's JSON schema with this deployment's limits, so clients and fuzzers see them."""
    schema = ImageGenerationRequest.model_json_schema()
    properties = schema["properties"]

    def bound(name: str, **constraints) -> None:
        field = properties[name]
        # Optional fields are anyOf [type, null]: the constraints belong to the non-null branch.
        target = next((branch for branch in field.get("anyOf", [field]) if branch.get("type") != "null"), field)
        target.update(constraints)

    bound("prompt", minLength=1, maxLength=limits.max_prompt_chars, pattern=r"\S")
    bound("negative_prompt", maxLength=limits.max_prompt_chars)
    bound("n", minimum=1, maximum=max_images)
    bound("size", pattern=r"^[0-9]{1,5}x[0-9]{1,5}$")
    bound("num_inference_steps", minimum=1, maximum=limits.max_steps)
    bound("guidance_scale", minimum=0, maximum=limits.max_guidance)
    bound("seed", minimum=0, maximum=MAX_SEED)
    return schema


def server_timing(timings: Timings) -> str:
    return ", ".join(f"{name};dur={value:.1f}" for name, value in timings.model_dump().items())


@serve.deployment(name="Gateway", ray_actor_options={"num_cpus": 0}, max_ongoing_requests=64)
@serve.ingress(app)
class Gateway:
    def __init__(
        self,
        config: AppConfig,
        text_encoder: DeploymentHandle,
        routes: dict[str, dict[str, DeploymentHandle]],
        classifier: DeploymentHandle | None = None,
    ) -> None:
        self.config = config
        self.limits = config.gateway.limits
        self.text_encoder = text_encoder
        self.classifier = classifier
        self.auth = Authenticator(config.auth)
        words = config.safety.word_filter
        self.word_filter = (
            WordFilter.from_lists(words.use_default_list, words.extra_words, list(words.extra_files))
            if words.enabled else None
        )
        self._safety_counts = {"word_filter": 0, "classifier": 0}
        self.routes = {name: RouteHandles(h["denoiser"], h["decoder"]) for name, h in routes.items()}
        self._route_info: dict[str, RouteInfo] = {}
        self._stage_retries = 0
        self._inflight = 0
        self._typical_s = 1.0  # moving average of request time: the Retry-After we suggest
        self._encode_pool = ThreadPoolExecutor(config.gateway.image_encode_threads, thread_name_prefix="image-encode")
        self._request_schema = request_schema(self.limits, max(config.max_images(r) for r in config.routes))
        self._openapi: dict | None = None

    # --- routes -------------------------------------------------------------------------------

    async def route_info(self, name: str) -> RouteInfo:
        info = self._route_info.get(name)
        if info is None:
            # Known from the config when possible, so listing routes never waits on a route
            # that has no replica yet (a 4K route before its large-memory node joins).
            resolution = checkpoint_resolution(self.config.routes[name].checkpoint)
            if resolution is None:
                described = await self.routes[name].denoiser.describe.remote()
                resolution = described["resolution"]
            info = RouteInfo(name, resolution, Defaults())
            self._route_info[name] = info
        return info

    async def pick_route(self, body: ImageGenerationRequest) -> tuple[str, int, int]:
        """(route, width, height): the request's `model`, else the route its size calls for."""
        if body.model is not None and body.model not in self.routes:
            raise ModelNotFound(f"model {body.model!r} does not exist; GET /v1/models lists the routes", "model")
        if body.size is None or body.size == "auto":
            route = body.model or self.config.default_route
            resolution = (await self.route_info(route)).resolution
            return route, resolution, resolution
        width, height = parse_size(body.size, self.limits)
        route = body.model or self.config.route_for_size(width, height)
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
        handles = self.routes[route]
        probes = [handles.denoiser.describe.remote(), handles.decoder.describe.remote()]
        try:
            await asyncio.wait_for(asyncio.gather(*probes), timeout=wait)
        except asyncio.TimeoutError:
            for probe in probes:
                probe.cancel()
            raise Overloaded(f"route {route} has no free capacity right now", retry_after_s=max(wait, 1.0)) from None

    def safety_counts(self) -> dict[str, int]:
        """Prompts changed per safety layer since this replica started (also a Prometheus counter)."""
        return dict(self._safety_counts)

    def _count_replacement(self, layer: str) -> None:
        self._safety_counts[layer] += 1
        metrics.safety_replacements().inc(tags={"layer": layer})

    def stage_retry_count(self) -> int:
        """Stage calls retried after a replica died (for operators and tests; not an HTTP route)."""
        return self._stage_retries

    # --- HTTP ---------------------------------------------------------------------------------

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi(self, request: Request) -> dict:
        if self._openapi is None:
            spec = get_openapi(title=API_TITLE, version=API_VERSION, description=API_DESCRIPTION,
                               routes=request.app.routes)
            body = spec["paths"]["/v1/images/generations"]["post"]["requestBody"]
            body["content"]["application/json"]["schema"] = self._request_schema
            self._openapi = spec
        return self._openapi

    @app.get("/docs", include_in_schema=False)
    async def docs(self, request: Request):
        return get_swagger_ui_html(openapi_url=f"{request.scope.get('root_path', '')}/openapi.json",
                                   title=f"{API_TITLE} API")

    @app.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok", "routes": list(self.routes)}

    @app.get("/v1/models", response_model=ModelList, responses={401: {"model": ErrorResponse}})
    async def models(self, request: Request):
        try:
            self.auth.check(request.headers.get("authorization"))
        except ApiError as error:
            return error_response(error)
        cards = []
        for name in self.routes:
            info = await self.route_info(name)
            cards.append(
                ModelCard(
                    id=name,
                    created=0,
                    resolution=info.resolution,
                    default_size=f"{info.resolution}x{info.resolution}",
                    default=name == self.config.default_route,
                )
            )
        return ModelList(data=cards)

    @app.post(
        "/v1/images/generations",
        response_model=ImageGenerationResponse,
        responses=_ERRORS,
        openapi_extra=_REQUEST_BODY,
    )
    async def generations(self, request: Request):
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
        started = time.perf_counter()
        admitted = False
        try:
            self.auth.check(request.headers.get("authorization"))
            body = await self._parse(request)
            self._admit()
            admitted = True
            response = await self._generate(body, request_id, started)
            self._typical_s = 0.8 * self._typical_s + 0.2 * (time.perf_counter() - started)
        except Exception as exc:  # noqa: BLE001 - every failure becomes a typed JSON error
            error = to_api_error(exc)
            metrics.errors().inc(tags={"type": error.type, "status": str(error.status)})
            log = logger.warning if error.status < 500 else logger.error
            log(json.dumps({"event": "request_failed", "request_id": request_id, "status": error.status,
                            "type": error.type, "param": error.param, "error": repr(exc)[:500]}))
            return error_response(error, request_id)
        finally:
            if admitted:
                self._inflight -= 1
        return JSONResponse(
            response.model_dump(),
            headers={"Server-Timing": server_timing(response.timings_ms), "X-Request-Id": request_id},
        )

    @staticmethod
    def _record(route: str, timings: Timings, images: int) -> None:
        metrics.request_latency().observe(timings.total, tags={"route": route})
        for stage in metrics.STAGES:
            metrics.stage_latency().observe(getattr(timings, stage), tags={"route": route, "stage": stage})
        metrics.images_generated().inc(images, tags={"route": route})

    def _admit(self) -> None:
        cap = self.config.gateway.max_inflight
        if cap and self._inflight >= cap:
            raise Overloaded("the server is busy; retry later", retry_after_s=max(1.0, self._typical_s))
        self._inflight += 1

    async def _parse(self, request: Request) -> ImageGenerationRequest:
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != "application/json":
            raise UnsupportedMediaType("Content-Type must be application/json")
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limits.max_body_bytes:
            raise PayloadTooLarge(f"request body is larger than {self.limits.max_body_bytes} bytes")
        raw = await request.body()
        if len(raw) > self.limits.max_body_bytes:
            raise PayloadTooLarge(f"request body is larger than {self.limits.max_body_bytes} bytes")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest("request body is not valid UTF-8") from None
        try:
            data = json.loads(text, parse_constant=_reject_constant)
        except RecursionError:
            raise BadRequest("request body is nested too deeply") from None
        except ValueError as exc:
            raise BadRequest(f"request body is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise BadRequest("request body must be a JSON object")
        try:
            body = ImageGenerationRequest.model_validate(data)
        except ValidationError as exc:
            raise _validation_error(exc) from None
        check_limits(body, self.limits)
        return body

    async def _generate(self, body: ImageGenerationRequest, request_id: str, started: float) -> ImageGenerationResponse:
        # 1. Route and size; the route must have capacity.
        route, width, height = await self.pick_route(body)
        max_images = self.config.max_images(route)
        if not 1 <= body.n <= max_images:
            raise BadRequest(f"n must be in [1, {max_images}] on route {route}", "n")
        info = await self.route_info(route)
        await self.ensure_capacity(route)
        prompt, negative = await self._filter_words(body.prompt, body.negative_prompt)
        job = resolve_request(
            GenerationRequest(
                prompt=prompt,
                negative_prompt=negative,
                width=width,
                height=height,
                num_images=body.n,
                steps=body.num_inference_steps,
                guidance_scale=body.guidance_scale,
                seed=body.seed,
            ),
            info.resolution,
            info.defaults,
        )
        # 2. Stages: (screen ∥ encode) → denoise → decode, retried once if a replica dies mid-call.
        pixels, used_prompt = await self._run_stages(route, job, bin_size(width, height, info.resolution))
        # 3. Encode images off the event loop.
        encode_started = time.perf_counter()
        loop = asyncio.get_running_loop()
        images = await asyncio.gather(
            *(loop.run_in_executor(self._encode_pool, encode_b64, img, body.output_format) for img in pixels.images)
        )
        image_encode_ms = (time.perf_counter() - encode_started) * 1000
        total_ms = (time.perf_counter() - started) * 1000
        stage_ms = {name: pixels.timings[name].compute_ms for name in ("encode", "denoise", "decode")}
        timings = Timings(
            queue=round(max(0.0, total_ms - sum(stage_ms.values()) - image_encode_ms), 3),
            image_encode=round(image_encode_ms, 3),
            total=round(total_ms, 3),
            **stage_ms,
        )
        self._record(route, timings, job.num_images)
        logger.info(json.dumps({"event": "request_done", "request_id": request_id, "route": route,
                                "n": job.num_images, "size": f"{width}x{height}", "seed": job.seed,
                                "timings_ms": timings.model_dump()}))
        return ImageGenerationResponse(
            created=int(time.time()),
            data=[ImageData(b64_json=b64, revised_prompt=used_prompt) for b64 in images],
            model=route,
            size=f"{width}x{height}",
            seed=job.seed,
            output_format=body.output_format,
            timings_ms=timings,
            batch_size=pixels.timings["denoise"].batch_size,
            nodes={name: timing.node for name, timing in pixels.timings.items()},
        )

    async def _filter_words(self, prompt: str, negative: str) -> tuple[str, str]:
        """Blocklisted words → ❤️ in both prompts (in a thread: long prompts take a while)."""
        if self.word_filter is None:
            return prompt, negative
        (prompt, hits), (negative, negative_hits) = await asyncio.to_thread(
            lambda: (self.word_filter.apply(prompt), self.word_filter.apply(negative))
        )
        if hits or negative_hits:
            self._count_replacement("word_filter")
        return prompt, negative

    async def _screen(self, prompt: str):
        """(prompt to generate, its encoding). The classifier runs in parallel with the encoding of
        the prompt, so a safe prompt costs no classifier latency in series; a flagged one is
        replaced and re-encoded."""
        encoded = self.text_encoder.encode.remote(prompt, True)
        if self.classifier is None:
            return prompt, encoded
        settings = self.config.safety.classifier
        score = await self.classifier.score.remote(prompt)
        if score <= settings.threshold:
            return prompt, encoded
        self._count_replacement("classifier")
        encoded.cancel()
        return settings.replacement, self.text_encoder.encode.remote(settings.replacement, True)

    async def _run_stages(self, route: str, job: ResolvedRequest, bin_wh: tuple[int, int]) -> tuple[Pixels, str]:
        handles = self.routes[route]
        spec = DenoiseSpec(
            seed=job.seed,
            num_images=job.num_images,
            width=bin_wh[0],
            height=bin_wh[1],
            steps=job.steps,
            guidance_scale=job.guidance_scale,
        )
        prompt_text, prompt = await self._screen(job.prompt)
        retries_left = self.config.gateway.stage_retries
        while True:
            try:
                # Not awaited in between: each DeploymentResponse goes straight into the next call.
                negative = self.text_encoder.encode.remote(job.negative_prompt, False) if job.uses_guidance else None
                latents = handles.denoiser.denoise.remote(spec, prompt, negative)
                return await handles.decoder.decode.remote(latents, job.width, job.height), prompt_text
            except Exception as exc:  # noqa: BLE001
                if retries_left <= 0 or not is_replica_failure(exc):
                    raise
                retries_left -= 1
                self._stage_retries += 1
                prompt = self.text_encoder.encode.remote(prompt_text, True)
                logger.warning(json.dumps({"event": "stage_retry", "route": route, "error": repr(exc)[:300]}))
