"""Helpers for tests that run the real Ray Serve application on 127.0.0.1."""

from __future__ import annotations

import base64
import io
import os
import time
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any, TypeVar

import numpy as np
from PIL import Image

from serve.local_app import free_port, local_app_args

__all__ = ["free_port", "local_args", "decode_images", "deployed", "scrape_metrics", "metric_value", "settled",
           "settled_metric"]

T = TypeVar("T")


def local_args(checkpoint: str, checkpoint_4k: str | None = None, **route_overrides: Any) -> dict[str, Any]:
    """The embedded default's args on `checkpoint` (see serve.local_app), each route's sections
    merged with `route_overrides` (e.g. denoiser={"batching": {...}})."""
    args = local_app_args(checkpoint, checkpoint_4k)
    for route in args["routes"].values():
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


def settled(read: Callable[[dict[str, list]], T], timeout_s: float = 60) -> T:
    """`read(scrape)` once Ray has exported everything counted so far: two scrapes two export
    intervals apart agree (the session's Ray exports every second)."""
    deadline = time.monotonic() + timeout_s
    previous = read(scrape_metrics())
    while True:
        time.sleep(2.0)
        current = read(scrape_metrics())
        if current == previous or time.monotonic() > deadline:
            return current
        previous = current


def settled_metric(name: str, app: str, **labels: str) -> float:
    return settled(lambda samples: metric_value(samples, name, app, **labels))
