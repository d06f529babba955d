"""Served vs in-process on one checkpoint and workload, all measured in this run.

    python -m bench.compare [--checkpoint DIR] [--requests 12] [--steps 20] [--device cpu]
                            [--out bench/results/compare-cpu.json]

Baselines, one request at a time: diffusers' SanaPipeline, and our in-process pipeline. Then the
Ray Serve app (deploy/local.yaml's shape, pointed at the checkpoint) over HTTP on 127.0.0.1 at
concurrency 1 and 8. Without --checkpoint it materializes `small` (Sana-shaped, ~1 s of CPU per
512px image). Prints the ratios the README reports and writes JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

from bench.load import closed_loop, summarize, workload
from serve.local_app import free_port, local_app_args


def _sequential(generate, requests: int, sizes: list[str], steps: int) -> dict:
    latencies = []
    started = time.perf_counter()
    for index in range(requests):
        body = workload(index, sizes, steps)
        width, height = map(int, body["size"].split("x"))
        t0 = time.perf_counter()
        generate(body["prompt"], width, height, body["seed"])
        latencies.append(time.perf_counter() - t0)
    wall = time.perf_counter() - started
    return {"images_per_s": round(requests / wall, 4), "latency_ms_mean": round(1000 * sum(latencies) / requests, 1),
            "wall_s": round(wall, 3)}


def diffusers_baseline(checkpoint: str, device: str, requests: int, sizes: list[str], steps: int) -> dict:
    import torch
    from diffusers import SanaPipeline

    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    pipe = SanaPipeline.from_pretrained(checkpoint, torch_dtype=dtype).to(device)
    pipe.set_progress_bar_config(disable=True)

    def generate(prompt: str, width: int, height: int, seed: int) -> None:
        pipe(prompt, width=width, height=height, num_inference_steps=steps,
             generator=torch.Generator("cpu").manual_seed(seed), output_type="np")

    generate("warm-up", 512, 512, 0)
    return _sequential(generate, requests, sizes, steps)


def in_process_baseline(checkpoint: str, device: str, requests: int, sizes: list[str], steps: int) -> dict:
    from models.pipeline import GenerationRequest, SanaInProcessPipeline

    pipeline = SanaInProcessPipeline.from_pretrained(checkpoint, device=device)

    def generate(prompt: str, width: int, height: int, seed: int) -> None:
        pipeline.generate([GenerationRequest(prompt, width=width, height=height, steps=steps, seed=seed)])

    generate("warm-up", 512, 512, 0)
    pipeline.text_encoder.cache = type(pipeline.text_encoder.cache)(1024)  # start cold, like the server
    return _sequential(generate, requests, sizes, steps)


def served(checkpoint: str, device: str, requests: int, sizes: list[str], steps: int, threads: int) -> dict:
    import ray
    from ray import serve

    from serve.app import build_app

    args = local_app_args(checkpoint, torch_threads=threads, device=device)
    deployment = args["routes"]["sana-shapes"]["denoiser"]["deployment"]
    deployment.pop("autoscaling_config", None)  # one replica: the comparison is about one pipeline
    deployment["num_replicas"] = 1
    port = free_port()
    ray.init(include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(args), name="bench", route_prefix="/")
        url = f"http://127.0.0.1:{port}"
        asyncio.run(closed_loop(url, 1, 1, 120, ["512x512"], steps))  # warm the HTTP path
        report = {}
        for level in (1, 8):
            results, wall = asyncio.run(closed_loop(url, level, requests, 1800, sizes, steps))
            report[f"c{level}"] = summarize(results, wall)
        serve.shutdown()
        return report
    finally:
        ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--requests", type=int, default=12)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--sizes", default="512x512,768x512")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per stage replica")
    parser.add_argument("--out", type=Path, default=Path("bench/results/compare-cpu.json"))
    args = parser.parse_args()
    sizes = args.sizes.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = args.checkpoint
        if checkpoint is None:
            from models.materialize import materialize

            checkpoint = str(materialize("small", Path(tmp) / "small"))
        report = {
            "checkpoint": args.checkpoint or "small (materialized)",
            "device": args.device,
            "requests": args.requests, "steps": args.steps, "sizes": sizes,
            "diffusers_sequential": diffusers_baseline(checkpoint, args.device, args.requests, sizes, args.steps),
            "in_process_sequential": in_process_baseline(checkpoint, args.device, args.requests, sizes, args.steps),
            "served": served(checkpoint, args.device, args.requests, sizes, args.steps, args.threads),
        }
    c1, c8 = report["served"]["c1"], report["served"]["c8"]
    report["ratios"] = {
        "served_c1_latency_over_in_process": round(c1["latency_ms"]["mean"]
                                                   / report["in_process_sequential"]["latency_ms_mean"], 3),
        "served_c1_latency_over_diffusers": round(c1["latency_ms"]["mean"]
                                                  / report["diffusers_sequential"]["latency_ms_mean"], 3),
        "served_c8_throughput_over_diffusers": round(c8["images_per_s"]
                                                     / report["diffusers_sequential"]["images_per_s"], 3),
        "in_process_throughput_over_diffusers": round(report["in_process_sequential"]["images_per_s"]
                                                      / report["diffusers_sequential"]["images_per_s"], 3),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
