"""Async jobs without Ray: the JobBook's rules (expiry, leases, pages, owners, idempotency) and the
job API end to end in one event loop: the real routers, the real JobRunner and JobBook (behind a
handle look-alike), fake stages, a file store in a temporary folder, and a webhook receiver on
loopback."""

from __future__ import annotations

import asyncio
import io
import json
from typing import Any

import httpx
import pytest
from PIL import Image

from serve.api.app import build_api
from serve.api.deps import build_deps
from serve.config import JobsConfig
from serve.errors import Conflict, NotFound
from serve.gate.auth import key_digest
from serve.jobs.book import JobBook
from serve.jobs.webhooks import verify_signature
from tests.unit.fakes import LocalHandle, RecordingMetrics, app_config, fake_stages
from tests.webhook_receiver import Receiver

SECRET = "whsec-unit-test"
KEY_A, KEY_B = "sk-unit-aaaaaaaaaaaa", "sk-unit-bbbbbbbbbbbb"
BODY = {"prompt": "a red heart", "size": "64x64", "num_inference_steps": 4, "seed": 7}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --- the book's rules ---------------------------------------------------------------------------


def _book(**config: Any) -> tuple[JobBook, Clock]:
    clock = Clock()
    return JobBook(JobsConfig(**config), clock), clock


def test_finished_jobs_expire_with_a_clear_404_and_the_oldest_go_first_past_max_jobs():
    async def go():
        book, clock = _book(ttl_s=60, max_jobs=2)
        first, _ = await book.submit(None, {"n": 1}, None, None)
        await book.cancel(first["id"], None)
        clock.now += 61
        with pytest.raises(NotFound, match="has expired"):
            book.get(first["id"], None)
        with pytest.raises(NotFound, match="does not exist"):
            book.get("job_never", None)
        a, _ = await book.submit(None, {"n": 1}, None, None)
        await book.cancel(a["id"], None)
        clock.now += 1
        b, _ = await book.submit(None, {"n": 2}, None, None)
        await book.cancel(b["id"], None)
        await book.submit(None, {"n": 3}, None, None)  # over max_jobs: the oldest finished one goes
        with pytest.raises(NotFound, match="has expired"):
            book.get(a["id"], None)
        assert book.get(b["id"], None)["status"] == "cancelled"

    asyncio.run(go())


def test_a_lost_runner_lease_requeues_the_job_then_fails_it_after_max_attempts():
    async def go():
        book, clock = _book(lease_s=10, max_attempts=2)
        job, _ = await book.submit(None, {"n": 1}, None, None)
        claim = await book.claim("runner-1", 0)
        assert claim.id == job["id"] and book.get(job["id"], None)["status"] == "in_progress"
        clock.now += 5
        assert (await book.report(job["id"], "runner-1", [("progress", {"stage": "denoising", "step": 1, "total": 4})]))["lost"] is False
        clock.now += 11  # runner-1 went silent: its replica is presumed lost
        book.sweep()
        assert book.get(job["id"], None)["status"] == "queued"
        assert (await book.report(job["id"], "runner-1", []))["lost"] is True
        again = await book.claim("runner-2", 0)
        assert again.id == job["id"] and again.attempt == 2
        clock.now += 11
        book.sweep()
        record = book.get(job["id"], None)
        assert record["status"] == "failed" and "lost" in record["error"]["message"]
        assert [e["type"] for e in (await book.events(job["id"], None, 0, 0))["events"]] == [
            "queued", "in_progress", "progress", "requeued", "in_progress", "failed"]

    asyncio.run(go())


def test_pages_are_newest_first_per_owner_and_other_owners_jobs_are_absent():
    async def go():
        book, clock = _book()
        ids = []
        for n in range(5):
            clock.now += 1
            ids.append((await book.submit("alice", {"n": n}, None, None))[0]["id"])
        theirs, _ = await book.submit("bob", {"n": 9}, None, None)
        first = book.page("alice", 2, None)
        assert [j["id"] for j in first["data"]] == ids[::-1][:2] and first["has_more"]
        second = book.page("alice", 2, first["last_id"])
        third = book.page("alice", 2, second["last_id"])
        assert [j["id"] for j in second["data"] + third["data"]] == ids[::-1][2:] and not third["has_more"]
        for call in (lambda: book.get(theirs["id"], "alice"), lambda: book.page("alice", 2, theirs["id"])):
            with pytest.raises(NotFound):
                call()
        with pytest.raises(NotFound):
            await book.cancel(theirs["id"], "alice")
        assert book.get(theirs["id"], "bob")["status"] == "queued"

    asyncio.run(go())


