"""The generation service with fake stage handles: routing, capacity, safety order, retries,
timings, events and cancellation. No Ray, no HTTP."""

from __future__ import annotations

import asyncio

import pytest
from ray.exceptions import ActorDiedError

from models.binning import bin_size
from serve.errors import BadRequest, Cancelled, ModelNotFound, Overloaded, StageFailed
from serve.generation import GenerationService
from serve.schemas import ImageGenerationRequest
from tests.unit.fakes import RecordingMetrics, app_config, fake_stages

HEART = "\u2764\ufe0f"


def _service(config=None, scores=None):
    config = config or app_config()
    stages = fake_stages(config.routes, scores)
    metrics = RecordingMetrics()
    return GenerationService(config, stages.handles(), metrics), stages, metrics


def _generate(service, **body):
    request = ImageGenerationRequest(**{"prompt": "a red fox", "size": "128x96", "num_inference_steps": 2, **body})
    return asyncio.run(service.generate(request, request_id="req-1"))


def test_a_request_runs_encode_denoise_decode_and_returns_encoded_images():
    service, stages, metrics = _service()
    result = _generate(service, n=2, seed=7, guidance_scale=3.0, negative_prompt="fog")
    assert (result.route, result.width, result.height, result.seed) == ("r1k", 128, 96, 7)
    assert len(result.images) == 2 and all(image.startswith(b"\x89PNG") for image in result.images)
    assert stages.calls("text_encoder", "encode") == [("a red fox", True), ("fog", False)]
    (spec, prompt, negative), = [args for args in stages.calls("denoiser:r1k", "denoise")]
    assert (spec.width, spec.height) == bin_size(128, 96, 1024)  # denoised at the bin...
    assert stages.calls("decoder:r1k", "decode")[0][1:] == (128, 96)  # ...decoded at the asked size
    assert (spec.seed, spec.num_images, spec.steps, spec.guidance_scale) == (7, 2, 2, 3.0)
    assert metrics.done[0][0] == "r1k" and metrics.done[0][2] == 2
    assert result.batch_size == 2 and result.nodes == {"encode": "node-a", "denoise": "node-a", "decode": "node-a"}


def test_defaults_and_server_chosen_seed():
    service, stages, _ = _service()
    result = _generate(service, size=None, num_inference_steps=None)
    assert (result.width, result.height) == (1024, 1024)  # the route's native size
    spec = stages.calls("denoiser:r1k", "denoise")[0][0]
    assert spec.steps == 20 and spec.guidance_scale == 4.5 and spec.seed == result.seed >= 0


def test_no_negative_prompt_is_encoded_without_guidance():
    service, stages, _ = _service()
    _generate(service, guidance_scale=1.0, negative_prompt="fog")
    assert stages.calls("text_encoder", "encode") == [("a red fox", True)]
    assert stages.calls("denoiser:r1k", "denoise")[0][2] is None


@pytest.mark.parametrize("body, route", [
    ({"size": "2048x2048"}, "r1k"),
    ({"size": "4096x2048"}, "r4k"),
    ({"size": "2049x1024"}, "r4k"),
    ({"size": "1024x1024", "model": "r4k"}, "r4k"),
])
def test_routing_by_size_and_model(body, route):
    service, _, _ = _service()
    assert _generate(service, **body).route == route


@pytest.mark.parametrize("body, error, param", [
    ({"model": "dall-e"}, ModelNotFound, "model"),
    ({"size": "4096x4096", "model": "r1k"}, BadRequest, "size"),  # past the route's max_side
    ({"size": "4096x4096", "n": 2}, BadRequest, "n"),  # the 4K route takes one image
])
def test_route_limits_are_400_or_404_naming_the_field(body, error, param):
    service, stages, _ = _service()
    with pytest.raises(error) as raised:
        _generate(service, **body)
    assert raised.value.param == param and not stages.log


def test_a_route_without_capacity_answers_503_within_its_wait_and_runs_nothing():
    service, stages, _ = _service()
    denoiser, _ = stages.routes["r4k"]
    denoiser.ping_delay_s = 5.0
    with pytest.raises(Overloaded) as raised:
        _generate(service, size="4096x4096")
    assert raised.value.status == 503 and raised.value.retry_after_s >= 1 and "r4k" in raised.value.message
    assert all(response.cancelled for name, response in denoiser.responses if name == "ping")
    assert not stages.calls("denoiser:r4k", "denoise")


