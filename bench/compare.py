"""Served vs in-process on one checkpoint and workload, interleaved request by request, with medians and spreads.

    python -m bench.compare [--checkpoint DIR] [--rounds 5] [--requests 6] [--steps 20] [--device cpu]
                            [--replica-env KEY=VALUE] [--out bench/results/compare-cpu.json]

Four systems stay loaded for the whole run: diffusers' SanaPipeline and our in-process pipeline in
this process, and the Ray Serve app (deploy/local.yaml's shape on the checkpoint, one Denoiser
replica, admission off) over HTTP on 127.0.0.1.

The sequential systems are interleaved request by request: request i goes to diffusers, in-process
and served-at-concurrency-1 back to back, in an order that rotates with i, so a slow second of this
machine lands on all three alike. Served throughput at concurrency 8 runs as a block per round
(closed loop, 16 requests) between those. After one uncounted warm-up round, each round gives its
ratios (mean latency over mean latency; images/s over images/s, the sequential systems' from the
sum of their latencies); the report is each ratio's median over rounds with [min, max] and spread.
Torch threads are pinned (--threads here and in each stage replica); prompts, sizes and seeds are
the same for every system. Without --checkpoint it materializes `small` (Sana-shaped, ~1 s of CPU
per 512px image) and `small-sprint` (the same shapes as a SANA-Sprint checkpoint) for a fourth
sequential row: our Sprint path in-process at its default 2 steps, against diffusers' SanaPipeline at
the workload's 20 (the throughput a user gains by picking the Sprint route).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from bench.load import PROMPTS, closed_loop, summarize, workload
from models.registry import SPRINT_STEPS
from serve.local_app import free_port, local_app_args


def _timed(generate: Callable[[str, int, int, int, int], None], body: dict) -> float:
    """Seconds one request takes (prompt, size, seed and steps from `body`)."""
    width, height = map(int, body["size"].split("x"))
    started = time.perf_counter()
    generate(body["prompt"], width, height, body["seed"], body["num_inference_steps"])
    return time.perf_counter() - started


def diffusers_baseline(checkpoint: str, device: str) -> Callable[[str, int, int, int, int], None]:
    """diffusers' SanaPipeline, warmed up: generate(prompt, width, height, seed, steps)."""
    import torch
    from diffusers import SanaPipeline

    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    pipe = SanaPipeline.from_pretrained(checkpoint, torch_dtype=dtype).to(device)
    pipe.set_progress_bar_config(disable=True)

    def generate(prompt: str, width: int, height: int, seed: int, steps: int) -> None:
        pipe(prompt, width=width, height=height, num_inference_steps=steps,
             generator=torch.Generator("cpu").manual_seed(seed), output_type="np")

    generate("warm-up", 512, 512, 0, 2)
    return generate


def in_process_baseline(checkpoint: str, device: str, steps: int | None = None) -> Callable[[str, int, int, int, int], None]:
    """Our in-process pipeline (the stages without Ray), warmed up. `steps` fixes the step count
    (the Sprint row: 2 steps whatever the workload asks of the others)."""
    from models.pipeline import GenerationRequest, SanaInProcessPipeline

    pipeline = SanaInProcessPipeline.from_pretrained(checkpoint, device=device)

    def generate(prompt: str, width: int, height: int, seed: int, asked: int) -> None:
        pipeline.generate([GenerationRequest(prompt, width=width, height=height, steps=steps or asked, seed=seed)])

    generate("warm-up", 512, 512, 0, 2)
    return generate