def test_idempotency_key_returns_the_first_job_and_refuses_a_different_body():
    async def go():
        book, _ = _book()
        job, created = await book.submit("alice", {"n": 1, "seed": 5}, None, "key-1", "fp-1")
        again, created_again = await book.submit("alice", {"n": 1, "seed": 9}, None, "key-1", "fp-1")
        assert created and not created_again and again["id"] == job["id"]
        with pytest.raises(Conflict):
            await book.submit("alice", {"n": 2}, None, "key-1", "fp-2")
        other, created_other = await book.submit("bob", {"n": 1}, None, "key-1", "fp-1")  # keys are per owner
        assert created_other and other["id"] != job["id"]

    asyncio.run(go())


# --- the job API end to end -----------------------------------------------------------------------


def _jobs_api(tmp_path, monkeypatch, steps_delay_s: float = 0.0, **changes: Any):
    monkeypatch.setenv("SANA_SERVE_WEBHOOK_SECRET", SECRET)
    config = app_config(files={"directory": str(tmp_path / "files")}, **changes)
    stages = fake_stages(config.routes)
    stages.routes["r1k"][0].delay_s = steps_delay_s
    book = JobBook(config.jobs)
    deps = build_deps(config, stages.handles(), RecordingMetrics(), LocalHandle(book))
    return build_api(deps), deps, stages


async def _run_with_client(app, deps, scenario, start_runner: bool = True):
    if start_runner:
        deps.job_runner.start()
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
            return await scenario(client)
    finally:
        await deps.job_runner.stop()


async def _until(client, job_id: str, statuses: set[str], headers=None, timeout_s: float = 10) -> dict:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        record = (await client.get(f"/v1/images/jobs/{job_id}", headers=headers)).json()
        if record["status"] in statuses or loop.time() > deadline:
            return record
        await asyncio.sleep(0.02)


def _events(text: str) -> list[tuple[int, str, dict]]:
    events = []
    for frame in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in frame.splitlines() if not line.startswith(":"))
        if "data" in fields:
            events.append((int(fields["id"]), fields["event"], json.loads(fields["data"])))
    return events


def test_a_job_runs_with_progress_events_and_its_result_is_a_file_url(tmp_path, monkeypatch):
    app, deps, _ = _jobs_api(tmp_path, monkeypatch)

    async def scenario(client):
        submitted = await client.post("/v1/images/jobs", json={**BODY, "n": 2, "partial_images": 1})
        assert submitted.status_code == 202 and submitted.headers["location"].endswith(submitted.json()["id"])
        job_id = submitted.json()["id"]
        record = await _until(client, job_id, {"completed", "failed"})
        assert record["status"] == "completed", record
        assert record["progress"] == {"stage": "completed", "step": 4, "total": 4}
        events = _events((await client.get(f"/v1/images/jobs/{job_id}/events")).text)
        kinds = [kind for _, kind, _ in events]
        assert kinds[:2] == ["queued", "in_progress"] and kinds[-1] == "completed"
        steps = [data["step"] for _, kind, data in events if kind == "progress" and data["stage"] == "denoising"]
        assert steps == [0, 1, 2, 3, 4]
        partial = [data for _, kind, data in events if kind == "partial_image"]
        assert len(partial) == 1 and len(partial[0]["urls"]) == 2
        # Resume: after the event with id 3, exactly the rest.
        resumed = _events((await client.get(f"/v1/images/jobs/{job_id}/events",
                                            headers={"Last-Event-ID": "3"})).text)
        assert [seq for seq, _, _ in resumed] == [seq for seq, _, _ in events if seq > 3]
        urls = [item["url"] for item in record["result"]["data"]]
        assert len(urls) == 2 and all(url.startswith("http://gw/v1/images/files/") for url in urls)
        image = await client.get(urls[0].removeprefix("http://gw"))
        assert image.status_code == 200 and image.headers["content-type"] == "image/png"
        assert Image.open(io.BytesIO(image.content)).size == (64, 64)
        missing = await client.get("/v1/images/files/" + "0" * 64 + ".png")
        assert missing.status_code == 404 and "expired" in missing.json()["error"]["message"]
        return job_id

    asyncio.run(_run_with_client(app, deps, scenario))


