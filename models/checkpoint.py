"""Where a stage's weights come from, and in which device/dtype they run.

A checkpoint source is a local diffusers-format folder or a Hugging Face repo id. Each stage asks
only for its own subfolders: from the Hub that means `allow_patterns` limited to those subfolders
(and to the file variant that matches the dtype), so a Decoder replica never downloads the 10 GB
text encoder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from models.errors import CheckpointError
from models.registry import variant_for_repo

_WEIGHT_SUFFIXES = (".safetensors", ".bin")
# Small files a stage folder needs besides weights: configs, index files, tokenizer data.
_SMALL_FILE_PATTERNS = ("*.json", "*.model", "*.txt")


@dataclass(frozen=True)
class Placement:
    """Device and dtype a stage runs in, and which weight-file variant to read."""

    device: torch.device
    dtype: torch.dtype
    weight_variant: str | None  # e.g. "bf16": files named *.bf16.safetensors


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _hub_variant(source: str) -> tuple[str | None, str]:
    variant = variant_for_repo(source)
    if variant is None:
        return None, "bfloat16"
    return variant.weight_variant, variant.gpu_dtype


_STORED_DTYPES = {"BF16": "bfloat16", "F16": "float16"}


def _local_variant(folder: Path) -> tuple[str | None, str]:
    # A local folder tells its variant by its file names (materialize writes the Hub's)...
    for weight_variant, dtype in (("bf16", "bfloat16"), ("fp16", "float16")):
        if any(folder.glob(f"*/*.{weight_variant}*.safetensors")) or any(folder.glob(f"*/*.{weight_variant}-*")):
            return weight_variant, dtype
    # ...or, under plain names (SANA-1.5, Sprint), by the dtype its transformer weights are stored in.
    return None, _stored_dtype(folder / "transformer")


def _stored_dtype(folder: Path) -> str:
    from safetensors import safe_open

    for path in sorted(folder.glob("*.safetensors"))[:1]:
        try:
            with safe_open(path, "pt") as weights:
                first = next(iter(weights.keys()), None)
                if first is not None:
                    return _STORED_DTYPES.get(weights.get_slice(first).get_dtype(), "float32")
        except Exception:  # noqa: BLE001 - unreadable here is reported by the loader, with its path
            pass
    return "float32"


def choose_placement(source: str, device: str | torch.device | None = None, dtype: str | None = None) -> Placement:
    """CUDA in the checkpoint's GPU dtype when present, else CPU in float32.

    On CPU the weights are upcast to float32: that is both what the numerics contract is stated in
    and the only dtype CPU kernels are fast for.
    """
    device = torch.device(device) if device is not None else default_device()
    folder = Path(source)
    weight_variant, gpu_dtype = _local_variant(folder) if folder.is_dir() else _hub_variant(source)
    if dtype is not None:
        run_dtype = getattr(torch, dtype)
    elif device.type == "cuda":
        run_dtype = getattr(torch, gpu_dtype)
    else:
        run_dtype = torch.float32
    return Placement(device=device, dtype=run_dtype, weight_variant=weight_variant)


def load_classifier(model_class, source: str, device: str | None = None, dtype: str | None = None) -> torch.nn.Module:
    """A whole-repo transformers model (the safety classifiers: one model per repo, no subfolders)
    from a folder or Hub repo id, placed as `choose_placement` says, in eval mode."""
    placement = choose_placement(source, device, dtype)
    return model_class.from_pretrained(source, dtype=placement.dtype).to(placement.device).eval()


def _check_subfolders(folder: Path, subfolders: tuple[str, ...], source: str) -> None:
    missing = [sub for sub in subfolders if not (folder / sub).is_dir()]
    if missing:
        raise CheckpointError(f"checkpoint {source!r} has no {', '.join(missing)} folder(s)")
    for sub in subfolders:
        if not any((folder / sub).glob("*.json")):
            raise CheckpointError(f"checkpoint {source!r}: {sub}/ holds no config")


def _hub_patterns(subfolders: tuple[str, ...], weight_variant: str | None) -> list[str]:
    patterns = [f"{sub}/{pattern}" for sub in subfolders for pattern in _SMALL_FILE_PATTERNS]
    for sub in subfolders:
        if weight_variant:
            # diffusers names variant files "x.bf16.safetensors", transformers shards "x.bf16-0000N-of-...".
            patterns += [f"{sub}/*.{weight_variant}.safetensors", f"{sub}/*.{weight_variant}-*.safetensors"]
        else:
            patterns += [f"{sub}/*{suffix}" for suffix in _WEIGHT_SUFFIXES]
    return patterns


def resolve_source(source: str, subfolders: tuple[str, ...], weight_variant: str | None = None) -> Path:
    """A local folder holding `subfolders` of checkpoint `source` (a folder or a Hub repo id).

    Tokenizer folders have no weights; other stage folders must have some.
    """
    folder = Path(source).expanduser()
    if folder.is_dir():
        _check_subfolders(folder, subfolders, source)
        return folder
    if folder.exists() or source.startswith((".", "/", "~")) or source.count("/") != 1:
        raise CheckpointError(f"checkpoint {source!r} is neither a folder nor a Hugging Face repo id")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        path = Path(snapshot_download(source, allow_patterns=_hub_patterns(subfolders, weight_variant)))
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError, ValueError) as exc:
        raise CheckpointError(f"cannot fetch {subfolders} of {source!r} from the Hugging Face Hub: {exc}") from exc
    _check_subfolders(path, subfolders, source)
    return path


def variant_available(folder: Path, weight_variant: str | None) -> str | None:
    """The variant to ask loaders for: the requested one if its files are there, else none."""
    if weight_variant is None:
        return None
    if any(folder.glob(f"*.{weight_variant}.safetensors")) or any(folder.glob(f"*.{weight_variant}-*")):
        return weight_variant
    return None


def load_component(model_cls, folder: Path, placement: Placement) -> torch.nn.Module:
    """`model_cls.from_pretrained(folder)` in the placement's dtype and variant, on its device, eval mode."""
    # transformers names the argument `dtype`, diffusers `torch_dtype`.
    dtype_arg = "torch_dtype" if model_cls.__module__.startswith("diffusers") else "dtype"
    model = model_cls.from_pretrained(
        folder, **{dtype_arg: placement.dtype}, variant=variant_available(folder, placement.weight_variant)
    )
    return model.to(placement.device).eval()
