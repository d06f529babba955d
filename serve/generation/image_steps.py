"""What happens to decoded pixels before they leave: the image safety check, then the
watermark, encoding, provenance marking and Content Credentials (in a thread pool, off the event
loop)."""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from models.pipeline import ResolvedRequest
from models.registry import Sampler
from serve.config import AppConfig
from serve.errors import Cancelled, StageFailed, is_replica_failure
from serve.generation.events import Progress
from serve.generation.handles import StageHandles
from serve.logs import error_text, log_event
from serve.metrics import GatewayMetrics
from serve.output.content_credentials import ContentCredentials
from serve.output.encoding import encode_image
from serve.output.provenance import Provenance, parameters_text
from serve.output.watermark import Watermark
from serve.schemas import ImageGenerationRequest

logger = logging.getLogger("sana_serve.generation")


@dataclass(frozen=True)
class CheckedImages:
    """A request's images after the image safety check: replaced where flagged under `replace`."""

    images: list[np.ndarray]
    flagged: list[bool | None]  # None: not checked (route without the check, or it failed open)
    replaced: list[bool]
    check_ms: float = 0.0  # time spent checking (0 where the route has no check)


class ImageSteps:
    def __init__(self, config: AppConfig, stages: StageHandles, metrics: GatewayMetrics) -> None:
        self.config, self.stages, self.metrics = config, stages, metrics
        self._encode_pool = ThreadPoolExecutor(config.gateway.image_encode_threads, thread_name_prefix="image-encode")
        marking = config.gateway.watermark
        self.watermark = Watermark(marking.payload) if marking.enabled else None
        self.credentials = ContentCredentials(config.gateway.c2pa) if config.gateway.c2pa is not None else None

    async def check(self, route: str, images: np.ndarray, progress: Progress, preview: bool = False) -> CheckedImages:
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

    async def finish(self, checked: CheckedImages, output_format: str, provenance: Provenance) -> list[bytes]:
        """Watermark and encode a request's checked images. A placeholder gets neither the watermark
        nor the parameters: it was not generated."""
        return await self.encode(
            checked.images, output_format, [Provenance() if r else provenance for r in checked.replaced],
            [None if r else self.watermark for r in checked.replaced])

    async def encode(self, images: Any, output_format: str, provenances: list[Provenance] | None = None,
                     watermarks: list[Watermark | None] | None = None) -> list[bytes]:
        """Encode uint8 images [n, H, W, 3] in the encode pool (each marked AI-generated, see
        serve.output.provenance, and signed when C2PA is configured; with its parameters and
        watermark where given)."""
        loop = asyncio.get_running_loop()
        provenances = provenances or [Provenance()] * len(images)
        watermarks = watermarks or [None] * len(images)
        return list(await asyncio.gather(*(
            loop.run_in_executor(self._encode_pool, encode_image, image, output_format, provenance, watermark,
                                 self.credentials)
            for image, provenance, watermark in zip(images, provenances, watermarks)
        )))

    def provenance(self, route: str, sampler: Sampler, resolved: ResolvedRequest, prompt: str,
                   request: ImageGenerationRequest) -> Provenance:
        """The file's provenance: the request as generated (the prompt after the safety filter)."""
        if not self.config.gateway.provenance_parameters:
            return Provenance()
        return Provenance(parameters_text(
            prompt=prompt, negative_prompt="" if sampler.embedded_guidance else resolved.negative_prompt,
            steps=resolved.steps, sampler=sampler.name, guidance_scale=resolved.guidance_scale, seed=resolved.seed,
            width=resolved.width, height=resolved.height, model=route, lora=request.lora, lora_scale=request.lora_scale,
        ))
