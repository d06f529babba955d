"""The 4K route: size routing, parity with the in-process pipeline, no-capacity 503s."""

from __future__ import annotations

import time

import httpx
import numpy as np
import pytest

from models.pipeline import GenerationRequest, SanaInProcessPipeline
from tests.serve_harness import decode_images, deployed, local_args

APP = "sana-4k"
URL = "/v1/images/generations"


@pytest.fixture(scope="module")
def base_url(ray_serve, tiny_checkpoint, tiny_4k_checkpoint):
    with deployed(local_args(str(tiny_checkpoint), str(tiny_4k_checkpoint)), APP, "/"):
        yield ray_serve


def test_4k_request_without_model_goes_to_the_4k_route_and_matches_in_process(base_url, tiny_4k_checkpoint):
    import torch

    body = {"prompt": "a mountain lake, ultra detailed", "size": "4096x3072", "seed": 5, "num_inference_steps": 2}
    response = httpx.post(f"{base_url}{URL}", json=body, timeout=600)
    assert response.status_code == 200, response.text
    payload = response.json()
    assert payload["model"] == "sana-shapes-4k" and payload["size"] == "4096x3072"
    pipeline = SanaInProcessPipeline.from_pretrained(str(tiny_4k_checkpoint), device="cpu")
    assert pipeline.resolution == 4096 and torch.get_num_threads() >= 1
    expected = pipeline.generate([GenerationRequest(body["prompt"], width=4096, height=3072, steps=2, seed=5)])[0]
    assert pipeline.decoder.uses_tiling(torch.zeros(1, 32, 96, 128))  # this size decodes in tiles
    assert np.array_equal(decode_images(payload), expected.images)


def test_small_sizes_stay_on_the_default_route_and_unserved_sizes_are_400(base_url):
    small = httpx.post(f"{base_url}{URL}", json={"prompt": "a cat", "size": "1024x1024", "num_inference_steps": 1},
                       timeout=120)
    assert small.status_code == 200 and small.json()["model"] == "sana-shapes"
    forced = httpx.post(f"{base_url}{URL}", json={"prompt": "a cat", "size": "4096x4096", "model": "sana-shapes"},
                        timeout=60)
    assert forced.status_code == 400 and forced.json()["error"]["param"] == "size"
    assert "sana-shapes" in forced.json()["error"]["message"]
    too_big = httpx.post(f"{base_url}{URL}", json={"prompt": "a cat", "size": "8192x8192"}, timeout=60)
    assert too_big.status_code == 400 and too_big.json()["error"]["param"] == "size"
    models = {m["id"]: m for m in httpx.get(f"{base_url}/v1/models", timeout=60).json()["data"]}
    assert models["sana-shapes-4k"]["resolution"] == 4096 and models["sana-shapes"]["default"]


NO_CAPACITY_APP = "sana-4k-nowhere"


def test_without_a_node_for_the_4k_route_it_answers_503_in_time_and_1k_keeps_working(
    ray_serve, tiny_checkpoint, tiny_4k_checkpoint
):
    from ray import serve

    from serve.app import build_app

    args = local_args(str(tiny_checkpoint), str(tiny_4k_checkpoint))
    # A resource no node has: the 4K replicas can never be placed.
    args["routes"]["sana-shapes-4k"]["placement"] = {"resources": {"huge_memory_for_tests": 1}}
    args["routes"]["sana-shapes-4k"]["capacity_wait_s"] = 2
    serve._run(build_app(args), name=NO_CAPACITY_APP, route_prefix="/nowhere", _blocking=False)
    try:
        url = f"{ray_serve}/nowhere"
        _wait_until_serving(url)
        started = time.monotonic()
        response = httpx.post(f"{url}{URL}", json={"prompt": "a cat", "size": "4096x4096"}, timeout=60)
        elapsed = time.monotonic() - started
        assert response.status_code == 503, response.text
        assert int(response.headers["retry-after"]) >= 1
        assert "sana-shapes-4k" in response.json()["error"]["message"]
        assert elapsed < 30, "must answer near the configured wait, never hang"
        small = httpx.post(f"{url}{URL}", json={"prompt": "a cat", "size": "512x512", "num_inference_steps": 1},
                           timeout=120)
        assert small.status_code == 200, small.text
    finally:
        serve.delete(NO_CAPACITY_APP, _blocking=False)


def _wait_until_serving(url: str, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=5).status_code == 200:
                response = httpx.post(f"{url}{URL}", json={"prompt": "x", "size": "512x512", "num_inference_steps": 1},
                                      timeout=60)
                if response.status_code == 200:
                    return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise AssertionError(f"{url} never served")
