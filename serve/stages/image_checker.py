"""The ImageChecker deployment: the image safety check on decoded pixels."""

from __future__ import annotations

import numpy as np
from ray import serve

from models.image_checker import ImageChecker as ImageCheckerStage
from serve import metrics
from serve.checkpoint_specs import resolve_checkpoint
from serve.config import ImageCheckerConfig
from serve.stages.common import configure_batching, set_threads
from serve.stages.compute_thread import ComputeThread


def _count_images(batch: list[np.ndarray]) -> int:
    return sum(len(images) for images in batch)


@serve.deployment(name="ImageChecker", ray_actor_options={"num_cpus": 0}, max_ongoing_requests=64)
class ImageChecker:
    """The image safety check: P(unsafe) per decoded image, batched over requests (batch size
    counts images)."""

    def __init__(self, config: ImageCheckerConfig) -> None:
        set_threads(config)
        self.compute = ComputeThread("image-checker")
        self.stage = self.compute.call(
            ImageCheckerStage.from_pretrained, resolve_checkpoint(config.checkpoint), device=config.device,
            unsafe_labels=config.unsafe_labels)
        configure_batching(self.check_batch, config.batching)
        self.compute.call(self.stage.scores, [np.zeros((64, 64, 3), np.uint8)])  # warm-up

    async def check(self, images: np.ndarray) -> list[float]:
        """Scores of one request's images (uint8 [n, H, W, 3])."""
        return await self.check_batch(images)

    @serve.batch(batch_size_fn=_count_images)
    async def check_batch(self, batch: list[np.ndarray]) -> list[list[float]]:
        metrics.batch_size().observe(_count_images(batch), tags={"stage": "image_checker"})
        scores = await self.compute.run(self.stage.scores, [image for images in batch for image in images])
        bounds = np.cumsum([0, *(len(images) for images in batch)])
        return [scores[start:end] for start, end in zip(bounds[:-1], bounds[1:])]
