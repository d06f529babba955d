"""Async jobs: the book of records, its queue and its event logs. No Ray, no HTTP.

One `JobBook` lives in the JobStore deployment (one replica), so every gateway replica sees the
same jobs. Gateways submit jobs, read and cancel them for their clients, and run them: a gateway's
runner claims a queued job with a lease, reports its progress (which renews the lease) and
finishes it. A job whose runner stops reporting for `lease_s` (its replica died) is queued again
and run by another runner, up to `max_attempts` runs; the seed is fixed at submit, so a rerun draws
the same pixels.

Everything a client sees is a plain JSON-ready dict. Waiting calls (`claim`, `events`,
`wait_cancel`) are long polls: they return when there is news or their timeout passes.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from serve.config import JobsConfig
from serve.errors import ApiError, Cancelled, Conflict, NotFound, Overloaded

QUEUED, IN_PROGRESS, COMPLETED, FAILED, CANCELLED = "queued", "in_progress", "completed", "failed", "cancelled"
FINISHED = frozenset({COMPLETED, FAILED, CANCELLED})
_TOMBSTONES = 100_000  # ids of expired jobs remembered, so their 404 can say "expired"
_CANCELLED = Cancelled("cancelled by the client").body()


@dataclass
class Job:
    id: str
    owner: str | None  # the API key's digest; None when auth is off
    request: dict[str, Any]  # the validated body, with its seed fixed
    webhook: dict[str, Any] | None
    created_at: float
    idempotency_key: str | None = None
    fingerprint: str = ""  # of the body as the client sent it (before the server chose a seed)
    status: str = QUEUED
    progress: dict[str, Any] = field(default_factory=lambda: {"stage": QUEUED, "step": 0, "total": 0})
    started_at: float | None = None
    completed_at: float | None = None
    error: dict[str, Any] | None = None
    result: dict[str, Any] | None = None
    events: list[dict[str, Any]] = field(default_factory=list)  # the newest max_events of them
    next_seq: int = 1
    cancel_requested: bool = False
    runner: str | None = None
    lease_until: float = 0.0
    attempts: int = 0

    def record(self) -> dict[str, Any]:
        """What the API shows."""
        return {
            "id": self.id,
            "object": "image.job",
            "status": self.status,
            "progress": dict(self.progress),
            "created_at": int(self.created_at),
            "started_at": None if self.started_at is None else int(self.started_at),
            "completed_at": None if self.completed_at is None else int(self.completed_at),
            "error": self.error,
            "result": self.result,
            "cancel_requested": self.cancel_requested,
            "attempts": self.attempts,
        }


@dataclass(frozen=True)
class Claim:
    """A job handed to a runner."""

    id: str
    request: dict[str, Any]
    webhook: dict[str, Any] | None
    owner: str | None
    attempt: int


class JobBook:
    def __init__(self, config: JobsConfig, clock: Callable[[], float] = time.time) -> None:
        self.config, self.clock = config, clock
        self.jobs: dict[str, Job] = {}
        self.queue: deque[str] = deque()
        self.idempotency: dict[tuple[str | None, str], str] = {}
        self.expired: OrderedDict[str, None] = OrderedDict()
        self.changed = asyncio.Condition()

    # --- clients -------------------------------------------------------------------------------

    async def submit(self, owner: str | None, request: dict[str, Any], webhook: dict[str, Any] | None,
                     idempotency_key: str | None, fingerprint: str = "") -> tuple[dict[str, Any], bool]:
        """(record, created). A repeated Idempotency-Key returns the first job (409 if the body differs)."""
        self.sweep(room=1)
        if idempotency_key is not None:
            existing = self.jobs.get(self.idempotency.get((owner, idempotency_key), ""))
            if existing is not None:
                if existing.fingerprint != fingerprint:
                    raise Conflict("this Idempotency-Key was used with a different request", "Idempotency-Key")
                return existing.record(), False
        if len(self.jobs) >= self.config.max_jobs:
            raise Overloaded("the job store is full; retry later", retry_after_s=30.0)
        job = Job(f"job_{secrets.token_hex(12)}", owner, request, webhook, self.clock(), idempotency_key, fingerprint)
        self.jobs[job.id] = job
        if idempotency_key is not None:
            self.idempotency[(owner, idempotency_key)] = job.id
        self.queue.append(job.id)
        self._event(job, "queued", {"position": len(self.queue)})
        await self._notify()
        return job.record(), True

    def get(self, job_id: str, owner: str | None) -> dict[str, Any]:
        return self._find(job_id, owner).record()

    def page(self, owner: str | None, limit: int, after: str | None) -> dict[str, Any]:
        """The owner's jobs, newest first: `limit` of them after the job `after` (a cursor)."""
        self.sweep()
        mine = [job for job in reversed(self.jobs.values()) if job.owner == owner]
        start = 0
        if after is not None:
            ids = [job.id for job in mine]
            if after not in ids:
                raise NotFound(f"job {after!r} (the page cursor) does not exist or has expired", "after")
            start = ids.index(after) + 1
        chosen = mine[start:start + limit]
        return {
            "object": "list",
            "data": [job.record() for job in chosen],
            "first_id": chosen[0].id if chosen else None,
            "last_id": chosen[-1].id if chosen else None,
            "has_more": start + limit < len(mine),
        }

    async def events(self, job_id: str, owner: str | None, after: int, timeout_s: float) -> dict[str, Any]:
        """Events with seq > `after`, waiting up to `timeout_s` for one; `finished` once the job is
        and every event has been given."""
        job = self._find(job_id, owner)
        await self._wait_for(lambda: job.next_seq - 1 > after or job.status in FINISHED, timeout_s)
        news = [event for event in job.events if event["seq"] > after]
        return {"events": news, "finished": job.status in FINISHED}

    async def cancel(self, job_id: str, owner: str | None) -> dict[str, Any]:
        """A queued job is cancelled at once; a running one is asked to stop (its runner stops it
        at the next denoising step and reports `cancelled`)."""
        job = self._find(job_id, owner)
        if job.status in FINISHED:
            return job.record()
        job.cancel_requested = True
        if job.status == QUEUED:
            self.queue.remove(job.id)
            self._finish(job, CANCELLED, error=_CANCELLED)
        else:
            self._event(job, "cancel_requested", {})
        await self._notify()
        return job.record()

    # --- runners -------------------------------------------------------------------------------

    async def claim(self, runner: str, timeout_s: float) -> Claim | None:
        """The oldest queued job, now leased to `runner`; None if none came within `timeout_s`."""
        self.sweep()
        if not await self._wait_for(lambda: bool(self.queue), timeout_s):
            return None
        job = self.jobs[self.queue.popleft()]
        job.status, job.runner, job.attempts = IN_PROGRESS, runner, job.attempts + 1
        job.lease_until = self.clock() + self.config.lease_s
        job.started_at = job.started_at or self.clock()
        job.progress = {"stage": "starting", "step": 0, "total": 0}
        self._event(job, "in_progress", {"attempt": job.attempts})
        await self._notify()
        return Claim(job.id, job.request, job.webhook, job.owner, job.attempts)

    async def report(self, job_id: str, runner: str, events: list[tuple[str, dict[str, Any]]]) -> dict[str, bool]:
        """Progress from the runner holding the job (renews its lease). `lost` tells a runner that
        no longer holds it (its lease ran out and the job moved on) to stop."""
        job = self.jobs.get(job_id)
        if job is None or job.runner != runner or job.status != IN_PROGRESS:
            return {"lost": True, "cancel": False}
        job.lease_until = self.clock() + self.config.lease_s
        for kind, data in events:
            if kind == "progress":
                job.progress = {**job.progress, **{key: data[key] for key in ("stage", "step", "total") if key in data}}
            self._event(job, kind, data)
        if events:
            await self._notify()
        return {"lost": False, "cancel": job.cancel_requested}

    async def finish(self, job_id: str, runner: str, status: str, result: dict[str, Any] | None = None,
                     error: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """The runner's last word; the final record, or None if the runner had lost the job."""
        job = self.jobs.get(job_id)
        if job is None or job.runner != runner or job.status != IN_PROGRESS:
            return None
        self._finish(job, status, result=result, error=error)
        await self._notify()
        return job.record()

    async def wait_cancel(self, job_id: str, timeout_s: float) -> bool:
        """True once the job is asked to stop (or is gone); False after `timeout_s`."""
        job = self.jobs.get(job_id)
        if job is None:
            return True
        return await self._wait_for(lambda: job.cancel_requested or job.status in FINISHED, timeout_s)

    def counts(self) -> dict[str, int]:
        counts = {status: 0 for status in (QUEUED, IN_PROGRESS, COMPLETED, FAILED, CANCELLED)}
        for job in self.jobs.values():
            counts[job.status] += 1
        return counts

    # --- housekeeping --------------------------------------------------------------------------

    def sweep(self, room: int = 0) -> list[dict[str, Any]]:
        """Requeue (or fail) jobs whose runner's lease ran out; expire finished jobs past their
        time, then the oldest finished ones while over `max_jobs` (less `room` for jobs about to come).
        The records that failed now."""
        now, failed, requeued = self.clock(), [], False
        for job in self.jobs.values():
            if job.status == IN_PROGRESS and job.lease_until <= now:
                job.runner = None
                requeued = True
                if job.cancel_requested:
                    self._finish(job, CANCELLED, error=_CANCELLED)
                elif job.attempts >= self.config.max_attempts:
                    lost = ApiError(f"the gateway running this job was lost, {job.attempts} times")
                    self._finish(job, FAILED, error=lost.body())
                    failed.append(job.record())
                else:
                    job.status = QUEUED
                    job.progress = {"stage": QUEUED, "step": 0, "total": 0}
                    self._event(job, "requeued", {"reason": "the gateway running it was lost"})
                    self.queue.appendleft(job.id)
        finished = [job for job in self.jobs.values() if job.status in FINISHED]
        for job in finished:
            if (job.completed_at or now) + self.config.ttl_s <= now:
                self._expire(job)
        overflow = len(self.jobs) + room - self.config.max_jobs
        for job in sorted((j for j in finished if j.id in self.jobs), key=lambda j: j.completed_at or 0)[:max(0, overflow)]:
            self._expire(job)
        if requeued:  # wake waiting runners and event followers (sweep itself is sync)
            asyncio.ensure_future(self._notify())
        return failed

    # --- internals -----------------------------------------------------------------------------

    def _find(self, job_id: str, owner: str | None) -> Job:
        self.sweep()
        job = self.jobs.get(job_id)
        if job is None or job.owner != owner:  # someone else's job is as absent as a missing one
            if job_id in self.expired and job is None:
                raise NotFound(f"job {job_id!r} has expired (jobs are kept {self.config.ttl_s:g} s after they finish)")
            raise NotFound(f"job {job_id!r} does not exist")
        return job

    def _event(self, job: Job, kind: str, data: dict[str, Any]) -> None:
        job.events.append({"seq": job.next_seq, "type": kind, "created_at": round(self.clock(), 3), **data})
        job.next_seq += 1
        if len(job.events) > self.config.max_events:
            del job.events[0]

    def _finish(self, job: Job, status: str, *, result: dict[str, Any] | None = None,
                error: dict[str, Any] | None = None) -> None:
        job.status, job.result, job.error = status, result, error
        job.completed_at = self.clock()
        job.progress = {**job.progress, "stage": status}
        self._event(job, status, {"result": result} if result is not None else {"error": error})

    def _expire(self, job: Job) -> None:
        del self.jobs[job.id]
        if job.idempotency_key is not None:
            self.idempotency.pop((job.owner, job.idempotency_key), None)
        self.expired[job.id] = None
        while len(self.expired) > _TOMBSTONES:
            self.expired.popitem(last=False)

    async def _notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    async def _wait_for(self, predicate: Callable[[], bool], timeout_s: float) -> bool:
        if predicate():
            return True
        try:
            async with self.changed:
                await asyncio.wait_for(self.changed.wait_for(predicate), timeout=timeout_s)
            return True
        except asyncio.TimeoutError:
            return predicate()

