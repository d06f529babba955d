"""One request through the stages: (classifier ∥ encode) → denoise → decode, retried when a
replica dies mid-call, with a `step` event per solver step and decoded previews on the way.

Each stage's DeploymentResponse goes straight into the next stage's call without being awaited,
so embeddings and latents move stage to stage through Ray's object store; only the final pixels
come back to the gateway.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from models.pipeline import ResolvedRequest
from models.registry import Sampler
from serve.config import AppConfig
from serve.errors import Cancelled, is_replica_failure
from serve.gate.admission import Ticket
from serve.generation.events import Progress
from serve.generation.handles import StageHandles
from serve.generation.image_steps import ImageSteps
from serve.generation.prompt_safety import PromptSafety
from serve.logs import error_text, log_event
from serve.metrics import GatewayMetrics
from serve.schemas import ImageGenerationRequest
from serve.stages.payloads import DenoiseSpec, Latents, Pixels

logger = logging.getLogger("sana_serve.generation")


def preview_steps(steps: int, partial_images: int) -> tuple[int, ...]:
    """0-based steps after which to preview: `partial_images` evenly spaced before the last step
    (whose result is the image itself); fewer when there are too few steps."""
    chosen = {round(i * steps / (partial_images + 1)) - 1 for i in range(1, partial_images + 1)}
    return tuple(sorted(step for step in chosen if 0 <= step < steps - 1))


class StageCalls:
    def __init__(self, config: AppConfig, stages: StageHandles, metrics: GatewayMetrics, prompt_safety: PromptSafety,
                 image_steps: ImageSteps) -> None:
        self.config, self.stages, self.metrics = config, stages, metrics
        self.prompt_safety, self.image_steps = prompt_safety, image_steps

    async def run(self, route: str, sampler: Sampler, resolved: ResolvedRequest, bin_wh: tuple[int, int],
                  progress: Progress, ticket: Ticket, request: ImageGenerationRequest) -> tuple[Pixels, str]:
        """(the decoded pixels, the prompt as generated)."""
        handles = self.stages.routes[route]
        spec = DenoiseSpec(
            seed=resolved.seed,
            num_images=resolved.num_images,
            width=bin_wh[0],
            height=bin_wh[1],
            steps=resolved.steps,
            guidance_scale=resolved.guidance_scale,
            progress=progress.wanted,
            preview_steps=preview_steps(resolved.steps, request.partial_images or 0) if progress.wanted else (),
            lora=request.lora,
            lora_scale=1.0 if request.lora_scale is None else request.lora_scale,
        )
        # Classifier-free guidance needs the negative prompt; embedded guidance (Sprint) has none.
        negative_wanted = resolved.uses_guidance and not sampler.embedded_guidance
        progress.emit("encoding")
        prompt_text, prompt = await self.prompt_safety.screen_and_encode(resolved.prompt, progress)
        retries_left = self.config.gateway.stage_retries
        while True:
            try:
                # The encodings go into the denoiser call unawaited (through Ray's object store).
                negative = progress.track(self.stages.text_encoder.encode.remote(resolved.negative_prompt, False)
                                          if negative_wanted else None)
                progress.track(prompt)
                # With an adapter, Serve routes to a replica that holds it (model multiplexing).
                denoiser = handles.denoiser.options(stream=True, multiplexed_model_id=request.lora or "")
                stream = progress.track(denoiser.denoise.remote(spec, prompt, negative))
                latents = await self._denoise(route, stream, resolved, progress, ticket, request.output_format)
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

    async def _denoise(self, route: str, stream: Any, resolved: ResolvedRequest, progress: Progress,
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

    async def _preview(self, route: str, clean: Any, index: int, resolved: ResolvedRequest, progress: Progress,
                       output_format: str, after: asyncio.Future[None] | None) -> None:
        """Decode a predicted clean latent at reduced size and emit it once the preview before it
        (`after`) is out: decodes overlap, but a later one can finish first and clients expect
        `partial_image_index` in order. A failed preview is logged, never the request's failure."""
        max_side = self.config.gateway.preview_max_side
        try:
            pixels = await self.stages.routes[route].decoder.preview.remote(
                clean, resolved.width, resolved.height, max_side)
            # Previews are checked like the images (a failed check withholds the preview, closed).
            checked = await self.image_steps.check(route, pixels, progress, preview=True)
            images = await self.image_steps.encode(checked.images, output_format)
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
