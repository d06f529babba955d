"""What one generation returns, and its OpenAI-shaped response body (for the sync endpoint and a
job's result)."""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass

from serve.schemas import ImageData, ImageGenerationResponse, Timings
from serve.stages.payloads import Pixels


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


def timings(pixels: Pixels, image_check_ms: float, image_encode_ms: float, total_ms: float) -> Timings:
    """Where a request's time went: each stage's compute, the image check and encoding, and the
    rest (queues and transport) as `queue`."""
    stage_ms = {name: pixels.timings[name].compute_ms for name in ("encode", "denoise", "decode")}
    return Timings(
        queue=round(max(0.0, total_ms - sum(stage_ms.values()) - image_check_ms - image_encode_ms), 3),
        image_check=round(image_check_ms, 3),
        image_encode=round(image_encode_ms, 3),
        total=round(total_ms, 3),
        **stage_ms,
    )


def response_body(result: GenerationResult, urls: list[str] | None = None) -> ImageGenerationResponse:
    """OpenAI's response shape plus our fields; images inline as base64, or as `urls` when given
    (base64 of a 4K PNG takes a while: call off the event loop)."""
    data = ([ImageData(url=url, revised_prompt=result.revised_prompt, flagged=flagged)
             for url, flagged in zip(urls, result.flagged)] if urls is not None else
            [ImageData(b64_json=b64(image), revised_prompt=result.revised_prompt, flagged=flagged)
             for image, flagged in zip(result.images, result.flagged)])
    return ImageGenerationResponse(
        created=int(time.time()),
        data=data,
        model=result.route,
        size=f"{result.width}x{result.height}",
        seed=result.seed,
        output_format=result.output_format,
        timings_ms=result.timings,
        batch_size=result.batch_size,
        nodes=result.nodes,
    )


def b64(image: bytes) -> str:
    return base64.b64encode(image).decode("ascii")
