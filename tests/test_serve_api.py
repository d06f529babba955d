"""The served pipeline over real HTTP on 127.0.0.1: pixels, batching, API shape."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from models.pipeline import GenerationRequest
from tests.reference import pixel_diff, reference_images
from tests.serve_harness import decode_images, deployed, local_args

APP = "sana-api"


@pytest.fixture(scope="module")
def base_url(ray_serve, tiny_checkpoint):
    # A long batch window so that concurrent requests land in one Denoiser batch.
    args = local_args(str(tiny_checkpoint), denoiser={"batching": {"max_batch_size": 8, "batch_wait_timeout_s": 0.5}})
    with deployed(args, APP, "/"):
        yield ray_serve


def _post(base_url: str, body: dict, timeout: float = 120) -> httpx.Response:
    return httpx.post(f"{base_url}/v1/images/generations", json=body, timeout=timeout)


SERVED_CASES = [
    dict(prompt="a red fox in the snow", size="1024x1024", seed=1, steps=4),
    dict(prompt="a lighthouse", size="1000x600", seed=2, steps=3, n=2, negative_prompt="fog"),
    dict(prompt="一只猫 🐱", size="768x1024", seed=3, steps=2, guidance_scale=1.0),
]


@pytest.mark.parametrize("case", SERVED_CASES, ids=lambda c: c["size"])
def test_served_pixels_equal_diffusers(base_url, reference_pipeline, case):
    body = {
        "prompt": case["prompt"],
        "size": case["size"],
        "seed": case["seed"],
        "num_inference_steps": case["steps"],
        "n": case.get("n", 1),
        "negative_prompt": case.get("negative_prompt", ""),
        "guidance_scale": case.get("guidance_scale", 4.5),
    }
    response = _post(base_url, body)
    assert response.status_code == 200, response.text
    payload = response.json()
    width, height = map(int, case["size"].split("x"))
    expected = reference_images(
        reference_pipeline,
        case["prompt"],
        width=width,
        height=height,
        negative_prompt=case.get("negative_prompt", ""),
        num_images=case.get("n", 1),
        steps=case["steps"],
        guidance_scale=case.get("guidance_scale", 4.5),
        seed=case["seed"],
    )
    assert np.array_equal(decode_images(payload), expected)
    assert payload["seed"] == case["seed"] and payload["size"] == case["size"]
    assert [d["revised_prompt"] for d in payload["data"]] == [case["prompt"]] * case.get("n", 1)


def test_response_shape_timings_and_server_chosen_seed(base_url):
    response = _post(base_url, {"prompt": "a cat", "size": "512x512", "num_inference_steps": 1,
                                "output_format": "jpeg"})
    assert response.status_code == 200, response.text
    payload = response.json()
    assert isinstance(payload["seed"], int) and payload["model"] == "sana-shapes"
    assert payload["created"] > 0 and payload["output_format"] == "jpeg"
    assert payload["data"][0]["b64_json"].startswith("/9j/")  # JPEG magic, base64
    timings = payload["timings_ms"]
    assert set(timings) == {"queue", "encode", "denoise", "decode", "image_check", "image_encode", "total"}
    assert timings["total"] >= timings["denoise"] > 0
    server_timing = response.headers["server-timing"]
    assert "denoise;dur=" in server_timing and "queue;dur=" in server_timing
    assert response.headers["x-request-id"]


def test_webp_and_models_and_health(base_url):
    response = _post(base_url, {"prompt": "a cat", "size": "512x512", "num_inference_steps": 1, "seed": 5,
                                "output_format": "webp"})
    assert response.status_code == 200
    assert decode_images(response.json()).shape == (1, 512, 512, 3)
    models = httpx.get(f"{base_url}/v1/models", timeout=30).json()
    assert models["object"] == "list"
    assert [(m["id"], m["resolution"], m["default"]) for m in models["data"]] == [("sana-shapes", 1024, True)]
    assert httpx.get(f"{base_url}/healthz", timeout=30).json()["status"] == "ok"
    spec = httpx.get(f"{base_url}/openapi.json", timeout=30).json()
    assert "prompt" in str(spec["paths"]["/v1/images/generations"]["post"]["requestBody"])
    assert httpx.get(f"{base_url}/docs", timeout=30).status_code == 200


def test_bad_requests_get_json_errors_naming_the_field(base_url):
    cases = [
        ({"prompt": "x", "size": "12x12"}, 400, "size"),
        ({"prompt": "x", "n": 0}, 400, "n"),
        ({"prompt": "x", "model": "nope"}, 404, "model"),
        ({"prompt": "x", "steps": 3}, 400, "steps"),
        ({"prompt": 5}, 400, "prompt"),
        ({"size": "512x512"}, 400, "prompt"),
    ]
    for body, status, param in cases:
        response = _post(base_url, body)
        assert response.status_code == status, (body, response.text)
        assert response.json()["error"]["param"] == param
    response = httpx.post(f"{base_url}/v1/images/generations", content=b"{not json", timeout=30,
                          headers={"content-type": "application/json"})
    assert response.status_code == 400 and "JSON" in response.json()["error"]["message"]


MIXED = [
    dict(prompt="a red fox", size="512x512", seed=11),
    dict(prompt="a blue whale", size="512x512", seed=12, n=2),
    dict(prompt="a green frog", size="640x480", seed=13),
    dict(prompt="a yellow bird", size="512x512", seed=14, guidance_scale=1.0),
    dict(prompt="a city at night", size="1024x1024", seed=15, negative_prompt="blur"),
    dict(prompt="a red fox", size="512x512", seed=16),
    dict(prompt="一座山", size="768x1024", seed=17),
    dict(prompt="a bowl of soup", size="640x480", seed=18, guidance_scale=3.0),
]


def test_eight_concurrent_mixed_requests_equal_their_solo_results(base_url, pipeline):
    bodies = [{**c, "num_inference_steps": 3} for c in MIXED]
    with ThreadPoolExecutor(len(bodies)) as pool:
        responses = list(pool.map(lambda b: _post(base_url, b, timeout=300), bodies))
    assert [r.status_code for r in responses] == [200] * len(bodies), [r.text[:200] for r in responses]
    batch_sizes = [r.json()["batch_size"] for r in responses]
    assert max(batch_sizes) > 1, batch_sizes
    for body, response in zip(bodies, responses):
        width, height = map(int, body["size"].split("x"))
        solo = pipeline.generate([GenerationRequest(
            prompt=body["prompt"], negative_prompt=body.get("negative_prompt", ""), width=width, height=height,
            num_images=body.get("n", 1), steps=3, guidance_scale=body.get("guidance_scale", 4.5), seed=body["seed"],
        )])[0]
        assert pixel_diff(decode_images(response.json()), solo.images) <= 1, body


@pytest.mark.parametrize("output_format", ["png", "jpeg"])
def test_served_files_are_marked_and_carry_the_parameters(base_url, output_format):
    import base64

    from serve.output.provenance import DIGITAL_SOURCE_TYPE
    from tests.unit.test_provenance import read_back

    body = {"prompt": "a red fox", "size": "512x512", "seed": 5, "num_inference_steps": 2, "negative_prompt": "fog",
            "output_format": output_format}
    response = _post(base_url, body)
    assert response.status_code == 200, response.text
    xmp, parameters = read_back(base64.b64decode(response.json()["data"][0]["b64_json"]))
    assert DIGITAL_SOURCE_TYPE in xmp
    assert parameters.splitlines() == [
        "a red fox", "Negative prompt: fog",
        f"Steps: 2, Sampler: flow-dpm-solver, CFG scale: 4.5, Seed: 5, Size: 512x512, Model: sana-shapes, "
        f"Version: {parameters.rsplit('Version: ', 1)[1]}"]
