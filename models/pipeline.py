"""In-process Sana pipeline: the three stages composed, no Ray.

This is the reference the served pipeline must match pixel for pixel, and the baseline the
benchmarks compare against. One call takes many requests; requests that share size, steps and
guidance mode denoise as one batch.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass

import numpy as np

from models.binning import bin_size, resolution_for_sample_size
from models.decoder import Decoder, TilingConfig
from models.denoiser import DenoiseJob, Denoiser, StepCallback
from models.errors import InvalidRequestError
from models.registry import DEFAULT_GUIDANCE, DEFAULT_STEPS
from models.text_encoder import TextEncoder

MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed takes a signed 64-bit seed


@dataclass(frozen=True)
class GenerationRequest:
    """What a user asks for. None means the checkpoint's default (size, steps, guidance) or a fresh seed."""

    prompt: str
    negative_prompt: str = ""
    width: int | None = None
    height: int | None = None
    num_images: int = 1
    steps: int | None = None
    guidance_scale: float | None = None
    seed: int | None = None
    lora: str | None = None  # an adapter loaded with SanaInProcessPipeline.load_lora
    lora_scale: float = 1.0


@dataclass(frozen=True)
class ResolvedRequest:
    """A request with every default filled in and checked."""

    prompt: str
    negative_prompt: str
    width: int
    height: int
    num_images: int
    steps: int
    guidance_scale: float
    seed: int

    @property
    def uses_guidance(self) -> bool:
        return self.guidance_scale > 1.0


@dataclass(frozen=True)
class GenerationResult:
    images: np.ndarray  # uint8 [n, height, width, 3]
    seed: int
    bin_width: int
    bin_height: int


@dataclass(frozen=True)
class Defaults:
    steps: int = DEFAULT_STEPS
    guidance_scale: float = DEFAULT_GUIDANCE


def resolve_request(request: GenerationRequest, resolution: int, defaults: Defaults) -> ResolvedRequest:
    """Fill defaults, draw a seed if none, and check what the stages cannot run."""
    width = resolution if request.width is None else request.width
    height = resolution if request.height is None else request.height
    steps = defaults.steps if request.steps is None else request.steps
    guidance = defaults.guidance_scale if request.guidance_scale is None else request.guidance_scale
    seed = secrets.randbelow(2**31) if request.seed is None else request.seed
    for name, value in (("width", width), ("height", height), ("steps", steps), ("num_images", request.num_images)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidRequestError(f"{name} must be a positive integer, got {value!r}", field=name)
    if not isinstance(guidance, (int, float)) or isinstance(guidance, bool) or not math.isfinite(guidance):
        raise InvalidRequestError(f"guidance_scale must be a finite number, got {guidance!r}", field="guidance_scale")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise InvalidRequestError(f"seed must be an integer in [0, {MAX_SEED}]", field="seed")
    return ResolvedRequest(
        prompt=request.prompt,
        negative_prompt=request.negative_prompt,
        width=width,
        height=height,
        num_images=request.num_images,
        steps=steps,
        guidance_scale=float(guidance),
        seed=seed,
    )


class SanaInProcessPipeline:
    """TextEncoder → Denoiser → Decoder in one process."""

    def __init__(
        self, text_encoder: TextEncoder, denoiser: Denoiser, decoder: Decoder, defaults: Defaults | None = None
    ) -> None:
        self.text_encoder = text_encoder
        self.denoiser = denoiser
        self.decoder = decoder
        sampler = denoiser.sampler
        self.defaults = defaults or Defaults(sampler.default_steps, sampler.default_guidance)
        self.resolution = resolution_for_sample_size(denoiser.sample_size)

    @classmethod
    def from_pretrained(
        cls,
        source: str,
        *,
        device: str | None = None,
        dtype: str | None = None,
        cache_size: int = 1024,
        tiling: TilingConfig | None = None,
    ) -> "SanaInProcessPipeline":
        return cls(
            TextEncoder.from_pretrained(source, device=device, dtype=dtype, cache_size=cache_size),
            Denoiser.from_pretrained(source, device=device, dtype=dtype),
            Decoder.from_pretrained(source, device=device, dtype=dtype, tiling=tiling),
        )

    def load_lora(self, name: str, source: str) -> None:
        """Load a LoRA adapter (a folder or Hub repo) that requests can then name with `lora`."""
        self.denoiser.adapters.load(name, source)

    def generate(
        self, requests: list[GenerationRequest], on_step: StepCallback | None = None
    ) -> list[GenerationResult]:
        # 1. Defaults, seeds, validation; the bin each request is generated at.
        resolved = [resolve_request(r, self.resolution, self.defaults) for r in requests]
        bins = [bin_size(r.width, r.height, self.resolution) for r in resolved]

        # 2. Encode prompts, and negative prompts where classifier-free guidance is on, each kind as
        #    one batch. (Embedded guidance, SANA-Sprint, has no negative prompt.)
        prompts = self.text_encoder.encode([r.prompt for r in resolved], with_instruction=True)
        cfg = not self.denoiser.sampler.embedded_guidance
        guided = [i for i, r in enumerate(resolved) if r.uses_guidance and cfg]
        negatives_list = self.text_encoder.encode(
            [resolved[i].negative_prompt for i in guided], with_instruction=False
        ) if guided else []
        negatives = dict(zip(guided, negatives_list))

        # 3. Denoise; requests sharing size, steps and guidance mode run as one batch.
        jobs = [
            DenoiseJob(
                prompt=prompts[i],
                negative=negatives.get(i),
                seed=r.seed,
                num_images=r.num_images,
                width=bins[i][0],
                height=bins[i][1],
                steps=r.steps,
                guidance_scale=r.guidance_scale,
                lora=request.lora,
                lora_scale=request.lora_scale,
            )
            for i, (r, request) in enumerate(zip(resolved, requests))
        ]
        latents = self.denoiser.denoise(jobs, on_step)  # nothing is dropped here: all are present

        # 4. Decode each request at its requested size.
        return [
            GenerationResult(
                images=self.decoder.decode(z, r.width, r.height),
                seed=r.seed,
                bin_width=b[0],
                bin_height=b[1],
            )
            for z, r, b in zip(latents, resolved, bins)
        ]
