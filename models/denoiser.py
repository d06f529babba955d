"""Denoiser stage: Sana DiT + its sampler, batched over requests that share a schedule.

Two samplers, picked by the checkpoint's scheduler config:
- Flow-DPM-Solver (Sana-1.0, SANA-1.5) with classifier-free guidance, as `SanaPipeline` runs it;
- SCM (SANA-Sprint, 1-4 steps) with the guidance scale embedded in the transformer (one forward per
  step, no negative prompt), as `SanaSprintPipeline` runs it.

Each job is one request: its prompt embeddings, seed, image count, bin size, steps and guidance.
Jobs with the same batch key (size, steps, and for CFG the guidance mode) run as one batch through
the transformer; each batch gets a fresh scheduler (the solver keeps per-step state), and every
job's noise comes from its own `torch.Generator("cpu").manual_seed(seed)`, shaped like diffusers'
`prepare_latents`, so a job's latents are the same alone or batched. (SCM also draws fresh noise at
every step: each job from its own generator, through its own scheduler.)
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field

import torch

from models.checkpoint import choose_placement, load_component, resolve_source
from models.lora import Adapters
from models.registry import SCM, SCM_INTERMEDIATE_TIMESTEP, SCM_MAX_TIMESTEP, Sampler, sampler_for_scheduler
from models.text_encoder import PromptEmbedding

SUBFOLDERS = ("transformer", "scheduler")
VAE_COMPRESSION = 32  # DC-AE f32: one latent pixel per 32x32 image pixels



@dataclass(frozen=True)
class StepReport:
    """What one solver step of one batch did, for progress reporting.

    `jobs` are the indices (into the `denoise` call's job list) still running in this batch;
    `previews` holds, for jobs that asked for a preview at this step, the solver's prediction of the
    clean latents (float32 [n, C, h, w] on CPU)."""

    step: int  # 0-based
    total: int
    jobs: tuple[int, ...]
    previews: dict[int, torch.Tensor] = field(default_factory=dict)


# on_step(report): called after each solver step of a batch (in the thread that runs it).
StepCallback = Callable[[StepReport], None]
# dropped(): indices of jobs to stop (cancelled by their callers); asked before each step.
DropCallback = Callable[[], Collection[int]]


@dataclass(frozen=True)
class DenoiseJob:
    """One request's denoising work. `negative` is None when guidance is off (scale <= 1)."""

    prompt: PromptEmbedding
    negative: PromptEmbedding | None
    seed: int
    num_images: int
    width: int  # bin size in pixels, a multiple of 32
    height: int
    steps: int
    guidance_scale: float
    preview_steps: tuple[int, ...] = ()  # 0-based steps after which to report the predicted clean latents
    lora: str | None = None  # a loaded adapter's name (Denoiser.adapters), or none
    lora_scale: float = 1.0

    @property
    def uses_guidance(self) -> bool:
        return self.guidance_scale > 1.0

    def batch_key(self, sampler: Sampler) -> tuple:
        """Jobs with equal keys can share one transformer batch and one timestep schedule. With
        embedded guidance any scales mix (the scale is a per-row input); an adapter and its scale are
        the transformer's state for the whole batch, so they must match."""
        cfg = self.uses_guidance and not sampler.embedded_guidance
        return (self.width, self.height, self.steps, cfg, self.lora, self.lora_scale if self.lora else None)


def initial_noise(seed: int, num_images: int, channels: int, width: int, height: int,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """The starting latents diffusers draws for this seed (float32, on CPU, then moved). Pass the
    seed's `generator` to keep drawing from it afterwards (SCM's per-step noise)."""
    generator = generator or torch.Generator("cpu").manual_seed(seed)
    shape = (num_images, channels, height // VAE_COMPRESSION, width // VAE_COMPRESSION)
    return torch.randn(shape, generator=generator, dtype=torch.float32)


class Denoiser:
    """Sana transformer with a per-batch scheduler (Flow-DPM-Solver or SCM)."""

    def __init__(self, transformer: torch.nn.Module, scheduler_config: dict) -> None:
        self.transformer = transformer
        self.scheduler_config = dict(scheduler_config)
        self.sampler = sampler_for_scheduler(self.scheduler_config.get("_class_name"))
        self.latent_channels = int(transformer.config.in_channels)
        self.adapters = Adapters(transformer)

    @classmethod
    def from_pretrained(cls, source: str, *, device: str | None = None, dtype: str | None = None) -> "Denoiser":
        from diffusers import DPMSolverMultistepScheduler, SanaTransformer2DModel

        placement = choose_placement(source, device, dtype)
        folder = resolve_source(source, SUBFOLDERS, placement.weight_variant)
        transformer = load_component(SanaTransformer2DModel, folder / "transformer", placement)
        # Any scheduler's config file reads the same way; its _class_name tells the sampler.
        scheduler_config = DPMSolverMultistepScheduler.load_config(folder / "scheduler")
        return cls(transformer, scheduler_config)

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    @property
    def sample_size(self) -> int:
        return int(self.transformer.config.sample_size)

    def batches(self, jobs: list[DenoiseJob]) -> list[list[int]]:
        """The transformer batches `denoise` runs `jobs` in: indices of jobs with equal batch keys."""
        groups: dict[tuple, list[int]] = {}
        for index, job in enumerate(jobs):
            groups.setdefault(job.batch_key(self.sampler), []).append(index)
        return list(groups.values())

    def denoise(
        self, jobs: list[DenoiseJob], on_step: StepCallback | None = None, dropped: DropCallback | None = None
    ) -> list[torch.Tensor | None]:
        """Final latents [n, C, h, w] (float32) per job, in order; None for a job `dropped` stopped.
        Mixed jobs run as several batches. A dropped job leaves its batch before the next step, so
        the others continue on fewer rows (their pixels equal a run without it, within ±1 level)."""
        results: list[torch.Tensor | None] = [None] * len(jobs)
        run_batch = self._denoise_batch_scm if self.sampler is SCM else self._denoise_batch
        for indices in self.batches(jobs):
            first = jobs[indices[0]]
            with self.adapters.active(first.lora, first.lora_scale):
                results_in_group = run_batch(jobs, indices, on_step, dropped or _nothing_dropped)
            for i, job_latents in results_in_group.items():
                results[i] = job_latents
        return results

    def _new_scheduler(self):
        from diffusers import DPMSolverMultistepScheduler

        return DPMSolverMultistepScheduler.from_config(self.scheduler_config)

    @torch.no_grad()
    def _denoise_batch(
        self, all_jobs: list[DenoiseJob], indices: list[int], on_step: StepCallback | None, dropped: DropCallback
    ) -> dict[int, torch.Tensor]:
        jobs = [all_jobs[i] for i in indices]
        first = jobs[0]
        device, dtype = self.device, self.transformer.dtype
        guided = first.uses_guidance
        counts = [job.num_images for job in jobs]

        # 1. Conditioning, one row per image: each job's prompt repeated for each of its images
        #    (embeds and masks repeated the same way), negatives first as diffusers orders them.
        embeds, mask = _per_image([job.prompt for job in jobs], counts)
        if guided:
            neg_embeds, neg_mask = _per_image([job.negative for job in jobs], counts)  # type: ignore[misc]
            embeds, mask = torch.cat([neg_embeds, embeds]), torch.cat([neg_mask, mask])
        embeds, mask = embeds.to(device=device, dtype=dtype), mask.to(device)
        scales = torch.tensor(
            [job.guidance_scale for job in jobs for _ in range(job.num_images)], dtype=torch.float32, device=device
        ).view(-1, 1, 1, 1)

        # 2. A fresh solver for this batch; all jobs share its timesteps.
        scheduler = self._new_scheduler()
        scheduler.set_timesteps(first.steps, device=device)
        timesteps = scheduler.timesteps

        # 3. Each job's own noise.
        latents = torch.cat(
            [initial_noise(j.seed, j.num_images, self.latent_channels, j.width, j.height) for j in jobs]
        ).to(device)
        batch = _Rows(list(indices), counts)

        # 4. Solver loop.
        timestep_scale = float(getattr(self.transformer.config, "timestep_scale", 1.0))
        learned_sigma = int(self.transformer.config.out_channels) // 2 == self.latent_channels
        for step, t in enumerate(timesteps):
            if (keep := batch.drop_asked(dropped, device)) is not None:
                if not batch.jobs:
                    return {}
                latents, scales = latents[keep], scales[keep]
                embeds, mask = _keep_rows(embeds, keep, guided), _keep_rows(mask, keep, guided)
                # The solver's memory of earlier steps has one row per image too.
                scheduler.model_outputs = [None if m is None else m[keep] for m in scheduler.model_outputs]
            model_input = torch.cat([latents, latents]) if guided else latents
            timestep = t.expand(model_input.shape[0]) * timestep_scale
            noise = self._forward(model_input, embeds, mask, timestep).float()
            if guided:
                uncond, cond = noise.chunk(2)
                noise = uncond + scales * (cond - uncond)
            if learned_sigma:
                noise = noise.chunk(2, dim=1)[0]
            latents = scheduler.step(noise, t, latents, return_dict=False)[0]
            if on_step is not None:
                on_step(StepReport(step, len(timesteps), tuple(batch.jobs),
                                   self._previews(all_jobs, batch, step, scheduler.model_outputs[-1])))
        return dict(zip(batch.jobs, latents.split(batch.counts)))

    @torch.no_grad()
    def _denoise_batch_scm(
        self, all_jobs: list[DenoiseJob], indices: list[int], on_step: StepCallback | None, dropped: DropCallback
    ) -> dict[int, torch.Tensor]:
        """SanaSprintPipeline's loop (TrigFlow/SCM), batched: the guidance scale is a per-row input
        of the transformer, and each job steps through its own scheduler with its own generator,
        because SCM draws fresh noise at every step."""
        from diffusers import SCMScheduler

        jobs = [all_jobs[i] for i in indices]
        first = jobs[0]
        device, dtype = self.device, self.transformer.dtype
        counts = [job.num_images for job in jobs]
        embeds, mask = _per_image([job.prompt for job in jobs], counts)
        embeds, mask = embeds.to(device=device, dtype=dtype), mask.to(device)
        # diffusers: a float32 scale, cast to the embeddings' dtype, then times guidance_embeds_scale.
        guidance = torch.tensor([job.guidance_scale for job in jobs for _ in range(job.num_images)],
                                dtype=torch.float32, device=device).to(dtype)
        guidance = guidance * self.transformer.config.guidance_embeds_scale

        intermediate = SCM_INTERMEDIATE_TIMESTEP if first.steps == 2 else None
        schedulers, generators = {}, {}
        for index, job in zip(indices, jobs):
            scheduler = SCMScheduler.from_config(self.scheduler_config)
            scheduler.set_timesteps(job.steps, device=device, max_timesteps=SCM_MAX_TIMESTEP,
                                    intermediate_timesteps=intermediate)
            scheduler.set_begin_index(0)
            schedulers[index] = scheduler
            generators[index] = torch.Generator("cpu").manual_seed(job.seed)
        timesteps = schedulers[indices[0]].timesteps[:-1]  # the last one (0) is where the steps end
        sigma_data = float(self.scheduler_config.get("sigma_data", 0.5))
        latents = torch.cat([
            initial_noise(j.seed, j.num_images, self.latent_channels, j.width, j.height, generators[i])
            for i, j in zip(indices, jobs)
        ]).to(device) * sigma_data
        batch = _Rows(list(indices), counts)
        denoised = latents
        for step, t in enumerate(timesteps):
            if (keep := batch.drop_asked(dropped, device)) is not None:
                if not batch.jobs:
                    return {}
                latents, embeds, mask, guidance = latents[keep], embeds[keep], mask[keep], guidance[keep]
            timestep = t.expand(latents.shape[0])
            scm_t = torch.sin(timestep) / (torch.cos(timestep) + torch.sin(timestep))
            scm = scm_t.view(-1, 1, 1, 1)
            norm = torch.sqrt(scm**2 + (1 - scm) ** 2)
            model_input = (latents / sigma_data) * norm
            flow = self._forward(model_input, embeds, mask, scm_t, guidance=guidance)
            flow = ((1 - 2 * scm) * model_input + (1 - 2 * scm + 2 * scm**2) * flow) / norm
            flow = flow.float() * sigma_data
            # Each job's own scheduler step (its own generator draws its next noise).
            stepped = [
                schedulers[job].step(rows, t.expand(rows.shape[0]), sample, generator=generators[job], return_dict=False)
                for job, rows, sample in zip(batch.jobs, flow.split(batch.counts), latents.split(batch.counts))
            ]
            latents = torch.cat([prev for prev, _ in stepped])
            denoised = torch.cat([clean for _, clean in stepped])
            if on_step is not None:
                on_step(StepReport(step, len(timesteps), tuple(batch.jobs),
                                   self._previews(all_jobs, batch, step, denoised / sigma_data)))
        return dict(zip(batch.jobs, (denoised / sigma_data).split(batch.counts)))

    def _forward(self, model_input: torch.Tensor, embeds: torch.Tensor, mask: torch.Tensor, timestep: torch.Tensor,
                 **conditioning: torch.Tensor) -> torch.Tensor:
        """One transformer forward in its dtype (`conditioning`: SCM's embedded `guidance`)."""
        return self.transformer(model_input.to(self.transformer.dtype), encoder_hidden_states=embeds,
                                encoder_attention_mask=mask, timestep=timestep, return_dict=False, **conditioning)[0]

    @staticmethod
    def _previews(jobs: list[DenoiseJob], batch: "_Rows", step: int, clean: torch.Tensor) -> dict[int, torch.Tensor]:
        """The clean-latent prediction (the multistep solver's last converted model output, x0 for
        dpmsolver++) of each job that asked for a preview after this step."""
        wanted = {i for i in batch.jobs if step in jobs[i].preview_steps}
        if not wanted:
            return {}
        return {i: rows.float().cpu().clone() for i, rows in zip(batch.jobs, clean.split(batch.counts)) if i in wanted}


def _nothing_dropped() -> Collection[int]:
    return ()


class _Rows:
    """Which jobs a running batch still holds, and how many image rows each has."""

    def __init__(self, jobs: list[int], counts: list[int]) -> None:
        self.jobs, self.counts = jobs, counts

    def drop_asked(self, dropped: DropCallback, device: torch.device) -> torch.Tensor | None:
        """Drop the jobs `dropped` names that this batch holds; the rows that remain (on `device`),
        or None when it names none of them."""
        stop = set(dropped()) & set(self.jobs)
        return self.drop(stop).to(device) if stop else None

    def drop(self, stop: set[int]) -> torch.Tensor:
        """Forget the jobs in `stop`; the indices of the image rows that remain."""
        keep, jobs, counts, row = [], [], [], 0
        for job, count in zip(self.jobs, self.counts):
            if job not in stop:
                keep.extend(range(row, row + count))
                jobs.append(job)
                counts.append(count)
            row += count
        self.jobs, self.counts = jobs, counts
        return torch.tensor(keep, dtype=torch.long)


def _keep_rows(tensor: torch.Tensor, keep: torch.Tensor, guided: bool) -> torch.Tensor:
    """Rows `keep` of per-image conditioning; with guidance the tensor is [negatives; prompts]."""
    if not guided:
        return tensor[keep]
    negatives, prompts = tensor.chunk(2)
    return torch.cat([negatives[keep], prompts[keep]])


def _per_image(prompts: list[PromptEmbedding], counts: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    # Repeated per image on both: image k of job j sees job j's prompt *and* job j's mask. (diffusers
    # repeats embeddings per prompt but masks per batch, which pairs masks with the wrong prompts.)
    embeds = torch.cat([p.embeds.unsqueeze(0).expand(n, -1, -1) for p, n in zip(prompts, counts)])
    mask = torch.cat([p.mask.unsqueeze(0).expand(n, -1) for p, n in zip(prompts, counts)])
    return embeds, mask

