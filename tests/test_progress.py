"""Progress, previews and cancel on the real application (Ray Serve, HTTP on 127.0.0.1, tiny
checkpoint, two gateway replicas): OpenAI streaming through the official client, per-step events
for every request of a batch, jobs across gateway replicas, cancel inside a running batch, and a
streaming client that goes away."""

from __future__ import annotations

import base64
import io
import json
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import openai
import pytest
from PIL import Image

from models.pipeline import GenerationRequest
from tests.serve_harness import deployed, local_args, metric_value, scrape_metrics, settled

APP = "sana-progress"
BASE_BODY = {"prompt": "a red heart on a blue background", "size": "512x512", "num_inference_steps": 6}


@pytest.fixture(scope="module")
def base_url(ray_serve, tiny_checkpoint, tmp_path_factory):
    # A long batch window so that concurrent requests share a Denoiser batch; two gateways.
    args = local_args(str(tiny_checkpoint), denoiser={"batching": {"max_batch_size": 8, "batch_wait_timeout_s": 0.5}})
    args["gateway"]["deployment"] = {**args["gateway"]["deployment"], "num_replicas": 2}
    args["gateway"]["limits"]["max_steps"] = 400
    args["files"] = {"directory": str(tmp_path_factory.mktemp("files"))}
    args["jobs"] = {"lease_s": 3.0, "runners_per_gateway": 4}
    with deployed(args, APP, "/"):
        yield ray_serve


def _png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def _sse(lines) -> list[tuple[str, dict]]:
    """(event, data) pairs from an SSE line iterator, as they arrive."""
    events, name = [], None
    for line in lines:
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            events.append((name, json.loads(line[6:])))
    return events


def test_the_openai_client_streams_partial_and_completed_images(base_url):
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=120)
    body = {**BASE_BODY, "seed": 11}
    plain = httpx.post(f"{base_url}/v1/images/generations", json=body, timeout=120).json()
    stream = client.images.generate(prompt=body["prompt"], size=body["size"], stream=True, partial_images=2,
                                    extra_body={"seed": 11, "num_inference_steps": 6})
    events = list(stream)
    assert [e.type for e in events] == ["image_generation.partial_image"] * 2 + ["image_generation.completed"]
    assert [e.partial_image_index for e in events[:2]] == [0, 1]
    preview = _png(base64.b64decode(events[0].b64_json))
    assert preview.shape == (512, 512, 3) and events[0].size == "512x512"
    streamed = _png(base64.b64decode(events[-1].b64_json))
    assert np.array_equal(streamed, _png(base64.b64decode(plain["data"][0]["b64_json"])))
    assert events[-1].output_format == "png"


def test_progress_arrives_for_every_step_of_every_request_in_a_batch(base_url):
    steps = 5

    def one(seed: int) -> list[tuple[str, dict]]:
        body = {**BASE_BODY, "seed": seed, "num_inference_steps": steps, "stream": True,
                "stream_options": {"include_progress": True}}
        with httpx.stream("POST", f"{base_url}/v1/images/generations", json=body, timeout=120) as response:
            assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
            return _sse(response.iter_lines())

    with ThreadPoolExecutor(3) as pool:
        streams = list(pool.map(one, (1, 2, 3)))
    for events in streams:
        progress = [data for name, data in events if name == "sana.progress"]
        assert progress[0]["stage"] == "queued" and progress[-1]["stage"] == "done"
        denoising = [(d["step"], d["total"]) for d in progress if d["stage"] == "denoising" and d["step"] > 0]
        assert denoising == [(k, steps) for k in range(1, steps + 1)]
        completed = [data for name, data in events if name == "image_generation.completed"]
        assert len(completed) == 1 and completed[0]["batch_size"] == 3  # all three shared one batch


def test_a_job_made_through_one_gateway_replica_is_read_through_another(base_url):
    submitted = httpx.post(f"{base_url}/v1/images/jobs", json={**BASE_BODY, "seed": 4}, timeout=60)
    assert submitted.status_code == 202
    job_id, first_replica = submitted.json()["id"], submitted.headers["x-served-by"]
    replicas, record = set(), None
    for _ in range(60):  # the proxy spreads requests over both replicas
        answer = httpx.get(f"{base_url}/v1/images/jobs/{job_id}", timeout=30)
        assert answer.status_code == 200
        replicas.add(answer.headers["x-served-by"])
        record = answer.json()
        if len(replicas - {first_replica}) and record["status"] == "completed":
            break
        time.sleep(0.1)
    assert replicas - {first_replica}, "every read landed on the submitting replica"
    assert record["status"] == "completed"
    image = httpx.get(record["result"]["data"][0]["url"], timeout=30)
    assert image.status_code == 200 and _png(image.content).shape == (512, 512, 3)


