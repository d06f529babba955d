"""The OpenAI-shaped response body of one generation: for the sync endpoint and a job's result."""

from __future__ import annotations

import base64
import time

from serve.generation import GenerationResult
from serve.schemas import ImageData, ImageGenerationResponse


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
