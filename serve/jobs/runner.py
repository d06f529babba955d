"""The gateway's side of async jobs: claim queued jobs from the JobStore and run them.

Each gateway replica runs `runners_per_gateway` workers. A worker claims a job (a long poll),
runs it through the generation service like any request, and reports its events to the store in
order (each report renews the job's lease). Previews and results are written to the file store
and travel as URLs. A cancel reaches the worker two ways, whichever is first: a long poll on the
store (`wait_cancel`), and the answer to each progress report; either sets the generation's cancel
event, which stops denoising at the next step.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Sequence
from typing import Any

from serve.config import JobsConfig
from serve.errors import ApiError, Cancelled
from serve.gate.validation import RequestValidator
from serve.generation.events import GenerationEvent
from serve.generation.result import GenerationResult, response_body
from serve.generation.service import GenerationService
from serve.jobs.book import CANCELLED, COMPLETED, FAILED, Claim
from serve.jobs.files import FileStore, store_images
from serve.jobs.webhooks import DEFAULT_EVENTS, WebhookSender
from serve.logs import error_text, log_event

logger = logging.getLogger("sana_serve.jobs")

CLAIM_POLL_S = 10.0  # a worker's long poll for work; short enough to notice shutdown


class JobRunner:
    def __init__(self, store: Any, service: GenerationService, validator: RequestValidator, files: FileStore,
                 webhooks: WebhookSender, config: JobsConfig) -> None:
        self.store, self.service, self.validator = store, service, validator
        self.files, self.webhooks, self.config = files, webhooks, config
        self.runner_id = f"runner_{secrets.token_hex(6)}"
        self.workers: list[asyncio.Task] = []
        self.background: set[asyncio.Task] = set()
        self.claiming = True  # see stop_claiming

    def start(self) -> None:
        self.workers = [asyncio.ensure_future(self._work()) for _ in range(self.config.runners_per_gateway)]

    def stop_claiming(self) -> None:
        """While the replica drains: finish what runs, claim nothing new."""
        self.claiming = False

    async def stop(self) -> None:
        for task in [*self.workers, *self.background]:
            task.cancel()
        await asyncio.gather(*self.workers, *self.background, return_exceptions=True)

    async def _work(self) -> None:
        while self.claiming:
            try:
                claim = await self.store.claim.remote(self.runner_id, CLAIM_POLL_S)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the store restarting: try again shortly
                log_event(logger, "job_claim_failed", logging.WARNING, error=error_text(exc))
                await asyncio.sleep(1.0)
                continue
            if claim is not None:  # even when draining began during the poll: it is ours now
                await self.run(claim)

    async def run(self, claim: Claim) -> None:
        cancel = asyncio.Event()
        reporter = _Reporter(self.store, claim.id, self.runner_id, cancel, self.files,
                             heartbeat_s=self.config.lease_s / 3)
        watcher = asyncio.ensure_future(self._watch_cancel(claim.id, cancel))
        self._notify(claim, "started", {"id": claim.id, "status": "in_progress"})
        status, result, error = FAILED, None, None
        try:
            request = self.validator.validate(claim.request)
            # shed=False: a queued job has waited its turn in the store; it is counted, not refused.
            generated = await self.service.generate(request, request_id=claim.id, on_event=reporter.on_event,
                                                    cancel=cancel, shed=False)
            result = await asyncio.to_thread(self._result, generated)
            status = COMPLETED
        except Cancelled as exc:
            status, error = CANCELLED, exc.body()
        except ApiError as exc:
            error = exc.body()
        except Exception as exc:  # noqa: BLE001 - a job never takes its worker down
            log_event(logger, "job_failed", logging.ERROR, request_id=claim.id, error=error_text(exc))
            error = ApiError("internal error").body()
        finally:
            watcher.cancel()
            await reporter.close()
        record = None
        try:
            record = await self.store.finish.remote(claim.id, self.runner_id, status, result, error)
        except Exception as exc:  # noqa: BLE001
            log_event(logger, "job_finish_failed", logging.ERROR, request_id=claim.id, error=error_text(exc))
        if record is not None:  # None: the job had moved on (lease lost); its new runner tells
            self._notify(claim, status, record)

    async def _watch_cancel(self, job_id: str, cancel: asyncio.Event) -> None:
        while not cancel.is_set():
            try:
                if await self.store.wait_cancel.remote(job_id, 30.0):
                    cancel.set()
            except Exception:  # noqa: BLE001 - the reports carry the cancel flag too
                await asyncio.sleep(1.0)

    def _result(self, generated: GenerationResult) -> dict[str, Any]:
        """The job's result: the sync response's shape, images as file URLs (paths until the HTTP
        layer makes them absolute)."""
        paths = store_images(self.files, generated.images, generated.output_format)
        return response_body(generated, paths).model_dump(exclude_none=True)

    def _notify(self, claim: Claim, event: str, data: dict[str, Any]) -> None:
        """Send the job's webhook for `event` if it asked for it (in the background, with retries)."""
        webhook = claim.webhook
        if webhook is None or event not in webhook.get("events", DEFAULT_EVENTS):
            return
        payload = with_base_url(data, webhook.get("base_url", ""))
        task = asyncio.ensure_future(self.webhooks.deliver(webhook["url"], f"image.job.{event}", payload, claim.id))
        self.background.add(task)
        task.add_done_callback(self.background.discard)


