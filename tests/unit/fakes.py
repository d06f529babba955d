"""Fake stage handles for the unit tier: the DeploymentHandle call shape without Ray.

`handle.method.remote(*args)` starts the call at once and returns a response that can be awaited,
passed unawaited into another call (the callee awaits it, as Ray resolves DeploymentResponse
arguments), or cancelled. Every call is logged in order, so tests can check what ran and when.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from serve.checkpoint_specs import CheckpointProfile
from serve.config import parse_app_config
from serve.generation.handles import RouteHandles, StageHandles
from serve.stages.payloads import DenoiseProgress, Latents, Pixels, StageTiming


class FakeResponse:
    def __init__(self, run: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.cancelled = False
        self.task = asyncio.ensure_future(self._call(run, args))

    @staticmethod
    async def _call(run: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        resolved = [await arg if isinstance(arg, FakeResponse) else arg for arg in args]
        result = run(*resolved)
        return await result if asyncio.iscoroutine(result) else result

    def __await__(self):
        return self.task.__await__()

    def cancel(self) -> None:
        self.cancelled = True
        self.task.cancel()


class FakeStream:
    """A streaming call (`handle.options(stream=True).method.remote(...)`): an async iterator
    over what the stage's async generator yields, cancellable like a DeploymentResponseGenerator."""

    def __init__(self, run: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.cancelled = False
        self.run, self.args = run, args
        self.generator = None

    def __aiter__(self):
        return self

    async def __anext__(self) -> Any:
        if self.cancelled:
            raise asyncio.CancelledError
        if self.generator is None:
            resolved = [await arg if isinstance(arg, FakeResponse) else arg for arg in self.args]
            self.generator = self.run(*resolved)
        return await self.generator.__anext__()

    def cancel(self) -> None:
        self.cancelled = True


class _Method:
    def __init__(self, stage: "FakeStage", name: str) -> None:
        self.stage, self.name = stage, name

    def remote(self, *args: Any) -> FakeResponse | FakeStream:
        self.stage.log.append((self.stage.kind, self.name, args))
        run = getattr(self.stage, f"do_{self.name}")
        response = FakeStream(run, args) if inspect.isasyncgenfunction(run) else FakeResponse(run, args)
        self.stage.responses.append((self.name, response))
        return response


class FakeStage:
    def __init__(self, kind: str, log: list) -> None:
        self.kind, self.log, self.responses = kind, log, []

    def options(self, **_: Any) -> "FakeStage":
        return self

    def __getattr__(self, name: str) -> _Method:
        if name.startswith("_") or name in ("kind", "log", "responses"):
            raise AttributeError(name)
        return _Method(self, name)


@dataclass(frozen=True)
class Encoded:
    prompt: str
    with_instruction: bool


@dataclass(frozen=True)
class FakeLatents:
    spec: Any
    prompt: Encoded
    negative: Encoded | None


def _timing(ms: float, batch: int = 1, node: str = "node-a") -> StageTiming:
    return StageTiming(wait_ms=0.0, compute_ms=ms, batch_size=batch, node=node)


class FakeTextEncoder(FakeStage):
    def do_encode(self, prompt: str, with_instruction: bool) -> Encoded:
        return Encoded(prompt, with_instruction)


class FakeDenoiser(FakeStage):
    def __init__(self, kind: str, log: list) -> None:
        super().__init__(kind, log)
        self.failures: list[BaseException] = []  # raised by the next calls, one each
        self.delay_s = 0.0
        self.queue_delay_s = 0.0
        self.ping_delay_s = 0.0
        self.steps_run = 0

    async def do_denoise(self, spec, prompt: Encoded, negative: Encoded | None):
        """Like the Denoiser: a DenoiseProgress per step when asked (a preview tensor at the
        spec's preview steps), else after the first step only, then the latents; `delay_s` is
        spread over the steps and `queue_delay_s` comes before the first."""
        if self.failures:
            raise self.failures.pop(0)
        await asyncio.sleep(self.queue_delay_s)
        for step in range(spec.steps):
            await asyncio.sleep(self.delay_s / spec.steps)
            self.steps_run += 1
            if spec.progress:
                preview = torch.full((spec.num_images, 4, 2, 2), float(step)) if step in spec.preview_steps else None
                yield DenoiseProgress(step + 1, spec.steps, preview)
            elif step == 0:
                yield DenoiseProgress(1, spec.steps, None)
        yield Latents(FakeLatents(spec, prompt, negative))

    def do_profile(self) -> CheckpointProfile:
        return CheckpointProfile(1024, "flow-dpm-solver")

    async def do_ping(self) -> None:
        await asyncio.sleep(self.ping_delay_s)


class FakeDecoder(FakeStage):
    def __init__(self, kind: str, log: list) -> None:
        super().__init__(kind, log)
        self.ping_delay_s = 0.0
        self.preview_delay_s: dict[int, float] = {}  # by the step a preview was taken at

    def do_decode(self, latents: Latents, width: int, height: int) -> Pixels:
        n = latents.latents.spec.num_images
        images = np.full((n, height, width, 3), 128, dtype=np.uint8)
        return Pixels(images, {"encode": _timing(3.0), "denoise": _timing(20.0, batch=n), "decode": _timing(5.0)})

    async def do_ping(self) -> None:
        await asyncio.sleep(self.ping_delay_s)

    async def do_preview(self, clean, width: int, height: int, max_side: int) -> np.ndarray:
        scale = min(1.0, max_side / max(width, height))
        level = int(clean.flatten()[0])  # the step it was taken at, so tests can tell previews apart
        await asyncio.sleep(self.preview_delay_s.get(level, 0.0))
        return np.full((clean.shape[0], round(height * scale), round(width * scale), 3), level, dtype=np.uint8)


class FakeClassifier(FakeStage):
    def __init__(self, kind: str, log: list, scores: dict[str, float]) -> None:
        super().__init__(kind, log)
        self.scores = scores

    async def do_score(self, prompt: str) -> float:
        await asyncio.sleep(0.01)  # long enough that the encoding is seen to start first
        return self.scores.get(prompt, 0.0)


class FakeImageChecker(FakeStage):
    """Scores an image by its first pixel's red value / 255 (the fake decoder's images are grey 128,
    its previews the step number); raises `failure` when set, and each of `failures` once."""

    def __init__(self, kind: str, log: list) -> None:
        super().__init__(kind, log)
        self.failure: BaseException | None = None
        self.failures: list[BaseException] = []

    async def do_check(self, images: np.ndarray) -> list[float]:
        if self.failures:
            raise self.failures.pop(0)
        if self.failure is not None:
            raise self.failure
        return [float(image[0, 0, 0]) / 255.0 for image in images]


@dataclass
class FakeStages:
    log: list = field(default_factory=list)
    routes: dict[str, tuple[FakeDenoiser, FakeDecoder]] = field(default_factory=dict)
    text_encoder: FakeTextEncoder | None = None
    classifier: FakeClassifier | None = None
    image_checker: FakeImageChecker | None = None

    def handles(self) -> StageHandles:
        return StageHandles(
            self.text_encoder,
            {name: RouteHandles(denoiser, decoder) for name, (denoiser, decoder) in self.routes.items()},
            self.classifier,
            self.image_checker,
        )

    def calls(self, kind: str, method: str) -> list[tuple]:
        return [args for k, m, args in self.log if (k, m) == (kind, method)]


def fake_stages(route_names, scores: dict[str, float] | None = None, image_checker: bool = False) -> FakeStages:
    stages = FakeStages()
    stages.text_encoder = FakeTextEncoder("text_encoder", stages.log)
    for name in route_names:
        stages.routes[name] = (FakeDenoiser(f"denoiser:{name}", stages.log), FakeDecoder(f"decoder:{name}", stages.log))
    if scores is not None:
        stages.classifier = FakeClassifier("classifier", stages.log, scores)
    if image_checker:  # as the app builder binds one only when the config enables it
        stages.image_checker = FakeImageChecker("image_checker", stages.log)
    return stages


class RecordingMetrics:
    """GatewayMetrics that remembers what it was told."""

    def __init__(self) -> None:
        self.done: list[tuple[str, dict, int]] = []
        self.failed: list[tuple[str, int]] = []
        self.replacements: list[str] = []
        self.retries: list[str] = []
        self.cancelled = 0
        self.first_events: list[tuple[str, float]] = []
        self.webhooks: list[str] = []
        self.shed_reasons: list[tuple[str, str]] = []
        self.queue_waits: list[tuple[str, float]] = []
        self.image_checks: list[tuple[str, str, str, int]] = []

    def request_done(self, route: str, timings: dict[str, float], images: int) -> None:
        self.done.append((route, timings, images))

    def request_failed(self, error_type: str, status: int) -> None:
        self.failed.append((error_type, status))

    def safety_replacement(self, layer: str) -> None:
        self.replacements.append(layer)

    def image_check(self, route: str, kind: str, result: str, images: int) -> None:
        self.image_checks.append((route, kind, result, images))

    def stage_retry(self, route: str) -> None:
        self.retries.append(route)

    def generation_cancelled(self) -> None:
        self.cancelled += 1

    def first_event(self, route: str, elapsed_ms: float) -> None:
        self.first_events.append((route, elapsed_ms))

    def webhook_attempt(self, result: str) -> None:
        self.webhooks.append(result)

    def shed(self, route: str, reason: str) -> None:
        self.shed_reasons.append((route, reason))

    def queue_wait(self, route: str, estimate_s: float) -> None:
        self.queue_waits.append((route, estimate_s))


def app_config(**changes: Any):
    """A two-route config (1K default, 4K above 2048 px) in the shape of deploy/local.yaml."""
    args = {
        "text_encoder": {"checkpoint": "materialized:tiny"},
        "routes": {
            "r1k": {"checkpoint": "materialized:tiny", "max_side": 2048,
                    "denoiser": {"batching": {"max_batch_size": 8}}},
            "r4k": {"checkpoint": "materialized:tiny-4k", "max_images": 1, "capacity_wait_s": 0.2},
        },
        "gateway": {"size_routes": [{"above": 2048, "route": "r4k"}], "image_encode_threads": 1,
                    "limits": {"max_images": 4, "max_side": 4096}},
        "safety": {"word_filter": {"enabled": True, "extra_words": ["dragon"]}},
    }
    for path, value in changes.items():
        *parents, key = path.split("__")
        target = args
        for parent in parents:
            target = target.setdefault(parent, {})
        target[key] = value
    return parse_app_config(args)


class LocalHandle:
    """`handle.method.remote(...)` on a local object, as the gateway calls the JobStore."""

    def __init__(self, target: Any) -> None:
        self.target = target

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.target, name)

        class _Remote:
            @staticmethod
            def remote(*args: Any) -> asyncio.Future:
                async def call() -> Any:
                    result = method(*args)
                    return await result if asyncio.iscoroutine(result) else result

                return asyncio.ensure_future(call())

        return _Remote()
