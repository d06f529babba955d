"""POST /v1/images/generations: parse → generate (admission inside) → respond, as JSON or as a
stream of server-sent events (`stream: true`, OpenAI's image streaming events). Errors go to the
middleware. `X-Request-Timeout: SECONDS` bounds a request: past it, its work stops and it gets 504."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, StreamingResponse

from serve.api.deps import ApiDeps, authorize, deps
from serve.api.sse import KEEP_ALIVE, SSE_HEADERS, sse_event
from serve.errors import ApiError, BadRequest, PayloadTooLarge, UnsupportedMediaType, to_api_error
from serve.generation.events import GenerationEvent
from serve.generation.result import GenerationResult, b64, response_body
from serve.jobs.files import store_images
from serve.schemas import ErrorResponse, ImageGenerationRequest, ImageGenerationResponse, Timings

router = APIRouter()

ERRORS = {status: {"model": ErrorResponse} for status in (400, 401, 404, 413, 415, 429, 503, 504)}
# The body is parsed by our validator (strict JSON, limits from config); /openapi.json publishes
# the limited schema in place of this one.
_REQUEST_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": ImageGenerationRequest.model_json_schema()}},
    }
}
_STREAM_RESPONSE = {"content": {"text/event-stream": {}}, "description": "With `stream: true`: server-sent events."}
KEEP_ALIVE_S = 15.0
TIMEOUT_HEADER = "X-Request-Timeout"


@router.post(
    "/v1/images/generations",
    response_model=ImageGenerationResponse,
    responses={**ERRORS, 200: _STREAM_RESPONSE},
    openapi_extra=_REQUEST_BODY,
)
async def generations(request: Request, api: ApiDeps = Depends(deps), _: str | None = Depends(authorize)):
    body = api.validator.parse(await read_json_body(request, api.validator.limits.max_body_bytes))
    timeout_s = request_timeout(request, api)
    if body.stream:
        return await stream_generation(request, api, body, timeout_s)
    result = await api.service.generate(body, request_id=request.state.request_id,
                                        received_at=request.state.received_at, timeout_s=timeout_s)
    urls = await store_files(api, result, base_url(request, api)) if body.response_format == "url" else None
    response = await asyncio.to_thread(response_body, result, urls)
    return JSONResponse(response.model_dump(exclude_none=True), headers={"Server-Timing": server_timing(result.timings)})


def request_timeout(request: Request, api: ApiDeps) -> float | None:
    """The client's `X-Request-Timeout` in seconds (capped by gateway.max_request_timeout_s)."""
    value = request.headers.get(TIMEOUT_HEADER)
    if value is None:
        return None
    limit = api.config.gateway.max_request_timeout_s
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds <= limit:  # NaN fails too
        raise BadRequest(f"{TIMEOUT_HEADER} must be a number of seconds in (0, {limit:g}], got {value[:40]!r}",
                         TIMEOUT_HEADER)
    return seconds


