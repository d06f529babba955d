"""Our Prometheus metrics, through Ray Serve's metrics API.

Ray exports them on each node's metrics endpoint with a `ray_` prefix and tags every series with
application, deployment and replica. One module so that names, tags and buckets live in one place
(the Grafana dashboard and the tests read the same names). Metric objects are created lazily, once
per replica process.
"""

from __future__ import annotations

from functools import cache
from typing import Protocol

from ray.serve.metrics import Counter, Gauge, Histogram

# Milliseconds: from a cached text encode (~1 ms) to a 4K generation on a busy CPU (minutes).
LATENCY_MS_BUCKETS = [1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 180000]
BATCH_BUCKETS = [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64]

STAGES = ("queue", "encode", "denoise", "decode", "image_check", "image_encode")


@cache
def request_latency() -> Histogram:
    return Histogram(
        "sana_request_latency_ms",
        description="End-to-end latency of successful image requests at the gateway, by route.",
        boundaries=LATENCY_MS_BUCKETS,
        tag_keys=("route",),
    )


@cache
def stage_latency() -> Histogram:
    return Histogram(
        "sana_stage_latency_ms",
        description="Where a request's time went, by route and stage (queue, encode, denoise, decode, image_check, "
                    "image_encode).",
        boundaries=LATENCY_MS_BUCKETS,
        tag_keys=("route", "stage"),
    )


@cache
def batch_size() -> Histogram:
    return Histogram(
        "sana_batch_size",
        description="Items per executed batch: prompts for the text encoder, images for the denoiser.",
        boundaries=BATCH_BUCKETS,
        tag_keys=("stage",),
    )


@cache
def images_generated() -> Counter:
    return Counter("sana_images_generated", description="Images returned to clients, by route.", tag_keys=("route",))


@cache
def denoise_steps() -> Counter:
    return Counter(
        "sana_denoise_steps",
        description="Solver steps times images denoised (its rate is denoise steps per second).",
        tag_keys=("route",),
    )


@cache
def safety_replacements() -> Counter:
    return Counter(
        "sana_safety_replacements",
        description="Prompts changed by the safety layers, by layer (word_filter, classifier).",
        tag_keys=("layer",),
    )


@cache
def image_checks() -> Counter:
    return Counter(
        "sana_image_checks",
        description="Images through the image safety check, by route, kind (image, preview) and result "
                    "(passed, flagged, failed_closed, failed_open).",
        tag_keys=("route", "kind", "result"),
    )


@cache
def errors() -> Counter:
    return Counter(
        "sana_errors",
        description="Failed API requests by error type and HTTP status.",
        tag_keys=("type", "status"),
    )


@cache
def embedding_cache() -> Counter:
    return Counter(
        "sana_text_embedding_cache",
        description="Text-embedding cache lookups by result (hit, miss).",
        tag_keys=("result",),
    )


@cache
def stage_retries() -> Counter:
    return Counter(
        "sana_stage_retries",
        description="Stage calls retried after a replica died mid-call, by route.",
        tag_keys=("route",),
    )


@cache
def cancelled() -> Counter:
    """Counted where the work stops: `gateway` for a generation (client gone, cancel, job cancel),
    `denoiser` for a request that left its running batch."""
    return Counter(
        "sana_cancelled",
        description="Cancelled work, by where it stopped (gateway: generations; denoiser: batch rows freed).",
        tag_keys=("stage",),
    )


@cache
def time_to_first_event() -> Histogram:
    return Histogram(
        "sana_time_to_first_event_ms",
        description="Receipt to the first progress event a streaming or job client sees, by route.",
        boundaries=LATENCY_MS_BUCKETS,
        tag_keys=("route",),
    )


@cache
def jobs() -> Counter:
    return Counter(
        "sana_jobs",
        description="Async jobs by the status they reached (queued, in_progress, completed, failed, cancelled).",
        tag_keys=("status",),
    )


@cache
def jobs_queued() -> Gauge:
    return Gauge("sana_jobs_queued", description="Async jobs waiting for a gateway to run them (job store).")


@cache
def jobs_running() -> Gauge:
    return Gauge("sana_jobs_running", description="Async jobs being run by a gateway (job store).")


@cache
def webhook_deliveries() -> Counter:
    return Counter(
        "sana_webhook_deliveries",
        description="Webhook POST attempts by result (delivered, retried, failed, refused).",
        tag_keys=("result",),
    )


@cache
def shed() -> Counter:
    return Counter(
        "sana_shed",
        description="Requests answered 503 by admission, by route and reason (estimate, cold_start, "
                    "max_inflight, draining, queue_timeout).",
        tag_keys=("route", "reason"),
    )


@cache
def queue_wait_estimate() -> Gauge:
    return Gauge("sana_queue_wait_estimate_s",
                 description="A gateway replica's estimate of a new request's queue wait, by route.",
                 tag_keys=("route",))


class GatewayMetrics(Protocol):
    """What the gateway counts. The generation service and the HTTP layer report through this, so
    unit tests can pass a recorder of their own and run without Ray."""

    def request_done(self, route: str, timings: dict[str, float], images: int) -> None: ...

    def request_failed(self, error_type: str, status: int) -> None: ...

    def safety_replacement(self, layer: str) -> None: ...

    def image_check(self, route: str, kind: str, result: str, images: int) -> None: ...

    def stage_retry(self, route: str) -> None: ...

    def generation_cancelled(self) -> None: ...

    def first_event(self, route: str, elapsed_ms: float) -> None: ...

    def webhook_attempt(self, result: str) -> None: ...

    def shed(self, route: str, reason: str) -> None: ...

    def queue_wait(self, route: str, estimate_s: float) -> None: ...


class ServeMetrics:
    """GatewayMetrics on Ray Serve's metrics API (exported to Prometheus as ray_sana_*)."""

    def request_done(self, route: str, timings: dict[str, float], images: int) -> None:
        request_latency().observe(timings["total"], tags={"route": route})
        for stage in STAGES:
            stage_latency().observe(timings[stage], tags={"route": route, "stage": stage})
        images_generated().inc(images, tags={"route": route})

    def request_failed(self, error_type: str, status: int) -> None:
        errors().inc(tags={"type": error_type, "status": str(status)})

    def safety_replacement(self, layer: str) -> None:
        safety_replacements().inc(tags={"layer": layer})

    def image_check(self, route: str, kind: str, result: str, images: int) -> None:
        image_checks().inc(images, tags={"route": route, "kind": kind, "result": result})

    def stage_retry(self, route: str) -> None:
        stage_retries().inc(tags={"route": route})

    def generation_cancelled(self) -> None:
        cancelled().inc(tags={"stage": "gateway"})

    def first_event(self, route: str, elapsed_ms: float) -> None:
        time_to_first_event().observe(elapsed_ms, tags={"route": route})

    def webhook_attempt(self, result: str) -> None:
        webhook_deliveries().inc(tags={"result": result})

    def shed(self, route: str, reason: str) -> None:
        shed().inc(tags={"route": route, "reason": reason})

    def queue_wait(self, route: str, estimate_s: float) -> None:
        queue_wait_estimate().set(estimate_s, tags={"route": route})
