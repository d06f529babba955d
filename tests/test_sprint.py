"""SANA-Sprint (SCM sampler, embedded guidance) against diffusers' SanaSprintPipeline on the tiny
Sprint checkpoint, in-process: exact for solo requests, within 1 level when batched."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from models.pipeline import GenerationRequest
from models.registry import SCM
from tests.reference import assert_solo_matches, pixel_diff, sprint_reference_images

CASES = {
    f"{steps}-steps-guidance-{guidance}": dict(prompt="a red fox in the snow", width=1024, height=1024,
                                               steps=steps, guidance_scale=guidance, seed=steps)
    for steps in (1, 2, 4) for guidance in (4.5, 7.0)
}
CASES["binned-and-cropped"] = dict(prompt="a lighthouse at dusk", width=1000, height=600, steps=2, seed=4)
CASES["two-images"] = dict(prompt="二只猫 🐱", width=768, height=1024, num_images=2, steps=2, seed=5)


def test_the_checkpoint_is_a_sprint_one(sprint_pipeline):
    assert sprint_pipeline.denoiser.sampler is SCM
    assert sprint_pipeline.defaults.steps == 2  # SanaSprintPipeline's default
    assert sprint_pipeline.denoiser.transformer.config.guidance_embeds


@pytest.mark.parametrize("name", list(CASES))
def test_solo_request_matches_diffusers_sprint_exactly(name, sprint_pipeline, sprint_reference):
    case = CASES[name]
    assert_solo_matches(sprint_pipeline, case, sprint_reference_images(sprint_reference, **case))


def test_guidance_and_steps_change_pixels(sprint_pipeline):
    """Guard: parity would be meaningless if the embedded guidance or the step count were ignored."""
    base = dict(prompt="a red fox", width=1024, height=1024, seed=1)
    a = sprint_pipeline.generate([GenerationRequest(steps=2, guidance_scale=4.5, **base)])[0].images
    b = sprint_pipeline.generate([GenerationRequest(steps=2, guidance_scale=7.0, **base)])[0].images
    c = sprint_pipeline.generate([GenerationRequest(steps=4, guidance_scale=4.5, **base)])[0].images
    assert pixel_diff(a, b) > 5 and pixel_diff(a, c) > 5


def test_requests_with_different_guidance_share_a_batch_and_keep_their_pixels(sprint_pipeline, sprint_reference):
    requests = [
        GenerationRequest(prompt="a red fox", width=1024, height=1024, steps=2, guidance_scale=4.5, seed=11),
        GenerationRequest(prompt="a blue whale", width=1024, height=1024, num_images=2, steps=2, guidance_scale=7.0,
                          seed=12, negative_prompt="ignored by Sprint"),
    ]
    results = sprint_pipeline.generate(requests)
    for request, result in zip(requests, results):
        expected = sprint_reference_images(sprint_reference, request.prompt, width=1024, height=1024,
                                           num_images=request.num_images, steps=2,
                                           guidance_scale=request.guidance_scale, seed=request.seed)
        assert pixel_diff(result.images, expected) <= 1


# --- served: `"model": "sprint"` through the real app over HTTP ---------------------------------

SERVED = [(steps, guidance) for steps in (1, 2, 4) for guidance in (4.5, 7.0)]


@pytest.fixture(scope="module")
def sprint_url(ray_serve, tiny_checkpoint, sprint_checkpoint):
    from serve.local_app import local_app_args
    from tests.serve_harness import deployed

    args = local_app_args(str(tiny_checkpoint), checkpoint_sprint=str(sprint_checkpoint))
    # A batch window long enough that concurrent requests share a Denoiser batch.
    args["routes"]["sprint"]["denoiser"]["batching"] = {"max_batch_size": 8, "batch_wait_timeout_s": 0.5}
    with deployed(args, "sana-sprint", "/sprint"):
        yield f"{ray_serve}/sprint"


def _generate(url: str, **body) -> np.ndarray:
    import httpx

    from tests.serve_harness import decode_images

    response = httpx.post(f"{url}/v1/images/generations", json={"model": "sprint", **body}, timeout=120)
    assert response.status_code == 200, response.text
    return decode_images(response.json())


@pytest.mark.parametrize("steps, guidance", SERVED)
def test_served_sprint_pixels_equal_diffusers(sprint_url, sprint_reference, steps, guidance):
    served = _generate(sprint_url, prompt="a red fox", size="1000x600", seed=steps, num_inference_steps=steps,
                       guidance_scale=guidance, negative_prompt="ignored: Sprint has no negative prompt")
    expected = sprint_reference_images(sprint_reference, "a red fox", width=1000, height=600, steps=steps,
                                       guidance_scale=guidance, seed=steps)
    assert np.array_equal(served, expected), f"max diff {pixel_diff(served, expected)}"


def test_the_sprint_card_and_its_default_of_two_steps(sprint_url, sprint_reference):
    import httpx

    cards = {card["id"]: card for card in httpx.get(f"{sprint_url}/v1/models", timeout=30).json()["data"]}
    assert cards["sprint"]["defaults"] == {"num_inference_steps": 2, "guidance_scale": 4.5}
    assert cards["sana-shapes"]["defaults"]["num_inference_steps"] == 20
    served = _generate(sprint_url, prompt="a blue star", size="1024x1024", seed=21)
    expected = sprint_reference_images(sprint_reference, "a blue star", width=1024, height=1024, steps=2, seed=21)
    assert np.array_equal(served, expected)


def test_concurrent_sprint_requests_with_different_guidance_share_a_batch(sprint_url, sprint_reference):
    import httpx

    from tests.serve_harness import decode_images

    bodies = [dict(prompt="a red fox", seed=31, guidance_scale=4.5), dict(prompt="a green tree", seed=32, n=2,
                                                                           guidance_scale=7.0)]

    def post(body):
        return httpx.post(f"{sprint_url}/v1/images/generations",
                          json={"model": "sprint", "size": "1024x1024", **body}, timeout=120).json()

    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(post, bodies))
    assert [answer["batch_size"] for answer in answers] == [3, 3]  # one batch: 1 + 2 images
    for body, answer in zip(bodies, answers):
        expected = sprint_reference_images(sprint_reference, body["prompt"], width=1024, height=1024,
                                           num_images=body.get("n", 1), guidance_scale=body["guidance_scale"],
                                           seed=body["seed"])
        assert pixel_diff(decode_images(answer), expected) <= 1