def test_cancelling_a_running_job_frees_its_rows_and_the_batch_keeps_its_pixels(base_url, pipeline):
    steps = 40
    bodies = [{**BASE_BODY, "seed": seed, "num_inference_steps": steps} for seed in (21, 22, 23)]
    with ThreadPoolExecutor(3) as pool:  # submitted together: one batch
        ids = list(pool.map(lambda b: httpx.post(f"{base_url}/v1/images/jobs", json=b, timeout=60).json()["id"],
                            bodies))
    target = ids[1]
    deadline = time.monotonic() + 120
    while httpx.get(f"{base_url}/v1/images/jobs/{target}", timeout=30).json()["progress"].get("step", 0) < 3:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert httpx.post(f"{base_url}/v1/images/jobs/{target}/cancel", timeout=30).json()["cancel_requested"]
    records = {}
    for job_id in ids:
        while (record := httpx.get(f"{base_url}/v1/images/jobs/{job_id}", timeout=30).json())["status"] in (
                "queued", "in_progress"):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        records[job_id] = record
    assert records[target]["status"] == "cancelled"
    events = _sse(httpx.get(f"{base_url}/v1/images/jobs/{target}/events", timeout=30).iter_lines())
    kinds = [(name, data.get("step")) for name, data in events]
    asked = kinds.index(("cancel_requested", None))
    steps_after = [step for name, step in kinds[asked:] if name == "progress" and step]
    assert len(steps_after) <= 1, kinds  # it stopped within one step
    for job_id, body in zip(ids, bodies):
        if job_id == target:
            continue
        record = records[job_id]
        assert record["status"] == "completed" and record["result"]["batch_size"] == 3
        served = _png(httpx.get(record["result"]["data"][0]["url"], timeout=30).content).astype(int)
        solo = pipeline.generate([GenerationRequest(body["prompt"], width=512, height=512, steps=steps,
                                                    seed=body["seed"])])[0].images[0].astype(int)
        assert np.abs(served - solo).max() <= 1


def test_a_streaming_client_that_goes_away_stops_its_denoising(base_url):
    def steps_done() -> float:
        return settled(lambda s: metric_value(s, "ray_sana_denoise_steps_total", APP))

    def cancelled_rows() -> float:
        return metric_value(scrape_metrics(), "ray_sana_cancelled_total", APP, stage="denoiser")

    before, rows_before = steps_done(), cancelled_rows()
    body = {**BASE_BODY, "seed": 5, "num_inference_steps": 400, "stream": True,
            "stream_options": {"include_progress": True}}
    with httpx.stream("POST", f"{base_url}/v1/images/generations", json=body, timeout=120) as response:
        for line in response.iter_lines():
            if line.startswith("data: ") and json.loads(line[6:]).get("step") == 3:
                break  # leave mid-denoise: closing the connection is all a client does
    ran = steps_done() - before
    assert 3 <= ran < 100, ran  # 400 asked; it stopped soon after the client left
    assert settled(lambda s: metric_value(s, "ray_sana_cancelled_total", APP, stage="denoiser")) > rows_before
    # The service is fine afterwards.
    assert httpx.post(f"{base_url}/v1/images/generations", json=BASE_BODY, timeout=120).status_code == 200


def test_jobs_survive_the_loss_of_a_gateway_replica(base_url, pipeline):
    """Eight jobs keep all eight runners (four per gateway) busy; one gateway replica is killed.
    Its jobs stop renewing their lease, are queued again and finish on the other replica, with
    the pixels they would have had."""
    import ray

    steps = 30
    bodies = [{**BASE_BODY, "seed": 300 + i, "num_inference_steps": steps} for i in range(8)]
    ids = [httpx.post(f"{base_url}/v1/images/jobs", json=b, timeout=60).json()["id"] for b in bodies]
    deadline = time.monotonic() + 120

    def record(job_id: str) -> dict | None:
        try:  # the proxy may still route a read to the dead replica for a moment
            answer = httpx.get(f"{base_url}/v1/images/jobs/{job_id}", timeout=30)
        except httpx.HTTPError:
            return None
        return answer.json() if answer.status_code == 200 else None

    while not all((r := record(i)) and r["status"] == "in_progress" for i in ids):
        assert time.monotonic() < deadline, "the eight jobs never all ran at once"
        time.sleep(0.05)
    gateways = [a for a in ray.util.list_named_actors(all_namespaces=True)
                if "SERVE_REPLICA" in a["name"] and f"{APP}#Gateway" in a["name"]]
    assert len(gateways) == 2
    ray.kill(ray.get_actor(gateways[0]["name"], namespace=gateways[0]["namespace"]), no_restart=True)
    final = {}
    while len(final) < len(ids):
        assert time.monotonic() < deadline, final
        for job_id in ids:
            if job_id not in final and (r := record(job_id)) and r["status"] not in ("queued", "in_progress"):
                final[job_id] = r
        time.sleep(0.1)
    assert all(r["status"] == "completed" for r in final.values()), final
    rerun = [(job_id, body) for job_id, body in zip(ids, bodies) if final[job_id]["attempts"] == 2]
    assert rerun, "no job was running on the killed replica"
    job_id, body = rerun[0]
    served = _png(httpx.get(final[job_id]["result"]["data"][0]["url"], timeout=30).content).astype(int)
    solo = pipeline.generate([GenerationRequest(body["prompt"], width=512, height=512, steps=steps,
                                                seed=body["seed"])])[0].images[0].astype(int)
    assert np.abs(served - solo).max() <= 1
