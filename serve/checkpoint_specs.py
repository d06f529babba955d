"""Checkpoint specs from the config (a folder, a Hub repo id, or `materialized:ARCH`) turned into
what the stage loaders of `models/checkpoint.py` accept, and what can be known of them unloaded.

`materialized:ARCH` means "the offline checkpoint ARCH, materialized into the cache folder on first
use". Materialization is deterministic, so every node of a cluster that builds its own copy gets the
same weights; a file lock and an atomic rename keep concurrent replicas on one node from racing.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from serve.config import MATERIALIZED_PREFIX, cache_dir

MATERIALIZED_MARKER = "sana_serve.json"


def is_materialized(spec: str) -> bool:
    return spec.startswith(MATERIALIZED_PREFIX)


def materialized_path(spec: str) -> Path:
    return cache_dir() / spec.removeprefix(MATERIALIZED_PREFIX)


def resolve_checkpoint(spec: str) -> str:
    """A folder or Hub repo id for `spec`, materializing `materialized:ARCH` if it is not cached yet."""
    if not is_materialized(spec):
        return spec
    from models.materialize import is_current, materialize

    arch = spec.removeprefix(MATERIALIZED_PREFIX)
    target = materialized_path(spec)
    done = MATERIALIZED_MARKER  # every materialized folder (pipeline, classifier, LoRA) ends with it
    if (target / done).exists() and is_current(target):
        return str(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{arch}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        # Missing, or a copy of an older packaged checkpoint (the package was upgraded): write it.
        if not ((target / done).exists() and is_current(target)):
            staging = target.parent / f".{arch}.staging-{os.getpid()}"
            shutil.rmtree(staging, ignore_errors=True)
            materialize(arch, staging)
            shutil.rmtree(target, ignore_errors=True)
            staging.rename(target)
    return str(target)


@dataclass(frozen=True)
class CheckpointProfile:
    """What the gateway needs to know of a route's checkpoint: its resolution class (bins, default
    size) and its sampler (defaults; whether guidance takes a negative prompt)."""

    resolution: int
    sampler: str  # a models.registry.SAMPLERS name


def checkpoint_profile(spec: str) -> CheckpointProfile | None:
    """A configured checkpoint's profile, known without loading it when possible: from the registry
    (materialized:ARCH or a known repo id) or a local folder's transformer and scheduler configs.
    None when only the Denoiser can tell (an unknown repo, or a folder on another node)."""
    import json

    from models.binning import resolution_for_sample_size
    from models.errors import UnknownVariantError
    from models.registry import get_variant, sampler_for_scheduler, variant_for_repo

    if is_materialized(spec):
        try:
            variant = get_variant(spec.removeprefix(MATERIALIZED_PREFIX))
        except UnknownVariantError:
            return None
        return CheckpointProfile(variant.resolution, variant.sampler.name)
    variant = variant_for_repo(spec)
    if variant is not None:
        return CheckpointProfile(variant.resolution, variant.sampler.name)
    folder = Path(spec)
    try:
        sample_size = int(json.loads((folder / "transformer" / "config.json").read_text())["sample_size"])
        scheduler = json.loads((folder / "scheduler" / "scheduler_config.json").read_text()).get("_class_name")
        return CheckpointProfile(resolution_for_sample_size(sample_size), sampler_for_scheduler(scheduler).name)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