class _Reporter:
    """Sends a job's events to the store in order, a batch per call; previews become files first.
    Sends an empty report every `heartbeat_s` when there is nothing to say (the lease)."""

    def __init__(self, store: Any, job_id: str, runner: str, cancel: asyncio.Event, files: FileStore,
                 heartbeat_s: float) -> None:
        self.store, self.job_id, self.runner, self.cancel, self.files = store, job_id, runner, cancel, files
        self.heartbeat_s = heartbeat_s
        self.queue: asyncio.Queue[GenerationEvent | None] = asyncio.Queue()
        self.sender = asyncio.ensure_future(self._send())

    def on_event(self, event: GenerationEvent) -> None:
        self.queue.put_nowait(event)

    async def close(self) -> None:
        self.queue.put_nowait(None)
        try:
            await asyncio.shield(self.sender)
        except Exception as exc:  # noqa: BLE001
            log_event(logger, "job_report_failed", logging.WARNING, request_id=self.job_id, error=error_text(exc))

    async def _send(self) -> None:
        closing = False
        while not closing:
            try:
                first = await asyncio.wait_for(self.queue.get(), timeout=self.heartbeat_s)
            except asyncio.TimeoutError:
                first = ...  # heartbeat
            batch = [] if first is ... else [first]
            while not self.queue.empty():
                batch.append(self.queue.get_nowait())
            closing = None in batch
            events = [await self._job_event(event) for event in batch if isinstance(event, GenerationEvent)]
            try:
                reply = await self.store.report.remote(self.job_id, self.runner, events)
            except Exception as exc:  # noqa: BLE001 - progress is best effort; the result is not
                log_event(logger, "job_report_failed", logging.WARNING, request_id=self.job_id, error=error_text(exc))
                continue
            if reply["cancel"] or reply["lost"]:
                self.cancel.set()

    async def _job_event(self, event: GenerationEvent) -> tuple[str, dict[str, Any]]:
        detail = dict(event.detail)
        if event.kind == "partial_image":
            images: Sequence[bytes] = detail.pop("images")
            image_format = detail.pop("format")
            paths = await asyncio.to_thread(store_images, self.files, images, image_format)
            return "partial_image", {**detail, "urls": paths, "elapsed_ms": event.elapsed_ms}
        return "progress", {"stage": event.stage, **detail, "elapsed_ms": event.elapsed_ms}


def with_base_url(data: Any, base: str) -> Any:
    """`data` with every file path (under "url" or "urls") made absolute with `base`."""
    if isinstance(data, dict):
        return {key: (_absolute(value, base) if key in ("url", "urls") else with_base_url(value, base))
                for key, value in data.items()}
    if isinstance(data, list):
        return [with_base_url(item, base) for item in data]
    return data


def _absolute(value: Any, base: str) -> Any:
    if isinstance(value, list):
        return [_absolute(item, base) for item in value]
    if isinstance(value, str) and value.startswith("/"):
        return base.rstrip("/") + value
    return value
