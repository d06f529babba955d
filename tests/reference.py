"""Run diffusers' SanaPipeline exactly as the DESIGN numerics contract states it."""

from __future__ import annotations

import numpy as np
import torch


def reference_images(
    pipe,
    prompt: str,
    *,
    width: int,
    height: int,
    negative_prompt: str = "",
    num_images: int = 1,
    steps: int = 20,
    guidance_scale: float = 4.5,
    seed: int = 0,
) -> np.ndarray:
    """uint8 [n, H, W, 3] from diffusers, converted as diffusers does: (x * 255).round()."""
    images = pipe(
        prompt,
        negative_prompt=negative_prompt,
        height=height,
        width=width,
        num_images_per_prompt=num_images,
        num_inference_steps=steps,
        guidance_scale=guidance_scale,
        generator=torch.Generator("cpu").manual_seed(seed),
        output_type="np",
    ).images
    return (images * 255).round().astype(np.uint8)


def pixel_diff(a: np.ndarray, b: np.ndarray) -> int:
    assert a.shape == b.shape, (a.shape, b.shape)
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())


def sprint_reference_images(
    pipe, prompt: str, *, width: int, height: int, num_images: int = 1, steps: int = 2,
    guidance_scale: float = 4.5, seed: int = 0,
) -> np.ndarray:
    """uint8 [n, H, W, 3] from diffusers' SanaSprintPipeline with its own defaults (max timestep
    1.5708; the intermediate timestep 1.3, which it only accepts for 2 steps)."""
    images = pipe(
        prompt,
        height=height,
        width=width,
        num_images_per_prompt=num_images,
        num_inference_steps=steps,
        intermediate_timesteps=1.3 if steps == 2 else None,
        guidance_scale=guidance_scale,
        generator=torch.Generator("cpu").manual_seed(seed),
        output_type="np",
    ).images
    return (images * 255).round().astype(np.uint8)
