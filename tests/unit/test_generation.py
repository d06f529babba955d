"""The generation service with fake stage handles: routing, capacity, safety order, retries,
timings, events and cancellation. No Ray, no HTTP."""

from __future__ import annotations

import asyncio
import io

import numpy as np
import pytest
from PIL import Image
from ray.exceptions import ActorDiedError

from models.binning import bin_size
from serve.errors import BadRequest, Cancelled, ModelNotFound, Overloaded, StageFailed
from serve.generation.service import GenerationService
from serve.generation.stage_calls import preview_steps
from serve.schemas import ImageGenerationRequest
from tests.unit.fakes import RecordingMetrics, app_config, fake_stages

HEART = "\u2764\ufe0f"


def _service(config=None, scores=None):
    config = config or app_config()
    stages = fake_stages(config.routes, scores, image_checker=config.safety.image_checker.enabled)
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


def test_events_arrive_in_order_with_every_step():
    service, _, metrics = _service()
    events = []
    request = ImageGenerationRequest(prompt="a fox", size="64x64", num_inference_steps=3)
    asyncio.run(service.generate(request, request_id="r", on_event=events.append))
    assert [e.kind for e in events] == ["routed", "encoding", "denoising", "step", "step", "step", "decoding",
                                        "encoding_images", "done"]
    assert [(e.detail["step"], e.detail["total"]) for e in events if e.kind == "step"] == [(1, 3), (2, 3), (3, 3)]
    assert all(e.request_id == "r" for e in events) and events[-1].detail["timings_ms"]["total"] > 0
    assert [route for route, _ in metrics.first_events] == ["r1k"]


def test_without_a_listener_the_denoiser_is_not_asked_for_progress():
    service, stages, _ = _service()
    asyncio.run(service.generate(ImageGenerationRequest(prompt="a fox", num_inference_steps=3), request_id="r"))
    spec = stages.calls("denoiser:r1k", "denoise")[0][0]
    assert not spec.progress and spec.preview_steps == ()


@pytest.mark.parametrize("steps, partial, expected", [(20, 1, (9,)), (20, 3, (4, 9, 14)), (2, 3, (0,)),
                                                      (1, 2, ()), (8, 0, ())])
def test_preview_steps_are_spread_before_the_last_step(steps, partial, expected):
    assert preview_steps(steps, partial) == expected


def test_partial_images_are_decoded_previews_emitted_before_the_result():
    service, stages, _ = _service()
    events = []
    request = ImageGenerationRequest(prompt="a fox", size="1024x512", n=2, num_inference_steps=8, partial_images=3)
    result = asyncio.run(service.generate(request, request_id="r", on_event=events.append))
    previews = [e for e in events if e.kind == "partial_image"]
    assert [e.detail["index"] for e in previews] == [0, 1, 2]
    assert all(e.detail["size"] == "512x256" and len(e.detail["images"]) == 2 for e in previews)
    # The fake decoder paints a preview with the step it came from: steps 1, 3, 5 (0-based).
    levels = [np.asarray(Image.open(io.BytesIO(e.detail["images"][0])))[0, 0, 0] for e in previews]
    assert levels == [1, 3, 5]
    kinds = [e.kind for e in events]
    assert kinds.index("decoding") > max(i for i, k in enumerate(kinds) if k == "partial_image")
    assert len(result.images) == 2


def test_partial_images_are_emitted_in_order_when_a_later_decode_finishes_first():
    service, stages, _ = _service()
    stages.routes["r1k"][1].preview_delay_s = {1: 0.2}  # the first preview (step 1) decodes slowest
    events = []
    request = ImageGenerationRequest(prompt="a fox", size="64x64", num_inference_steps=8, partial_images=3)
    asyncio.run(service.generate(request, request_id="r", on_event=events.append))
    previews = [e for e in events if e.kind == "partial_image"]
    assert [e.detail["index"] for e in previews] == [0, 1, 2]
    levels = [np.asarray(Image.open(io.BytesIO(e.detail["images"][0])))[0, 0, 0] for e in previews]
    assert levels == [1, 3, 5]


def test_cancel_stops_the_denoiser_stream_and_counts():
    service, stages, metrics = _service()
    stages.routes["r1k"][0].delay_s = 5.0
    request = ImageGenerationRequest(prompt="a fox", size="64x64", num_inference_steps=50)

    async def cancelled_midway():
        cancel = asyncio.Event()

        def on_event(event):
            if event.kind == "step" and event.detail["step"] == 2:
                cancel.set()

        await service.generate(request, request_id="r", on_event=on_event, cancel=cancel)

    with pytest.raises(Cancelled):
        asyncio.run(cancelled_midway())
    denoise = [r for name, r in stages.routes["r1k"][0].responses if name == "denoise"][-1]
    assert denoise.cancelled and stages.routes["r1k"][0].steps_run < 5
    assert not stages.calls("decoder:r1k", "decode") and metrics.cancelled == 1


def test_a_cancelled_caller_task_cancels_the_stage_calls():
    """What happens when Serve cancels the handler because its HTTP client went away."""
    service, stages, metrics = _service()
    stages.routes["r1k"][0].delay_s = 5.0

    async def abandoned():
        task = asyncio.ensure_future(service.generate(ImageGenerationRequest(prompt="a fox", size="64x64"),
                                                      request_id="r"))
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(abandoned())
    denoise = [r for name, r in stages.routes["r1k"][0].responses if name == "denoise"][-1]
    assert denoise.cancelled and metrics.cancelled == 1


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
    assert len(stages.calls("denoiser:r1k", "profile")) == 1


