"""The SafetyClassifier deployment: ShieldGemma scores prompts beside the text encoder."""

from __future__ import annotations

from ray import serve

from models.safety_classifier import SafetyClassifier as SafetyClassifierStage
from serve.checkpoint_specs import resolve_checkpoint
from serve.config import ClassifierConfig
from serve.stages.common import configure_batching, set_threads
from serve.stages.compute_thread import ComputeThread


@serve.deployment(name="SafetyClassifier", ray_actor_options={"num_cpus": 0}, max_ongoing_requests=64)
class SafetyClassifier:
    """ShieldGemma: P(prompt violates the policy), batched over concurrent requests."""

    def __init__(self, config: ClassifierConfig) -> None:
        set_threads(config)
        self.compute = ComputeThread("classifier")
        self.stage = self.compute.call(
            SafetyClassifierStage.from_pretrained, resolve_checkpoint(config.checkpoint), device=config.device)
        configure_batching(self.score_batch, config.batching)

    async def score(self, prompt: str) -> float:
        return await self.score_batch(prompt)

    @serve.batch
    async def score_batch(self, prompts: list[str]) -> list[float]:
        return await self.compute.run(self.stage.scores, prompts)