async def read_json_body(request: Request, max_bytes: int) -> bytes:
    """The raw body of a JSON request; 415 for another content type, 413 past `max_bytes`."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json":
        raise UnsupportedMediaType("Content-Type must be application/json")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLarge(f"request body is larger than {max_bytes} bytes")
    return await request.body()


def base_url(request: Request, api: ApiDeps) -> str:
    """Where file URLs point: the configured base, else the scheme and host the request came in on."""
    return api.config.files.url_base or str(request.base_url).rstrip("/")


async def store_files(api: ApiDeps, result: GenerationResult, base: str) -> list[str]:
    paths = await asyncio.to_thread(store_images, api.files, result.images, result.output_format)
    return [base + path for path in paths]


def server_timing(timings: Timings) -> str:
    return ", ".join(f"{name};dur={value:.1f}" for name, value in timings.model_dump().items())


# --- streaming ---------------------------------------------------------------------------------


async def stream_generation(request: Request, api: ApiDeps, body: ImageGenerationRequest,
                            timeout_s: float | None) -> StreamingResponse:
    """Admit now (a 503 is still a plain JSON answer), then run the generation in its own task and
    stream its events. When the client goes away, the generation is cancelled: its denoiser rows
    leave their batch at the next step."""
    admitted = await api.service.admit(body)
    events: asyncio.Queue[GenerationEvent | GenerationResult | ApiError] = asyncio.Queue()
    cancel = asyncio.Event()

    async def run() -> None:
        try:
            events.put_nowait(await api.service.generate(
                body, request_id=request.state.request_id, received_at=request.state.received_at,
                on_event=events.put_nowait, cancel=cancel, timeout_s=timeout_s, admitted=admitted))
        except Exception as exc:  # noqa: BLE001 - everything is typed for the stream's error event
            events.put_nowait(to_api_error(exc))

    task = asyncio.ensure_future(run())
    stream = _OpenAIStream(body, base_url(request, api), api)
    return StreamingResponse(stream.frames(events, task, cancel), media_type="text/event-stream", headers=SSE_HEADERS)


class _OpenAIStream:
    """GenerationEvents → OpenAI's `image_generation.*` events (plus `sana.progress` when asked)."""

    def __init__(self, body: ImageGenerationRequest, base: str, api: ApiDeps) -> None:
        self.body, self.base, self.api = body, base, api
        self.progress = body.stream_options is not None and body.stream_options.include_progress

    async def frames(self, events: asyncio.Queue, task: asyncio.Future, cancel: asyncio.Event) -> AsyncIterator[bytes]:
        try:
            if self.progress:
                yield sse_event("sana.progress", {"type": "sana.progress", "stage": "queued", "elapsed_ms": 0.0})
            while True:
                try:
                    item = await asyncio.wait_for(events.get(), timeout=KEEP_ALIVE_S)
                except asyncio.TimeoutError:
                    yield KEEP_ALIVE
                    continue
                if isinstance(item, ApiError):
                    yield sse_event("error", {"type": "error", "error": item.body()})
                    return
                if isinstance(item, GenerationResult):
                    for frame in await self._completed(item):
                        yield frame
                    return
                for frame in await self._frames_for(item):
                    yield frame
        finally:
            # Client gone (Serve cancels this generator) or stream done: stop what still runs. No
            # await here: a cancelled scope would cancel it too.
            if not task.done():
                cancel.set()

    async def _frames_for(self, event: GenerationEvent) -> list[bytes]:
        if event.kind == "partial_image":
            detail = event.detail
            encoded = await asyncio.to_thread(lambda: [b64(image) for image in detail["images"]])
            return [sse_event("image_generation.partial_image", {
                "type": "image_generation.partial_image", "b64_json": data, "created_at": int(time.time()),
                "size": detail["size"], "output_format": self.body.output_format, "quality": "auto",
                "background": "opaque", "partial_image_index": detail["index"], "image_index": image_index,
            }) for image_index, data in enumerate(encoded)]
        if not self.progress:
            return []
        detail = {key: value for key, value in event.detail.items() if key != "images"}
        return [sse_event("sana.progress", {"type": "sana.progress", **detail, "stage": event.stage,
                                            "elapsed_ms": event.elapsed_ms})]

    async def _completed(self, result: GenerationResult) -> list[bytes]:
        if self.body.response_format == "url":
            images: list[dict[str, Any]] = [{"url": url} for url in await store_files(self.api, result, self.base)]
        else:
            images = [{"b64_json": data} for data in await asyncio.to_thread(lambda: [b64(i) for i in result.images])]
        return [sse_event("image_generation.completed", {
            "type": "image_generation.completed", **image, "created_at": int(time.time()),
            "size": f"{result.width}x{result.height}", "output_format": result.output_format, "quality": "auto",
            "background": "opaque", "image_index": index, "revised_prompt": result.revised_prompt,
            "model": result.route, "seed": result.seed, "timings_ms": result.timings.model_dump(),
            "batch_size": result.batch_size, **_verdict(result.flagged[index]),
        }) for index, image in enumerate(images)]


def _verdict(flagged: bool | None) -> dict[str, bool]:
    return {} if flagged is None else {"flagged": flagged}
