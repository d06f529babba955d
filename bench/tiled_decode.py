"""Tiled vs untiled DC-AE decode at 4K: pixel difference and peak memory of each.

    python -m bench.tiled_decode [--checkpoint DIR] [--device cpu|cuda] [--out bench/results/tiled_decode.json]

Without --checkpoint, materializes tiny-4k into a temporary folder. Each mode runs in its own
subprocess so that peak memory (CUDA: max_memory_allocated; CPU: peak RSS growth over the loaded
model) belongs to that mode alone. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def run_mode(checkpoint: str, device: str, tiled: bool, out: Path) -> None:
    """One decode in this process; writes pixels (.npy) and memory/time figures (.json)."""
    import numpy as np
    import torch

    from models.decoder import Decoder

    torch.manual_seed(0)
    decoder = Decoder.from_pretrained(checkpoint, device=device)
    latents = torch.randn(1, decoder.vae.config.latent_channels, 128, 128, generator=torch.Generator().manual_seed(0))
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    base_rss = _peak_rss_mb()
    started = time.perf_counter()
    pixels = decoder.decode(latents, 4096, 4096, tiled=tiled)
    seconds = time.perf_counter() - started
    if device == "cuda":
        peak_mb = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        peak_mb = _peak_rss_mb() - base_rss
    np.save(out.with_suffix(".npy"), pixels)
    out.with_suffix(".json").write_text(json.dumps({"peak_mb": peak_mb, "seconds": seconds}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=Path("bench/results/tiled_decode.json"))
    parser.add_argument("--_mode", choices=["tiled", "untiled"], help=argparse.SUPPRESS)
    parser.add_argument("--_result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._mode:
        run_mode(args.checkpoint, args.device, args._mode == "tiled", args._result)
        return

    import numpy as np

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = args.checkpoint
        if checkpoint is None:
            from models.materialize import materialize

            checkpoint = str(materialize("tiny-4k", Path(tmp) / "tiny-4k"))
        figures = {}
        for mode in ("untiled", "tiled"):
            result = Path(tmp) / mode
            subprocess.run([sys.executable, "-m", "bench.tiled_decode", "--checkpoint", checkpoint,
                            "--device", args.device, "--_mode", mode, "--_result", str(result)], check=True)
            figures[mode] = {**json.loads(result.with_suffix(".json").read_text()),
                             "pixels": np.load(result.with_suffix(".npy"))}
    diff = np.abs(figures["tiled"]["pixels"].astype(np.int16) - figures["untiled"]["pixels"].astype(np.int16))
    report = {
        "checkpoint": args.checkpoint or "tiny-4k (materialized, random weights)",
        "device": args.device,
        "size": "4096x4096",
        "tiles": "1024 px, stride 896",
        "mean_abs_diff_uint8": float(diff.mean()),
        "max_abs_diff_uint8": int(diff.max()),
        "peak_mb": {mode: round(figures[mode]["peak_mb"], 1) for mode in figures},
        "seconds": {mode: round(figures[mode]["seconds"], 2) for mode in figures},
        "tiled_over_untiled_peak_memory": round(figures["tiled"]["peak_mb"] / figures["untiled"]["peak_mb"], 3),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"4096x4096 decode on {args.device}: tiled vs untiled")
    print(f"  |diff| mean {report['mean_abs_diff_uint8']:.2f}, max {report['max_abs_diff_uint8']} (uint8)")
    for mode in ("untiled", "tiled"):
        print(f"  {mode:8s} peak {report['peak_mb'][mode]:8.1f} MB   {report['seconds'][mode]:6.2f} s")
    print(f"  tiled/untiled peak memory: {report['tiled_over_untiled_peak_memory']}")


if __name__ == "__main__":
    main()
