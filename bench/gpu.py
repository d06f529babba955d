"""GPU figures on a real-size Sana checkpoint with random weights (no downloads).

    python -m bench.gpu --checkpoint DIR [--compile] [--out bench/results/gpu.json]

diffusers' SanaPipeline in bf16: latency of 1 image at 1024px, 20 steps, and throughput of a
batch of 16; then our in-process stages on the same requests. With --compile both run with
torch.compile on the transformer. Paper figures to beat (Sana-1.6B, 1024px, A100): 1.0 images/s,
1.2 s latency.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def _timed(fn, repeats: int) -> float:
    import torch

    fn()  # warm-up (and compilation)
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(repeats):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - started) / repeats


def main() -> None:
    import torch
    from diffusers import SanaPipeline

    from models.pipeline import GenerationRequest, SanaInProcessPipeline

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench/results/gpu.json"))
    args = parser.parse_args()

    pipe = SanaPipeline.from_pretrained(args.checkpoint, variant="bf16", torch_dtype=torch.bfloat16).to("cuda")
    pipe.set_progress_bar_config(disable=True)
    ours = SanaInProcessPipeline.from_pretrained(args.checkpoint, device="cuda")
    if args.compile:
        pipe.transformer = torch.compile(pipe.transformer)
        ours.denoiser.transformer = torch.compile(ours.denoiser.transformer)

    def reference(n: int):
        return lambda: pipe("a red fox", num_images_per_prompt=n, num_inference_steps=20, output_type="np",
                            generator=torch.Generator("cpu").manual_seed(0))

    def ours_call(n: int):
        return lambda: ours.generate([GenerationRequest("a red fox", num_images=n, steps=20, seed=0)])

    report = {"device": torch.cuda.get_device_name(), "compile": args.compile, "checkpoint": args.checkpoint}
    for name, make in (("diffusers", reference), ("ours_in_process", ours_call)):
        latency = _timed(make(1), args.repeats)
        batch_s = _timed(make(args.batch), max(1, args.repeats - 1))
        report[name] = {"latency_s": round(latency, 3), f"throughput_images_per_s_batch{args.batch}":
                        round(args.batch / batch_s, 3), "peak_memory_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2)}
        torch.cuda.reset_peak_memory_stats()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
