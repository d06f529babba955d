"""What travels between deployments (through Ray's object store). Plain dataclasses of CPU data."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

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

    def job(self, prompt: PromptEmbedding, negative: PromptEmbedding | None) -> DenoiseJob:
        return DenoiseJob(prompt=prompt, negative=negative, **asdict(self))


@dataclass(frozen=True)
class Latents:
    latents: torch.Tensor  # float32 [n, C, h, w] on CPU
    timings: dict[str, StageTiming] = field(default_factory=dict)


@dataclass(frozen=True)
class Pixels:
    images: np.ndarray  # uint8 [n, H, W, 3]
    timings: dict[str, StageTiming] = field(default_factory=dict)
