"""How well the shapes model draws what it is asked, scored by the shapes world's pixel judge.

    python -m bench.shapes_accuracy [--checkpoint DIR] [--pairs 100] [--seed 0] [--quick]
                                    [--out bench/results/shapes-accuracy.json]

Draws `--pairs` (caption, seed) pairs at random from the grammar and generates each at 512x512
and at 768x512 (a non-square size: another bin, resized and cropped back), in-process (the served
pixels equal these; tests/test_shapes_model.py checks that), at the default steps and guidance
and again with guidance 1.0 (no classifier-free guidance), and at 1024x1024 (the same route,
upscaled from its largest bin) at the default guidance. `--quick` (for ablations) draws only
512x512 at the default guidance. Each picture is read back by
`train.shapes.judge` (background colour from the border, foreground colour from the rest, shape
from the mask's fill ratio and outline) and compared with its caption. Also draws "A red heart."
(the safety replacement). Prints accuracies, which of the issue's goals are met, and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

from train.shapes import Scene, judge, random_scene

SIZES = ((512, 512), (768, 512))
LARGE = (1024, 1024)
# The goals at the default guidance (shares of pairs): background, foreground colour, shape, all three.
GOALS = {"background": 0.95, "color": 0.90, "shape": 0.80, "all": 0.70}
LARGE_GOALS = {"color": 0.80, "shape": 0.80}


def _score(pipeline, pairs: list[tuple[Scene, int]], size: tuple[int, int], guidance: float, batch: int) -> dict:
    from models.pipeline import GenerationRequest

    hits = {"background": 0, "color": 0, "shape": 0, "all": 0}
    # Background accuracy apart for captions that name it and captions that leave it to the default.
    by_kind = {"named": [0, 0], "default": [0, 0]}
    misses = []
    for start in range(0, len(pairs), batch):
        chunk = pairs[start:start + batch]
        requests = [GenerationRequest(scene.caption(), width=size[0], height=size[1], seed=seed, guidance_scale=guidance)
                    for scene, seed in chunk]
        for (scene, seed), result in zip(chunk, pipeline.generate(requests)):
            seen = judge(result.images[0])
            right = {"background": seen.background == scene.background_color, "color": seen.color == scene.color,
                     "shape": seen.shape == scene.shape}
            right["all"] = all(right.values())
            for key, value in right.items():
                hits[key] += value
            kind = by_kind["named" if scene.background else "default"]
            kind[0] += right["background"]
            kind[1] += 1
            if not right["all"] and len(misses) < 10:
                misses.append({"caption": scene.caption(), "seed": seed, "seen": seen.__dict__})
    shares = {key: round(value / len(pairs), 3) for key, value in hits.items()}
    for kind, (right, total) in by_kind.items():
        shares[f"background_{kind}"] = round(right / max(total, 1), 3)
    return {**shares, "misses": misses}


def goals(results: dict, red_heart: dict, default: float, quick: bool = False) -> dict[str, bool]:
    """Each goal of the issue with whether these results meet it."""
    met = {}
    for size in SIZES[:1] if quick else SIZES:
        shares = results[f"{size[0]}x{size[1]} guidance {default}"]
        for key, goal in GOALS.items():
            met[f"{size[0]}x{size[1]} {key} >= {goal:.0%}"] = shares[key] >= goal
    if not quick:
        for size in SIZES:
            guided, unguided = (results[f"{size[0]}x{size[1]} guidance {g}"]["all"] for g in (default, 1.0))
            met[f"{size[0]}x{size[1]} guidance 1.0 clearly lower (all three, by 10 points or more)"] = \
                unguided <= guided - 0.10
        large = results[f"{LARGE[0]}x{LARGE[1]} guidance {default}"]
        for key, goal in LARGE_GOALS.items():
            met[f"{LARGE[0]}x{LARGE[1]} {key} >= {goal:.0%}"] = large[key] >= goal
    met['"A red heart." a red heart on white for 5 of 5 seeds'] = red_heart["right"] == red_heart["of"]
    return met


def main() -> None:
    from models.pipeline import GenerationRequest, SanaInProcessPipeline
    from serve.checkpoint_specs import resolve_checkpoint

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default="materialized:shapes")
    parser.add_argument("--pairs", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="512x512 at the default guidance only (ablations)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/shapes-accuracy.json"))
    args = parser.parse_args()

    pipeline = SanaInProcessPipeline.from_pretrained(resolve_checkpoint(args.checkpoint), device="cpu")
    rng = random.Random(args.seed)
    pairs = [(random_scene(rng), rng.randrange(2**31)) for _ in range(args.pairs)]
    report: dict = {"checkpoint": args.checkpoint, "pairs": args.pairs, "seed": args.seed,
                    "steps": pipeline.defaults.steps, "results": {}}
    default = pipeline.defaults.guidance_scale
    runs = [(SIZES[0], default)] if args.quick else \
        [(size, guidance) for guidance in (default, 1.0) for size in SIZES] + [(LARGE, default)]
    started = time.monotonic()
    for size, guidance in runs:
        key = f"{size[0]}x{size[1]} guidance {guidance}"
        report["results"][key] = _score(pipeline, pairs, size, guidance, args.batch)
        shown = {k: v for k, v in report["results"][key].items() if k != "misses"}
        print(f"{key}: {shown}", flush=True)
    heart = pipeline.generate([GenerationRequest("A red heart.", width=512, height=512, seed=seed)
                               for seed in range(5)])
    seen = [judge(result.images[0]) for result in heart]
    right = sum((s.background, s.color, s.shape) == ("white", "red", "heart") for s in seen)
    report["red_heart"] = {"right": right, "of": len(seen)}
    print(f'"A red heart." drawn as a red heart on white: {report["red_heart"]["right"]}/{len(seen)}')
    report["goals"] = goals(report["results"], report["red_heart"], default, quick=args.quick)
    for goal, met in report["goals"].items():
        print(f"goal {'met' if met else 'MISSED'}: {goal}")
    report["seconds"] = round(time.monotonic() - started)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
