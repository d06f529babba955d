"""Helpers for tests that run the real Ray Serve application on 127.0.0.1."""

from __future__ import annotations

import base64
import copy
import io
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image

LOCAL_CONFIG = Path(__file__).resolve().parent.parent / "deploy" / "local.yaml"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def local_args(checkpoint: str, checkpoint_4k: str | None = None, **route_overrides: Any) -> dict[str, Any]:
    """deploy/local.yaml's application args, pointed at `checkpoint` (and the 4K route at
    `checkpoint_4k`; without it the 4K route is left out).

    Stages use this process's torch thread count, so served pixels can be compared bit for bit
    with references computed here.
    """
    import torch

    threads = torch.get_num_threads()
    args = copy.deepcopy(yaml.safe_load(LOCAL_CONFIG.read_text())["applications"][0]["args"])
    args["text_encoder"]["checkpoint"] = checkpoint
    args["text_encoder"]["torch_threads"] = threads
    if checkpoint_4k is None:
        args["routes"].pop("tiny-4k")
        args["gateway"]["size_routes"] = []
    else:
        args["routes"]["tiny-4k"]["checkpoint"] = checkpoint_4k
    for name, route in args["routes"].items():
        route["checkpoint"] = checkpoint if name != "tiny-4k" else checkpoint_4k
        route["denoiser"]["torch_threads"] = route["decoder"]["torch_threads"] = threads
        for key, value in route_overrides.items():
            route[key] = _merge(route.get(key, {}), value)
    return args


def _merge(base: dict, extra: dict) -> dict:
    merged = dict(base)
    if "num_replicas" in extra:
        merged.pop("autoscaling_config", None)  # a fixed count replaces autoscaling
    for key, value in extra.items():
        merged[key] = _merge(base.get(key, {}), value) if isinstance(value, dict) else value
    return merged


def decode_images(response_json: dict) -> np.ndarray:
    images = [
        np.asarray(Image.open(io.BytesIO(base64.b64decode(item["b64_json"]))).convert("RGB"))
        for item in response_json["data"]
    ]
    return np.stack(images)


@contextmanager
def deployed(args: dict[str, Any], name: str, route_prefix: str = "/"):
    """The app built from `args`, running under `name` until the block ends."""
    from ray import serve

    from serve.app import build_app

    serve.run(build_app(args), name=name, route_prefix=route_prefix)
    try:
        yield
    finally:
        serve.delete(name)


def scrape_metrics() -> dict[str, list]:
    """Samples on the test session's Ray metrics endpoint, by sample name."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"http://127.0.0.1:{os.environ['SANA_TEST_METRICS_PORT']}/metrics", timeout=30).text
    samples: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return samples


def metric_value(samples: dict[str, list], name: str, app: str, **labels: str) -> float:
    """Sum of `app`'s samples of `name` with these labels (other test apps share the endpoint)."""
    labels = {"application": app, **labels}
    return sum(s.value for s in samples.get(name, []) if all(s.labels.get(k) == v for k, v in labels.items()))


def settled_metric(name: str, app: str, timeout_s: float = 60, **labels: str) -> float:
    """The metric's value once Ray has exported everything counted so far: two scrapes a few
    export intervals apart agree (the session's Ray exports every second)."""
    deadline = time.monotonic() + timeout_s
    previous = metric_value(scrape_metrics(), name, app, **labels)
    while True:
        time.sleep(2.5)
        current = metric_value(scrape_metrics(), name, app, **labels)
        if current == previous or time.monotonic() > deadline:
            return current
        previous = current
