"""The Denoiser deployment: Sana DiT + sampler for one route, batched, streaming progress,
dropping requests whose callers stopped listening, with per-request LoRA adapters."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator

import torch
from ray import serve

from models.binning import resolution_for_sample_size
from models.denoiser import DenoiseJob, DropCallback, StepCallback, StepReport
from models.denoiser import Denoiser as DenoiserStage
from models.errors import AdapterError
from models.registry import DEFAULT_GUIDANCE
from models.text_encoder import PromptEmbedding
from serve import metrics
from serve.checkpoint_specs import CheckpointProfile, resolve_checkpoint
from serve.config import StageConfig
from serve.stages.common import configure_batching, ms, node_id, set_threads
from serve.stages.compute_thread import ComputeThread
from serve.stages.payloads import DenoiseProgress, DenoiseSpec, EncodedPrompt, Latents, StageTiming


def _images_in(specs: list[DenoiseSpec]) -> int:
    return sum(spec.num_images for spec in specs)


def _progress(spec: DenoiseSpec, report: StepReport, index: int) -> DenoiseProgress | None:
    """What request `index` of the batch hears about a step: every step if it asked for progress,
    else only the first (the gateway's admission learns that the request left the queue)."""
    if not spec.progress:
        return DenoiseProgress(1, report.total, None) if report.step == 0 else None
    return DenoiseProgress(report.step + 1, report.total, report.previews.get(index))


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
        set_threads(stage)
        self.node = node_id()
        self.route = route
        self.compute = ComputeThread(f"denoiser-{route}")
        self.stage = self.compute.call(DenoiserStage.from_pretrained, resolve_checkpoint(checkpoint), device=device)
        self._abandoned: set[int] = set()  # tickets of callers that stopped listening
        self._tickets = itertools.count()
        configure_batching(self.denoise_batch, stage.batching)
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
        elapsed = ms(time.perf_counter() - started)
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
            timing = StageTiming(ms(started - t), elapsed, images_in_batch, self.node)
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
