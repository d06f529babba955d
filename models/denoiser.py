"""Denoiser stage: Sana DiT + Flow-DPM-Solver, batched over requests that share a schedule.

Each job is one request: its prompt embeddings, seed, image count, bin size, steps and guidance.
Jobs with the same (size, steps, guidance mode) run as one batch through the transformer; each
batch gets a fresh scheduler (the solver keeps per-step state), and every job's noise comes from its
own `torch.Generator("cpu").manual_seed(seed)`, shaped like diffusers' `prepare_latents`, so a job's
latents are the same alone or batched.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from models.checkpoint import choose_placement, load_component, resolve_source
from models.text_encoder import PromptEmbedding

SUBFOLDERS = ("transformer", "scheduler")
VAE_COMPRESSION = 32  # DC-AE f32: one latent pixel per 32x32 image pixels

# on_step(step_index, total_steps): called after each solver step of a batch.
StepCallback = Callable[[int, int], None]


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

    @property
    def uses_guidance(self) -> bool:
        return self.guidance_scale > 1.0

    def batch_key(self) -> tuple[int, int, int, bool]:
        """Jobs with equal keys can share one transformer batch and one timestep schedule."""
        return (self.width, self.height, self.steps, self.uses_guidance)


def initial_noise(seed: int, num_images: int, channels: int, width: int, height: int) -> torch.Tensor:
    """The starting latents diffusers draws for this seed (float32, on CPU, then moved)."""
    generator = torch.Generator("cpu").manual_seed(seed)
    shape = (num_images, channels, height // VAE_COMPRESSION, width // VAE_COMPRESSION)
    return torch.randn(shape, generator=generator, dtype=torch.float32)


class Denoiser:
    """Sana transformer with a per-batch Flow-DPM-Solver."""

    def __init__(self, transformer: torch.nn.Module, scheduler_config: dict) -> None:
        self.transformer = transformer
        self.scheduler_config = dict(scheduler_config)
        self.latent_channels = int(transformer.config.in_channels)

    @classmethod
    def from_pretrained(cls, source: str, *, device: str | None = None, dtype: str | None = None) -> "Denoiser":
        from diffusers import DPMSolverMultistepScheduler, SanaTransformer2DModel

        placement = choose_placement(source, device, dtype)
        folder = resolve_source(source, SUBFOLDERS, placement.weight_variant)
        transformer = load_component(SanaTransformer2DModel, folder / "transformer", placement)
        scheduler_config = DPMSolverMultistepScheduler.load_config(folder / "scheduler")
        return cls(transformer, scheduler_config)

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    @property
    def sample_size(self) -> int:
        return int(self.transformer.config.sample_size)

    def denoise(self, jobs: list[DenoiseJob], on_step: StepCallback | None = None) -> list[torch.Tensor]:
        """Final latents [n, C, h, w] (float32) per job, in order. Mixed jobs run as several batches."""
        groups: dict[tuple[int, int, int, bool], list[int]] = {}
        for index, job in enumerate(jobs):
            groups.setdefault(job.batch_key(), []).append(index)
        results: list[torch.Tensor | None] = [None] * len(jobs)
        for indices in groups.values():
            latents = self._denoise_batch([jobs[i] for i in indices], on_step)
            for i, job_latents in zip(indices, latents):
                results[i] = job_latents
        return results  # type: ignore[return-value]

    def _new_scheduler(self):
        from diffusers import DPMSolverMultistepScheduler

        return DPMSolverMultistepScheduler.from_config(self.scheduler_config)

    @torch.no_grad()
    def _denoise_batch(self, jobs: list[DenoiseJob], on_step: StepCallback | None) -> list[torch.Tensor]:
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

        # 4. Solver loop.
        timestep_scale = float(getattr(self.transformer.config, "timestep_scale", 1.0))
        learned_sigma = int(self.transformer.config.out_channels) // 2 == self.latent_channels
        for step, t in enumerate(timesteps):
            model_input = torch.cat([latents, latents]) if guided else latents
            timestep = t.expand(model_input.shape[0]) * timestep_scale
            noise = self.transformer(
                model_input.to(dtype),
                encoder_hidden_states=embeds,
                encoder_attention_mask=mask,
                timestep=timestep,
                return_dict=False,
            )[0].float()
            if guided:
                uncond, cond = noise.chunk(2)
                noise = uncond + scales * (cond - uncond)
            if learned_sigma:
                noise = noise.chunk(2, dim=1)[0]
            latents = scheduler.step(noise, t, latents, return_dict=False)[0]
            if on_step is not None:
                on_step(step, len(timesteps))
        return list(latents.split(counts))


def _per_image(prompts: list[PromptEmbedding], counts: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    # Repeated per image on both: image k of job j sees job j's prompt *and* job j's mask. (diffusers
    # repeats embeddings per prompt but masks per batch, which pairs masks with the wrong prompts.)
    embeds = torch.cat([p.embeds.unsqueeze(0).expand(n, -1, -1) for p, n in zip(prompts, counts)])
    mask = torch.cat([p.mask.unsqueeze(0).expand(n, -1) for p, n in zip(prompts, counts)])
    return embeds, mask