def test_cancel_a_queued_job_at_once_and_a_running_one_within_a_step(tmp_path, monkeypatch):
    app, deps, stages = _jobs_api(tmp_path, monkeypatch, steps_delay_s=5.0, jobs={"runners_per_gateway": 1})

    async def scenario(client):
        running = (await client.post("/v1/images/jobs", json={**BODY, "num_inference_steps": 50})).json()["id"]
        queued = (await client.post("/v1/images/jobs", json=BODY)).json()["id"]
        record = await _until(client, running, {"in_progress"})
        while record["progress"].get("step", 0) < 2:
            record = (await client.get(f"/v1/images/jobs/{running}")).json()
            await asyncio.sleep(0.01)
        cancelled_queued = (await client.post(f"/v1/images/jobs/{queued}/cancel")).json()
        assert cancelled_queued["status"] == "cancelled"  # at once: it never ran
        asked_at = stages.routes["r1k"][0].steps_run
        answer = (await client.post(f"/v1/images/jobs/{running}/cancel")).json()
        assert answer["cancel_requested"]
        final = await _until(client, running, {"cancelled", "completed", "failed"})
        assert final["status"] == "cancelled"
        assert stages.routes["r1k"][0].steps_run <= asked_at + 1
        assert len([c for c in stages.calls("denoiser:r1k", "denoise")]) == 1  # the queued one never ran

    asyncio.run(_run_with_client(app, deps, scenario))


def test_jobs_are_private_to_their_key(tmp_path, monkeypatch):
    app, deps, _ = _jobs_api(tmp_path, monkeypatch,
                             auth={"enabled": True, "key_hashes": [key_digest(KEY_A), key_digest(KEY_B)]})
    alice, bob = ({"Authorization": f"Bearer {key}"} for key in (KEY_A, KEY_B))

    async def scenario(client):
        assert (await client.post("/v1/images/jobs", json=BODY)).status_code == 401
        job_id = (await client.post("/v1/images/jobs", json=BODY, headers=alice)).json()["id"]
        for method, path in (("GET", f"/v1/images/jobs/{job_id}"), ("POST", f"/v1/images/jobs/{job_id}/cancel"),
                             ("GET", f"/v1/images/jobs/{job_id}/events")):
            answer = await client.request(method, path, headers=bob)
            assert answer.status_code == 404, (path, answer.text)
        assert (await client.get("/v1/images/jobs", headers=bob)).json()["data"] == []
        assert [j["id"] for j in (await client.get("/v1/images/jobs", headers=alice)).json()["data"]] == [job_id]
        done = await _until(client, job_id, {"completed"}, headers=alice)
        url = done["result"]["data"][0]["url"].removeprefix("http://gw")
        assert (await client.get(url)).status_code == 401  # files follow the API's auth rules
        assert (await client.get(url, headers=bob)).status_code == 200  # content addresses are capabilities

    asyncio.run(_run_with_client(app, deps, scenario))


def test_idempotent_submit_and_bad_job_requests_name_their_field(tmp_path, monkeypatch):
    app, deps, _ = _jobs_api(tmp_path, monkeypatch)

    async def scenario(client):
        headers = {"Idempotency-Key": "order-42"}
        first = await client.post("/v1/images/jobs", json={**BODY, "seed": None}, headers=headers)
        again = await client.post("/v1/images/jobs", json={**BODY, "seed": None}, headers=headers)
        assert first.status_code == 202 and again.status_code == 200 and again.json()["id"] == first.json()["id"]
        other = await client.post("/v1/images/jobs", json={**BODY, "prompt": "a blue star"}, headers=headers)
        assert other.status_code == 409 and other.json()["error"]["param"] == "Idempotency-Key"
        for body, param in (({**BODY, "stream": True}, "stream"), ({**BODY, "n": 9}, "n"),
                            ({**BODY, "webhook": {"url": "http://10.0.0.1/hook"}}, "webhook"),
                            ({**BODY, "webhook": {"url": "ftp://x"}}, "webhook"),
                            ({**BODY, "webhook": {"url": "http://127.0.0.1:9/h", "events": ["exploded"]}}, "webhook"),
                            # The route's own limits are checked at submit too, not when the job runs.
                            ({**BODY, "model": "r4k", "n": 2}, "n"),
                            ({**BODY, "model": "r1k", "size": "4096x4096"}, "size")):
            answer = await client.post("/v1/images/jobs", json=body)
            assert answer.status_code == 400 and answer.json()["error"]["param"] == param, (body, answer.text)
        unknown = await client.post("/v1/images/jobs", json={**BODY, "model": "nope"})
        assert unknown.status_code == 404 and unknown.json()["error"]["param"] == "model"
        assert [job["id"] for job in (await client.get("/v1/images/jobs")).json()["data"]] == [first.json()["id"]]
        page = await client.get("/v1/images/jobs?limit=0")
        assert page.status_code == 400 and page.json()["error"]["param"] == "limit"
        assert (await client.get("/v1/images/jobs/job_nope")).status_code == 404
        bad_resume = await client.get(f"/v1/images/jobs/{first.json()['id']}/events", headers={"Last-Event-ID": "x"})
        assert bad_resume.status_code == 400 and bad_resume.json()["error"]["param"] == "Last-Event-ID"

    asyncio.run(_run_with_client(app, deps, scenario, start_runner=False))


