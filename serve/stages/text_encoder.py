"""The TextEncoder deployment: Gemma-2 prompt embeddings, shared by every route."""

from __future__ import annotations

import time

from ray import serve

from models.text_encoder import PromptEmbedding
from models.text_encoder import TextEncoder as TextEncoderStage
from serve import metrics
from serve.checkpoint_specs import resolve_checkpoint
from serve.config import StageConfig
from serve.stages.common import configure_batching, ms, node_id, set_threads
from serve.stages.compute_thread import ComputeThread
from serve.stages.payloads import EncodedPrompt, StageTiming


@serve.deployment(name="TextEncoder", ray_actor_options={"num_cpus": 0}, max_ongoing_requests=64)
class TextEncoder:
    """Gemma-2 prompt embeddings, batched over concurrent requests, with an LRU cache."""

    def __init__(self, checkpoint: str, stage: StageConfig, cache_size: int, device: str | None = None) -> None:
        set_threads(stage)
        self.node = node_id()
        self.compute = ComputeThread("text-encoder")
        self.stage = self.compute.call(
            TextEncoderStage.from_pretrained, resolve_checkpoint(checkpoint), device=device, cache_size=cache_size
        )
        configure_batching(self.encode_batch, stage.batching)
        # Warm-up: the first forward pass pays for kernel selection; not a user's request.
        for flag in (True, False):
            self.compute.call(self.stage.encode_uncached, ["warm-up"], with_instruction=flag)

    async def encode(self, prompt: str, with_instruction: bool) -> EncodedPrompt:
        return await self.encode_batch(prompt, with_instruction, time.perf_counter())

    @serve.batch
    async def encode_batch(
        self, prompts: list[str], with_instruction: list[bool], arrived: list[float]
    ) -> list[EncodedPrompt]:
        cache = self.stage.cache
        hits, misses = cache.hits, cache.misses
        started = time.perf_counter()
        embeddings = await self.compute.run(self._encode_grouped, prompts, with_instruction)
        compute = time.perf_counter() - started
        metrics.batch_size().observe(len(prompts), tags={"stage": "text_encoder"})
        if cache.hits > hits:
            metrics.embedding_cache().inc(cache.hits - hits, tags={"result": "hit"})
        if cache.misses > misses:
            metrics.embedding_cache().inc(cache.misses - misses, tags={"result": "miss"})
        return [
            EncodedPrompt(emb, StageTiming(ms(started - t), ms(compute), len(prompts), self.node))
            for emb, t in zip(embeddings, arrived)
        ]

    def _encode_grouped(self, prompts: list[str], with_instruction: list[bool]):
        results = [None] * len(prompts)
        for flag in (True, False):
            indices = [i for i, f in enumerate(with_instruction) if f is flag]
            if indices:
                encoded = self.stage.encode([prompts[i] for i in indices], with_instruction=flag)
                for i, emb in zip(indices, encoded):
                    results[i] = _to_cpu(emb)
        return results


def _to_cpu(embedding: PromptEmbedding) -> PromptEmbedding:
    # Embeddings cross process boundaries; CUDA tensors would pin them to this GPU.
    if embedding.embeds.device.type == "cpu":
        return embedding
    return PromptEmbedding(embedding.embeds.cpu(), embedding.mask.cpu())
