"""Progress and cancel against a running server (loopback only): time to the first event, and how
fast a cancel frees the work.

    sana-serve run &            # the embedded default on 127.0.0.1:8000
    python -m bench.progress --url http://127.0.0.1:8000 --repeats 7

Each round, interleaved, measures:
- plain: a non-streamed request's latency (the baseline);
- stream: the same request with `stream: true` and progress events: time to the first byte
  (the `queued` event), to the first denoising step, and to the completed image;
- cancel: a long job cancelled once it reports step 3: cancel call → job `cancelled` (the runner
  stopped, its denoiser rows left the batch), and the denoising steps reported after the cancel.
Prints medians with [min, max] and the ratios (first step / plain latency; cancel time / one
solver step); writes JSON to bench/results/progress.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import httpx

from bench.load import check_loopback

BODY = {"prompt": "a red heart on a blue background", "size": "512x512", "num_inference_steps": 20}


def plain(client: httpx.Client, seed: int) -> float:
    started = time.perf_counter()
    client.post("/v1/images/generations", json={**BODY, "seed": seed}).raise_for_status()
    return time.perf_counter() - started


def streamed(client: httpx.Client, seed: int) -> dict[str, float]:
    body = {**BODY, "seed": seed, "stream": True, "stream_options": {"include_progress": True}}
    marks: dict[str, float] = {}
    started = time.perf_counter()
    with client.stream("POST", "/v1/images/generations", json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            now = time.perf_counter() - started
            data = json.loads(line[6:])
            marks.setdefault("first_byte", now)
            if data.get("stage") == "denoising" and data.get("step", 0) >= 1:
                marks.setdefault("first_step", now)
            if data.get("type") == "image_generation.completed":
                marks["completed"] = now
    return marks


def cancelled_job(client: httpx.Client, seed: int, cancel_at_step: int = 3) -> dict[str, float]:
    body = {**BODY, "seed": seed, "num_inference_steps": 50}  # the embedded default's max_steps
    job_id = client.post("/v1/images/jobs", json=body).json()["id"]
    while client.get(f"/v1/images/jobs/{job_id}").json()["progress"].get("step", 0) < cancel_at_step:
        time.sleep(0.005)
    asked = time.perf_counter()
    client.post(f"/v1/images/jobs/{job_id}/cancel").raise_for_status()
    while client.get(f"/v1/images/jobs/{job_id}").json()["status"] != "cancelled":
        time.sleep(0.005)
    freed = time.perf_counter() - asked
    events = [json.loads(line[6:]) for line in client.get(f"/v1/images/jobs/{job_id}/events").iter_lines()
              if line.startswith("data: ")]
    steps = [e for e in events if e["type"] == "progress" and e.get("stage") == "denoising" and e.get("step")]
    asked_seq = next(e["seq"] for e in events if e["type"] == "cancel_requested")
    step_s = statistics.median(b["created_at"] - a["created_at"] for a, b in zip(steps, steps[1:]))
    return {"cancel_to_cancelled": freed, "steps_after_cancel": sum(e["seq"] > asked_seq for e in steps),
            "step": step_s}


def summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", default="bench/results/progress.json")
    args = parser.parse_args()
    check_loopback(args.url)
    rounds: list[dict[str, float]] = []
    with httpx.Client(base_url=args.url, timeout=300) as client:
        plain(client, 0)  # warm-up: first requests pay for caches
        for index in range(args.repeats):
            seed = 100 + index
            row = {"plain": plain(client, seed)}
            row.update({f"stream_{k}": v for k, v in streamed(client, seed).items()})
            row.update(cancelled_job(client, seed))
            rounds.append(row)
            print(json.dumps({k: round(v, 4) for k, v in row.items()}), flush=True)
    keys = rounds[0].keys()
    report = {key: summary([r[key] for r in rounds]) for key in keys}
    report["first_step_over_plain"] = summary([r["stream_first_step"] / r["plain"] for r in rounds])
    report["completed_over_plain"] = summary([r["stream_completed"] / r["plain"] for r in rounds])
    report["cancel_in_steps"] = summary([r["cancel_to_cancelled"] / r["step"] for r in rounds])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"body": BODY, "repeats": args.repeats, "summary": report}, indent=2))
    print(f"{'measure':<24}{'median':>10}{'min':>10}{'max':>10}")
    for key, value in report.items():
        print(f"{key:<24}{value['median']:>10.3f}{value['min']:>10.3f}{value['max']:>10.3f}")


if __name__ == "__main__":
    main()
