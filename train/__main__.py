"""`python -m train`: train the small shapes Sana (see train/shapes_model.py)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from train.shapes_model import Plan, train


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m train", description="Train the small shapes Sana on CPU.")
    parser.add_argument("--out", type=Path, required=True, help="checkpoint folder to write (replaced)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ae-steps", type=int, help=f"autoencoder steps (default {Plan.ae_steps})")
    parser.add_argument("--dit-steps", type=int, help=f"transformer steps (default {Plan.dit_steps})")
    parser.add_argument("--init-vae", help="take the trained autoencoder of this checkpoint folder (skips phase 1)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=JSON",
                        help='override a plan field, e.g. --set text_lr=0 --set transformer.num_layers=8')
    parser.add_argument("--resume", action="store_true",
                        help="go on from OUT.training/ (a larger --dit-steps continues a finished run)")
    parser.add_argument("--pause-after", type=int, metavar="STEP",
                        help="stop after this transformer step (state saved); go on later with --resume")
    parser.add_argument("--reuse-bank", type=Path, metavar="BANK_PT",
                        help="another run's OUT.training/bank.pt, used when made the same way (saves encoding)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--smoke", action="store_true", help="a few steps at tiny size (seconds; for CI)")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    plan = Plan.smoke(args.seed) if args.smoke else Plan(seed=args.seed)
    overrides = {key: json.loads(value) for key, _, value in (item.partition("=") for item in args.set)}
    for name in ("ae_steps", "dit_steps", "init_vae"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    train(args.out, plan.updated(overrides), resume=args.resume, reuse_bank=args.reuse_bank,
          pause_after=args.pause_after)


if __name__ == "__main__":
    main()
