"""Admission from live figures (serve/gate/admission.py), the queue budget and the per-request deadline
in the generation service, and draining: on a fake clock and fake stages, no Ray."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from serve.api.app import build_api
from serve.api.deps import build_deps
from serve.config import AdmissionConfig
from serve.errors import DeadlineExceeded, Overloaded
from serve.gate.admission import Admission
from serve.generation.service import GenerationService
from serve.schemas import ImageGenerationRequest
from tests.unit.fakes import RecordingMetrics, app_config, fake_stages

URL = "/v1/images/generations"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _admission(**config) -> tuple[Admission, Clock, list]:
    clock, shed = Clock(), []
    settings = AdmissionConfig(**{"max_queue_wait_s": 10.0, "cold_start_images": 4, "min_samples": 3, **config})
    return Admission(settings, {}, lambda route, reason: shed.append((route, reason)), clock, lambda: 0.5), clock, shed


def _run(admission: Admission, clock: Clock, images: int, seconds: float) -> None:
    with admission.admit("r", images):
        clock.now += seconds


def test_a_cold_route_takes_a_bounded_amount_then_measures_its_throughput():
    admission, clock, shed = _admission()
    tickets = [admission.admit("r", 2), admission.admit("r", 2)]
    with pytest.raises(Overloaded) as refused:  # 4 images in flight: the cold-start bound
        admission.admit("r", 1)
    assert refused.value.retry_after_s >= 1 and shed == [("r", "cold_start")]
    for ticket in tickets:
        clock.now += 1.0
        ticket.finish(True)
    _run(admission, clock, 2, 1.0)
    # Three completions: 4 images after the first over 3 busy seconds (idle time does not count).
    clock.now += 50.0
    estimate = admission.estimate("r")
    assert estimate.throughput == pytest.approx(4 / 2.0) and estimate.wait_s == 0


def test_requests_past_the_queue_budget_are_refused_with_the_time_until_it_fits():
    admission, clock, shed = _admission(cold_start_images=100)
    for _ in range(4):
        _run(admission, clock, 1, 0.5)  # 2 images/s
    held = [admission.admit("r", 1) for _ in range(20)]  # 20 images ahead = 10 s at 2 images/s
    assert admission.estimate("r").wait_s == pytest.approx(10.0)
    held.append(admission.admit("r", 1))  # 10 s: within the budget
    with pytest.raises(Overloaded) as refused:  # 21 images ahead: 10.5 s
        admission.admit("r", 1)
    # Retry-After: the 0.5 s excess, plus the jitter's share (0.5 here) of the 10 s budget, rounded up.
    assert refused.value.status == 503 and refused.value.retry_after_s == 6 and "about 10 s" in refused.value.message
    assert shed == [("r", "estimate")]
    assert admission.admit("r", 4, shed=False)  # a queued job is counted, never refused
    for ticket in held:
        ticket.finish(False)  # failures free their place but say nothing of throughput
    assert admission.estimate("r").ahead_images == 4 and len(admission.loads["r"].done) == 4


def test_each_route_has_its_own_budget_and_a_hard_cap_and_draining_refuse_everything():
    admission, _, shed = _admission(max_inflight=2)
    admission.budgets = {"r": 10.0, "unbudgeted": None}
    first, second = admission.admit("unbudgeted", 50), admission.admit("r", 1)  # no budget: no estimate
    with pytest.raises(Overloaded):
        admission.admit("r", 1)
    first.finish(True)
    second.finish(True)
    admission.draining = True
    with pytest.raises(Overloaded) as refused:
        admission.admit("r", 1)
    assert "shutting down" in refused.value.message and refused.value.retry_after_s == 5
    assert [reason for _, reason in shed] == ["max_inflight", "draining"]


# --- in the generation service ----------------------------------------------------------------------


def _service(**admission):
    config = app_config(gateway__admission={"max_queue_wait_s": 0.3, **admission})
    stages = fake_stages(config.routes)
    metrics = RecordingMetrics()
    return GenerationService(config, stages.handles(), metrics), stages, metrics


def _request(**body) -> ImageGenerationRequest:
    return ImageGenerationRequest(**{"prompt": "a red fox", "size": "128x96", "num_inference_steps": 4, **body})


def test_a_request_still_queued_past_its_budget_is_dropped_with_503_and_its_work_cancelled():
    service, stages, metrics = _service()
    denoiser = stages.routes["r1k"][0]
    denoiser.queue_delay_s = 2.0  # the batch does not start within the 0.3 s budget

    async def go():
        with pytest.raises(Overloaded) as dropped:
            await service.generate(_request(), request_id="queued")
        return dropped.value

    error = asyncio.run(go())
    assert error.status == 503 and "within 0.3 s" in error.message and error.retry_after_s >= 1
    assert ("r1k", "queue_timeout") in metrics.shed_reasons and metrics.cancelled == 1
    assert [r for name, r in denoiser.responses if name == "denoise"][-1].cancelled
    assert denoiser.steps_run == 0 and service.admission.inflight == 0


def test_a_request_that_started_within_its_budget_runs_to_the_end():
    service, stages, metrics = _service()
    stages.routes["r1k"][0].delay_s = 0.8  # longer than the budget, but out of the queue at step 1
    result = asyncio.run(service.generate(_request(), request_id="slow"))
    assert result.width == 128 and not metrics.shed_reasons


def test_a_request_past_its_own_timeout_gets_504_and_its_denoising_stops():
    service, stages, metrics = _service(max_queue_wait_s=None)
    denoiser = stages.routes["r1k"][0]
    denoiser.delay_s = 2.0

    async def go():
        with pytest.raises(DeadlineExceeded) as late:
            await service.generate(_request(num_inference_steps=20), request_id="late", timeout_s=0.3)
        await asyncio.sleep(0.3)
        return late.value

    error = asyncio.run(go())
    assert error.status == 504 and "X-Request-Timeout of 0.3 s" in error.message
    assert denoiser.steps_run < 10 and metrics.cancelled == 1


def _call(app, *requests):
    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            return [await client.post(URL, **kwargs) for kwargs in requests]

    return asyncio.run(go())


def test_over_http_the_timeout_header_is_checked_and_504_and_503_are_json():
    config = app_config()
    stages = fake_stages(config.routes)
    deps = build_deps(config, stages.handles(), RecordingMetrics())
    stages.routes["r1k"][0].delay_s = 2.0
    body = {"prompt": "a fox", "size": "64x64", "num_inference_steps": 10}
    late, bad, zero = _call(build_api(deps), {"json": body, "headers": {"X-Request-Timeout": "0.2"}},
                            {"json": body, "headers": {"X-Request-Timeout": "soon"}},
                            {"json": body, "headers": {"X-Request-Timeout": "0"}})
    assert late.status_code == 504 and late.json()["error"]["type"] == "timeout_error"
    for answer in (bad, zero):
        assert answer.status_code == 400 and answer.json()["error"]["param"] == "X-Request-Timeout"
    too_long = _call(build_api(deps), {"json": body, "headers": {"X-Request-Timeout": "601"}})[0]
    assert too_long.status_code == 400
    deps.service.admission.draining = True
    stream = {**body, "stream": True}
    for answer in _call(build_api(deps), {"json": body}, {"json": stream}):  # streaming refuses before streaming
        assert answer.status_code == 503 and answer.headers["retry-after"] == "5"
        assert answer.json()["error"]["type"] == "overloaded_error"
