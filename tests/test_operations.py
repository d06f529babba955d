"""Operations: our metrics on Ray's Prometheus endpoint, the dashboard's queries, autoscaling."""

from __future__ import annotations

import json
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.serve_harness import deployed, local_args, metric_value, scrape_metrics, settled
from tests.webhook_receiver import Receiver

ROOT = Path(__file__).resolve().parent.parent
APP = "sana-ops"
URL = "/v1/images/generations"
OUR_METRICS = {
    "ray_sana_request_latency_ms": "histogram",
    "ray_sana_stage_latency_ms": "histogram",
    "ray_sana_batch_size": "histogram",
    "ray_sana_images_generated": "counter",
    "ray_sana_denoise_steps": "counter",
    "ray_sana_safety_replacements": "counter",
    "ray_sana_errors": "counter",
    "ray_sana_text_embedding_cache": "counter",
    "ray_sana_jobs": "counter",
    "ray_sana_time_to_first_event_ms": "histogram",
    "ray_sana_cancelled": "counter",
    "ray_sana_webhook_deliveries": "counter",
    "ray_sana_image_checks": "counter",
}
WEBHOOK_SECRET = "whsec-ops-test"


@pytest.fixture(scope="module")
def webhook_receiver():
    """A loopback receiver that accepts every delivery."""
    receiver = Receiver()
    yield receiver
    receiver.close()


@pytest.fixture(scope="module")
def base_url(ray_serve, tiny_checkpoint, webhook_receiver, tmp_path_factory):
    from models.materialize import materialize

    args = local_args(str(tiny_checkpoint))
    args["jobs"] = {"webhooks": {"allowed_hosts": [webhook_receiver.host]}}
    checker = materialize("tiny-image-checker", tmp_path_factory.mktemp("image-checker"))
    args["safety"]["image_checker"] = {"enabled": True, "checkpoint": str(checker), "action": "flag",
                                       "deployment": {"ray_actor_options": {"num_cpus": 0.05}}}
    actor = args["gateway"]["deployment"].setdefault("ray_actor_options", {})
    actor["runtime_env"] = {"env_vars": {"SANA_SERVE_WEBHOOK_SECRET": WEBHOOK_SECRET}}
    with deployed(args, APP, "/ops"):
        yield f"{ray_serve}/ops"


def _value(samples, name: str, **labels) -> float:
    return metric_value(samples, name, APP, **labels)


def _ours(samples) -> list:
    return sorted((sample.name, sorted(sample.labels.items()), sample.value)
                  for name, group in samples.items() if name.startswith("ray_sana_")
                  for sample in group if sample.labels.get("application") == APP)


@pytest.fixture(scope="module")
def scraped(base_url, webhook_receiver) -> dict[str, list]:
    """Traffic of every kind, then the scrape once Ray has exported it (it reports every few s)."""
    bodies = [
        {"prompt": "a red fox", "size": "512x512", "num_inference_steps": 2, "seed": 1, "n": 2},
        {"prompt": "a nude statue", "size": "512x512", "num_inference_steps": 1},  # word filter
        {"prompt": "a fox", "size": "1x1"},  # error
    ]
    with ThreadPoolExecutor(3) as pool:
        list(pool.map(lambda b: httpx.post(f"{base_url}{URL}", json=b, timeout=120), bodies))
    # After the first one has answered, so it is a cache hit rather than a duplicate in one batch.
    httpx.post(f"{base_url}{URL}", json={**bodies[0], "seed": 2, "n": 1}, timeout=120)
    # A job with a webhook, and a streaming client that leaves mid-denoise (cancelled work).
    hook = {"url": f"http://{webhook_receiver.host}/hook"}
    httpx.post(f"{base_url}/v1/images/jobs", json={**bodies[0], "webhook": hook}, timeout=60).raise_for_status()
    streamed = {**bodies[0], "num_inference_steps": 40, "stream": True, "stream_options": {"include_progress": True}}
    with httpx.stream("POST", f"{base_url}{URL}", json=streamed, timeout=120) as response:
        for line in response.iter_lines():
            if '"step": 2' in line:
                break
    deadline = time.monotonic() + 90
    while True:
        samples = scrape_metrics()
        if all(f"{name}_count" in samples or f"{name}_total" in samples for name in OUR_METRICS):
            if (_value(samples, "ray_sana_images_generated_total", route="sana-shapes") >= 6
                    and _value(samples, "ray_sana_jobs_total", status="completed") >= 1):
                # Each replica exports on its own clock: scrape again once none of ours moves.
                settled(_ours)
                return scrape_metrics()
        if time.monotonic() > deadline:
            missing = [n for n in OUR_METRICS if f"{n}_count" not in samples and f"{n}_total" not in samples]
            raise AssertionError(f"metrics never exported: {missing}")
        time.sleep(2)


