"""A Denoiser replica dies while requests are in flight: no request is lost."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from models.pipeline import GenerationRequest
from tests.reference import pixel_diff
from tests.serve_harness import decode_images, deployed, local_args, settled_metric

APP = "sana-faults"


@pytest.fixture(scope="module")
def base_url(ray_serve, tiny_checkpoint):
    args = local_args(
        str(tiny_checkpoint),
        denoiser={"batching": {"max_batch_size": 4, "batch_wait_timeout_s": 0.05},
                  "deployment": {"num_replicas": 2}},
    )
    # This is about faults, not load: 32 images at once must all be taken (no admission shedding).
    args["gateway"]["admission"] = {"max_queue_wait_s": None}
    with deployed(args, APP, "/"):
        yield ray_serve


def _denoiser_replicas():
    import ray

    return [
        actor for actor in ray.util.list_named_actors(all_namespaces=True)
        if "SERVE_REPLICA" in actor["name"] and f"{APP}#Denoiser" in actor["name"]
    ]


def _busiest_once_both_busy(actors, timeout_s: float = 60.0):
    """Wait until every replica has requests in flight; return the one with the most.

    The victim must hold at least two: one may be finishing at the moment of the kill, the other
    is then surely still inside the replica.
    """
    import ray

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ongoing = ray.get([actor.get_num_ongoing_requests.remote() for actor in actors])
        if min(ongoing) >= 1 and max(ongoing) >= 2:
            return actors[ongoing.index(max(ongoing))]
        time.sleep(0.05)
    raise AssertionError(f"replicas never all busy: {ongoing}")


def test_killing_a_denoiser_replica_mid_flight_loses_no_request(base_url, pipeline):
    import ray

    replicas = _denoiser_replicas()
    assert len(replicas) == 2, replicas
    # Enough work that both replicas are still denoising when one is killed: 4 batches each.
    bodies = [{"prompt": f"a fox number {i}", "size": "1024x1024", "seed": 100 + i, "n": 4,
               "num_inference_steps": 40} for i in range(8)]
    with ThreadPoolExecutor(len(bodies)) as pool:
        futures = [pool.submit(httpx.post, f"{base_url}/v1/images/generations", json=b, timeout=300)
                   for b in bodies]
        actors = [ray.get_actor(r["name"], namespace=r["namespace"]) for r in replicas]
        victim = _busiest_once_both_busy(actors)
        ray.kill(victim, no_restart=True)
        responses = [f.result() for f in futures]

    assert [r.status_code for r in responses] == [200] * len(bodies), [r.text[:300] for r in responses]
    # Requests the victim held either reached the gateway as a replica death (retried there and
    # counted in ray_sana_stage_retries) or were re-routed by Serve itself before starting; none
    # may be lost, and no request is retried more often than configured (once).
    retries = settled_metric("ray_sana_stage_retries_total", APP, route="sana-shapes")
    assert retries <= len(bodies)
    for body, response in zip(bodies, responses):
        solo = pipeline.generate([GenerationRequest(body["prompt"], width=1024, height=1024, steps=40,
                                                    num_images=4, seed=body["seed"])])[0]
        assert pixel_diff(decode_images(response.json()), solo.images) <= 1


def test_replica_deaths_are_recognized_through_every_wrapper():
    from ray.exceptions import ActorDiedError, RayTaskError
    from ray.serve.exceptions import RayServeException

    from serve.errors import is_replica_failure, to_api_error

    died = ActorDiedError()
    upstream = RayServeException("Request to deployment 'Decoder' failed because an upstream actor died")
    upstream.__cause__ = died
    assert is_replica_failure(died) and is_replica_failure(upstream)
    assert not is_replica_failure(ValueError("a bug"))
    assert not is_replica_failure(RayServeException("something else"))
    # After the retries are spent the client gets a 503 with Retry-After, not a 500.
    error = to_api_error(upstream)
    assert error.status == 503 and error.retry_after_s
    wrapped = RayTaskError("denoise", "traceback", died)
    assert is_replica_failure(wrapped)
