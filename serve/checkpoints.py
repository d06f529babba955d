"""Turn a configured checkpoint into something the stage loaders accept.

`materialized:ARCH` means "the offline checkpoint ARCH, materialized into the cache folder on first
use". Materialization is deterministic, so every node of a cluster that builds its own copy gets the
same weights; a file lock and an atomic rename keep concurrent replicas on one node from racing.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path

from serve.config import MATERIALIZED_PREFIX, cache_dir


def is_materialized(spec: str) -> bool:
    return spec.startswith(MATERIALIZED_PREFIX)


def materialized_path(spec: str) -> Path:
    return cache_dir() / spec.removeprefix(MATERIALIZED_PREFIX)


def resolve_checkpoint(spec: str) -> str:
    """A folder or Hub repo id for `spec`, materializing `materialized:ARCH` if it is not cached yet."""
    if not is_materialized(spec):
        return spec
    from models.materialize import materialize

    arch = spec.removeprefix(MATERIALIZED_PREFIX)
    target = materialized_path(spec)
    if (target / "model_index.json").exists():
        return str(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{arch}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / "model_index.json").exists():
            staging = target.parent / f".{arch}.staging-{os.getpid()}"
            shutil.rmtree(staging, ignore_errors=True)
            materialize(arch, staging)
            shutil.rmtree(target, ignore_errors=True)
            staging.rename(target)
    return str(target)
