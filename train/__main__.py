"""`python -m train`: train the shapes Sana (see train/shapes_model.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from train.shapes_model import Plan, train


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m train", description="Train the small shapes Sana on CPU.")
    parser.add_argument("--out", type=Path, required=True, help="checkpoint folder to write (replaced)")
    parser.add_argument("--minutes", type=float, default=Plan.minutes, help="whole-run time budget")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ae-share", type=float, default=Plan.ae_share, help="share of the budget for the autoencoder")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--smoke", action="store_true", help="a few steps at tiny size (seconds; for CI)")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    plan = Plan.smoke(args.seed) if args.smoke else Plan(seed=args.seed, minutes=args.minutes, ae_share=args.ae_share)
    train(args.out, plan)


if __name__ == "__main__":
    main()
