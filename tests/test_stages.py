"""Each stage on its own: loading from its own subfolders, caching, batching, concurrency, tiling."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from models import checkpoint
from models.decoder import Decoder, TilingConfig
from models.denoiser import DenoiseJob, Denoiser
from models.errors import CheckpointError
from models.text_encoder import TextEncoder


def _stage_folder(checkpoint_dir: Path, dest: Path, subfolders: tuple[str, ...]) -> Path:
    dest.mkdir()
    for sub in subfolders:
        shutil.copytree(checkpoint_dir / sub, dest / sub)
    return dest


@pytest.fixture(scope="module")
def text_encoder(tiny_checkpoint) -> TextEncoder:
    return TextEncoder.from_pretrained(str(tiny_checkpoint), device="cpu", cache_size=4)


def test_each_stage_loads_from_a_folder_with_only_its_own_subfolders(tiny_checkpoint, tmp_path, pipeline):
    enc_dir = _stage_folder(tiny_checkpoint, tmp_path / "enc", ("tokenizer", "text_encoder"))
    den_dir = _stage_folder(tiny_checkpoint, tmp_path / "den", ("transformer", "scheduler"))
    dec_dir = _stage_folder(tiny_checkpoint, tmp_path / "dec", ("vae",))
    encoder = TextEncoder.from_pretrained(str(enc_dir), device="cpu")
    denoiser = Denoiser.from_pretrained(str(den_dir), device="cpu")
    decoder = Decoder.from_pretrained(str(dec_dir), device="cpu")

    prompt = encoder.encode(["a red fox"], with_instruction=True)[0]
    negative = encoder.encode([""], with_instruction=False)[0]
    # 512x512 on a 1024px checkpoint: generated at the 1024x1024 bin, resized back.
    job = DenoiseJob(prompt, negative, seed=1, num_images=1, width=1024, height=1024, steps=2, guidance_scale=4.5)
    images = decoder.decode(denoiser.denoise([job])[0], 512, 512)

    from models.pipeline import GenerationRequest

    expected = pipeline.generate([GenerationRequest("a red fox", width=512, height=512, steps=2, seed=1)])[0]
    assert np.array_equal(images, expected.images)


def test_a_stage_refuses_a_folder_without_its_subfolders(tiny_checkpoint, tmp_path):
    only_vae = _stage_folder(tiny_checkpoint, tmp_path / "vae-only", ("vae",))
    with pytest.raises(CheckpointError, match="transformer"):
        Denoiser.from_pretrained(str(only_vae), device="cpu")
    with pytest.raises(CheckpointError, match="neither a folder nor"):
        Decoder.from_pretrained(str(tmp_path / "missing" / "dir"), device="cpu")


def test_hub_download_asks_only_for_the_stage_subfolders_and_variant(tiny_checkpoint, monkeypatch):
    calls = []

    def fake_snapshot_download(repo_id, allow_patterns):
        calls.append((repo_id, allow_patterns))
        return str(tiny_checkpoint)

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    decoder = Decoder.from_pretrained("Efficient-Large-Model/Sana_1600M_1024px_BF16_diffusers", device="cpu")
    assert decoder.vae.dtype == torch.float32  # CPU runs float32 whatever the stored dtype
    repo, patterns = calls[0]
    assert repo == "Efficient-Large-Model/Sana_1600M_1024px_BF16_diffusers"
    assert all(p.startswith("vae/") for p in patterns)
    assert "vae/*.bf16.safetensors" in patterns
    assert not any(p.endswith("/*.safetensors") for p in patterns), "would fetch the fp32 weights too"


def test_unreachable_hub_gives_a_checkpoint_error():
    # HF_HUB_OFFLINE=1 (conftest): the real download code runs and fails cleanly.
    with pytest.raises(CheckpointError, match="Hugging Face Hub"):
        checkpoint.resolve_source("Efficient-Large-Model/Sana_600M_512px_diffusers", ("vae",), "fp16")


def test_placement_picks_dtype_and_variant(tiny_checkpoint):
    cpu = checkpoint.choose_placement("Efficient-Large-Model/Sana_600M_512px_diffusers", "cpu")
    assert (cpu.dtype, cpu.weight_variant) == (torch.float32, "fp16")
    gpu = checkpoint.choose_placement("Efficient-Large-Model/Sana_1600M_4Kpx_BF16_diffusers", "cuda")
    assert (gpu.dtype, gpu.weight_variant) == (torch.bfloat16, "bf16")
    local = checkpoint.choose_placement(str(tiny_checkpoint), "cuda")
    assert (local.dtype, local.weight_variant) == (torch.float32, None)


def test_embedding_cache_hits_return_the_same_tensors_as_a_fresh_encode(tiny_checkpoint, text_encoder):
    fresh_encoder = TextEncoder.from_pretrained(str(tiny_checkpoint), device="cpu", cache_size=0)
    first = text_encoder.encode(["A Red Fox ", "a cat"], with_instruction=True)
    hits_before = text_encoder.cache.hits
    again = text_encoder.encode(["a red fox"], with_instruction=True)[0]  # same after lower/strip
    assert text_encoder.cache.hits == hits_before + 1
    fresh = fresh_encoder.encode(["a red fox"], with_instruction=True)[0]
    for emb in (first[0], again):
        assert torch.equal(emb.embeds, fresh.embeds) and torch.equal(emb.mask, fresh.mask)
    assert len(fresh_encoder.cache) == 0


def test_embedding_cache_separates_positive_from_negative_and_evicts_lru(text_encoder):
    pos = text_encoder.encode(["a dog"], with_instruction=True)[0]
    neg = text_encoder.encode(["a dog"], with_instruction=False)[0]
    assert not torch.equal(pos.embeds, neg.embeds)
    for text in ("p1", "p2", "p3", "p4", "p5"):
        text_encoder.encode([text], with_instruction=True)
    assert len(text_encoder.cache) == 4
    misses = text_encoder.cache.misses
    text_encoder.encode(["a dog"], with_instruction=True)  # evicted by the five newer prompts
    assert text_encoder.cache.misses == misses + 1


def test_batched_encode_matches_one_by_one(tiny_checkpoint):
    encoder = TextEncoder.from_pretrained(str(tiny_checkpoint), device="cpu", cache_size=0)
    prompts = ["short", "a much longer prompt with many words in it", "中文 🦊"]
    batched = encoder.encode(prompts, with_instruction=True)
    for prompt, emb in zip(prompts, batched):
        solo = encoder.encode([prompt], with_instruction=True)[0]
        assert torch.equal(emb.mask, solo.mask)
        torch.testing.assert_close(emb.embeds, solo.embeds, rtol=1e-4, atol=1e-5)
    assert batched[0].embeds.shape == (300, encoder.hidden_size)


def test_byte_level_tokenizer_keeps_unicode_prompts_apart(text_encoder):
    tokenizer = text_encoder.tokenizer
    ids = [tokenizer(p).input_ids for p in ("红狐", "白猫", "🦊", "🐳")]
    assert len({tuple(i) for i in ids}) == 4
    assert all(tokenizer.unk_token_id not in i for i in ids)
    assert all(i[0] == tokenizer.bos_token_id for i in ids)


def _jobs(text_encoder: TextEncoder) -> list[DenoiseJob]:
    prompt = text_encoder.encode(["a fox"], with_instruction=True)[0]
    negative = text_encoder.encode([""], with_instruction=False)[0]
    return [
        DenoiseJob(prompt, negative, seed=s, num_images=1, width=512, height=512, steps=3, guidance_scale=g)
        for s, g in ((1, 4.5), (2, 2.0))
    ] + [DenoiseJob(prompt, None, seed=3, num_images=2, width=512, height=768, steps=2, guidance_scale=1.0)]


def test_denoiser_reports_progress_and_groups_mixed_jobs(pipeline, text_encoder):
    steps_seen = []
    jobs = _jobs(text_encoder)
    latents = pipeline.denoiser.denoise(jobs, on_step=lambda r: steps_seen.append((r.step, r.total, r.jobs)))
    assert [z.shape for z in latents] == [(1, 32, 16, 16), (1, 32, 16, 16), (2, 32, 24, 16)]
    # Two batches: (512x512, 3 steps, CFG) and (512x768, 2 steps, no CFG).
    assert steps_seen == [(0, 3, (0, 1)), (1, 3, (0, 1)), (2, 3, (0, 1)), (0, 2, (2,)), (1, 2, (2,))]


def test_a_dropped_job_leaves_its_batch_and_the_others_keep_their_pixels(pipeline, text_encoder):
    prompt = text_encoder.encode(["a red heart"], with_instruction=True)[0]
    negative = text_encoder.encode([""], with_instruction=False)[0]
    jobs = [DenoiseJob(prompt, negative, seed=s, num_images=n, width=512, height=512, steps=4, guidance_scale=4.5)
            for s, n in ((1, 1), (2, 2), (3, 1))]
    solo = [pipeline.denoiser.denoise([job])[0] for job in jobs]
    reports = []
    dropped: set[int] = set()

    def on_step(report) -> None:
        reports.append(report.jobs)
        if report.step == 1:
            dropped.add(1)  # the middle job (two images) is cancelled after step 2

    latents = pipeline.denoiser.denoise(jobs, on_step=on_step, dropped=lambda: dropped)
    assert latents[1] is None
    assert reports == [(0, 1, 2), (0, 1, 2), (0, 2), (0, 2)]
    for index in (0, 2):
        expected = pipeline.decoder.decode(solo[index], 512, 512).astype(int)
        got = pipeline.decoder.decode(latents[index], 512, 512).astype(int)
        assert np.abs(got - expected).max() <= 1


def test_previews_are_the_predicted_clean_latents_at_the_asked_steps(pipeline, text_encoder):
    prompt = text_encoder.encode(["a blue star"], with_instruction=True)[0]
    job = DenoiseJob(prompt, None, seed=5, num_images=2, width=512, height=768, steps=4, guidance_scale=1.0,
                     preview_steps=(1, 3))
    previews = {}
    final = pipeline.denoiser.denoise([job], on_step=lambda r: previews.update({r.step: r.previews}))[0]
    assert [step for step, found in previews.items() if found] == [1, 3]
    assert previews[1][0].shape == final.shape
    # At the last step the solver's clean prediction is the result itself (final sigma is zero).
    assert torch.allclose(previews[3][0], final, atol=1e-4)
    small = pipeline.decoder.preview(previews[1][0], 512, 768, max_side=256)
    assert small.shape == (2, 256, 171, 3) and small.dtype == np.uint8


def test_concurrent_denoise_calls_do_not_share_solver_state(pipeline, text_encoder):
    jobs = _jobs(text_encoder)
    expected = [pipeline.denoiser.denoise([job])[0] for job in jobs]
    results: dict[int, torch.Tensor] = {}

    def run(index: int) -> None:
        results[index] = pipeline.denoiser.denoise([jobs[index]])[0]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for index, latents in enumerate(expected):
        assert torch.equal(results[index], latents)


def test_decoder_tiles_large_outputs(pipeline):
    decoder = pipeline.decoder
    generator = torch.Generator().manual_seed(0)
    latents, other = (torch.randn(1, 32, 40, 40, generator=generator) * 0.5 for _ in range(2))  # 1280 px
    tiling = Decoder(decoder.vae, TilingConfig(above=1024, tile=1024, stride=896))
    assert tiling.uses_tiling(latents) and not decoder.uses_tiling(latents)
    tiled = tiling.decode(latents, 1280, 1280)
    untiled = decoder.decode(latents, 1280, 1280)
    assert tiled.shape == untiled.shape == (1, 1280, 1280, 3)
    # DC-AE's linear attention is global over a tile, so tiles never equal the untiled decode
    # exactly (random weights exaggerate it); the tiled image must still be this image, not another.
    unrelated = decoder.decode(other, 1280, 1280)
    tiled_error = np.abs(tiled.astype(int) - untiled).mean()
    assert tiled_error < 0.5 * np.abs(unrelated.astype(int) - untiled).mean()
    # One tile that covers the whole image is the untiled decode.
    whole = Decoder(decoder.vae, TilingConfig(above=1024, tile=1280, stride=1280)).decode(latents, 1280, 1280)
    assert np.array_equal(whole, untiled)


def test_decoder_rejects_bad_tiling():
    with pytest.raises(ValueError):
        TilingConfig(tile=1000, stride=896)
    with pytest.raises(ValueError):
        TilingConfig(tile=1024, stride=2048)
