"""`materialize`: offline, deterministic, diffusers-loadable, structurally faithful; clear errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from models.errors import MaterializeError, UnknownVariantError
from models.materialize import materialize


def _weights(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*.safetensors"))}


def test_same_seed_same_weight_bytes_and_another_seed_differs(tiny_checkpoint, tmp_path):
    again = materialize("tiny", tmp_path / "again", seed=0)
    other = materialize("tiny", tmp_path / "other", seed=1)
    reference = _weights(tiny_checkpoint)
    assert len(reference) == 3  # text_encoder, transformer, vae
    assert _weights(again) == reference
    other_weights = _weights(other)
    assert other_weights.keys() == reference.keys()
    assert all(other_weights[k] != reference[k] for k in reference)


def test_layout_is_diffusers_format(tiny_checkpoint):
    for sub in ("text_encoder", "tokenizer", "transformer", "vae", "scheduler"):
        assert (tiny_checkpoint / sub).is_dir()
    index = json.loads((tiny_checkpoint / "model_index.json").read_text())
    assert index["_class_name"] == "SanaPipeline"
    assert index["transformer"] == ["diffusers", "SanaTransformer2DModel"]


def test_tiny_is_structurally_faithful(reference_pipeline):
    vae = reference_pipeline.vae
    assert len(vae.config.decoder_block_out_channels) == 6  # six stages
    assert vae.spatial_compression_ratio == 32
    assert reference_pipeline.transformer.config.sample_size == 32  # 1024px bins
    assert reference_pipeline.transformer.config.caption_channels == reference_pipeline.text_encoder.config.hidden_size
    assert type(reference_pipeline.text_encoder).__name__ == "Gemma2Model"


def test_tiny_4k_uses_the_4096_bins_and_positional_embeddings(tmp_path):
    from diffusers import SanaTransformer2DModel

    folder = materialize("tiny-4k", tmp_path / "t4k")
    config = SanaTransformer2DModel.load_config(folder / "transformer")
    assert config["sample_size"] == 128 and config["interpolation_scale"] == 2.0
    scheduler = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["flow_shift"] == 6.0


def test_unknown_arch_is_a_clear_error(tmp_path):
    with pytest.raises(UnknownVariantError, match="unknown architecture 'sana-9000'.*tiny"):
        materialize("sana-9000", tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_unwritable_dir_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(MaterializeError, match="cannot create"):
        materialize("tiny", blocker / "sub")
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(MaterializeError, match="cannot"):
            materialize("tiny", locked / "sub")


def test_real_size_variant_is_written_under_its_hub_file_variant(tmp_path, monkeypatch):
    """Real architectures are multi-GB; build one with its weights shrunk to check naming and dtype."""
    import models.materialize as mat
    from models.registry import Variant, get_variant

    real = get_variant("sana-1600m-1024")
    shrunk = Variant(**{**real.__dict__, "transformer_arch": "transformer-tiny", "vae_arch": "vae-dc-ae-tiny",
                        "text_encoder_arch": "text-encoder-gemma-2-tiny"})
    monkeypatch.setattr(mat, "get_variant", lambda name: shrunk)
    folder = materialize("sana-1600m-1024", tmp_path / "real")
    assert (folder / "transformer" / "diffusion_pytorch_model.bf16.safetensors").exists()
    assert (folder / "vae" / "diffusion_pytorch_model.bf16.safetensors").exists()
    assert (folder / "text_encoder" / "model.bf16.safetensors").exists()
    from safetensors.torch import load_file

    tensors = load_file(folder / "transformer" / "diffusion_pytorch_model.bf16.safetensors")
    assert {t.dtype for t in tensors.values()} == {torch.bfloat16}


def test_the_image_checker_stand_in_is_the_same_bytes_every_time_and_resolves_by_name(tmp_path, monkeypatch):
    from models.image_checker import ImageChecker
    from serve.checkpoint_specs import resolve_checkpoint

    first = materialize("tiny-image-checker", tmp_path / "a")
    assert _weights(first) == _weights(materialize("tiny-image-checker", tmp_path / "b"))
    monkeypatch.setenv("SANA_SERVE_CACHE", str(tmp_path / "cache"))
    folder = Path(resolve_checkpoint("materialized:tiny-image-checker"))  # as deploy/local.yaml names it
    assert _weights(folder) == _weights(first)
    checker = ImageChecker.from_pretrained(str(folder), device="cpu")
    assert checker.model.config.id2label == {0: "normal", 1: "nsfw"}


def test_a_cached_copy_of_an_older_packaged_checkpoint_is_replaced(tmp_path, monkeypatch):
    """After an upgrade ships a retrained shapes model, `materialized:shapes` serves the new one,
    not the copy an earlier version left in the cache."""
    from serve.checkpoint_specs import resolve_checkpoint

    monkeypatch.setenv("SANA_SERVE_CACHE", str(tmp_path))
    folder = Path(resolve_checkpoint("materialized:shapes"))
    record = json.loads((folder / "sana_serve.json").read_text())
    assert record["packaged"] == "sana-shapes" and len(record["source"]) == 64
    assert resolve_checkpoint("materialized:shapes") == str(folder)  # current: kept as it is
    stale = folder / "transformer" / "diffusion_pytorch_model.safetensors"
    stale.write_bytes(b"an older package's weights")
    (folder / "sana_serve.json").write_text(json.dumps({**record, "source": "0" * 64}))
    assert resolve_checkpoint("materialized:shapes") == str(folder)
    assert json.loads((folder / "sana_serve.json").read_text())["source"] == record["source"]
    assert stale.stat().st_size > 1000
