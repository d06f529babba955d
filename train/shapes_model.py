"""Train the small "shapes" Sana from scratch on the rendered shapes world, on CPU.

    python -m train --out models/packaged/sana-shapes [--dit-steps N] [--seed 0] [--resume]
    python -m train --out /tmp/smoke --smoke          (a few steps at tiny size, seconds)

Budgets are steps, not minutes, and every random draw is seeded, so another machine reproduces the
same weights (given the same torch build and thread count). Progress and an ETA go to stdout; the
run's state is saved every `checkpoint_every` steps in `OUT.training/`, and `--resume` goes on
from there (also after the run finished: a longer `--dit-steps` continues the schedule).

The phases:
1. DC-AE (`AutoencoderDC`, 32x spatial compression, the real block structure at small width) as an
   autoencoder on rendered crops: L1 + MSE on pixels, and a small penalty that keeps latents near
   unit scale. Its `scaling_factor` is then set to 1/std of its latents, as Sana's is. Or, with
   `init_vae`, an already trained one is taken as it is.
2. A bank of rendered pictures at the 512-class aspect-ratio bins, encoded once.
3. The small Gemma-2 text encoder first learns the grammar: a linear head on each prompt's last
   position classifies its colour, shape and background (`text_pretrain_steps`). It sees prompts
   exactly as served (byte-level tokenizer, complex-human-instruction prefix, BOS + last 299
   positions; see train/text_side.py). Then it is frozen (`text_lr: 0`; above 0 it goes on
   training with the transformer, which made its features collapse in the ablations;
   `text_pretrain_steps: 0` keeps it random, the first shipped model's recipe).
4. `SanaTransformer2DModel` (small width and depth) with Sana's flow-matching objective:
   x_t = (1-s) x0 + s e, target e - x0, s from a logit-normal shifted by the scheduler's flow
   shift; 10% of prompts replaced by the empty negative prompt (what classifier-free guidance
   pairs with). An exponential moving average of the weights is what ships.

The result is a diffusers folder (`model_index.json`, `scheduler/`, `text_encoder/`, `tokenizer/`,
`transformer/`, `vae/`) that `SanaPipeline.from_pretrained` loads, plus `training.json` with what
the run did.
"""

from __future__ import annotations

import copy
import json
import math
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from train.shapes import COLORS, SHAPES, Scene, random_scene, render

RESOLUTION = 512  # the resolution class: bins from diffusers' 512 table, 16x16 latents at 512x512
FLOW_SHIFT = 3.0  # the scheduler's (tiny's Flow-DPM-Solver config)


@dataclass
class Plan:
    """Sizes and step budgets of one run; `smoke()` is the seconds-long version for CI."""

    seed: int = 0
    ae_steps: int = 2400
    ae_crop: int = 128
    ae_batch: int = 8
    ae_lr: float = 2e-3
    init_vae: str | None = None  # a checkpoint folder whose trained vae/ is used as is (skips phase 1)
    dit_steps: int = 12000
    dit_batch: int = 16
    dit_lr: float = 1e-3
    text_pretrain_steps: int = 800  # the text encoder learns to tell colours, shapes and roles apart first
    text_pretrain_batch: int = 32
    text_pretrain_lr: float = 3e-3
    text_lr: float = 0.0  # during the transformer phase; 0: the (pretrained) text encoder is frozen
    warmup: int = 200
    final_lr_share: float = 0.1  # cosine decay to this share of the learning rates
    ema: float = 0.999  # decay of the weights' moving average that ships; 0: the last weights ship
    latent_bank: int = 1024  # rendered pictures encoded once for the DiT phase
    bins: tuple[str, ...] = ("1.0", "0.78", "1.29", "0.6", "1.67")  # aspect ratios (h/w) trained on
    prompt_dropout: float = 0.1
    checkpoint_every: int = 250
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
    text_encoder: dict = field(default_factory=dict)  # Gemma2Config overrides of tiny's text encoder

    @classmethod
    def smoke(cls, seed: int = 0) -> "Plan":
        return cls(seed=seed, ae_steps=3, ae_crop=64, ae_batch=2, latent_bank=8, dit_steps=3, dit_batch=2,
                   text_pretrain_steps=2, text_pretrain_batch=4,
                   warmup=1, checkpoint_every=2, bins=("1.0",), colors=("red", "blue"), shapes=("circle", "square"),
                   vae={"encoder_block_out_channels": [4, 4, 8, 8, 8, 8],
                        "decoder_block_out_channels": [4, 4, 8, 8, 8, 8],
                        "encoder_layers_per_block": [1, 1, 1, 1, 1, 1],
                        "decoder_layers_per_block": [1, 1, 1, 1, 1, 1],
                        "latent_channels": 8, "attention_head_dim": 8},
                   transformer={"num_layers": 1, "num_attention_heads": 2, "attention_head_dim": 8,
                                "num_cross_attention_heads": 2, "cross_attention_head_dim": 8,
                                "cross_attention_dim": 16, "mlp_ratio": 2.5})

    def updated(self, overrides: dict) -> "Plan":
        """A copy with `overrides` ({"dit_steps": 100, "transformer.num_layers": 8}) applied."""
        plan = copy.deepcopy(self)
        for key, value in overrides.items():
            name, _, sub = key.partition(".")
            if not hasattr(plan, name):
                raise ValueError(f"unknown plan field {name!r}")
            if sub:
                getattr(plan, name)[sub] = value
            else:
                setattr(plan, name, tuple(value) if isinstance(getattr(plan, name), tuple) else value)
        return plan


