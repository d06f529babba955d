"""The Decoder deployment: DC-AE decode for one route (tiled for large outputs), previews."""

from __future__ import annotations

import time

import numpy as np
import torch
from ray import serve

from models.decoder import Decoder as DecoderStage
from models.decoder import TilingConfig
from serve.checkpoint_specs import resolve_checkpoint
from serve.config import StageConfig, TilingSettings
from serve.stages.common import ms, node_id, set_threads
from serve.stages.compute_thread import ComputeThread
from serve.stages.payloads import Latents, Pixels, StageTiming


@serve.deployment(name="Decoder", ray_actor_options={"num_cpus": 0}, max_ongoing_requests=16)
class Decoder:
    """DC-AE decode (tiled for large outputs), resize-and-crop, uint8 pixels."""

    def __init__(
        self, checkpoint: str, stage: StageConfig, tiling: TilingSettings, device: str | None = None
    ) -> None:
        set_threads(stage)
        self.node = node_id()
        self.compute = ComputeThread("decoder")
        self.stage = self.compute.call(
            DecoderStage.from_pretrained,
            resolve_checkpoint(checkpoint),
            device=device,
            tiling=TilingConfig(above=tiling.above, tile=tiling.tile, stride=tiling.stride),
        )
        channels = self.stage.vae.config.latent_channels
        self.compute.call(lambda: self.stage.decode(torch.zeros(1, channels, 32, 32), 1024, 1024))  # warm-up

    def ping(self) -> None:
        """The gateway's capacity probe: answers as soon as this replica has a free slot."""

    async def preview(self, latents: torch.Tensor, width: int, height: int, max_side: int) -> np.ndarray:
        """A reduced-size look at a request's predicted clean latents (for streamed previews)."""
        return await self.compute.run(self.stage.preview, latents, width, height, max_side)

    async def decode(self, latents: Latents, width: int, height: int) -> Pixels:
        arrived = time.perf_counter()
        started = arrived

        def decode() -> np.ndarray:
            nonlocal started
            started = time.perf_counter()  # the wait is the time behind other work on the compute thread
            return self.stage.decode(latents.latents, width, height)

        images = await self.compute.run(decode)
        timing = StageTiming(ms(started - arrived), ms(time.perf_counter() - started), 1, self.node)
        return Pixels(images=images, timings={**latents.timings, "decode": timing})
