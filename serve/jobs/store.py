"""JobStore: the one-replica deployment that holds the JobBook for every gateway replica.

Its state is in memory: it survives the loss of any gateway replica, not the loss of its own
replica or node (Serve restarts it empty; clients then get 404 for older jobs). docs/api.md says so.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ray import serve

from serve import metrics
from serve.config import JobsConfig
from serve.jobs.book import Claim, JobBook

SWEEP_EVERY_S = 1.0


@serve.deployment(name="JobStore", num_replicas=1, ray_actor_options={"num_cpus": 0}, max_ongoing_requests=10000)
class JobStore:
    def __init__(self, config: JobsConfig) -> None:
        self.book = JobBook(config)
        self._sweeper = asyncio.get_event_loop().create_task(self._sweep_forever())
        self._last_counts: dict[str, int] = {}

    async def _sweep_forever(self) -> None:
        # Leases run out and finished jobs expire without anyone asking.
        while True:
            await asyncio.sleep(SWEEP_EVERY_S)
            for _ in self.book.sweep():  # failed for good: their gateway was lost too often
                metrics.jobs().inc(tags={"status": "failed"})
            counts = self.book.counts()
            metrics.jobs_queued().set(counts["queued"])
            metrics.jobs_running().set(counts["in_progress"])

    async def submit(self, owner: str | None, request: dict[str, Any], webhook: dict[str, Any] | None,
                     idempotency_key: str | None, fingerprint: str) -> tuple[dict[str, Any], bool]:
        record, created = await self.book.submit(owner, request, webhook, idempotency_key, fingerprint)
        if created:
            metrics.jobs().inc(tags={"status": "queued"})
        return record, created

    def get(self, job_id: str, owner: str | None) -> dict[str, Any]:
        return self.book.get(job_id, owner)

    def page(self, owner: str | None, limit: int, after: str | None) -> dict[str, Any]:
        return self.book.page(owner, limit, after)

    async def events(self, job_id: str, owner: str | None, after: int, timeout_s: float) -> dict[str, Any]:
        return await self.book.events(job_id, owner, after, timeout_s)

    async def cancel(self, job_id: str, owner: str | None) -> dict[str, Any]:
        record = await self.book.cancel(job_id, owner)
        if record["status"] == "cancelled" and record["started_at"] is None:
            metrics.jobs().inc(tags={"status": "cancelled"})
        return record

    async def claim(self, runner: str, timeout_s: float) -> Claim | None:
        claim = await self.book.claim(runner, timeout_s)
        if claim is not None:
            metrics.jobs().inc(tags={"status": "in_progress"})
        return claim

    async def report(self, job_id: str, runner: str, events: list[tuple[str, dict[str, Any]]]) -> dict[str, bool]:
        return await self.book.report(job_id, runner, events)

    async def finish(self, job_id: str, runner: str, status: str, result: dict[str, Any] | None = None,
                     error: dict[str, Any] | None = None) -> dict[str, Any] | None:
        record = await self.book.finish(job_id, runner, status, result, error)
        if record is not None:
            metrics.jobs().inc(tags={"status": status})
        return record

    async def wait_cancel(self, job_id: str, timeout_s: float) -> bool:
        return await self.book.wait_cancel(job_id, timeout_s)
