"""Train the small "shapes" Sana from scratch on the rendered shapes world, on CPU.

    python -m train --out models/shapes/sana-shapes [--minutes 55] [--seed 0]
    python -m train --out /tmp/smoke --smoke          (a few steps at tiny size, seconds)

Three phases, all seeded, with progress and an ETA on stdout:
1. DC-AE (`AutoencoderDC`, 32x spatial compression, the real block structure at small width) as an
   autoencoder on rendered crops: L1 + MSE on pixels, and a small penalty that keeps latents near
   unit scale. Its `scaling_factor` is then set to 1/std of its latents, as Sana's is.
2. The prompts: every caption of the grammar encoded once by the frozen small Gemma-2 (byte-level
   tokenizer, complex-human-instruction prefix, BOS + last 299 tokens: exactly as served), plus the
   empty negative prompt (what classifier-free guidance pairs with) for prompt dropout.
3. `SanaTransformer2DModel` (small width and depth) with Sana's flow-matching objective on the
   latents of rendered pictures at the 512-class aspect-ratio bins: x_t = (1-s) x0 + s e, target
   e - x0, s from a logit-normal shifted by the scheduler's flow shift, 10% of prompts dropped.

The result is a diffusers folder (`model_index.json`, `scheduler/`, `text_encoder/`, `tokenizer/`,
`transformer/`, `vae/`) that `SanaPipeline.from_pretrained` loads, plus `training.json` with what
the run did.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from train.shapes import COLORS, SHAPES, Scene, all_scenes, random_scene, render

RESOLUTION = 512  # the resolution class: bins from diffusers' 512 table, 16x16 latents at 512x512


@dataclass
class Plan:
    """Sizes and budgets of one run; `smoke()` is the seconds-long version for CI."""

    seed: int = 0
    minutes: float = 55.0
    ae_share: float = 0.3  # of the budget; the rest (after encoding prompts and latents) trains the DiT
    ae_crop: int = 128
    ae_batch: int = 8
    ae_lr: float = 2e-3
    dit_batch: int = 16
    dit_lr: float = 1e-3
    latent_bank: int = 1024  # rendered pictures encoded once for the DiT phase
    bins: tuple[str, ...] = ("1.0", "0.78", "1.29", "0.6", "1.67")  # aspect ratios (h/w) trained on
    prompt_dropout: float = 0.1
    colors: tuple[str, ...] = tuple(COLORS)  # the whole grammar; the smoke run takes a corner of it
    shapes: tuple[str, ...] = SHAPES
    vae: dict = field(default_factory=lambda: {
        "encoder_block_out_channels": [16, 32, 64, 64, 128, 128],
        "decoder_block_out_channels": [16, 32, 64, 64, 128, 128],
        "encoder_layers_per_block": [1, 1, 1, 1, 1, 1],
        "decoder_layers_per_block": [1, 1, 1, 1, 1, 1],
        "latent_channels": 16,
        "attention_head_dim": 16,
    })
    transformer: dict = field(default_factory=lambda: {
        "num_layers": 6,
        "num_attention_heads": 6,
        "attention_head_dim": 16,
        "num_cross_attention_heads": 6,
        "cross_attention_head_dim": 16,
        "cross_attention_dim": 96,
        "mlp_ratio": 2.5,
    })

    @classmethod
    def smoke(cls, seed: int = 0) -> "Plan":
        return cls(seed=seed, minutes=0.15, ae_crop=64, ae_batch=2, latent_bank=8, dit_batch=2, bins=("1.0",),
                   colors=("red", "blue"), shapes=("circle", "square"),
                   vae={"encoder_block_out_channels": [4, 4, 8, 8, 8, 8],
                        "decoder_block_out_channels": [4, 4, 8, 8, 8, 8],
                        "encoder_layers_per_block": [1, 1, 1, 1, 1, 1],
                        "decoder_layers_per_block": [1, 1, 1, 1, 1, 1],
                        "latent_channels": 8, "attention_head_dim": 8},
                   transformer={"num_layers": 1, "num_attention_heads": 2, "attention_head_dim": 8,
                                "num_cross_attention_heads": 2, "cross_attention_head_dim": 8,
                                "cross_attention_dim": 16, "mlp_ratio": 2.5})


class Progress:
    """One line per report: phase, step, loss, elapsed and the phase's ETA."""

    def __init__(self, phase: str, budget_s: float) -> None:
        self.phase, self.budget_s, self.started, self.last = phase, budget_s, time.monotonic(), 0.0

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def done(self) -> bool:
        return self.elapsed() >= self.budget_s

    def report(self, step: int, **values: float) -> None:
        now = self.elapsed()
        if now - self.last < 15 and step > 1:
            return
        self.last = now
        shown = " ".join(f"{k} {v:.4f}" for k, v in values.items())
        print(f"[{self.phase}] step {step} {shown} elapsed {now:.0f}s eta {max(0.0, self.budget_s - now):.0f}s",
              flush=True)