class Progress:
    """One line per report (at most every 15 s): phase, step of total, loss, elapsed, ETA."""

    def __init__(self, phase: str, total: int, start: int = 0) -> None:
        self.phase, self.total, self.start = phase, total, start
        self.started, self.last = time.monotonic(), 0.0

    def report(self, step: int, **values: float) -> None:
        now = time.monotonic() - self.started
        if now - self.last < 15 and step > self.start + 1 and step < self.total:
            return
        self.last = now
        rate = (step - self.start) / max(now, 1e-9)
        eta = (self.total - step) / rate if rate > 0 else 0.0
        shown = " ".join(f"{k} {v:.4f}" for k, v in values.items())
        print(f"[{self.phase}] step {step}/{self.total} {shown} elapsed {now:.0f}s eta {eta:.0f}s", flush=True)


def _to_tensor(images: list[np.ndarray]) -> torch.Tensor:
    array = np.stack(images).astype(np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(0, 3, 1, 2).contiguous()


def bin_sizes(plan: Plan) -> list[tuple[int, int]]:
    """(width, height) of each trained bin of the 512 table."""
    from models.binning import bin_table

    table = bin_table(RESOLUTION)
    return [(int(table[ratio][1]), int(table[ratio][0])) for ratio in plan.bins]


def _cosine_lr(base: float, step: int, plan: Plan, total: int) -> float:
    warm = min(1.0, step / max(plan.warmup, 1))
    progress = min(1.0, step / max(total, 1))
    return base * warm * (plan.final_lr_share + (1 - plan.final_lr_share) * 0.5 * (1 + math.cos(math.pi * progress)))


class RunState:
    """What `--resume` needs, saved atomically in the run's work folder."""

    def __init__(self, work: Path) -> None:
        self.path = work / "state.pt"

    def load(self) -> dict | None:
        return torch.load(self.path, weights_only=False) if self.path.exists() else None

    def save(self, state: dict) -> None:
        partial = self.path.with_suffix(".partial")
        torch.save(state, partial)
        partial.replace(self.path)


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


def train_autoencoder(plan: Plan, work: Path):
    from diffusers import AutoencoderDC

    if plan.init_vae:
        source = Path(plan.init_vae)
        vae = AutoencoderDC.from_pretrained(source / "vae")
        record = source / "training.json"
        earlier = json.loads(record.read_text()).get("autoencoder", {}) if record.exists() else {}
        return vae.eval(), {**earlier, "taken_from": str(source)}
    done = work / "vae"
    if done.exists():  # resumed after this phase
        report = json.loads((work / "vae.json").read_text())
        return AutoencoderDC.from_pretrained(done).eval(), report
    torch.manual_seed(plan.seed)
    rng = random.Random(plan.seed)
    vae = AutoencoderDC(**vae_config(plan))
    optimizer = torch.optim.AdamW(vae.parameters(), lr=plan.ae_lr, weight_decay=0.0)
    progress = Progress("autoencoder", plan.ae_steps)
    loss = torch.zeros(())
    for step in range(1, plan.ae_steps + 1):
        batch = _crop_batch(plan, rng)
        latents = vae.encode(batch).latent
        decoded = vae.decode(latents).sample
        loss = (decoded - batch).abs().mean() + ((decoded - batch) ** 2).mean()
        loss = loss + 1e-3 * (latents ** 2).mean()  # keeps the latent scale in check
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        for group in optimizer.param_groups:  # cosine decay over the phase
            group["lr"] = plan.ae_lr * 0.5 * (1 + math.cos(math.pi * step / plan.ae_steps))
        progress.report(step, loss=loss.item())
    vae.eval()
    report = {"steps": plan.ae_steps, "seconds": round(time.monotonic() - progress.started),
              "final_loss": round(loss.item(), 5)}
    vae.save_pretrained(done)
    (work / "vae.json").write_text(json.dumps(report))
    return vae, report


# --- phase 2: the latent bank -------------------------------------------------------------------

def _bank_key(plan: Plan, vae) -> dict:
    """What a latent bank depends on: a bank with the same key can be reused by another run."""
    weights = sum(float(p.double().sum()) for p in vae.encoder.parameters())
    return {"seed": plan.seed, "bins": list(plan.bins), "latent_bank": plan.latent_bank, "colors": list(plan.colors),
            "shapes": list(plan.shapes), "encoder_weights_sum": round(weights, 6)}


@torch.no_grad()
def encode_bank(plan: Plan, vae, work: Path, reuse: Path | None = None):
    """Rendered pictures at each trained bin, encoded once: latents (unscaled) and their scenes.
    `reuse`: a bank.pt of another run, taken when it was made the same way (ablations share one)."""
    saved = work / "bank.pt"
    key = _bank_key(plan, vae)
    for candidate in (saved, reuse):
        if candidate is not None and candidate.exists():
            stored = torch.load(candidate, weights_only=False)
            if stored.get("key") == key:
                if candidate != saved:
                    shutil.copyfile(candidate, saved)
                return stored["latents"], stored["scenes"]
    rng = random.Random(plan.seed + 1)
    latents: dict[tuple[int, int], list[torch.Tensor]] = {}
    scenes: dict[tuple[int, int], list[Scene]] = {}
    sizes = bin_sizes(plan)
    per_size = max(1, plan.latent_bank // len(sizes))
    progress = Progress("latents", per_size * len(sizes))
    done = 0
    for size in sizes:
        for start in range(0, per_size, 8):
            batch = [random_scene(rng, colors=plan.colors, shapes=plan.shapes) for _ in range(min(8, per_size - start))]
            pictures = _to_tensor([render(scene, *size, rng) for scene in batch])
            latents.setdefault(size, []).append(vae.encode(pictures).latent)
            scenes.setdefault(size, []).extend(batch)
            done += len(batch)
            progress.report(done)
    bank = {size: torch.cat(items) for size, items in latents.items()}
    torch.save({"key": key, "latents": bank, "scenes": scenes}, saved)
    return bank, scenes


# --- phase 3: the transformer and the text encoder ----------------------------------------------

def captions_of(scene: Scene) -> list[str]:
    caption = scene.caption()
    # With and without a final period, and capitalized: "A red heart." is the safety replacement.
    return [caption, caption + ".", caption[0].upper() + caption[1:] + "."]


def text_encoder_config(plan: Plan) -> dict:
    from models.registry import get_variant

    config = dict(get_variant("tiny").text_encoder_config())
    config.update(plan.text_encoder)
    return config


def transformer_config(plan: Plan, latent_channels: int, caption_channels: int) -> dict:
    from models.registry import architecture_config

    config = dict(architecture_config("transformer-tiny"))
    config.update(plan.transformer)
    config.update(in_channels=latent_channels, out_channels=latent_channels, caption_channels=caption_channels,
                  sample_size=RESOLUTION // 32)
    return config


def _sigmas(batch: int, generator: torch.Generator) -> torch.Tensor:
    # Logit-normal (SD3/Sana), then the flow shift the sampler uses, so training sees the noise
    # levels inference visits.
    sigma = torch.sigmoid(torch.randn(batch, generator=generator))
    return FLOW_SHIFT * sigma / (1 + (FLOW_SHIFT - 1) * sigma)


def _ema_update(average: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    with torch.no_grad():
        for kept, live in zip(average.parameters(), model.parameters()):
            kept.lerp_(live, 1 - decay)


def _roles(scene: Scene) -> tuple[int, int, int]:
    """Class indices of what a caption says: foreground colour, shape, background (last: none named)."""
    colors = list(COLORS)
    background = len(colors) if scene.background is None else colors.index(scene.background)
    return colors.index(scene.color), list(SHAPES).index(scene.shape), background


def pretrain_text_encoder(plan: Plan, encoder, model: torch.nn.Module) -> dict:
    """Teach the text encoder to tell the grammar's words and roles apart before the transformer
    relies on it: a linear head on the feature at each prompt's last real position (which sees the
    whole prompt) classifies its foreground colour, shape and background. A random or jointly
    trained encoder gives features the transformer cannot bind colours to roles through (nearly
    one vector; jointly trained, they collapse further: docs/models.md has the ablation)."""
    from models.text_encoder import preprocess
    from train.shapes import all_scenes

    if plan.text_pretrain_steps <= 0:
        return {"steps": 0}
    torch.manual_seed(plan.seed + 6)
    rng = random.Random(plan.seed + 7)
    scenes = all_scenes(plan.colors, plan.shapes)
    hidden = model.config.hidden_size
    heads = torch.nn.ModuleList([torch.nn.Linear(hidden, n) for n in (len(COLORS), len(SHAPES), len(COLORS) + 1)])
    model.requires_grad_(True).train()
    optimizer = torch.optim.AdamW([*model.parameters(), *heads.parameters()], lr=plan.text_pretrain_lr,
                                  weight_decay=0.0)
    progress = Progress("text encoder", plan.text_pretrain_steps)
    right = 0.0
    for step in range(1, plan.text_pretrain_steps + 1):
        batch = [rng.choice(scenes) for _ in range(plan.text_pretrain_batch)]
        texts = [preprocess(rng.choice(captions_of(scene))) for scene in batch]
        embeds, mask = encoder.encode(texts, with_instruction=True)
        last = embeds[torch.arange(len(texts)), mask.sum(dim=1) - 1]
        targets = torch.tensor([_roles(scene) for scene in batch])
        logits = [head(last) for head in heads]
        loss = sum(torch.nn.functional.cross_entropy(out, targets[:, i]) for i, out in enumerate(logits))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        for group in optimizer.param_groups:
            group["lr"] = plan.text_pretrain_lr * 0.5 * (1 + math.cos(math.pi * step / plan.text_pretrain_steps))
        right = float(torch.stack([out.argmax(-1) == targets[:, i] for i, out in enumerate(logits)]).all(0)
                      .float().mean())
        progress.report(step, loss=loss.item(), all_right=right)
    return {"steps": plan.text_pretrain_steps, "final_loss": round(loss.item(), 5), "last_batch_all_right": right}


class Models:
    """The transformer and text encoder being trained, their averages, and the optimizer."""

    def __init__(self, plan: Plan, channels: int, tokenizer_dir: Path) -> None:
        from diffusers import SanaTransformer2DModel
        from transformers import AutoTokenizer, Gemma2Config, Gemma2Model

        torch.manual_seed(plan.seed + 5)
        self.text_encoder = Gemma2Model(Gemma2Config(**text_encoder_config(plan)))
        torch.manual_seed(plan.seed + 2)
        self.transformer = SanaTransformer2DModel(
            **transformer_config(plan, channels, self.text_encoder.config.hidden_size))
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        self.trains_text = plan.text_lr > 0

    def after_text_pretraining(self, plan: Plan) -> None:
        """The transformer phase's optimizer and averages, from the pretrained text encoder."""
        self.text_encoder.requires_grad_(self.trains_text)
        groups = [{"params": list(self.transformer.parameters()), "lr": plan.dit_lr, "base": plan.dit_lr}]
        if self.trains_text:
            groups.append({"params": list(self.text_encoder.parameters()), "lr": plan.text_lr, "base": plan.text_lr})
        self.optimizer = torch.optim.AdamW(groups, weight_decay=0.01)
        self.average = ((copy.deepcopy(self.transformer), copy.deepcopy(self.text_encoder))
                        if plan.ema > 0 else None)

    def state(self) -> dict:
        return {"transformer": self.transformer.state_dict(), "text_encoder": self.text_encoder.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "average": None if self.average is None else [m.state_dict() for m in self.average]}

    def restore(self, state: dict) -> None:
        self.transformer.load_state_dict(state["transformer"])
        self.text_encoder.load_state_dict(state["text_encoder"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.average is not None and state["average"] is not None:
            for module, saved in zip(self.average, state["average"]):
                module.load_state_dict(saved)

    def shipped(self) -> tuple[torch.nn.Module, torch.nn.Module]:
        return self.average if self.average is not None else (self.transformer, self.text_encoder)


def train_transformer(plan: Plan, bank, scenes, scaling: float, work: Path, tokenizer_dir: Path,
                      resume: bool, pause_after: int | None = None) -> tuple[Models, dict] | None:
    """The trained models and the phase's report; None when paused (state saved) at `pause_after`."""
    from models.text_encoder import preprocess
    from train.text_side import TrainablePromptEncoder

    channels = next(iter(bank.values())).shape[1]
    models = Models(plan, channels, tokenizer_dir)
    encoder = TrainablePromptEncoder(models.tokenizer, models.text_encoder)
    saved = RunState(work).load() if resume else None
    text_report = saved["text_report"] if saved is not None else pretrain_text_encoder(plan, encoder, models.text_encoder)
    models.after_text_pretraining(plan)
    generator = torch.Generator().manual_seed(plan.seed + 3)
    rng = random.Random(plan.seed + 4)
    run_state = RunState(work)
    step, losses, seconds = 0, [], 0.0
    if saved is not None:
        models.restore(saved["models"])
        generator.set_state(saved["generator"])
        rng.setstate(saved["rng"])
        step, losses, seconds = saved["step"], saved["losses"], saved["seconds"]
        print(f"[transformer] resumed at step {step}", flush=True)
    sizes = list(bank)
    progress = Progress("transformer", plan.dit_steps, start=step)
    started = time.monotonic() - seconds
    models.transformer.train()
    models.text_encoder.train(models.trains_text)
    while step < plan.dit_steps:
        step += 1
        size = sizes[step % len(sizes)]
        picks = [rng.randrange(len(scenes[size])) for _ in range(plan.dit_batch)]
        x0 = bank[size][picks] * scaling
        texts = [preprocess(rng.choice(captions_of(scenes[size][i]))) for i in picks]
        dropped = torch.tensor([rng.random() < plan.prompt_dropout for _ in picks])
        with torch.set_grad_enabled(models.trains_text):
            embeds, mask = encoder.encode(texts, with_instruction=True)
            empty_embeds, empty_mask = encoder.encode([""], with_instruction=False)
        embeds = torch.where(dropped.view(-1, 1, 1), empty_embeds.expand_as(embeds), embeds)
        mask = torch.where(dropped.view(-1, 1), empty_mask.expand_as(mask), mask)
        sigma = _sigmas(len(picks), generator).view(-1, 1, 1, 1)
        noise = torch.randn(x0.shape, generator=generator)
        noisy = (1 - sigma) * x0 + sigma * noise
        prediction = models.transformer(noisy, encoder_hidden_states=embeds, encoder_attention_mask=mask,
                                        timestep=sigma.flatten() * 1000, return_dict=False)[0]
        loss = ((prediction - (noise - x0)) ** 2).mean()
        models.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in models.optimizer.param_groups for p in g["params"]], 1.0)
        models.optimizer.step()
        for group in models.optimizer.param_groups:
            group["lr"] = _cosine_lr(group["base"], step, plan, plan.dit_steps)
        if models.average is not None:
            decay = min(plan.ema, (1 + step) / (10 + step))  # short memory at first
            _ema_update(models.average[0], models.transformer, decay)
            _ema_update(models.average[1], models.text_encoder, decay)
        losses.append(loss.item())
        progress.report(step, loss=float(np.mean(losses[-100:])))
        if step % plan.checkpoint_every == 0 or step in (plan.dit_steps, pause_after):
            run_state.save({"models": models.state(), "generator": generator.get_state(), "rng": rng.getstate(),
                            "step": step, "losses": losses, "seconds": time.monotonic() - started,
                            "text_report": text_report})
        if step == pause_after:
            print(f"[transformer] paused at step {step}; go on with --resume", flush=True)
            return None
    report = {"text_pretraining": text_report, "steps": step, "seconds": round(time.monotonic() - started),
              "final_loss": round(float(np.mean(losses[-100:])), 5) if losses else None,
              "loss_every_500": [round(float(np.mean(losses[max(0, i - 100):i])), 5)
                                 for i in range(500, len(losses) + 1, 500)]}
    return models, report


# --- the whole run ------------------------------------------------------------------------------

def train(out: Path, plan: Plan, resume: bool = False, reuse_bank: Path | None = None,
          pause_after: int | None = None) -> Path | None:
    """Run (or, with `resume`, go on with) the plan and write the checkpoint to `out`; with
    `pause_after`, stop after that transformer step instead (the state is saved; None)."""
    from models.materialize import _model_index, _write_scheduler, _write_tokenizer
    from models.registry import get_variant

    started = time.monotonic()
    out = Path(out)
    work = out.with_name(out.name + ".training")
    if not resume:
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    plan_file = work / "plan.json"
    if resume and plan_file.exists():
        kept = json.loads(plan_file.read_text())
        kept.pop("dit_steps")
        ours = asdict(plan)
        ours.pop("dit_steps")
        if json.loads(json.dumps(ours)) != kept:
            raise SystemExit(f"--resume: {work} was made with another plan (only dit_steps may change)")
    plan_file.write_text(json.dumps(asdict(plan), indent=2))

    staging = work / "checkpoint"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    _write_tokenizer(staging)

    vae, ae_report = train_autoencoder(plan, work)
    bank, scenes = encode_bank(plan, vae, work, reuse_bank)
    if plan.init_vae:
        scaling = float(vae.config.scaling_factor)
    else:
        scaling = 1.0 / torch.cat([b.flatten() for b in bank.values()]).std().item()
        vae.register_to_config(scaling_factor=scaling)
    vae.save_pretrained(staging / "vae")

    trained = train_transformer(plan, bank, scenes, scaling, work, staging / "tokenizer", resume, pause_after)
    if trained is None:
        return None
    models, dit_report = trained
    transformer, text_encoder = models.shipped()
    transformer.eval().save_pretrained(staging / "transformer")
    text_encoder.eval().save_pretrained(staging / "text_encoder")
    _write_scheduler(get_variant("tiny"), staging)  # the same Flow-DPM-Solver config (flow shift 3.0)
    (staging / "model_index.json").write_text(json.dumps(_model_index(), indent=2, sort_keys=True) + "\n")
    report = {
        "plan": asdict(plan),
        "minutes_this_invocation": round((time.monotonic() - started) / 60, 1),
        "torch_threads": torch.get_num_threads(),
        "autoencoder": ae_report,
        "latent_scaling": round(scaling, 5),
        "transformer": dit_report,
        "text_encoder": {"pretrained_steps": plan.text_pretrain_steps, "trained_with_transformer": models.trains_text,
                         "config": text_encoder_config(plan)},
        "shipped_weights": "moving average" if plan.ema > 0 else "last",
        "colors": list(COLORS),
    }
    (staging / "training.json").write_text(json.dumps(report, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(staging, out)
    print(f"wrote {out} ({dit_report['steps']} transformer steps)", flush=True)
    return out
