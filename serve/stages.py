"""Ray Serve deployments wrapping the `models/` stages: TextEncoder, Denoiser, Decoder.

Each is small and does one job. Compute (load and warm-up too) runs on the replica's one compute
thread (`serve.compute_thread`: why one, always the same) so the event loop keeps accepting requests
(and filling the next batch) while a batch runs. Batching parameters come from
config and are applied when a replica starts (`@serve.batch` is left at its defaults here: the
config's values replace them before the first call).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
import time
from collections.abc import AsyncIterator

import numpy as np
import torch
from ray import serve

from models.binning import resolution_for_sample_size
from models.decoder import Decoder as DecoderStage
from models.decoder import TilingConfig
from models.denoiser import DenoiseJob, DropCallback, StepCallback, StepReport
from models.denoiser import Denoiser as DenoiserStage
from models.errors import AdapterError
from models.image_checker import ImageChecker as ImageCheckerStage
from models.registry import DEFAULT_GUIDANCE
from models.safety_classifier import SafetyClassifier as SafetyClassifierStage
from models.text_encoder import PromptEmbedding
from models.text_encoder import TextEncoder as TextEncoderStage
from serve import metrics
from serve.checkpoint_specs import CheckpointProfile, resolve_checkpoint
from serve.compute_thread import ComputeThread
from serve.config import Batching, ClassifierConfig, ImageCheckerConfig, StageConfig, TilingSettings
from serve.payloads import DenoiseProgress, DenoiseSpec, EncodedPrompt, Latents, Pixels, StageTiming

logger = logging.getLogger("sana_serve.stages")


def _node() -> str:
    # Ray's node id tells nodes apart even when several share a host (a local test cluster).
    try:
        import ray

        return ray.get_runtime_context().get_node_id()
    except Exception:  # noqa: BLE001 - outside Ray (in-process use) the host name will do
        return socket.gethostname()


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)


def _set_threads(stage: StageConfig) -> None:
    if stage.torch_threads is not None:
        torch.set_num_threads(stage.torch_threads)


def _configure_batching(batch_method, batching: Batching) -> None:
    batch_method.set_max_batch_size(batching.max_batch_size)
    batch_method.set_batch_wait_timeout_s(batching.batch_wait_timeout_s)


def _images_in(specs: list[DenoiseSpec]) -> int:
    return sum(spec.num_images for spec in specs)


def _progress(spec: DenoiseSpec, report: StepReport, index: int) -> DenoiseProgress | None:
    """What request `index` of the batch hears about a step: every step if it asked for progress,
    else only the first (the gateway's admission learns that the request left the queue)."""
    if not spec.progress:
        return DenoiseProgress(1, report.total, None) if report.step == 0 else None
    return DenoiseProgress(report.step + 1, report.total, report.previews.get(index))


@serve.deployment(name="TextEncoder", ray_actor_options={"num_cpus": 0}, max_ongoing_requests=64)
class TextEncoder:
    """Gemma-2 prompt embeddings, batched over concurrent requests, with an LRU cache."""

    def __init__(self, checkpoint: str, stage: StageConfig, cache_size: int, device: str | None = None) -> None:
        _set_threads(stage)
        self.node = _node()
        self.compute = ComputeThread("text-encoder")
        self.stage = self.compute.call(
            TextEncoderStage.from_pretrained, resolve_checkpoint(checkpoint), device=device, cache_size=cache_size
        )
        _configure_batching(self.encode_batch, stage.batching)
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
            EncodedPrompt(emb, StageTiming(_ms(started - t), _ms(compute), len(prompts), self.node))
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


@serve.deployment(name="Denoiser", ray_actor_options={"num_cpus": 0}, max_ongoing_requests=32)
class Denoiser:
    """Sana DiT + Flow-DPM-Solver for one route, batched over requests (batch size counts images).

    `denoise` is a streaming method (call it with `handle.options(stream=True)`): it yields a
    DenoiseProgress after each step when the spec asks for progress (else after the first step
    only: the request has left the queue), then the Latents. A caller
    that stops listening (its response cancelled, its client gone) leaves the running batch before
    the next step; the other requests in the batch go on with their own pixels."""

    def __init__(self, checkpoint: str, stage: StageConfig, route: str, device: str | None = None,
                 loras: dict[str, str] | None = None, max_loras: int = 4) -> None:
        _set_threads(stage)
        self.node = _node()
        self.route = route
        self.compute = ComputeThread(f"denoiser-{route}")
        self.stage = self.compute.call(DenoiserStage.from_pretrained, resolve_checkpoint(checkpoint), device=device)
        self._abandoned: set[int] = set()  # tickets of callers that stopped listening
        self._tickets = itertools.count()
        _configure_batching(self.denoise_batch, stage.batching)
        self.compute.call(self._warm_up)
        # LoRA adapters by id (the route's catalog), loaded on first use and kept up to max_loras,
        # least recently used out: Ray Serve's model multiplexing, which also tells the router
        # which replica holds which adapter so requests for one go where it is loaded.
        self.loras = dict(loras or {})

        async def adapter(lora: str) -> _LoadedAdapter:
            return await self._load_adapter(lora)

        self.adapter = serve.multiplexed(max_num_models_per_replica=max_loras)(adapter)

    async def denoise(
        self, spec: DenoiseSpec, prompt: EncodedPrompt, negative: EncodedPrompt | None
    ) -> AsyncIterator[DenoiseProgress | Latents]:
        if spec.lora is not None:
            await self.adapter(spec.lora)  # before queueing: a bad adapter fails this request alone
        ticket = next(self._tickets)
        finished = False
        try:
            async for item in self.denoise_batch(spec, prompt, negative, time.perf_counter(), ticket):
                if item is not None:
                    finished = isinstance(item, Latents)
                    yield item
        finally:
            if not finished:  # cancelled or closed early: the batch drops this request at its next step
                self._abandoned.add(ticket)
                metrics.cancelled().inc(tags={"stage": "denoiser"})

    @serve.batch(batch_size_fn=_images_in)
    async def denoise_batch(
        self,
        specs: list[DenoiseSpec],
        prompts: list[EncodedPrompt],
        negatives: list[EncodedPrompt | None],
        arrived: list[float],
        tickets: list[int],
    ) -> AsyncIterator[list[DenoiseProgress | Latents | None | type[StopIteration]]]:
        """Yields one item per request after each step (None where there is nothing to tell), then
        each request's Latents (StopIteration for one that was dropped)."""
        jobs = [s.job(p.embedding, n.embedding if n is not None else None) for s, p, n in zip(specs, prompts, negatives)]
        images = _images_in(specs)
        metrics.batch_size().observe(images, tags={"stage": "denoiser"})
        # Batches take requests in arrival order: an abandoned ticket older than this batch's was
        # run already or left the queue before batching. Forget those.
        self._abandoned = {ticket for ticket in self._abandoned if ticket >= min(tickets)}
        loop = asyncio.get_running_loop()
        reports: asyncio.Queue[StepReport | None] = asyncio.Queue()
        started = time.perf_counter()

        def on_step(report: StepReport) -> None:  # in the compute thread
            loop.call_soon_threadsafe(reports.put_nowait, report)

        def dropped() -> list[int]:
            return [i for i, ticket in enumerate(tickets) if ticket in self._abandoned]

        def run() -> list[torch.Tensor | None]:
            try:
                return self._run(jobs, on_step, dropped)
            finally:
                loop.call_soon_threadsafe(reports.put_nowait, None)

        compute = asyncio.ensure_future(self.compute.run(run))
        try:
            while (report := await reports.get()) is not None:
                metrics.denoise_steps().inc(sum(specs[i].num_images for i in report.jobs), tags={"route": self.route})
                yield [_progress(specs[i], report, i) if i in report.jobs else None for i in range(len(specs))]
            latents = await compute
        finally:
            self._abandoned.difference_update(tickets)
        elapsed = _ms(time.perf_counter() - started)
        # A request's batch is the transformer batch it ran in (a Serve batch with mixed sizes, step
        # counts or adapters runs as several).
        shared = [0] * len(jobs)
        for batch in self.stage.batches(jobs):
            for i in batch:
                shared[i] = sum(jobs[j].num_images for j in batch)
        results: list[Latents | type[StopIteration]] = []
        for z, p, n, t, images_in_batch in zip(latents, prompts, negatives, arrived, shared):
            if z is None:
                results.append(StopIteration)
                continue
            # The encode share of a request is its slower prompt (both ran concurrently).
            encode = max((e for e in (p, n) if e is not None), key=lambda e: e.timing.compute_ms).timing
            timing = StageTiming(_ms(started - t), elapsed, images_in_batch, self.node)
            results.append(Latents(latents=z, timings={"encode": encode, "denoise": timing}))
        yield results

    @torch.inference_mode()
    def _run(self, jobs: list[DenoiseJob], on_step: StepCallback | None = None,
             dropped: DropCallback | None = None) -> list[torch.Tensor | None]:
        # An adapter evicted while its request waited for this batch comes back (the LRU bound is
        # soft by the requests in flight); the next load evicts again.
        for lora in {job.lora for job in jobs if job.lora is not None} - self.stage.adapters.loaded.keys():
            self.stage.adapters.load(lora, self._adapter_source(lora))
        return [None if z is None else z.cpu() for z in self.stage.denoise(jobs, on_step, dropped)]

    def _adapter_source(self, lora: str) -> str:
        if lora not in self.loras:
            raise AdapterError(f"adapter {lora!r} is not in route {self.route}'s catalog")
        return resolve_checkpoint(self.loras[lora])

    async def _load_adapter(self, lora: str) -> _LoadedAdapter:
        await self.compute.run(lambda: self.stage.adapters.load(lora, self._adapter_source(lora)))
        return _LoadedAdapter(lora, self)

    def _warm_up(self) -> None:
        side = min(resolution_for_sample_size(self.stage.sample_size), 1024)
        width = self.stage.transformer.config.caption_channels
        prompt = PromptEmbedding(torch.zeros(300, width), torch.ones(300, dtype=torch.long))
        self._run([DenoiseJob(prompt, prompt, 0, 1, side, side, 1, DEFAULT_GUIDANCE)])  # with CFG

    def profile(self) -> CheckpointProfile:
        """Resolution class and sampler of this route's checkpoint (for configs that do not tell)."""
        return CheckpointProfile(resolution_for_sample_size(self.stage.sample_size), self.stage.sampler.name)

    def ping(self) -> None:
        """The gateway's capacity probe: answers as soon as this replica has a free slot."""


class _LoadedAdapter:
    """What model multiplexing holds for a loaded adapter; Serve calls __del__ when it evicts it."""

    def __init__(self, lora: str, denoiser: Denoiser) -> None:
        self.lora, self.denoiser = lora, denoiser

    def __del__(self) -> None:
        denoiser, self.denoiser = self.denoiser, None
        if denoiser is not None:  # once: Serve's eviction, not the garbage collector after it
            denoiser.compute.call(denoiser.stage.adapters.unload, self.lora)


@serve.deployment(name="Decoder", ray_actor_options={"num_cpus": 0}, max_ongoing_requests=16)
class Decoder:
    """DC-AE decode (tiled for large outputs), resize-and-crop, uint8 pixels."""

    def __init__(
        self, checkpoint: str, stage: StageConfig, tiling: TilingSettings, device: str | None = None
    ) -> None:
        _set_threads(stage)
        self.node = _node()
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
        timing = StageTiming(_ms(started - arrived), _ms(time.perf_counter() - started), 1, self.node)
        return Pixels(images=images, timings={**latents.timings, "decode": timing})


@serve.deployment(name="SafetyClassifier", ray_actor_options={"num_cpus": 0}, max_ongoing_requests=64)
class SafetyClassifier:
    """ShieldGemma: P(prompt violates the policy), batched over concurrent requests."""

    def __init__(self, config: ClassifierConfig) -> None:
        _set_threads(config)
        self.compute = ComputeThread("classifier")
        self.stage = self.compute.call(
            SafetyClassifierStage.from_pretrained, resolve_checkpoint(config.checkpoint), device=config.device)
        _configure_batching(self.score_batch, config.batching)

    async def score(self, prompt: str) -> float:
        return await self.score_batch(prompt)

    @serve.batch
    async def score_batch(self, prompts: list[str]) -> list[float]:
        return await self.compute.run(self.stage.scores, prompts)


def _count_images(batch: list[np.ndarray]) -> int:
    return sum(len(images) for images in batch)


@serve.deployment(name="ImageChecker", ray_actor_options={"num_cpus": 0}, max_ongoing_requests=64)
class ImageChecker:
    """The image safety check: P(unsafe) per decoded image, batched over requests (batch size
    counts images)."""

    def __init__(self, config: ImageCheckerConfig) -> None:
        _set_threads(config)
        self.compute = ComputeThread("image-checker")
        self.stage = self.compute.call(
            ImageCheckerStage.from_pretrained, resolve_checkpoint(config.checkpoint), device=config.device,
            unsafe_labels=config.unsafe_labels)
        _configure_batching(self.check_batch, config.batching)
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