def _to_tensor(images: list[np.ndarray]) -> torch.Tensor:
    array = np.stack(images).astype(np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(0, 3, 1, 2).contiguous()


def bin_sizes(plan: Plan) -> list[tuple[int, int]]:
    """(width, height) of each trained bin of the 512 table."""
    from models.binning import bin_table

    table = bin_table(RESOLUTION)
    return [(int(table[ratio][1]), int(table[ratio][0])) for ratio in plan.bins]


# --- phase 1: the autoencoder -------------------------------------------------------------------

def vae_config(plan: Plan) -> dict:
    from models.registry import architecture_config

    config = dict(architecture_config("vae-dc-ae-tiny"))  # the real block structure: six stages, 32x
    config.update(plan.vae)
    return config


def _crop_batch(plan: Plan, rng: random.Random) -> torch.Tensor:
    # Crops of full 512-class pictures, so edges and flat areas have the scale they are served at.
    images = []
    for _ in range(plan.ae_batch):
        width, height = rng.choice(bin_sizes(plan))
        picture = render(random_scene(rng, colors=plan.colors, shapes=plan.shapes), width, height, rng)
        x, y = rng.randrange(0, width - plan.ae_crop + 1), rng.randrange(0, height - plan.ae_crop + 1)
        images.append(picture[y:y + plan.ae_crop, x:x + plan.ae_crop])
    return _to_tensor(images)


def train_autoencoder(plan: Plan, budget_s: float):
    from diffusers import AutoencoderDC

    torch.manual_seed(plan.seed)
    rng = random.Random(plan.seed)
    vae = AutoencoderDC(**vae_config(plan))
    optimizer = torch.optim.AdamW(vae.parameters(), lr=plan.ae_lr, weight_decay=0.0)
    progress = Progress("autoencoder", budget_s)
    step = 0
    while not progress.done():
        step += 1
        batch = _crop_batch(plan, rng)
        latents = vae.encode(batch).latent
        decoded = vae.decode(latents).sample
        loss = (decoded - batch).abs().mean() + ((decoded - batch) ** 2).mean()
        loss = loss + 1e-3 * (latents ** 2).mean()  # keeps the latent scale in check
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        for group in optimizer.param_groups:  # cosine decay over the phase's time budget
            group["lr"] = plan.ae_lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress.elapsed() / budget_s)))
        progress.report(step, loss=loss.item())
    vae.eval()
    return vae, {"steps": step, "seconds": round(progress.elapsed()), "final_loss": round(float(loss), 5)}


@torch.no_grad()
def encode_bank(plan: Plan, vae) -> tuple[dict[tuple[int, int], torch.Tensor], dict[tuple[int, int], list[Scene]]]:
    """Rendered pictures at each trained bin, encoded once: latents (unscaled) and their scenes."""
    rng = random.Random(plan.seed + 1)
    latents: dict[tuple[int, int], list[torch.Tensor]] = {}
    scenes: dict[tuple[int, int], list[Scene]] = {}
    sizes = bin_sizes(plan)
    per_size = max(1, plan.latent_bank // len(sizes))
    progress = Progress("latents", 0)
    done = 0
    for size in sizes:
        for start in range(0, per_size, 8):
            batch = [random_scene(rng, colors=plan.colors, shapes=plan.shapes) for _ in range(min(8, per_size - start))]
            pictures = _to_tensor([render(scene, *size, rng) for scene in batch])
            latents.setdefault(size, []).append(vae.encode(pictures).latent)
            scenes.setdefault(size, []).extend(batch)
            done += len(batch)
            progress.report(done)
    return {size: torch.cat(items) for size, items in latents.items()}, scenes


# --- phase 2: the prompts -----------------------------------------------------------------------

def captions_of(scene: Scene) -> list[str]:
    caption = scene.caption()
    # With and without a final period, and capitalized: "A red heart." is the safety replacement.
    return [caption, caption + ".", caption[0].upper() + caption[1:] + "."]


@torch.no_grad()
def encode_prompts(plan: Plan, text_encoder_dir: Path) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], tuple]:
    from models.text_encoder import TextEncoder, preprocess

    encoder = TextEncoder.from_pretrained(str(text_encoder_dir), device="cpu", cache_size=0)
    # Keyed as the encoder sees them (lower-cased, stripped): "A red heart." is "a red heart.".
    texts = sorted({preprocess(text) for scene in all_scenes(plan.colors, plan.shapes) for text in captions_of(scene)})
    table = {}
    progress = Progress("prompts", 0)
    for start in range(0, len(texts), 8):  # ~1,100 tokens each with the instruction: small chunks
        chunk = texts[start:start + 8]
        progress.report(start)
        for text, embedding in zip(chunk, encoder.encode(chunk, with_instruction=True)):
            table[text] = (embedding.embeds, embedding.mask)
    empty = encoder.encode([""], with_instruction=False)[0]
    return table, (empty.embeds, empty.mask)


# --- phase 3: the transformer -------------------------------------------------------------------

