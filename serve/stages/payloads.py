"""What travels between deployments (through Ray's object store). Plain dataclasses of CPU data."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from models.denoiser import DenoiseJob
from models.text_encoder import PromptEmbedding


@dataclass(frozen=True)
class StageTiming:
    """One stage's share of a request: time waiting for its batch, compute time, batch size, node."""

    wait_ms: float
    compute_ms: float
    batch_size: int
    node: str


@dataclass(frozen=True)
class EncodedPrompt:
    embedding: PromptEmbedding
    timing: StageTiming


@dataclass(frozen=True)
class DenoiseSpec:
    """A request's denoising parameters (its prompts arrive as separate EncodedPrompt arguments)."""

    seed: int
    num_images: int
    width: int  # bin size
    height: int
    steps: int
    guidance_scale: float
    progress: bool = False  # stream a DenoiseProgress after every step
    preview_steps: tuple[int, ...] = ()  # 0-based steps whose clean-latent prediction to stream
    lora: str | None = None  # an adapter id of the route's catalog
    lora_scale: float = 1.0

    def job(self, prompt: PromptEmbedding, negative: PromptEmbedding | None) -> DenoiseJob:
        return DenoiseJob(prompt=prompt, negative=negative, seed=self.seed, num_images=self.num_images,
                          width=self.width, height=self.height, steps=self.steps,
                          guidance_scale=self.guidance_scale, preview_steps=self.preview_steps,
                          lora=self.lora, lora_scale=self.lora_scale)


@dataclass(frozen=True)
class DenoiseProgress:
    """One solver step of a request, streamed out of the Denoiser while its batch runs."""

    step: int  # 1-based: steps done
    total: int
    preview: torch.Tensor | None = None  # float32 [n, C, h, w]: predicted clean latents, if asked


@dataclass(frozen=True)
class Latents:
    latents: torch.Tensor  # float32 [n, C, h, w] on CPU
    timings: dict[str, StageTiming] = field(default_factory=dict)


@dataclass(frozen=True)
class Pixels:
    images: np.ndarray  # uint8 [n, H, W, 3]
    timings: dict[str, StageTiming] = field(default_factory=dict)
