"""Our Prometheus metrics, through Ray Serve's metrics API (exported on Ray's metrics endpoint,
tagged with deployment and replica by Ray). One module so names and tags live in one place."""

from __future__ import annotations

from functools import cache

from ray.serve.metrics import Counter


@cache
def safety_replacements() -> Counter:
    return Counter(
        "sana_safety_replacements",
        description="Prompts changed by the safety layers, by layer (word_filter, classifier).",
        tag_keys=("layer",),
    )