def test_our_metrics_are_exported_with_sensible_values(scraped):
    route = {"route": "sana-shapes"}
    assert _value(scraped, "ray_sana_images_generated_total", **route) >= 4
    assert _value(scraped, "ray_sana_request_latency_ms_count", **route) >= 3
    assert _value(scraped, "ray_sana_request_latency_ms_sum", **route) > 0
    for stage in ("queue", "encode", "denoise", "decode", "image_check", "image_encode"):
        assert _value(scraped, "ray_sana_stage_latency_ms_count", stage=stage, **route) >= 3, stage
    checked = sum(_value(scraped, "ray_sana_image_checks_total", kind="image", result=result, **route)
                  for result in ("passed", "flagged"))
    assert checked >= 4
    assert _value(scraped, "ray_sana_batch_size_count", stage="image_checker") >= 1
    assert _value(scraped, "ray_sana_stage_latency_ms_sum", stage="denoise", **route) > 0
    assert _value(scraped, "ray_sana_batch_size_count", stage="denoiser") >= 1
    # Batch sizes count images: the n=2 request made a batch above the le=1 bucket.
    assert _value(scraped, "ray_sana_batch_size_bucket", stage="denoiser", le="1.0") < _value(
        scraped, "ray_sana_batch_size_count", stage="denoiser")
    assert _value(scraped, "ray_sana_batch_size_count", stage="text_encoder") >= 1
    assert _value(scraped, "ray_sana_denoise_steps_total", **route) >= 2 * 2 + 2 + 1
    assert _value(scraped, "ray_sana_safety_replacements_total", layer="word_filter") >= 1
    assert _value(scraped, "ray_sana_errors_total", type="invalid_request_error", status="400") >= 1
    assert _value(scraped, "ray_sana_text_embedding_cache_total", result="hit") >= 1
    assert _value(scraped, "ray_sana_text_embedding_cache_total", result="miss") >= 1
    for status in ("queued", "in_progress", "completed"):
        assert _value(scraped, "ray_sana_jobs_total", status=status) >= 1, status
    assert _value(scraped, "ray_sana_webhook_deliveries_total", result="delivered") >= 1
    assert _value(scraped, "ray_sana_time_to_first_event_ms_count", route="sana-shapes") >= 2
    assert _value(scraped, "ray_sana_cancelled_total", stage="gateway") >= 1
    assert _value(scraped, "ray_sana_cancelled_total", stage="denoiser") >= 1
    assert "ray_sana_jobs_queued" in scraped and "ray_sana_jobs_running" in scraped
    # Ray tags each series with its deployment and replica.
    sample = next(s for s in scraped["ray_sana_denoise_steps_total"] if s.labels.get("application") == APP)
    assert sample.labels["deployment"] == "Denoiser-sana-shapes" and sample.labels["replica"]


def _dashboard_metrics() -> set[str]:
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "sana-serve.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    assert len(exprs) >= 10
    names = set()
    for expr in exprs:
        names |= set(re.findall(r"\b(ray_[a-z_]+)", expr))
    return names


def test_every_metric_a_dashboard_panel_queries_exists(scraped):
    missing = sorted(name for name in _dashboard_metrics() if name not in scraped)
    assert not missing, missing


def _running_replicas(deployment: str) -> int:
    from ray import serve

    status = serve.status().applications[APP].deployments[deployment]
    return status.replica_states.get("RUNNING", 0)


def test_denoiser_scales_up_under_load_and_back_down_without_failures(base_url):
    deployment = "Denoiser-sana-shapes"
    assert _running_replicas(deployment) == 1
    statuses: list[int] = []
    stop = time.monotonic() + 120
    peak = 1

    def client(i: int) -> None:
        nonlocal peak
        while time.monotonic() < stop:
            body = {"prompt": f"load {i}", "size": "1024x1024", "num_inference_steps": 20, "seed": i}
            statuses.append(httpx.post(f"{base_url}{URL}", json=body, timeout=300).status_code)

    with ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(client, i) for i in range(6)]
        while time.monotonic() < stop:
            peak = max(peak, _running_replicas(deployment))
            if peak >= 2:
                stop = time.monotonic()  # load ends once the scale-up is seen
                break
            time.sleep(0.5)
        for future in futures:
            future.result()
    assert peak >= 2, "the Denoiser never scaled up"
    assert statuses and set(statuses) == {200}, statuses
    deadline = time.monotonic() + 120
    while _running_replicas(deployment) > 1:
        assert time.monotonic() < deadline, "the Denoiser never scaled back down"
        time.sleep(1)