def test_webhooks_are_signed_retried_after_a_500_and_only_sent_to_allowed_hosts(tmp_path, monkeypatch):
    receiver = Receiver(failures=1)
    try:
        app, deps, _ = _jobs_api(tmp_path, monkeypatch, jobs={"webhooks": {
            "allowed_hosts": [receiver.host], "backoff_s": 0.05, "max_attempts": 3}})

        async def scenario(client):
            hook = {"url": f"http://{receiver.host}/hooks/sana", "events": ["started", "completed"]}
            job_id = (await client.post("/v1/images/jobs", json={**BODY, "webhook": hook})).json()["id"]
            await _until(client, job_id, {"completed"})
            for _ in range(200):
                if len(receiver.received) >= 3:
                    break
                await asyncio.sleep(0.02)
            refused = await client.post("/v1/images/jobs", json={
                **BODY, "webhook": {"url": "http://example.com/hook"}})
            assert refused.status_code == 400 and "allowed" in refused.json()["error"]["message"]
            return job_id

        job_id = asyncio.run(_run_with_client(app, deps, scenario))
    finally:
        receiver.close()
    # started (a 500, then delivered) and completed: three POSTs, all signed.
    assert len(receiver.received) == 3
    bodies = [json.loads(body) for _, body in receiver.received]
    assert bodies[0]["type"] == "image.job.started"  # the first POST, answered 500
    assert sorted(b["type"] for b in bodies) == ["image.job.completed", "image.job.started", "image.job.started"]
    for headers, body in receiver.received:
        assert verify_signature(SECRET, headers, body)
        assert not verify_signature("wrong-secret", headers, body)
    completed = next(b for b in bodies if b["type"] == "image.job.completed")["data"]
    assert completed["id"] == job_id and completed["status"] == "completed"
    assert completed["result"]["data"][0]["url"].startswith("http://gw/v1/images/files/")
    # A retry is the same message (same webhook-id), so receivers can de-duplicate.
    started_ids = {h["webhook-id"] for h, b in receiver.received if json.loads(b)["type"] == "image.job.started"}
    assert len(started_ids) == 1
    assert deps.metrics.webhooks.count("retried") == 1 and deps.metrics.webhooks.count("delivered") == 2


def test_the_file_store_expires_files_and_keeps_within_its_size(tmp_path):
    from serve.jobs.files import DirectoryFileStore

    clock = Clock()
    store = DirectoryFileStore(tmp_path / "files", ttl_s=100, max_bytes=2500, clock=clock)
    first = store.put(b"a" * 1000, "png")
    assert store.put(b"a" * 1000, "png") == first  # content-addressed: stored once
    clock.now += 10
    second = store.put(b"b" * 1000, "webp")
    clock.now += 10
    third = store.put(b"c" * 1000, "jpeg")
    assert store.get(second).media_type == "image/webp" and store.get(second).expires_at == 1110
    store.sweep()  # 3000 bytes > 2500: the oldest goes
    assert store.get(first) is None and store.get(second) is not None
    clock.now += 91  # second is 101 s old
    assert store.get(second) is None and store.get(third) is not None
    assert store.get("../../etc/passwd") is None and store.get(third.upper()) is None
    with pytest.raises(ValueError):
        store.put(b"x", "gif")
