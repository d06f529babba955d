"""The embedded default (`deploy/local.yaml`) as application args, pointed at other checkpoints.

The tests and the benchmarks serve materialized checkpoints in the embedded default's shape; this
is the one place that knows how to repoint it. Stages get `torch_threads` equal to the caller's
(by default this process's torch thread count), so served pixels can be compared bit for bit with
references computed in the caller's process.
"""

from __future__ import annotations

import copy
import socket
from typing import Any

import yaml

from serve.config import DEFAULT_LOCAL_CONFIG

FOUR_K_ROUTE = "sana-shapes-4k"
SPRINT_ROUTE = "sprint"


def local_app_args(checkpoint: str, checkpoint_4k: str | None = None, *, checkpoint_sprint: str | None = None,
                   torch_threads: int | None = None, device: str | None = None) -> dict[str, Any]:
    """deploy/local.yaml's first application's args with every route on `checkpoint` (the 4K route
    on `checkpoint_4k`, the Sprint route on `checkpoint_sprint`; without one, its route (and the
    4K size rule) are left out)."""
    if torch_threads is None:
        import torch

        torch_threads = torch.get_num_threads()
    args = copy.deepcopy(yaml.safe_load(DEFAULT_LOCAL_CONFIG.read_text())["applications"][0]["args"])
    if checkpoint_4k is None:
        args["routes"].pop(FOUR_K_ROUTE)
        args["gateway"]["size_routes"] = []
    if checkpoint_sprint is None:
        args["routes"].pop(SPRINT_ROUTE)
    args["text_encoder"].update(checkpoint=checkpoint, torch_threads=torch_threads)
    if device is not None:
        args["text_encoder"]["device"] = device
    for name, route in args["routes"].items():
        route["checkpoint"] = {FOUR_K_ROUTE: checkpoint_4k, SPRINT_ROUTE: checkpoint_sprint}.get(name, checkpoint)
        route["denoiser"]["torch_threads"] = route["decoder"]["torch_threads"] = torch_threads
        if device is not None:
            route["device"] = device
    return args


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (local apps and tests bind loopback only)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