def test_a_sprint_route_defaults_to_two_steps_and_encodes_no_negative_prompt():
    service, stages, _ = _service(app_config(routes__r1k__checkpoint="materialized:tiny-sprint"))
    _generate(service, num_inference_steps=None, negative_prompt="fog", guidance_scale=6.0)
    assert stages.calls("text_encoder", "encode") == [("a red fox", True)]  # guidance is embedded
    (spec, _, negative), = stages.calls("denoiser:r1k", "denoise")
    assert spec.steps == 2 and spec.guidance_scale == 6.0 and negative is None
    card = next(info for info in asyncio.run(service.models()) if info.route == "r1k")
    assert (card.defaults.steps, card.defaults.guidance_scale) == (2, 4.5)


# --- the image safety check ---------------------------------------------------------------------
# The fake checker scores an image by its first pixel's red / 255: the fake decoder's images are
# grey 128 (score 0.502), its previews the step they were taken at (score ~0).


def _checked(threshold: float, action: str = "replace", on_error: str = "closed", **changes):
    config = app_config(safety__image_checker={"enabled": True, "threshold": threshold, "action": action,
                                               "on_error": on_error, "placeholder_rgb": [10, 20, 30]}, **changes)
    return _service(config)


def _pixels(image: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(image)).convert("RGB"))


def test_images_scoring_above_the_threshold_are_replaced_and_say_so():
    service, stages, metrics = _checked(0.5)
    result = _generate(service, n=2, seed=3)
    assert result.flagged == [True, True]
    assert all((_pixels(image) == (10, 20, 30)).all() for image in result.images)  # the placeholder
    assert _pixels(result.images[0]).shape == (96, 128, 3)  # at the requested size
    assert metrics.image_checks == [("r1k", "image", "flagged", 2)]
    assert len(stages.calls("image_checker", "check")) == 1  # one call for the request's images
    assert result.timings.image_check > 0


def test_images_below_the_threshold_pass_unchanged():
    service, _, metrics = _checked(0.6)
    result = _generate(service)
    assert result.flagged == [False] and (_pixels(result.images[0]) == 128).all()
    assert metrics.image_checks == [("r1k", "image", "passed", 1)]


def test_flag_only_returns_the_image_as_generated():
    service, _, metrics = _checked(0.5, action="flag")
    result = _generate(service)
    assert result.flagged == [True] and (_pixels(result.images[0]) == 128).all()
    assert metrics.image_checks == [("r1k", "image", "flagged", 1)]


def test_a_route_without_the_check_is_not_checked():
    service, stages, metrics = _checked(0.5, routes__r1k__image_check=False)
    result = _generate(service)
    assert result.flagged == [None] and not stages.calls("image_checker", "check") and not metrics.image_checks


def test_a_failing_checker_fails_closed_with_503_and_a_metric():
    service, stages, metrics = _checked(0.5)
    stages.image_checker.failure = RuntimeError("checker down")
    with pytest.raises(StageFailed) as caught:
        _generate(service)
    assert caught.value.status == 503 and caught.value.retry_after_s and "safety check" in caught.value.message
    assert metrics.image_checks == [("r1k", "image", "failed_closed", 1)] and not metrics.done


def test_a_checker_replica_that_dies_mid_call_is_retried():
    service, stages, metrics = _checked(0.6)
    stages.image_checker.failures = [ActorDiedError()]
    result = _generate(service)
    assert result.flagged == [False] and len(stages.calls("image_checker", "check")) == 2
    assert metrics.image_checks == [("r1k", "image", "passed", 1)]


def test_a_failing_checker_fails_open_when_configured_with_a_metric():
    service, stages, metrics = _checked(0.5, on_error="open")
    stages.image_checker.failure = RuntimeError("checker down")
    result = _generate(service)
    assert result.flagged == [None] and (_pixels(result.images[0]) == 128).all()
    assert metrics.image_checks == [("r1k", "image", "failed_open", 1)]


def test_previews_are_checked_too_and_a_failed_check_withholds_them():
    service, stages, metrics = _checked(0.5)
    events = []
    request = ImageGenerationRequest(prompt="a fox", size="128x96", num_inference_steps=4, partial_images=1)
    asyncio.run(service.generate(request, request_id="r", on_event=events.append))
    assert [e.kind for e in events].count("partial_image") == 1
    assert ("r1k", "preview", "passed", 1) in metrics.image_checks
    service, stages, metrics = _checked(0.5)
    stages.image_checker.failure = RuntimeError("checker down")
    events = []
    with pytest.raises(StageFailed):  # the images themselves cannot be checked either
        asyncio.run(service.generate(request, request_id="r", on_event=events.append))
    assert "partial_image" not in [e.kind for e in events]
    assert ("r1k", "preview", "failed_closed", 1) in metrics.image_checks


def test_the_checker_must_take_a_whole_request_in_one_batch():
    from serve.config import ConfigError

    with pytest.raises(ConfigError, match="image_checker.batching.max_batch_size"):
        app_config(safety__image_checker={"enabled": True, "batching": {"max_batch_size": 2}})
