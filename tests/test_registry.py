"""Registry entries describe the published checkpoints; binning matches diffusers."""

from __future__ import annotations

import random

import pytest
import torch

from models.binning import bin_size, bin_table
from models.registry import FLOW_DPM_SOLVER, SCM, VARIANTS, get_variant

HUB_REPOS = {
    "Efficient-Large-Model/Sana_600M_512px_diffusers",
    "Efficient-Large-Model/Sana_600M_1024px_diffusers",
    "Efficient-Large-Model/Sana_1600M_512px_diffusers",
    "Efficient-Large-Model/Sana_1600M_1024px_BF16_diffusers",
    "Efficient-Large-Model/Sana_1600M_2Kpx_BF16_diffusers",
    "Efficient-Large-Model/Sana_1600M_4Kpx_BF16_diffusers",
    "Efficient-Large-Model/SANA1.5_1.6B_1024px_diffusers",
    "Efficient-Large-Model/SANA1.5_4.8B_1024px_diffusers",
    "Efficient-Large-Model/Sana_Sprint_0.6B_1024px_diffusers",
    "Efficient-Large-Model/Sana_Sprint_1.6B_1024px_diffusers",
}


def test_every_published_checkpoint_is_registered_with_defaults():
    assert {v.repo_id for v in VARIANTS.values() if v.repo_id} == HUB_REPOS
    for variant in VARIANTS.values():
        sprint = "sprint" in variant.name
        assert variant.sampler is (SCM if sprint else FLOW_DPM_SOLVER)
        assert variant.default_steps == (2 if sprint else 20) and variant.default_guidance == 4.5
        assert variant.resolution in (512, 1024, 2048, 4096)
        if variant.packaged:
            continue  # its architecture is its folder's
        config = variant.transformer_config()
        assert config.get("guidance_embeds", False) is sprint
        assert (config.get("qk_norm") == "rms_norm_across_heads") is (sprint or "1.5" in variant.name)
    assert get_variant("sana-1600m-4k").weight_variant == "bf16"
    assert get_variant("sana-600m-512").gpu_dtype == "float16"
    assert {"tiny", "tiny-4k", "tiny-sprint", "tiny-1.5"} <= VARIANTS.keys()


def _count(module: torch.nn.Module) -> float:
    return sum(p.numel() for p in module.parameters()) / 1e6


EXPECTED_MILLIONS = {"sana-600m-1024": 592, "sana-1600m-1024": 1604, "sana-1600m-4k": 1604,
                     "sana-1.5-1600m-1024": 1604, "sana-1.5-4800m-1024": 4722,
                     "sana-sprint-600m-1024": 592, "sana-sprint-1600m-1024": 1604}


@pytest.mark.parametrize("name", list(EXPECTED_MILLIONS))
def test_real_architectures_build_at_real_size(name):
    """On the meta device: real shapes without allocating gigabytes."""
    from diffusers import AutoencoderDC, SanaTransformer2DModel
    from transformers import Gemma2Config, Gemma2Model

    variant = get_variant(name)
    with torch.device("meta"):
        transformer = SanaTransformer2DModel(**variant.transformer_config())
        vae = AutoencoderDC(**variant.vae_config())
        gemma = Gemma2Model(Gemma2Config(**variant.text_encoder_config()))
    expected = EXPECTED_MILLIONS[name]
    assert abs(_count(transformer) - expected) / expected < 0.02
    assert abs(_count(vae) - 312) < 10  # DC-AE f32c32: 312M (encoder + decoder)
    assert abs(_count(gemma) - 2614) < 30  # Gemma-2 2B without the LM head
    assert transformer.config.caption_channels == gemma.config.hidden_size


@pytest.mark.parametrize("resolution", [512, 1024, 2048, 4096])
def test_binning_agrees_with_diffusers(resolution):
    from diffusers.image_processor import PixArtImageProcessor

    rng = random.Random(resolution)
    sizes = [(rng.randint(64, 4096), rng.randint(64, 4096)) for _ in range(300)] + [(1000, 600), (1, 4096)]
    for width, height in sizes:
        h, w = PixArtImageProcessor.classify_height_width_bin(height, width, ratios=bin_table(resolution))
        assert bin_size(width, height, resolution) == (w, h)


def test_bins_of_the_right_resolution_class():
    assert bin_size(1024, 1024, 1024) == (1024, 1024)
    assert bin_size(4096, 4096, 4096) == (4096, 4096)
    assert bin_size(1344, 768, 1024) == (1344, 768)
    with pytest.raises(ValueError):
        bin_table(768)
