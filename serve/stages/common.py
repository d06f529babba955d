"""What every stage deployment shares: the node it runs on, millisecond timings, its torch
thread count and its batching parameters from the config.

Each deployment (one module each in this package) wraps a `models/` stage and runs its compute
(load and warm-up too) on the replica's one compute thread (`serve.stages.compute_thread`: why
one, always the same), so the event loop keeps accepting requests (and filling the next batch)
while a batch runs. `@serve.batch` is left at its defaults in the deployments: the config's values
replace them when a replica starts, before the first call.
"""

from __future__ import annotations

import socket

import torch

from serve.config import Batching, StageConfig


def node_id() -> str:
    # Ray's node id tells nodes apart even when several share a host (a local test cluster).
    try:
        import ray

        return ray.get_runtime_context().get_node_id()
    except Exception:  # noqa: BLE001 - outside Ray (in-process use) the host name will do
        return socket.gethostname()


def ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)


def set_threads(stage: StageConfig) -> None:
    if stage.torch_threads is not None:
        torch.set_num_threads(stage.torch_threads)


def configure_batching(batch_method, batching: Batching) -> None:
    batch_method.set_max_batch_size(batching.max_batch_size)
    batch_method.set_batch_wait_timeout_s(batching.batch_wait_timeout_s)
