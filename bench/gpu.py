"""GPU figures on a real-size Sana checkpoint with random weights (no downloads).

    python -m bench.gpu --checkpoint DIR [--compile] [--steps N] [--out bench/results/gpu.json]

diffusers' own pipeline for the checkpoint (SanaPipeline, or SanaSprintPipeline for SANA-Sprint) in
bf16: latency of 1 image at 1024px at the sampler's default steps (20; Sprint 2), and throughput of
a batch of 16; then our in-process stages on the same requests. With --compile both run with
torch.compile on the transformer. Paper figures to beat (1024px): Sana-1.6B on an A100, 1.0
images/s and 1.2 s latency; SANA-Sprint 1.6B, ~0.1 s per image on an H100.
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
    import diffusers
    import torch

    from models.checkpoint import variant_available
    from models.pipeline import GenerationRequest, SanaInProcessPipeline

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, help="default: the checkpoint's sampler's (20; Sprint 2)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/gpu.json"))
    args = parser.parse_args()

    folder = Path(args.checkpoint)
    pipeline_class = getattr(diffusers, json.loads((folder / "model_index.json").read_text())["_class_name"])
    variant = variant_available(folder / "transformer", "bf16")  # 1.0 stores *.bf16 files; 1.5 and Sprint do not
    pipe = pipeline_class.from_pretrained(folder, variant=variant, torch_dtype=torch.bfloat16).to("cuda")
    pipe.set_progress_bar_config(disable=True)
    ours = SanaInProcessPipeline.from_pretrained(args.checkpoint, device="cuda")
    steps = args.steps or ours.defaults.steps
    if args.compile:
        pipe.transformer = torch.compile(pipe.transformer)
        ours.denoiser.transformer = torch.compile(ours.denoiser.transformer)

    def reference(n: int):
        extra = {"intermediate_timesteps": None} if ours.denoiser.sampler.embedded_guidance and steps != 2 else {}
        return lambda: pipe("a red fox", num_images_per_prompt=n, num_inference_steps=steps, output_type="np",
                            generator=torch.Generator("cpu").manual_seed(0), **extra)

    def ours_call(n: int):
        return lambda: ours.generate([GenerationRequest("a red fox", num_images=n, steps=steps, seed=0)])

    report = {"device": torch.cuda.get_device_name(), "compile": args.compile, "checkpoint": args.checkpoint,
              "pipeline": pipeline_class.__name__, "steps": steps}
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
