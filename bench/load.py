"""HTTP load generator for the images API (asyncio, loopback only, bounded in count and time).

    python -m bench.load --url http://127.0.0.1:8000 --mode closed --concurrency 1,8 --requests 16
    python -m bench.load --url http://127.0.0.1:8000 --mode open --rate 2 --requests 20

Closed loop: C clients each send their next request when the previous answers. Open loop: requests
start at a fixed rate whatever the answers. Requests cycle through a mix of prompts, sizes and
seeds. Reports images/s, p50/p95/p99 latency, errors, the server's per-stage split; writes JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import httpx

PROMPTS = [
    "a red fox in the snow",
    "a lighthouse on a cliff at dusk",
    "a bowl of ramen, studio photo",
    "an astronaut riding a horse",
    "a watercolor of a mountain village",
    "a cyberpunk street at night, neon lights",
    "a cat sleeping on a windowsill",
    "a sailing ship in a storm",
]


@dataclass
class Result:
    status: int
    latency_s: float
    images: int
    timings_ms: dict = field(default_factory=dict)


def workload(index: int, sizes: list[str], steps: int) -> dict:
    """The index-th request of the mix: prompts repeat (as users' do), seeds never do."""
    return {
        "prompt": PROMPTS[index % len(PROMPTS)],
        "size": sizes[index % len(sizes)],
        "num_inference_steps": steps,
        "seed": 1000 + index,
    }


def check_loopback(url: str) -> None:
    host = urlparse(url).hostname
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit(f"refusing to load {host}: this generator targets loopback only")


async def _send(client: httpx.AsyncClient, url: str, body: dict) -> Result:
    started = time.perf_counter()
    try:
        response = await client.post(f"{url}/v1/images/generations", json=body)
        latency = time.perf_counter() - started
        if response.status_code != 200:
            return Result(response.status_code, latency, 0)
        payload = response.json()
        return Result(200, latency, len(payload["data"]), payload.get("timings_ms", {}))
    except httpx.HTTPError:
        return Result(0, time.perf_counter() - started, 0)


async def closed_loop(url: str, concurrency: int, requests: int, time_limit_s: float,
                      sizes: list[str], steps: int) -> tuple[list[Result], float]:
    check_loopback(url)
    counter = iter(range(requests))
    deadline = time.perf_counter() + time_limit_s
    results: list[Result] = []

    async def client_loop(client: httpx.AsyncClient) -> None:
        for index in counter:
            if time.perf_counter() > deadline:
                return
            results.append(await _send(client, url, workload(index, sizes, steps)))

    async with httpx.AsyncClient(timeout=time_limit_s) as client:
        started = time.perf_counter()
        await asyncio.gather(*(client_loop(client) for _ in range(concurrency)))
        return results, time.perf_counter() - started


async def open_loop(url: str, rate: float, requests: int, time_limit_s: float,
                    sizes: list[str], steps: int) -> tuple[list[Result], float]:
    check_loopback(url)
    async with httpx.AsyncClient(timeout=time_limit_s) as client:
        started = time.perf_counter()
        tasks = []
        for index in range(requests):
            due = started + index / rate
            if due - started > time_limit_s:
                break
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            tasks.append(asyncio.create_task(_send(client, url, workload(index, sizes, steps))))
        results = list(await asyncio.gather(*tasks))
        return results, time.perf_counter() - started


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def summarize(results: list[Result], wall_s: float) -> dict:
    ok = [r for r in results if r.status == 200]
    latencies = [r.latency_s * 1000 for r in ok]
    stages = {}
    for stage in ("queue", "encode", "denoise", "decode", "image_check", "image_encode", "total"):
        values = [r.timings_ms[stage] for r in ok if stage in r.timings_ms]
        if values:
            stages[stage] = round(statistics.mean(values), 1)
    return {
        "requests": len(results),
        "errors": len(results) - len(ok),
        "images": sum(r.images for r in ok),
        "wall_s": round(wall_s, 3),
        "images_per_s": round(sum(r.images for r in ok) / wall_s, 4) if wall_s else 0.0,
        "latency_ms": {
            "mean": round(statistics.mean(latencies), 1) if latencies else None,
            "p50": round(_percentile(latencies, 0.50), 1) if latencies else None,
            "p95": round(_percentile(latencies, 0.95), 1) if latencies else None,
            "p99": round(_percentile(latencies, 0.99), 1) if latencies else None,
        },
        "server_stage_mean_ms": stages,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--mode", choices=["closed", "open"], default="closed")
    parser.add_argument("--concurrency", default="1,8", help="closed loop: comma-separated levels")
    parser.add_argument("--rate", type=float, default=1.0, help="open loop: requests per second")
    parser.add_argument("--requests", type=int, default=16, help="per level")
    parser.add_argument("--time-limit", type=float, default=600.0, help="seconds per level")
    parser.add_argument("--sizes", default="512x512,768x512")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("bench/results/load.json"))
    args = parser.parse_args()
    sizes = args.sizes.split(",")
    report = {}
    if args.mode == "closed":
        for level in (int(c) for c in args.concurrency.split(",")):
            results, wall = asyncio.run(closed_loop(args.url, level, args.requests, args.time_limit, sizes, args.steps))
            report[f"closed_c{level}"] = summarize(results, wall)
    else:
        results, wall = asyncio.run(open_loop(args.url, args.rate, args.requests, args.time_limit, sizes, args.steps))
        report[f"open_{args.rate}rps"] = summarize(results, wall)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
