"""Served vs in-process on one checkpoint and workload, interleaved, with medians and spreads.

    python -m bench.compare [--checkpoint DIR] [--rounds 5] [--requests 6] [--steps 20] [--device cpu]
                            [--out bench/results/compare-cpu.json]

Four systems stay loaded for the whole run: diffusers' SanaPipeline and our in-process pipeline in
this process (one request at a time), and the Ray Serve app (deploy/local.yaml's shape on the
checkpoint, one Denoiser replica, admission off) over HTTP on 127.0.0.1 at concurrency 1 and 8.
After one uncounted warm-up round, each round runs every system once on the same prompts, sizes
and seeds, in an order that rotates from round to round; each round gives its ratios, and the
report is the median of each ratio with its [min, max] and spread. Torch threads are pinned (--threads here and in each stage replica).
Without --checkpoint it materializes `small` (Sana-shaped, ~1 s of CPU per 512px image).
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

from bench.load import closed_loop, summarize, workload
from serve.local_app import free_port, local_app_args


def _sequential(generate: Callable[[str, int, int, int, int], None], requests: int, sizes: list[str],
                steps: int) -> dict:
    latencies = []
    started = time.perf_counter()
    for index in range(requests):
        body = workload(index, sizes, steps)
        width, height = map(int, body["size"].split("x"))
        t0 = time.perf_counter()
        generate(body["prompt"], width, height, body["seed"], steps)
        latencies.append(time.perf_counter() - t0)
    wall = time.perf_counter() - started
    return {"images_per_s": round(requests / wall, 4), "latency_ms_mean": round(1000 * sum(latencies) / requests, 1),
            "wall_s": round(wall, 3)}


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


def in_process_baseline(checkpoint: str, device: str) -> Callable[[str, int, int, int, int], None]:
    """Our in-process pipeline (the stages without Ray), warmed up."""
    from models.pipeline import GenerationRequest, SanaInProcessPipeline

    pipeline = SanaInProcessPipeline.from_pretrained(checkpoint, device=device)

    def generate(prompt: str, width: int, height: int, seed: int, steps: int) -> None:
        pipeline.generate([GenerationRequest(prompt, width=width, height=height, steps=steps, seed=seed)])

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
        asyncio.run(closed_loop(self.url, 1, 2, 120, ["512x512"], steps))  # warm the HTTP path

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

        serve.shutdown()
        ray.shutdown()


def spread(values: list[float]) -> dict:
    """Median with [min, max] and the spread as a share of the median."""
    middle = statistics.median(values)
    return {"median": round(middle, 3), "min": round(min(values), 3), "max": round(max(values), 3),
            "spread_pct": round(100 * (max(values) - min(values)) / middle, 1) if middle else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=6, help="per system and round (c8 sends 8 per client slot)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--sizes", default="512x512,768x512")
    parser.add_argument("--threads", type=int, default=2, help="torch threads, in this process and per stage replica")
    parser.add_argument("--replica-env", action="append", default=[], metavar="KEY=VALUE",
                        help="environment of every stage replica (repeatable), e.g. OMP_WAIT_POLICY=PASSIVE")
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
        systems = {
            "diffusers_sequential": diffusers_baseline(checkpoint, args.device),
            "in_process_sequential": in_process_baseline(checkpoint, args.device),
        }
        served = Served(checkpoint, args.device, args.threads, args.steps, env)
        measure = {
            "diffusers_sequential": lambda: _sequential(systems["diffusers_sequential"], args.requests, sizes,
                                                        args.steps),
            "in_process_sequential": lambda: _sequential(systems["in_process_sequential"], args.requests, sizes,
                                                         args.steps),
            "served_c1": lambda: served.run(1, args.requests, sizes, args.steps),
            "served_c8": lambda: served.run(8, 8 * 2, sizes, args.steps),
        }
        rounds = []
        try:
            # A round that is not counted: every cache (text embeddings in ours, allocator, the
            # HTTP path) warm before measuring, so round 1 is not an outlier.
            for name in measure:
                measure[name]()
            for index in range(args.rounds):
                # Interleaved, and the order rotates each round so no system always runs first.
                names = list(measure)
                names = names[index % len(names):] + names[:index % len(names)]
                figures = {name: measure[name]() for name in names}
                figures["ratios"] = _ratios(figures)
                rounds.append(figures)
                print(f"round {index + 1}: {json.dumps(figures['ratios'])}", flush=True)
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
        "ratios": {name: spread([r["ratios"][name] for r in rounds]) for name in rounds[0]["ratios"]},
        "per_round": rounds,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({"systems": report["systems"], "ratios": report["ratios"]}, indent=2))


def _ratios(figures: dict) -> dict:
    diffusers, in_process = figures["diffusers_sequential"], figures["in_process_sequential"]
    c1, c8 = figures["served_c1"], figures["served_c8"]
    return {
        "served_c1_latency_over_in_process": round(c1["latency_ms_mean"] / in_process["latency_ms_mean"], 4),
        "served_c1_latency_over_diffusers": round(c1["latency_ms_mean"] / diffusers["latency_ms_mean"], 4),
        "served_c8_throughput_over_diffusers": round(c8["images_per_s"] / diffusers["images_per_s"], 4),
        "in_process_throughput_over_diffusers": round(in_process["images_per_s"] / diffusers["images_per_s"], 4),
    }


if __name__ == "__main__":
    main()