class Served:
    """The Ray Serve app (deploy/local.yaml's shape on the checkpoint, one Denoiser replica) on a
    loopback port, kept up across rounds."""

    def __init__(self, checkpoint: str, device: str, threads: int, steps: int, env: dict[str, str]) -> None:
        import ray
        from ray import serve

        from serve.app import build_app

        args = local_app_args(checkpoint, torch_threads=threads, device=device)
        deployment = args["routes"]["sana-shapes"]["denoiser"]["deployment"]
        deployment.pop("autoscaling_config", None)  # one replica: the comparison is about one pipeline
        deployment["num_replicas"] = 1
        args["gateway"]["admission"] = {"max_queue_wait_s": None}  # measure the pipeline, not shedding
        if env:  # e.g. OMP_WAIT_POLICY=PASSIVE: set before the replica's process loads OpenMP
            stages = [args["text_encoder"]] + [route[stage] for route in args["routes"].values()
                                               for stage in ("denoiser", "decoder")]
            for stage in stages:
                actor = stage.setdefault("deployment", {}).setdefault("ray_actor_options", {})
                actor.setdefault("runtime_env", {}).setdefault("env_vars", {}).update(env)
        self.port = free_port()
        ray.init(include_dashboard=False, log_to_driver=False)
        serve.start(http_options={"host": "127.0.0.1", "port": self.port})
        serve.run(build_app(args), name="bench", route_prefix="/")
        self.url = f"http://127.0.0.1:{self.port}"
        self.client = httpx.Client(timeout=600)  # keep-alive, like any client sending a series
        self.stage_ms: list[dict] = []  # the server's timings_ms of each concurrency-1 request
        asyncio.run(closed_loop(self.url, 1, 2, 120, ["512x512"], steps))  # warm the HTTP path

    def generate(self, prompt: str, width: int, height: int, seed: int, steps: int) -> None:
        """One request at concurrency 1, in the sequential systems' call shape."""
        body = {"prompt": prompt, "size": f"{width}x{height}", "seed": seed, "num_inference_steps": steps}
        response = self.client.post(f"{self.url}/v1/images/generations", json=body)
        if response.status_code != 200:
            raise RuntimeError(f"the served app answered {response.status_code}: {response.text[:200]}")
        self.stage_ms.append(response.json().get("timings_ms", {}))

    def run(self, concurrency: int, requests: int, sizes: list[str], steps: int) -> dict:
        results, wall = asyncio.run(closed_loop(self.url, concurrency, requests, 1800, sizes, steps))
        summary = summarize(results, wall)
        if summary["errors"]:
            raise RuntimeError(f"the served app answered {summary['errors']} errors")
        return {"images_per_s": summary["images_per_s"], "latency_ms_mean": summary["latency_ms"]["mean"],
                "wall_s": summary["wall_s"], "server_stage_mean_ms": summary["server_stage_mean_ms"]}

    def close(self) -> None:
        import ray
        from ray import serve

        self.client.close()
        serve.shutdown()
        ray.shutdown()


def spread(values: list[float]) -> dict:
    """Median with [min, max] and the spread as a share of the median."""
    middle = statistics.median(values)
    return {"median": round(middle, 3), "min": round(min(values), 3), "max": round(max(values), 3),
            "spread_pct": round(100 * (max(values) - min(values)) / middle, 1) if middle else None}


SEQUENTIAL = ("diffusers_sequential", "in_process_sequential", "served_c1", "sprint_in_process")


