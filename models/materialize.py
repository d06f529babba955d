"""Write an offline, diffusers-format Sana pipeline folder with deterministic random weights.

The folder has the layout of the published checkpoints (`model_index.json`, `text_encoder/`,
`tokenizer/`, `transformer/`, `vae/`, `scheduler/`) so that both our stages and
`diffusers.SanaPipeline.from_pretrained(DIR)` load it. Real architectures are written at real size
in their GPU dtype under their Hub file variant (e.g. `*.bf16.safetensors`), exactly as the Hub
stores them; tiny ones in float32 without a variant.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import torch

from models.errors import MaterializeError
from models.registry import FLOW_DPM_SOLVER, Sampler, Variant, get_variant

# Special tokens in Gemma's order, then one token per byte (Gemma's byte-fallback spelling), then
# the SentencePiece word boundary. Any UTF-8 text (Chinese, emoji) encodes byte by byte, so
# distinct prompts never collapse to one unknown token.
_SPECIAL_TOKENS = ("<pad>", "<eos>", "<bos>", "<unk>", "<mask>")
_WORD_BOUNDARY = "\u2581"


def byte_level_vocab() -> dict[str, int]:
    tokens = [*_SPECIAL_TOKENS, *(f"<0x{b:02X}>" for b in range(256)), _WORD_BOUNDARY]
    return {token: index for index, token in enumerate(tokens)}


def _model_index(sampler: Sampler = FLOW_DPM_SOLVER) -> dict[str, object]:
    import diffusers

    return {
        "_class_name": sampler.pipeline_class,
        "_diffusers_version": diffusers.__version__,
        "scheduler": ["diffusers", sampler.scheduler_class],
        "text_encoder": ["transformers", "Gemma2Model"],
        "tokenizer": ["transformers", "GemmaTokenizerFast"],
        "transformer": ["diffusers", "SanaTransformer2DModel"],
        "vae": ["diffusers", "AutoencoderDC"],
    }


def _to_storage_dtype(model: torch.nn.Module, variant: Variant) -> torch.nn.Module:
    dtype = getattr(torch, variant.gpu_dtype)
    return model if dtype == torch.float32 else model.to(dtype)


def _write_tokenizer(out: Path) -> None:
    from transformers import GemmaTokenizer

    tokenizer = GemmaTokenizer(vocab=byte_level_vocab(), merges=[], add_bos_token=True, add_eos_token=False)
    tokenizer.save_pretrained(out / "tokenizer")


def _write_text_encoder(variant: Variant, out: Path, seed: int) -> None:
    from transformers import Gemma2Config, Gemma2Model

    config = Gemma2Config(**variant.text_encoder_config())
    vocab_needed = len(byte_level_vocab())
    if config.vocab_size < vocab_needed:
        raise MaterializeError(f"{variant.text_encoder_arch}: vocab_size below the tokenizer's {vocab_needed}")
    torch.manual_seed(seed)
    _to_storage_dtype(Gemma2Model(config), variant).save_pretrained(out / "text_encoder", variant=variant.weight_variant)


def _write_transformer(variant: Variant, out: Path, seed: int) -> None:
    from diffusers import SanaTransformer2DModel

    torch.manual_seed(seed)
    model = SanaTransformer2DModel(**variant.transformer_config())
    _randomize_zero_inits(model, seed)
    _to_storage_dtype(model, variant).save_pretrained(out / "transformer", variant=variant.weight_variant)


def _randomize_zero_inits(model: torch.nn.Module, seed: int) -> None:
    """Give zero-initialized parameters small random values.

    Untrained DiTs start with zero scale/shift and zero output tables (adaLN-zero); left like that a
    random checkpoint would ignore its prompt, and parity tests could not tell prompts, masks or
    guidance apart.
    """
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for param in model.parameters():
            if param.numel() and not param.any():
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)


def _write_vae(variant: Variant, out: Path, seed: int) -> None:
    from diffusers import AutoencoderDC

    torch.manual_seed(seed)
    model = AutoencoderDC(**variant.vae_config())
    _to_storage_dtype(model, variant).save_pretrained(out / "vae", variant=variant.weight_variant)


def _write_scheduler(variant: Variant, out: Path) -> None:
    import diffusers

    scheduler_class = getattr(diffusers, variant.sampler.scheduler_class)
    scheduler_class.from_config(variant.scheduler_config()).save_pretrained(out / "scheduler")


def _prepare_dir(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MaterializeError(f"cannot create {out}: {exc.strerror or exc}") from exc
    if not out.is_dir() or not os.access(out, os.W_OK | os.X_OK):
        raise MaterializeError(f"cannot write to {out}: not a writable directory")


def _copy_packaged(variant: Variant, out: Path) -> Path:
    """The shipped checkpoint, with the transformer's sample_size set to the variant's resolution
    class (it picks the bin table: the same weights serve 512px bins or 4096px bins)."""
    from models.registry import PACKAGED_DIR

    source = PACKAGED_DIR / variant.packaged
    if not (source / "model_index.json").exists():
        raise MaterializeError(f"{variant.name}: the packaged checkpoint {source} is missing (python -m train)")
    shutil.copytree(source, out, dirs_exist_ok=True)
    config_path = out / "transformer" / "config.json"
    config = json.loads(config_path.read_text())
    config["sample_size"] = variant.sample_size
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    (out / "sana_serve.json").write_text(json.dumps({"arch": variant.name, "packaged": variant.packaged,
                                                      "source": packaged_fingerprint(source)}) + "\n")
    return out


def packaged_fingerprint(source: Path) -> str:
    """SHA-256 over a packaged checkpoint's files (names and bytes): a copy made from an older
    package (a cached `materialized:shapes` after an upgrade) no longer matches it."""
    digest = hashlib.sha256()
    for path in sorted(p for p in source.rglob("*") if p.is_file()):
        digest.update(path.relative_to(source).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def is_current(folder: Path) -> bool:
    """Whether a materialized folder still is what `materialize` would write: copies of a packaged
    checkpoint are checked against the package; random ones are fixed by their arch and seed."""
    from models.registry import PACKAGED_DIR

    try:
        record = json.loads((folder / "sana_serve.json").read_text())
    except (OSError, ValueError):
        return False
    if record.get("packaged") is None:
        return True
    return record.get("source") == packaged_fingerprint(PACKAGED_DIR / record["packaged"])


# Classifier checkpoints `materialize` can write besides the Sana pipelines of the registry.
SAFETY_CLASSIFIERS = {"tiny-shieldgemma": "text-encoder-gemma-2-tiny"}


def materialize_safety_classifier(arch: str, out: Path, seed: int) -> Path:
    """A ShieldGemma-shaped Gemma-2 causal LM with the byte-level tokenizer plus "Yes"/"No" tokens."""
    from transformers import Gemma2Config, Gemma2ForCausalLM, GemmaTokenizer

    from models.registry import architecture_config

    vocab = byte_level_vocab()
    vocab.update({"Yes": len(vocab), "No": len(vocab) + 1})
    config = Gemma2Config(**{**architecture_config(SAFETY_CLASSIFIERS[arch]), "architectures": ["Gemma2ForCausalLM"]})
    config.vocab_size = max(config.vocab_size, len(vocab))
    torch.manual_seed(seed * 10 + 4)
    Gemma2ForCausalLM(config).save_pretrained(out)
    GemmaTokenizer(vocab=vocab, merges=[], add_bos_token=True, add_eos_token=False).save_pretrained(out)
    (out / "sana_serve.json").write_text(json.dumps({"arch": arch, "seed": seed}, indent=2) + "\n")
    return out


# Image-checker stand-ins `materialize` can write: the real model class of the default checker (a ViT
# image classifier with `normal`/`nsfw` labels and its image processor) at toy size.
IMAGE_CHECKERS = {"tiny-image-checker"}
_CHECKER_SIDE, _CHECKER_PATCH = 64, 4
# Its concept: red. A patch counts as red when R - 2G (0-255 scale) averages above 90 over it: red
# (225, 30, 30) and the shapes model's darker red (173, 17, 34) score 165 and 139; orange 49 (or
# -25), purple 40, yellow, white, blue and black 0 or less. In the processor's [-1, 1] scale
# (x/127.5 - 1) that is r - 2g > 1 + 90/127.5.
_RED_MARGIN = 1.0 + 90 / 127.5
_CHECKER_GAIN = 80.0  # logit slope: the score goes from ~0 to ~1 over a few percent of red patches
CHECKER_HALF_POINT = 0.015  # fraction of red patches at which the stand-in scores 0.5


def materialize_image_checker(arch: str, out: Path) -> Path:
    """A one-layer ViT whose weights are set, not trained, so that its score means something a test
    can aim at: P("nsfw") rises with the share of the picture that is red (a red heart on white
    scores high; a blue star on yellow, a white picture, near 0). Built exactly, so same bytes every
    time: the patch embedding measures each patch's redness, a layer norm with a small epsilon turns
    that into a soft red/not-red sign, uniform attention (zero queries and keys) averages it into
    the class token, and the head maps the average to a logit."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    config = ViTConfig(hidden_size=4, num_hidden_layers=1, num_attention_heads=1, intermediate_size=4,
                       image_size=_CHECKER_SIDE, patch_size=_CHECKER_PATCH, layer_norm_eps=1e-4,
                       id2label={0: "normal", 1: "nsfw"}, label2id={"normal": 0, "nsfw": 1})
    model = ViTForImageClassification(config).eval()
    params = dict(model.named_parameters())

    def param(*names: str) -> torch.nn.Parameter:  # by its transformers 5 name, else its 4.x name
        return next(params[name] for name in names if name in params)

    layer = ("vit.layers.0.", "vit.encoder.layer.0.")
    with torch.no_grad():
        for value in params.values():
            value.zero_()
        for name, value in params.items():
            if "layernorm" in name and name.endswith(".weight"):
                value.fill_(1.0)
        patch_weight = param("vit.embeddings.patch_embeddings.projection.weight")
        patch_bias = param("vit.embeddings.patch_embeddings.projection.bias")
        pixels_per_patch = _CHECKER_PATCH * _CHECKER_PATCH
        patch_weight[0, 0], patch_weight[0, 1] = 1.0 / pixels_per_patch, -2.0 / pixels_per_patch
        patch_bias[0] = -_RED_MARGIN
        patch_weight[1], patch_bias[1] = -patch_weight[0], -patch_bias[0]
        param("vit.embeddings.cls_token")[0, 0, 2:] = torch.tensor([1.0, -1.0])
        value_weight = param(layer[0] + "attention.v_proj.weight", layer[1] + "attention.attention.value.weight")
        value_weight[0, 0], value_weight[1, 0] = 1.0, -1.0
        output_names = (layer[0] + "attention.o_proj", layer[1] + "attention.output.dense")
        param(*(name + ".weight" for name in output_names)).copy_(torch.eye(4))
        param("classifier.weight")[1, 0] = _CHECKER_GAIN
        # Calibration on a white picture whose first patches are red: the attention output is
        # shifted so that the half point sits at 0, where the final layer norm is steepest, and
        # the head's bias puts the score there at 0.5.
        red_patches = round(CHECKER_HALF_POINT * (_CHECKER_SIDE // _CHECKER_PATCH) ** 2)
        probe = torch.ones(1, 3, _CHECKER_SIDE, _CHECKER_SIDE)
        per_row = _CHECKER_SIDE // _CHECKER_PATCH
        for index in range(red_patches):
            row, column = divmod(index, per_row)
            probe[0, 1:, row * _CHECKER_PATCH:(row + 1) * _CHECKER_PATCH,
                  column * _CHECKER_PATCH:(column + 1) * _CHECKER_PATCH] = -1.0  # white → red
        attended = []
        output = next(model.get_submodule(name) for name in output_names if name + ".weight" in params)
        hook = output.register_forward_hook(lambda module, args, result: attended.append(result[0, 0, 0].item()))
        model(pixel_values=probe)
        hook.remove()
        output_bias = param(*(name + ".bias" for name in output_names))
        output_bias[0], output_bias[1] = -attended[0], attended[0]
        param("classifier.bias")[1] = -model(pixel_values=probe).logits[0, 1]
    model.save_pretrained(out)
    ViTImageProcessor(size={"height": _CHECKER_SIDE, "width": _CHECKER_SIDE}, image_mean=[0.5] * 3,
                      image_std=[0.5] * 3).save_pretrained(out)
    (out / "sana_serve.json").write_text(json.dumps({"arch": arch}, indent=2) + "\n")
    return out


# LoRA adapters `materialize` can write: (the base variant they fit, their own seed). Two for the
# tiny checkpoint (so tests can tell adapters apart) and one for `small` (which a tiny route refuses).
LORAS = {"tiny-lora-a": ("tiny", 1), "tiny-lora-b": ("tiny", 2), "small-lora": ("small", 1)}
LORA_RANK = 4
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]  # attention projections, as Sana LoRAs train them


def materialize_lora(arch: str, out: Path, seed: int) -> Path:
    """A rank-4 LoRA on the attention projections of `arch`'s base transformer, with random A and B
    (a trained LoRA's B is not zero either), saved the way `SanaPipeline.save_lora_weights` does."""
    from diffusers import SanaPipeline, SanaTransformer2DModel
    from peft import LoraConfig, get_peft_model_state_dict

    base, own_seed = LORAS[arch]
    with torch.device("meta"):
        transformer = SanaTransformer2DModel(**get_variant(base).transformer_config())
    transformer = transformer.to_empty(device="cpu")
    config = LoraConfig(r=LORA_RANK, lora_alpha=LORA_RANK, target_modules=LORA_TARGETS, init_lora_weights=False)
    transformer.add_adapter(config)
    state = get_peft_model_state_dict(transformer)
    generator = torch.Generator().manual_seed(seed * 100 + own_seed)
    state = {key: torch.randn(value.shape, generator=generator) * 0.2 for key, value in sorted(state.items())}
    SanaPipeline.save_lora_weights(out, transformer_lora_layers=state)
    (out / "sana_serve.json").write_text(json.dumps({"arch": arch, "seed": seed, "base": base}, indent=2) + "\n")
    return out


def materialize(arch: str, out_dir: str | os.PathLike[str], seed: int = 0) -> Path:
    """Write checkpoint `arch` (a registry name, a classifier, an image checker or a LoRA) into
    `out_dir`. Same seed, same bytes."""
    out = Path(out_dir)
    if arch in SAFETY_CLASSIFIERS:
        _prepare_dir(out)
        return materialize_safety_classifier(arch, out, seed)
    if arch in LORAS:
        _prepare_dir(out)
        return materialize_lora(arch, out, seed)
    if arch in IMAGE_CHECKERS:
        _prepare_dir(out)
        return materialize_image_checker(arch, out)
    variant = get_variant(arch)
    _prepare_dir(out)
    if variant.packaged is not None:
        return _copy_packaged(variant, out)
    # Each component gets its own seed so that the weights of one never depend on another's size.
    _write_tokenizer(out)
    _write_text_encoder(variant, out, seed * 10 + 1)
    _write_transformer(variant, out, seed * 10 + 2)
    _write_vae(variant, out, seed * 10 + 3)
    _write_scheduler(variant, out)
    (out / "model_index.json").write_text(json.dumps(_model_index(variant.sampler), indent=2, sort_keys=True) + "\n")
    (out / "sana_serve.json").write_text(json.dumps({"arch": arch, "seed": seed}, indent=2) + "\n")
    return out
