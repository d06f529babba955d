"""POST /v1/images/generations: parse → admit → generate → respond. Errors go to the middleware."""

from __future__ import annotations

import asyncio
import base64
import time

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from serve.api.deps import ApiDeps, authorize, deps
from serve.errors import PayloadTooLarge, UnsupportedMediaType
from serve.generation import GenerationResult
from serve.schemas import ErrorResponse, ImageData, ImageGenerationRequest, ImageGenerationResponse, Timings

router = APIRouter()

_ERRORS = {status: {"model": ErrorResponse} for status in (400, 401, 404, 413, 415, 429, 503)}
# The body is parsed by our validator (strict JSON, limits from config); /openapi.json publishes
# the limited schema in place of this one.
_REQUEST_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": ImageGenerationRequest.model_json_schema()}},
    }
}


@router.post(
    "/v1/images/generations",
    response_model=ImageGenerationResponse,
    responses=_ERRORS,
    openapi_extra=_REQUEST_BODY,
    dependencies=[Depends(authorize)],
)
async def generations(request: Request, api: ApiDeps = Depends(deps)) -> JSONResponse:
    body = api.validator.parse(await read_json_body(request, api.validator.limits.max_body_bytes))
    with api.admit():
        result = await api.service.generate(
            body, request_id=request.state.request_id, received_at=request.state.received_at
        )
    response = await asyncio.to_thread(response_body, result)
    return JSONResponse(response.model_dump(), headers={"Server-Timing": server_timing(result.timings)})


async def read_json_body(request: Request, max_bytes: int) -> bytes:
    """The raw body of a JSON request; 415 for another content type, 413 past `max_bytes`."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json":
        raise UnsupportedMediaType("Content-Type must be application/json")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLarge(f"request body is larger than {max_bytes} bytes")
    return await request.body()


def response_body(result: GenerationResult) -> ImageGenerationResponse:
    """OpenAI's response shape plus our fields (base64 of a 4K PNG takes a while: call off the loop)."""
    return ImageGenerationResponse(
        created=int(time.time()),
        data=[ImageData(b64_json=base64.b64encode(image).decode("ascii"), revised_prompt=result.revised_prompt)
              for image in result.images],
        model=result.route,
        size=f"{result.width}x{result.height}",
        seed=result.seed,
        output_format=result.output_format,
        timings_ms=result.timings,
        batch_size=result.batch_size,
        nodes=result.nodes,
    )


def server_timing(timings: Timings) -> str:
    return ", ".join(f"{name};dur={value:.1f}" for name, value in timings.model_dump().items())
