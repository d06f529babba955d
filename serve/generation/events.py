"""Progress of one generation: the events it emits and the cancellation it honours."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from serve.errors import ApiError, Cancelled


@dataclass(frozen=True)
class GenerationEvent:
    """A milestone of one generation, for progress reporting (streaming and jobs build on these)."""

    # routed, encoding, denoising, step (detail: step, total), partial_image (index, images, size),
    # decoding, encoding_images, done (timings_ms)
    kind: str
    request_id: str
    elapsed_ms: float
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def stage(self) -> str:
        """The stage a client is told: every `step` is part of `denoising`."""
        return "denoising" if self.kind == "step" else self.kind


EventCallback = Callable[[GenerationEvent], None]


def cancel_call(response: Any) -> None:
    """Cancel a stage call in flight (a DeploymentResponse, or a fake's); None is fine."""
    cancel = getattr(response, "cancel", None)
    if cancel is not None:
        cancel()


class Progress:
    """Emits events and honours cancellation for one generation; remembers the stage calls in
    flight so that a cancel (or the caller's task being cancelled) stops them all."""

    def __init__(self, request_id: str, started: float, on_event: EventCallback | None,
                 cancel: asyncio.Event | None) -> None:
        self.request_id, self.started, self.on_event = request_id, started, on_event
        self.cancel = cancel or asyncio.Event()
        self.in_flight: list[Any] = []
        self.failure: ApiError | None = None  # why the service itself stopped it (deadline, queue budget)

    @property
    def wanted(self) -> bool:
        return self.on_event is not None

    def elapsed_ms(self) -> float:
        return round((time.perf_counter() - self.started) * 1000, 3)

    def emit(self, kind: str, **detail: Any) -> None:
        self.check()
        if self.on_event is not None:
            self.on_event(GenerationEvent(kind, self.request_id, self.elapsed_ms(), detail))

    def check(self) -> None:
        if self.cancel.is_set():
            raise self.stopped()

    def stopped(self) -> ApiError:
        return self.failure or Cancelled("the generation was cancelled")

    def abort(self, failure: ApiError) -> None:
        """Stop the generation with `failure` (a 504 or 503) instead of Cancelled."""
        if not self.cancel.is_set():
            self.failure = failure
            self.cancel.set()

    def track(self, response: Any) -> Any:
        if response is not None:
            self.in_flight.append(response)
        return response

    def cancel_in_flight(self) -> None:
        for response in self.in_flight:
            cancel_call(response)
        self.in_flight.clear()

    async def result(self, response: Awaitable[Any]) -> Any:
        """`await response`, unless cancellation comes first: then Cancelled."""
        call = asyncio.ensure_future(response)
        cancelled = asyncio.ensure_future(self.cancel.wait())
        try:
            await asyncio.wait({call, cancelled}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            cancelled.cancel()
            if not call.done():
                call.cancel()
        if not call.done() or call.cancelled():
            raise self.stopped()
        return call.result()

    async def items(self, stream: AsyncIterator[Any]) -> AsyncIterator[Any]:
        """The items of a streaming stage call, until it ends or cancellation comes."""
        iterator = aiter(stream)
        while True:
            try:
                item = await self.result(anext(iterator))
            except StopAsyncIteration:
                return
            yield item
