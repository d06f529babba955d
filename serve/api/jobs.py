"""Async jobs over HTTP: submit (202), read, list, cancel, and follow a job's events (SSE,
resumable with Last-Event-ID). A job is visible only to the key that made it (404 for others)."""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationError

from serve.api.deps import ApiDeps, authorize, deps
from serve.api.images import ERRORS, base_url, read_json_body
from serve.api.sse import KEEP_ALIVE, SSE_HEADERS, sse_event
from serve.errors import BadRequest, NotFound
from serve.jobs.runner import with_base_url
from serve.jobs.webhooks import DEFAULT_EVENTS, EVENTS

router = APIRouter()

EVENTS_POLL_S = 15.0  # one long poll on the store; a keep-alive goes out when it brings nothing
MAX_PAGE = 100


class Webhook(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: StrictStr = Field(description="Where to POST; its host must be in the server's allowed webhook hosts.")
    events: list[str] = Field(list(DEFAULT_EVENTS), description=f"Which of {', '.join(EVENTS)} to send.")


def _store(api: ApiDeps) -> Any:
    if api.job_store is None:
        raise NotFound("async jobs are not enabled on this server")
    return api.job_store


@router.post("/v1/images/jobs", status_code=202, responses=ERRORS)
async def submit(request: Request, api: ApiDeps = Depends(deps), owner: str | None = Depends(authorize)):
    """The generations body plus an optional `webhook`; answers 202 with the job record."""
    store = _store(api)
    data = api.validator.decode(await read_json_body(request, api.validator.limits.max_body_bytes))
    webhook = _webhook(data.pop("webhook", None), api, base_url(request, api))
    body = api.validator.validate(data)
    if body.stream:
        raise BadRequest("stream: a job's progress is at GET /v1/images/jobs/{id}/events", "stream")
    await api.service.preflight(body)  # a size or n the route refuses is a 400 now, not a failed job
    fingerprint = hashlib.sha256(json.dumps([data, webhook], sort_keys=True).encode()).hexdigest()
    if body.seed is None:  # fixed now, so a rerun (after a gateway is lost) draws the same pixels
        body = body.model_copy(update={"seed": secrets.randbelow(2**31)})
    key = request.headers.get("idempotency-key")
    if key is not None and not 1 <= len(key) <= 255:
        raise BadRequest("Idempotency-Key must be 1 to 255 characters", "Idempotency-Key")
    record, created = await store.submit.remote(owner, body.model_dump(exclude_none=True), webhook, key, fingerprint)
    return JSONResponse(_public(record, request, api), status_code=202 if created else 200,
                        headers={"Location": f"/v1/images/jobs/{record['id']}"})


@router.get("/v1/images/jobs", responses=ERRORS)
async def list_jobs(request: Request, limit: int = Query(20, ge=1, le=MAX_PAGE), after: str | None = None,
                    api: ApiDeps = Depends(deps), owner: str | None = Depends(authorize)):
    """The caller's jobs, newest first; pass the page's `last_id` as `after` for the next page."""
    page = await _store(api).page.remote(owner, limit, after)
    return JSONResponse(_public(page, request, api))


@router.get("/v1/images/jobs/{job_id}", responses=ERRORS)
async def get_job(job_id: str, request: Request, api: ApiDeps = Depends(deps), owner: str | None = Depends(authorize)):
    return JSONResponse(_public(await _store(api).get.remote(job_id, owner), request, api))


@router.post("/v1/images/jobs/{job_id}/cancel", responses=ERRORS)
async def cancel_job(job_id: str, request: Request, api: ApiDeps = Depends(deps),
                     owner: str | None = Depends(authorize)):
    """A queued job is cancelled at once; a running one stops at its next denoising step."""
    return JSONResponse(_public(await _store(api).cancel.remote(job_id, owner), request, api))


@router.get("/v1/images/jobs/{job_id}/events", responses={**ERRORS, 200: {"content": {"text/event-stream": {}}}})
async def job_events(job_id: str, request: Request, api: ApiDeps = Depends(deps),
                     owner: str | None = Depends(authorize)):
    """Server-sent events from the job's start (or after `Last-Event-ID`) until it finishes."""
    store = _store(api)
    after = _last_event_id(request.headers.get("last-event-id"))
    first = await store.events.remote(job_id, owner, after, 0.0)  # a 404 is still a JSON answer
    base = base_url(request, api)
    return StreamingResponse(_follow(store, job_id, owner, after, first, base), media_type="text/event-stream",
                             headers=SSE_HEADERS)


async def _follow(store: Any, job_id: str, owner: str | None, after: int, batch: dict[str, Any],
                  base: str) -> AsyncIterator[bytes]:
    while True:
        for event in batch["events"]:
            after = event["seq"]
            yield sse_event(event["type"], with_base_url(event, base), event_id=after)
        if batch["finished"] and not batch["events"]:
            return
        if not batch["events"]:
            yield KEEP_ALIVE
        batch = await store.events.remote(job_id, owner, after, EVENTS_POLL_S)


def _last_event_id(value: str | None) -> int:
    if value is None or value == "":
        return 0
    if not value.isdigit() or len(value) > 12:
        raise BadRequest("Last-Event-ID must be an event id from this job's stream", "Last-Event-ID")
    return int(value)


def _webhook(value: Any, api: ApiDeps, base: str) -> dict[str, Any] | None:
    if value is None:
        return None
    try:
        webhook = Webhook.model_validate(value)
    except ValidationError as exc:
        raise BadRequest(f"webhook: {exc.errors()[0]['msg']}", "webhook") from None
    unknown = sorted(set(webhook.events) - set(EVENTS))
    if unknown:
        raise BadRequest(f"webhook.events: unknown event(s) {', '.join(unknown)}; known: {', '.join(EVENTS)}",
                         "webhook")
    api.webhooks.check(webhook.model_dump())
    return {**webhook.model_dump(), "base_url": base}


def _public(record: dict[str, Any], request: Request, api: ApiDeps) -> dict[str, Any]:
    return with_base_url(record, base_url(request, api))
