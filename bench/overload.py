"""Overload: closed-loop clients at 1x, 2x and 5x a base concurrency against a running server
(loopback only, bounded in time), to see that it sheds what it cannot finish instead of queueing it.

    sana-serve run &            # the embedded default on 127.0.0.1:8000
    python -m bench.overload --url http://127.0.0.1:8000 --base 32 --duration 60 --rounds 2 --budget 10

Each client sends a request (512x512, 4 steps by default), waits for the answer (client timeout
60 s), and sends the next; after a 503 it waits the server's Retry-After (capped by --max-backoff,
default 60 s as the openai client does) as a polite client would. Levels run interleaved, round after round. Per level it prints: goodput
(images/s of 200s), p50/p99 latency of 200s, p99 time to a 503, and the count of each status
(0 = client timeout or connection error; `503 text` = Ray's proxy, `503 json` = our admission), and
checks the goals: no 5xx but 503 with Retry-After, no client timeouts, p99 of 200s within the
queue budget plus one request's service time (measured first: the median latency of a full
denoiser batch sent to the idle server), goodput at 2x at least 90% of 1x. JSON goes to bench/results/overload.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.load import _percentile, check_loopback

BODY = {"prompt": "a red heart on a blue background", "size": "512x512", "num_inference_steps": 4}


@dataclass
class Answer:
    kind: str  # "200", "503 json", "503 text", another status, "timeout"
    seconds: float
    images: int = 0
    retry_after: float | None = None
    service_ms: float | None = None  # the server's own time for a 200 (timings_ms.total)


async def _one(client: httpx.AsyncClient, url: str, seed: int) -> Answer:
    started = time.perf_counter()
    try:
        response = await client.post(f"{url}/v1/images/generations", json={**BODY, "seed": seed})
    except httpx.HTTPError:
        return Answer("timeout", time.perf_counter() - started)
    seconds = time.perf_counter() - started
    retry = response.headers.get("retry-after")
    retry_after = float(retry) if retry and retry.replace(".", "", 1).isdigit() else None
    if response.status_code == 200:
        payload = response.json()
        return Answer("200", seconds, len(payload["data"]), service_ms=payload["timings_ms"]["total"])
    kind = str(response.status_code)
    if response.status_code == 503:
        is_json = response.headers.get("content-type", "").startswith("application/json")
        kind = "503 json" if is_json else "503 text"
    return Answer(kind, seconds, retry_after=retry_after)


async def level(url: str, clients: int, duration_s: float, timeout_s: float, max_backoff_s: float) -> list[Answer]:
    check_loopback(url)
    answers: list[Answer] = []
    deadline = time.perf_counter() + duration_s
    seeds = iter(range(10**9))

    async def client_loop(client: httpx.AsyncClient) -> None:
        while time.perf_counter() < deadline:
            answer = await _one(client, url, next(seeds))
            answers.append(answer)
            if answer.kind.startswith("503"):
                await asyncio.sleep(min(max_backoff_s, answer.retry_after or 1.0))

    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(timeout=timeout_s, limits=limits) as client:
        await asyncio.gather(*(client_loop(client) for _ in range(clients)))
    return answers


def summarize(answers: list[Answer], duration_s: float) -> dict:
    ok = [a for a in answers if a.kind == "200"]
    refused = [a for a in answers if a.kind.startswith("503")]
    latencies = [a.seconds for a in ok]
    return {
        "answers": len(answers),
        "statuses": dict(Counter(a.kind for a in answers)),
        "goodput_images_per_s": round(sum(a.images for a in ok) / duration_s, 3),
        "latency_200_s": {"p50": _round(_percentile(latencies, 0.5)), "p99": _round(_percentile(latencies, 0.99))}
        if latencies else None,
        "time_to_503_p99_s": _round(_percentile([a.seconds for a in refused], 0.99)) if refused else None,
        "refusals_without_retry_after": sum(1 for a in refused if a.retry_after is None),
        "service_ms_median": round(statistics.median(a.service_ms for a in ok), 1) if ok else None,
    }


def _round(value: float) -> float:
    return round(value, 3)


def goals(report: dict[str, list[dict]], budget_s: float, service_s: float) -> dict[str, bool]:
    """The goals, over every round. `service_s`: one request's service time on a full server (see
    batch_latency)."""
    rounds = [r for runs in report.values() for r in runs]
    statuses = Counter()
    for r in rounds:
        statuses.update(r["statuses"])
    bad = {k: v for k, v in statuses.items() if k not in ("200", "503 json", "503 text")}
    goodput = {name: statistics.median(r["goodput_images_per_s"] for r in runs) for name, runs in report.items()}
    p99 = max((r["latency_200_s"]["p99"] for r in rounds if r["latency_200_s"]), default=0.0)
    return {
        "no_5xx_but_503_with_retry_after": not bad and all(r["refusals_without_retry_after"] == 0 for r in rounds),
        "no_client_timeouts": statuses.get("timeout", 0) == 0,
        "p99_of_200s_within_budget_plus_service": p99 <= budget_s + service_s,
        "goodput_2x_at_least_90pct_of_1x": "2x" in goodput and goodput["2x"] >= 0.9 * goodput["1x"],
    }


def _medians(runs: list[dict]) -> dict:
    """Median over rounds, with [min, max]."""
    def spread(values: list[float]) -> dict:
        return {"median": round(statistics.median(values), 3), "min": min(values), "max": max(values)} if values else None

    return {
        "goodput_images_per_s": spread([r["goodput_images_per_s"] for r in runs]),
        "latency_200_p50_s": spread([r["latency_200_s"]["p50"] for r in runs if r["latency_200_s"]]),
        "latency_200_p99_s": spread([r["latency_200_s"]["p99"] for r in runs if r["latency_200_s"]]),
        "time_to_503_p99_s": spread([r["time_to_503_p99_s"] for r in runs if r["time_to_503_p99_s"] is not None]),
        "share_503": spread([round(sum(v for k, v in r["statuses"].items() if k.startswith("503")) / r["answers"], 3)
                             for r in runs]),
    }


def batch_latency(url: str, batch: int, repeats: int = 3) -> float:
    """One request's service time on a full server: the median latency of `batch` requests sent
    together to an idle server (one full denoiser batch, nothing queued ahead)."""
    async def once(client: httpx.AsyncClient, round_index: int) -> list[float]:
        answers = await asyncio.gather(*(_one(client, url, 10_000 + round_index * batch + i) for i in range(batch)))
        assert all(a.kind == "200" for a in answers), [a.kind for a in answers]
        return [a.seconds for a in answers]

    async def run() -> float:
        async with httpx.AsyncClient(timeout=120) as client:
            return statistics.median([s for r in range(repeats) for s in await once(client, r)])

    return asyncio.run(run())


def solo_latency(url: str, repeats: int = 5) -> float:
    """One request's time on an idle server (median)."""
    times = []
    with httpx.Client(timeout=120) as client:
        for seed in range(repeats):
            started = time.perf_counter()
            client.post(f"{url}/v1/images/generations", json={**BODY, "seed": seed}).raise_for_status()
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--base", type=int, default=32,
                        help="1x: the admitted concurrency (about max_queue_wait_s × images/s; 32 for the embedded default)")
    parser.add_argument("--levels", default="1,2,5", help="multiples of --base")
    parser.add_argument("--batch", type=int, default=8, help="the Denoiser's max_batch_size (service time)")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds per level and round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=60.0, help="client timeout, seconds")
    parser.add_argument("--max-backoff", type=float, default=60.0,
                        help="cap on honouring Retry-After, seconds (the openai client honours up to 60)")
    parser.add_argument("--budget", type=float, default=10.0, help="the server's max_queue_wait_s (for the goal)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/overload.json"))
    args = parser.parse_args()

    solo = solo_latency(args.url)
    service = batch_latency(args.url, args.batch)
    print(f"solo latency {solo:.3f} s; service time in a full batch of {args.batch}: {service:.3f} s", flush=True)
    multiples = [int(m) for m in args.levels.split(",")]
    report: dict[str, list[dict]] = {f"{m}x": [] for m in multiples}
    for round_index in range(args.rounds):
        for multiple in multiples:
            clients = multiple * args.base
            answers = asyncio.run(level(args.url, clients, args.duration, args.timeout, args.max_backoff))
            summary = {"clients": clients, **summarize(answers, args.duration)}
            report[f"{multiple}x"].append(summary)
            print(f"round {round_index + 1} {multiple}x ({clients} clients): {json.dumps(summary)}", flush=True)
    checked = goals(report, args.budget, service)
    medians = {name: _medians(runs) for name, runs in report.items()}
    result = {"body": BODY, "solo_latency_s": round(solo, 3), "service_s_full_batch": round(service, 3),
              "budget_s": args.budget, "levels": report,
              "medians": medians, "goals": checked}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({"medians": medians, "goals": checked}, indent=2))


if __name__ == "__main__":
    main()
