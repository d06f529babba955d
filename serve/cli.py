"""`sana-serve` command line: materialize offline checkpoints, generate in-process, serve, and read
back a served image's invisible watermark.

Heavy imports (torch, diffusers) happen inside the commands so `--help` stays instant.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from models.registry import DEFAULT_GUIDANCE, DEFAULT_STEPS

DEFAULT_MODEL = "materialized:shapes"


def _add_materialize(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "materialize",
        help="write a diffusers-format checkpoint with deterministic random weights (offline)",
        description="ARCH is a registry name: tiny, tiny-4k, tiny-1.5, tiny-sprint (random, for tests), shapes, "
                    "shapes-4k (the shipped trained model), a real architecture such as sana-1600m-1024, "
                    "sana-1.5-4800m-1024 or sana-sprint-1600m-1024 (random weights, real size), tiny-shieldgemma, "
                    "tiny-image-checker (the image safety check's stand-in: it flags red), or a LoRA adapter: "
                    "tiny-lora-a, tiny-lora-b, small-lora.",
    )
    parser.add_argument("arch")
    parser.add_argument("dir", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(handler=_materialize)


def _add_generate(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("generate", help="generate images in-process (no Ray)")
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help="checkpoint folder, Hugging Face repo id or materialized:ARCH (default: the shipped "
                             "shapes model)")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--negative-prompt", default="")
    parser.add_argument("--width", type=int, help="default: the checkpoint's resolution")
    parser.add_argument("--height", type=int, help="default: the checkpoint's resolution")
    parser.add_argument("--steps", type=int, help=f"default: the checkpoint's sampler's ({DEFAULT_STEPS}; SANA-Sprint 2)")
    parser.add_argument("--guidance", type=float, help=f"default: {DEFAULT_GUIDANCE}; <= 1 turns guidance off")
    parser.add_argument("--seed", type=int, help="default: random (printed)")
    parser.add_argument("--n", type=int, default=1, help="number of images")
    parser.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--out", required=True, type=Path, help="output image; with --n > 1, FILE-<i>.EXT")
    parser.set_defaults(handler=_generate)


def _add_run(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "run",
        help="start Ray (or join RAY_ADDRESS) and serve the HTTP API until Ctrl-C/SIGTERM",
        description="With no --config, serves the embedded default: the tiny offline checkpoint on CPU.",
    )
    parser.add_argument("--config", type=Path, help="a Serve config file (e.g. serve_config.yaml)")
    parser.add_argument("--model", help="checkpoint folder or repo id for the default route")
    parser.add_argument("--host", help="default: the config's http_options.host, else 127.0.0.1")
    parser.add_argument("--port", type=int, help="default: the config's http_options.port, else 8000")
    parser.add_argument("--metrics-port", type=int, default=8080,
                        help="Ray's Prometheus metrics port when starting a local Ray (default 8080)")
    parser.set_defaults(handler=_run)


def _add_verify_watermark(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "verify-watermark",
        help="read the invisible watermark of an image the server returned",
        description="Prints what the watermark says, how many of its bits match the expected payload, and the "
                    "chance that an unmarked image matches that many. Exit status 0 when that chance is below one "
                    "in a million (the image carries the watermark), 1 when not.",
    )
    parser.add_argument("file", type=Path)
    parser.add_argument("--payload", help="the expected payload (default: the one in --config)")
    parser.add_argument("--config", type=Path,
                        help="a Serve config whose gateway.watermark.payload to expect (default: serve_config.yaml's "
                             "own default payload)")
    parser.add_argument("--size", help="WIDTHxHEIGHT to scale the image to first: the size it was generated at, "
                                       "for a copy that was resized since")
    parser.set_defaults(handler=_verify_watermark)


def _expected_payload(args: argparse.Namespace) -> str:
    from serve.config import WatermarkConfig, load_serve_config, parse_app_config

    if args.payload is not None:
        return args.payload
    if args.config is None:
        return WatermarkConfig().payload
    app = load_serve_config(args.config)["applications"][0]
    return parse_app_config(app.get("args")).gateway.watermark.payload


def _verify_watermark(args: argparse.Namespace) -> int:
    import json

    import numpy as np
    from PIL import Image, UnidentifiedImageError

    from serve.errors import ApiError
    from serve.gate.validation import parse_size
    from serve.output.watermark import chance_of_match, detected, matching_bits, read_watermark

    expected = _expected_payload(args).encode("utf-8")
    try:
        image = Image.open(args.file).convert("RGB")
    except (OSError, UnidentifiedImageError) as exc:
        print(f"error: cannot read {args.file} as an image: {exc}", file=sys.stderr)
        return 2
    if args.size:
        try:
            size = parse_size(args.size)
        except ApiError as exc:
            print(f"error: --size: {exc.message}", file=sys.stderr)
            return 2
        image = image.resize(size, Image.Resampling.BICUBIC)
    found = read_watermark(np.asarray(image), len(expected))
    match = detected(found, expected)
    print(json.dumps({"file": str(args.file), "expected": expected.decode("utf-8"),
                      "found": found.decode("utf-8", errors="replace"),
                      "matching_bits": f"{matching_bits(found, expected)}/{8 * len(expected)}",
                      "chance_of_match": float(f"{chance_of_match(found, expected):.3g}"), "match": match},
                     ensure_ascii=False))
    return 0 if match else 1


def _run(args: argparse.Namespace) -> int:
    from serve.runner import RunOptions, run

    return run(RunOptions(config=args.config, model=args.model, host=args.host, port=args.port,
                          metrics_port=args.metrics_port))


def _materialize(args: argparse.Namespace) -> int:
    from models.materialize import materialize

    out = materialize(args.arch, args.dir, seed=args.seed)
    print(f"materialized {args.arch} (seed {args.seed}) into {out}")
    return 0


def output_paths(out: Path, count: int) -> list[Path]:
    if count == 1:
        return [out]
    return [out.with_name(f"{out.stem}-{i}{out.suffix}") for i in range(count)]


def _generate(args: argparse.Namespace) -> int:
    from PIL import Image

    from models.pipeline import GenerationRequest, SanaInProcessPipeline

    if args.out.suffix.lower() not in Image.registered_extensions():
        raise SystemExit(f"error: --out {args.out}: unknown image extension {args.out.suffix!r}")
    from serve.checkpoint_specs import resolve_checkpoint

    pipeline = SanaInProcessPipeline.from_pretrained(resolve_checkpoint(args.model), device=args.device)
    request = GenerationRequest(
        prompt=args.prompt,
        negative_prompt=args.negative_prompt,
        width=args.width,
        height=args.height,
        num_images=args.n,
        steps=args.steps,
        guidance_scale=args.guidance,
        seed=args.seed,
    )
    result = pipeline.generate([request])[0]
    for path, pixels in zip(output_paths(args.out, len(result.images)), result.images):
        Image.fromarray(pixels).save(path)
        print(f"wrote {path}")
    print(f"seed {result.seed}; generated at {result.bin_width}x{result.bin_height}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sana-serve", description="Serve Sana text-to-image models.")
    commands = parser.add_subparsers(dest="command", required=True)
    _add_materialize(commands)
    _add_generate(commands)
    _add_run(commands)
    _add_verify_watermark(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from models.errors import SanaError
    from serve.config import ConfigError

    try:
        return args.handler(args)
    except (SanaError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
