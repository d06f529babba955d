"""Variant registry: every Sana checkpoint we serve, and the tiny offline stand-ins.

A variant says where its weights live (Hub repo id), which aspect-ratio bin table its resolution
class uses, how it is stored for GPUs (dtype and file variant), its sampling defaults, and its full
architecture, so that `materialize` can build it at real size with random weights. Architecture
configs are data files in `models/architectures/` (copied from the published checkpoints, see
../shared/reference/hub-configs/SOURCES.md), composed here with per-resolution overrides and the
per-family switches (SANA-1.5 and SANA-Sprint add Q/K RMS norms; Sprint embeds its guidance scale).
SANA-1.5 (1.6B = the 1.6B layout with qk_norm; 4.8B = 60 layers) and Sprint follow diffusers'
`scripts/convert_sana_to_diffusers.py`, which is what wrote their published diffusers folders.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from models.errors import UnknownVariantError

ARCHITECTURES_DIR = Path(__file__).parent / "architectures"
# Trained checkpoints shipped as package data (written by `python -m train`), by name.
PACKAGED_DIR = Path(__file__).parent / "packaged"

# Sampling defaults of the Sana-1.0 checkpoints (their model cards and SanaPipeline's own): the one
# place these numbers are written; the API schema, the CLI help and the pipeline read them here.
DEFAULT_STEPS = 20
DEFAULT_GUIDANCE = 4.5

# SANA-Sprint's SCM sampler (SanaSprintPipeline's defaults): 2 steps; the first timestep, and the
# middle one that only a 2-step schedule uses.
SPRINT_STEPS = 2
SCM_MAX_TIMESTEP = 1.57080
SCM_INTERMEDIATE_TIMESTEP = 1.3


@dataclass(frozen=True)
class Sampler:
    """How a checkpoint samples: its scheduler, the diffusers pipeline that runs it, its defaults."""

    name: str
    scheduler_class: str
    pipeline_class: str
    default_steps: int
    default_guidance: float
    # Guidance is an input of the transformer (one forward per step, no negative prompt), not
    # classifier-free guidance.
    embedded_guidance: bool


FLOW_DPM_SOLVER = Sampler("flow-dpm-solver", "DPMSolverMultistepScheduler", "SanaPipeline",
                          DEFAULT_STEPS, DEFAULT_GUIDANCE, embedded_guidance=False)
SCM = Sampler("scm", "SCMScheduler", "SanaSprintPipeline", SPRINT_STEPS, DEFAULT_GUIDANCE, embedded_guidance=True)
SAMPLERS = {sampler.name: sampler for sampler in (FLOW_DPM_SOLVER, SCM)}


def sampler_for_scheduler(scheduler_class: str | None) -> Sampler:
    """The sampler of a checkpoint whose scheduler config names `scheduler_class`."""
    return SCM if scheduler_class == SCM.scheduler_class else FLOW_DPM_SOLVER

# Sana-1.0 transformers: positional embeddings only from 2K up (the converter's table:
# {512: None, 1024: None, 2048: 1.0, 4096: 2.0}); 4K uses a larger flow shift (6.0 vs 3.0).
_INTERPOLATION_SCALE = {512: None, 1024: None, 2048: 1.0, 4096: 2.0}
_FLOW_SHIFT = {512: 3.0, 1024: 3.0, 2048: 3.0, 4096: 6.0}


@cache
def architecture_config(name: str) -> dict[str, Any]:
    return json.loads((ARCHITECTURES_DIR / f"{name}.json").read_text())


@dataclass(frozen=True)
class Variant:
    """One servable checkpoint: identity, storage and architecture."""

    name: str
    repo_id: str | None  # None: exists only as a materialized checkpoint
    resolution: int  # resolution class: 512, 1024, 2048 or 4096; picks the bin table
    transformer_arch: str
    vae_arch: str
    text_encoder_arch: str
    gpu_dtype: str = "bfloat16"  # dtype the weights run in on CUDA
    weight_variant: str | None = None  # Hub file variant holding gpu_dtype weights ("bf16", "fp16")
    # A trained checkpoint shipped with the package (PACKAGED_DIR/<name>): `materialize` copies it
    # (with this variant's resolution class) instead of writing random weights.
    packaged: str | None = None
    sampler: Sampler = FLOW_DPM_SOLVER
    qk_norm: str | None = None  # "rms_norm_across_heads" for SANA-1.5 and Sprint
    guidance_embeds: bool = False  # Sprint: the guidance scale is embedded like the timestep

    @property
    def default_steps(self) -> int:
        return self.sampler.default_steps

    @property
    def default_guidance(self) -> float:
        return self.sampler.default_guidance

    @property
    def sample_size(self) -> int:
        # Latent side of the native resolution: DC-AE compresses 32x.
        return self.resolution // 32

    def transformer_config(self) -> dict[str, Any]:
        config = dict(architecture_config(self.transformer_arch))
        config["sample_size"] = self.sample_size
        scale = _INTERPOLATION_SCALE[self.resolution]
        if scale is not None:
            config["interpolation_scale"] = scale
        if self.qk_norm is not None:
            config["qk_norm"] = self.qk_norm
        if self.guidance_embeds:
            config["guidance_embeds"] = True
        return config

    def vae_config(self) -> dict[str, Any]:
        return dict(architecture_config(self.vae_arch))

    def text_encoder_config(self) -> dict[str, Any]:
        return dict(architecture_config(self.text_encoder_arch))

    def scheduler_config(self) -> dict[str, Any]:
        if self.sampler is SCM:
            return dict(architecture_config("scheduler-scm"))
        config = dict(architecture_config("scheduler-flow-dpm-solver"))
        config["flow_shift"] = _FLOW_SHIFT[self.resolution]
        return config


_QK_NORM = "rms_norm_across_heads"
# What a family changes over Sana-1.0 (same text encoder, DC-AE and bins).
_SANA_1_5 = {"qk_norm": _QK_NORM}
_SPRINT = {"qk_norm": _QK_NORM, "guidance_embeds": True, "sampler": SCM}


def _hub(name: str, repo: str, resolution: int, size: str, dtype: str, file_variant: str | None,
         **family: Any) -> Variant:
    return Variant(
        name=name,
        repo_id=f"Efficient-Large-Model/{repo}",
        resolution=resolution,
        transformer_arch=f"transformer-sana-{size}",
        vae_arch="vae-dc-ae-f32c32-sana-1.0",
        text_encoder_arch="text-encoder-gemma-2-2b",
        gpu_dtype=dtype,
        weight_variant=file_variant,
        **family,
    )


def _offline(name: str, resolution: int, size: str = "tiny", **family: Any) -> Variant:
    """Materialize-only checkpoints: `tiny` for tests, `small` for CPU benchmarks (Sana-shaped, about
    a second of CPU per 512px image, so timings measure compute rather than overhead)."""
    return Variant(
        name=name,
        repo_id=None,
        resolution=resolution,
        transformer_arch=f"transformer-{size}",
        vae_arch=f"vae-dc-ae-{size}",
        text_encoder_arch=f"text-encoder-gemma-2-{size}",
        gpu_dtype="float32",
        **family,
    )


def _packaged(name: str, resolution: int, checkpoint: str) -> Variant:
    """A shipped trained checkpoint; its architecture lives in its own folder's configs."""
    return Variant(name=name, repo_id=None, resolution=resolution, transformer_arch="", vae_arch="",
                   text_encoder_arch="", gpu_dtype="float32", packaged=checkpoint)


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        _hub("sana-600m-512", "Sana_600M_512px_diffusers", 512, "600m", "float16", "fp16"),
        _hub("sana-600m-1024", "Sana_600M_1024px_diffusers", 1024, "600m", "float16", "fp16"),
        _hub("sana-1600m-512", "Sana_1600M_512px_diffusers", 512, "1600m", "float16", "fp16"),
        _hub("sana-1600m-1024", "Sana_1600M_1024px_BF16_diffusers", 1024, "1600m", "bfloat16", "bf16"),
        _hub("sana-1600m-2k", "Sana_1600M_2Kpx_BF16_diffusers", 2048, "1600m", "bfloat16", "bf16"),
        _hub("sana-1600m-4k", "Sana_1600M_4Kpx_BF16_diffusers", 4096, "1600m", "bfloat16", "bf16"),
        # SANA-1.5 and Sprint: bf16 weights under plain file names (their model cards load them with
        # torch_dtype=torch.bfloat16 and no variant).
        _hub("sana-1.5-1600m-1024", "SANA1.5_1.6B_1024px_diffusers", 1024, "1600m", "bfloat16", None, **_SANA_1_5),
        _hub("sana-1.5-4800m-1024", "SANA1.5_4.8B_1024px_diffusers", 1024, "4800m", "bfloat16", None, **_SANA_1_5),
        _hub("sana-sprint-600m-1024", "Sana_Sprint_0.6B_1024px_diffusers", 1024, "600m", "bfloat16", None,
             **_SPRINT),
        _hub("sana-sprint-1600m-1024", "Sana_Sprint_1.6B_1024px_diffusers", 1024, "1600m", "bfloat16", None,
             **_SPRINT),
        _offline("tiny", 1024),
        _offline("tiny-1.5", 1024, **_SANA_1_5),
        _offline("tiny-sprint", 1024, **_SPRINT),
        _offline("small-sprint", 512, "small", **_SPRINT),
        _offline("tiny-4k", 4096),
        _offline("small", 512, "small"),
        # The embedded default: trained on the shapes world at 512px bins; the same weights with the
        # 4096px bins serve the local 4K route.
        _packaged("shapes", 512, "sana-shapes"),
        _packaged("shapes-4k", 4096, "sana-shapes"),
    )
}


def get_variant(name: str) -> Variant:
    try:
        return VARIANTS[name]
    except KeyError:
        known = ", ".join(sorted(VARIANTS))
        raise UnknownVariantError(
            f"unknown architecture {name!r}; known: {known}, tiny-shieldgemma, tiny-image-checker, tiny-lora-a, "
            "tiny-lora-b, small-lora"
        ) from None


def variant_for_repo(repo_id: str) -> Variant | None:
    """The registry entry whose Hub repo is `repo_id`, if any."""
    for variant in VARIANTS.values():
        if variant.repo_id == repo_id:
            return variant
    return None