def transformer_config(plan: Plan, latent_channels: int, caption_channels: int) -> dict:
    from models.registry import architecture_config

    config = dict(architecture_config("transformer-tiny"))
    config.update(plan.transformer)
    config.update(in_channels=latent_channels, out_channels=latent_channels, caption_channels=caption_channels,
                  sample_size=RESOLUTION // 32)
    return config


def _sigmas(batch: int, shift: float, generator: torch.Generator) -> torch.Tensor:
    # Logit-normal (SD3/Sana), then the flow shift the sampler uses, so training sees the noise
    # levels inference visits.
    sigma = torch.sigmoid(torch.randn(batch, generator=generator))
    return shift * sigma / (1 + (shift - 1) * sigma)


def train_transformer(plan: Plan, bank, scenes, prompts, empty, scaling: float, shift: float, budget_s: float):
    from diffusers import SanaTransformer2DModel

    from models.text_encoder import preprocess

    torch.manual_seed(plan.seed + 2)
    generator = torch.Generator().manual_seed(plan.seed + 3)
    rng = random.Random(plan.seed + 4)
    channels = next(iter(bank.values())).shape[1]
    model = SanaTransformer2DModel(**transformer_config(plan, channels, empty[0].shape[-1]))
    optimizer = torch.optim.AdamW(model.parameters(), lr=plan.dit_lr, weight_decay=0.01)
    progress = Progress("transformer", budget_s)
    sizes = list(bank)
    step = 0
    while not progress.done():
        step += 1
        size = sizes[step % len(sizes)]
        picks = [rng.randrange(len(scenes[size])) for _ in range(plan.dit_batch)]
        x0 = bank[size][picks] * scaling
        texts = [preprocess(rng.choice(captions_of(scenes[size][i]))) for i in picks]
        dropped = [rng.random() < plan.prompt_dropout for _ in picks]
        embeds = torch.stack([empty[0] if d else prompts[t][0] for t, d in zip(texts, dropped)])
        mask = torch.stack([empty[1] if d else prompts[t][1] for t, d in zip(texts, dropped)])
        sigma = _sigmas(len(picks), shift, generator).view(-1, 1, 1, 1)
        noise = torch.randn(x0.shape, generator=generator)
        noisy = (1 - sigma) * x0 + sigma * noise
        prediction = model(noisy, encoder_hidden_states=embeds, encoder_attention_mask=mask,
                           timestep=sigma.flatten() * 1000, return_dict=False)[0]
        loss = ((prediction - (noise - x0)) ** 2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        warm = min(1.0, step / 100)
        for group in optimizer.param_groups:
            group["lr"] = plan.dit_lr * warm * 0.5 * (1 + math.cos(math.pi * min(1.0, progress.elapsed() / budget_s)))
        progress.report(step, loss=loss.item())
    model.eval()
    return model, {"steps": step, "seconds": round(progress.elapsed()), "final_loss": round(float(loss), 5)}


# --- the whole run ------------------------------------------------------------------------------

def train(out: Path, plan: Plan) -> Path:
    from models.materialize import _model_index, _write_scheduler, _write_text_encoder, _write_tokenizer
    from models.registry import get_variant

    started = time.monotonic()
    torch.manual_seed(plan.seed)
    out = Path(out)
    staging = out.with_name(out.name + ".training")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    budget = plan.minutes * 60

    # The frozen text encoder: the small Gemma-2 stand-in of `tiny`, as materialize writes it.
    tiny = get_variant("tiny")
    _write_tokenizer(staging)
    _write_text_encoder(tiny, staging, seed=1)
    prompts, empty = encode_prompts(plan, staging)
    print(f"[prompts] {len(prompts)} captions encoded", flush=True)

    vae, ae_report = train_autoencoder(plan, budget * plan.ae_share)
    bank, scenes = encode_bank(plan, vae)
    spread = torch.cat([b.flatten() for b in bank.values()]).std().item()
    scaling = 1.0 / spread
    vae.register_to_config(scaling_factor=scaling)
    vae.save_pretrained(staging / "vae")

    shift = 3.0
    remaining = budget - (time.monotonic() - started)
    transformer, dit_report = train_transformer(plan, bank, scenes, prompts, empty, scaling, shift,
                                                max(remaining, 1.0))
    transformer.save_pretrained(staging / "transformer")
    scheduler_variant = get_variant("tiny")  # the same Flow-DPM-Solver config (flow shift 3.0)
    _write_scheduler(scheduler_variant, staging)
    (staging / "model_index.json").write_text(json.dumps(_model_index(), indent=2, sort_keys=True) + "\n")
    report = {
        "plan": asdict(plan),
        "minutes": round((time.monotonic() - started) / 60, 1),
        "torch_threads": torch.get_num_threads(),
        "autoencoder": ae_report,
        "transformer": dit_report,
        "latent_std": round(spread, 5),
        "colors": list(COLORS),
    }
    (staging / "training.json").write_text(json.dumps(report, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    print(f"wrote {out} in {report['minutes']} min", flush=True)
    return out