def test_word_filter_runs_before_the_classifier_which_runs_beside_the_encoder():
    service, stages, metrics = _service(scores={f"a {HEART} over the lake": 0.1})
    result = _generate(service, prompt="a dragon over the lake")
    assert result.revised_prompt == f"a {HEART} over the lake"
    kinds = [(kind, method) for kind, method, _ in stages.log]
    # The encoding starts before the classifier's answer is awaited, on the filtered prompt.
    assert kinds[:2] == [("text_encoder", "encode"), ("classifier", "score")]
    assert stages.calls("classifier", "score") == [(f"a {HEART} over the lake",)]
    assert metrics.replacements == ["word_filter"]


def test_a_flagged_prompt_is_replaced_and_the_replacement_encoded():
    service, stages, metrics = _service(scores={"a red fox": 0.9})
    result = _generate(service)
    assert result.revised_prompt == "A red heart."
    encodes = stages.calls("text_encoder", "encode")
    assert encodes[:2] == [("a red fox", True), ("A red heart.", True)]
    first_encode = next(r for name, r in stages.text_encoder.responses if name == "encode")
    assert first_encode.cancelled  # the flagged prompt's encoding is not waited for
    assert stages.calls("denoiser:r1k", "denoise")[0][1].task.result().prompt == "A red heart."
    assert metrics.replacements == ["classifier"]


def test_a_replica_death_is_retried_once_then_answers_503():
    service, stages, metrics = _service()
    denoiser, _ = stages.routes["r1k"]
    denoiser.failures = [ActorDiedError()]
    assert _generate(service).route == "r1k"
    assert metrics.retries == ["r1k"]
    assert len(stages.calls("denoiser:r1k", "denoise")) == 2
    # The prompt is encoded again for the retry (its first response may have died with the call).
    assert stages.calls("text_encoder", "encode").count(("a red fox", True)) == 2

    denoiser.failures = [ActorDiedError(), ActorDiedError()]
    with pytest.raises(StageFailed) as raised:
        _generate(service)
    assert raised.value.status == 503 and raised.value.retry_after_s


def test_a_bug_in_a_stage_is_not_retried_and_is_a_500():
    service, stages, metrics = _service()
    stages.routes["r1k"][0].failures = [ValueError("a bug")]
    with pytest.raises(Exception) as raised:
        _generate(service)
    assert raised.value.status == 500 and "a bug" not in raised.value.message
    assert metrics.retries == [] and not metrics.done


def test_timings_add_up_and_are_recorded():
    service, stages, metrics = _service()
    stages.routes["r1k"][0].delay_s = 0.05  # longer than the stage compute the fakes report
    timings = _generate(service).timings
    assert (timings.encode, timings.denoise, timings.decode) == (3.0, 20.0, 5.0)
    assert timings.queue >= 0 and timings.image_encode > 0
    assert timings.total == pytest.approx(timings.queue + 28.0 + timings.image_encode, abs=0.01)
    assert metrics.done[0][1] == timings.model_dump()


def test_events_arrive_in_order_and_cancel_stops_the_stage_call():
    service, stages, _ = _service()
    events = []
    _generate_with = ImageGenerationRequest(prompt="a fox", size="64x64", num_inference_steps=1)
    asyncio.run(service.generate(_generate_with, request_id="r", on_event=events.append))
    assert [e.kind for e in events] == ["routed", "encoding", "denoising", "encoding_images", "done"]
    assert all(e.request_id == "r" for e in events) and events[-1].detail["timings_ms"]["total"] > 0

    stages.routes["r1k"][0].delay_s = 5.0

    async def cancelled_midway():
        cancel = asyncio.Event()

        def on_event(event):
            if event.kind == "denoising":
                asyncio.get_running_loop().call_later(0.05, cancel.set)

        await service.generate(_generate_with, request_id="r", on_event=on_event, cancel=cancel)

    with pytest.raises(Cancelled):
        asyncio.run(cancelled_midway())
    decode = [r for name, r in stages.routes["r1k"][1].responses if name == "decode"][-1]
    denoise = [r for name, r in stages.routes["r1k"][0].responses if name == "denoise"][-1]
    assert decode.cancelled and denoise.cancelled


def test_models_lists_routes_with_their_resolution():
    service, stages, _ = _service()
    models = asyncio.run(service.models())
    assert [(m.route, m.resolution, m.default) for m in models] == [("r1k", 1024, True), ("r4k", 4096, False)]
    assert not stages.log  # known from the config: no stage is asked


def test_a_checkpoint_the_config_cannot_place_asks_its_denoiser_once():
    config = app_config(routes__r1k__checkpoint="some-org/unknown-sana")
    service, stages, _ = _service(config)
    assert _generate(service, size=None).width == 1024
    _generate(service, size=None)
    assert len(stages.calls("denoiser:r1k", "resolution")) == 1
