"""``vtsched train-demo``: train the demo LLaVA from a seed on the procedural VQA set."""

from __future__ import annotations

import argparse

from vtsched.core.cli.common import add_common


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    train = sub.add_parser("train-demo", help="train the demo LLaVA on the procedural VQA set from a seed")
    train.add_argument("--out", default="vtsched-out/demo-model")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--scale", type=float, default=1.0,
                       help="shorten both training phases by this factor (1.0 reproduces the shipped model)")
    train.add_argument("--device", default=None, help="cuda if available, else cpu")
    train.add_argument("--no-progress", action="store_true")
    add_common(train)


def main(args: argparse.Namespace) -> int:
    import torch

    from vtsched.core.demo.training import train_demo_recipe

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    facts = train_demo_recipe(args.out, seed=args.seed, device=device, progress=not args.no_progress,
                              scale=args.scale)
    print(f"trained {facts['parameters']:,} parameters in {facts['minutes']:.1f} min; saved to {args.out}")
    return 0