def _round(index: int, sequential: dict[str, Callable[..., None]], served: Served, requests: int,
           sizes: list[str], steps: int) -> dict:
    """One round: `requests` requests, each through every sequential system back to back (the
    order rotating with the request), then the concurrency-8 block."""
    names = [name for name in SEQUENTIAL if name in sequential]
    seconds: dict[str, list[float]] = {name: [] for name in names}
    served.stage_ms.clear()
    for i in range(requests):
        body = workload(index * requests + i, sizes, steps)
        shift = (index * requests + i) % len(names)
        for name in names[shift:] + names[:shift]:
            seconds[name].append(_timed(sequential[name], body))
    figures = {name: {"images_per_s": round(len(values) / sum(values), 4),
                      "latency_ms_mean": round(1000 * statistics.mean(values), 1)}
               for name, values in seconds.items()}
    figures["served_c1"]["server_stage_mean_ms"] = {
        stage: round(statistics.mean(t[stage] for t in served.stage_ms), 1) for stage in served.stage_ms[0]}
    figures["served_c8"] = served.run(8, 8 * 2, sizes, steps)
    figures["ratios"] = _ratios(figures)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint")
    parser.add_argument("--sprint-checkpoint", help="with --checkpoint: a Sprint checkpoint for the Sprint row")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=6, help="per sequential system and round")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--sizes", default="512x512,768x512")
    parser.add_argument("--threads", type=int, default=2, help="torch threads, in this process and per stage replica")
    parser.add_argument("--replica-env", action="append", default=[], metavar="KEY=VALUE",
                        help="environment of every stage replica (repeatable), over deploy/local.yaml's")
    parser.add_argument("--out", type=Path, default=Path("bench/results/compare-cpu.json"))
    args = parser.parse_args()
    sizes = args.sizes.split(",")
    env = dict(item.split("=", 1) for item in args.replica_env)
    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = args.checkpoint
        if checkpoint is None:
            from models.materialize import materialize

            checkpoint = str(materialize("small", Path(tmp) / "small"))
            # The same small model's shapes as a Sprint checkpoint (random weights, like `small`).
            sprint_checkpoint = str(materialize("small-sprint", Path(tmp) / "small-sprint"))
        else:
            sprint_checkpoint = args.sprint_checkpoint
        sequential = {
            "diffusers_sequential": diffusers_baseline(checkpoint, args.device),
            "in_process_sequential": in_process_baseline(checkpoint, args.device),
        }
        if sprint_checkpoint:
            sequential["sprint_in_process"] = in_process_baseline(sprint_checkpoint, args.device, SPRINT_STEPS)
        served = Served(checkpoint, args.device, args.threads, args.steps, env)
        sequential["served_c1"] = served.generate
        rounds = []
        try:
            # A round that is not counted, over every prompt of the mix: every cache (text
            # embeddings in ours, allocator, the HTTP path) warm before measuring. Rounds that
            # met new prompts would give in-process (cached after) an early handicap.
            _round(0, sequential, served, len(PROMPTS), sizes, args.steps)
            for index in range(args.rounds):
                rounds.append(_round(index, sequential, served, args.requests, sizes, args.steps))
                print(f"round {index + 1}: {json.dumps(rounds[-1]['ratios'])}", flush=True)
        finally:
            served.close()
    names = [n for n in rounds[0] if n != "ratios"]
    report = {
        "checkpoint": args.checkpoint or "small (materialized)", "device": args.device, "rounds": args.rounds,
        "requests": args.requests, "steps": args.steps, "sizes": sizes, "threads": args.threads,
        "replica_env": env,
        "systems": {name: {"images_per_s": spread([r[name]["images_per_s"] for r in rounds]),
                           "latency_ms_mean": spread([r[name]["latency_ms_mean"] for r in rounds])}
                    for name in names},
        "served_c1_server_stage_ms": {stage: spread([r["served_c1"]["server_stage_mean_ms"][stage] for r in rounds])
                                      for stage in rounds[0]["served_c1"]["server_stage_mean_ms"]},
        "ratios": {name: spread([r["ratios"][name] for r in rounds]) for name in rounds[0]["ratios"]},
        "per_round": rounds,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({"systems": report["systems"], "served_c1_server_stage_ms": report["served_c1_server_stage_ms"],
                      "ratios": report["ratios"]}, indent=2))


def _ratios(figures: dict) -> dict:
    diffusers, in_process = figures["diffusers_sequential"], figures["in_process_sequential"]
    c1, c8 = figures["served_c1"], figures["served_c8"]
    ratios = {
        "served_c1_latency_over_in_process": round(c1["latency_ms_mean"] / in_process["latency_ms_mean"], 4),
        "served_c1_latency_over_diffusers": round(c1["latency_ms_mean"] / diffusers["latency_ms_mean"], 4),
        "served_c8_throughput_over_diffusers": round(c8["images_per_s"] / diffusers["images_per_s"], 4),
        "in_process_throughput_over_diffusers": round(in_process["images_per_s"] / diffusers["images_per_s"], 4),
    }
    if "sprint_in_process" in figures:  # Sprint at 2 steps against diffusers' SanaPipeline at the workload's 20
        ratios["sprint_throughput_over_diffusers"] = round(
            figures["sprint_in_process"]["images_per_s"] / diffusers["images_per_s"], 4)
    return ratios


if __name__ == "__main__":
    main()
