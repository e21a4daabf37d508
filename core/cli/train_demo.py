"""``vtsched train-demo``: train the demo LLaVA from a seed on the procedural VQA set."""

from __future__ import annotations

import argparse

from vtsched.core.cli.checks import add_device, add_output, at_least, within
from vtsched.core.cli.common import add_common


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    train = sub.add_parser("train-demo", help="train the demo LLaVA on the procedural VQA set from a seed")
    add_output(train, "--out", "folder", default="vtsched-out/demo-model")
    train.add_argument("--seed", type=at_least(0), default=0)
    train.add_argument("--scale", type=within(0.0, 100.0, low_open=True), default=1.0,
                       help="shorten both training phases by this factor (1.0 reproduces the shipped model)")
    add_device(train, default=None, help="cuda if available, else cpu")
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
