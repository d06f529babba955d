"""Run diffusers' SanaPipeline exactly as the DESIGN numerics contract states it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from models.pipeline import GenerationRequest


def diffusers_pipeline(pipeline_class: str, checkpoint: Path):
    """diffusers' own pipeline class (SanaPipeline, SanaSprintPipeline) on `checkpoint`: a reference."""
    import diffusers

    pipe = getattr(diffusers, pipeline_class).from_pretrained(checkpoint)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def in_process_pipeline(checkpoint: Path):
    from models.pipeline import SanaInProcessPipeline

    return SanaInProcessPipeline.from_pretrained(str(checkpoint), device="cpu")


def generation_request(case: dict) -> GenerationRequest:
    """A parity case (the reference's keyword arguments) as our request."""
    return GenerationRequest(
        prompt=case["prompt"],
        negative_prompt=case.get("negative_prompt", ""),
        width=case["width"],
        height=case["height"],
        num_images=case.get("num_images", 1),
        steps=case.get("steps", 20),
        guidance_scale=case.get("guidance_scale", 4.5),
        seed=case.get("seed", 0),
    )


def assert_solo_matches(pipeline, case: dict, expected: np.ndarray) -> None:
    """Our in-process pipeline, one request alone, gives the reference's pixels exactly."""
    result = pipeline.generate([generation_request(case)])[0]
    assert result.images.shape == (case.get("num_images", 1), case["height"], case["width"], 3)
    assert result.seed == case.get("seed", 0)
    assert np.array_equal(result.images, expected), f"max diff {pixel_diff(result.images, expected)}"


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
