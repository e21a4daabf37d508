"""``vtsched segment`` and ``vtsched train-demo-lisa``: LISA under a scheduling policy on one image, and
the demo LISA's training.

Segmentation datasets evaluate in ``vtsched eval --data segmentation:SPEC`` (:mod:`vtsched_lisa.evaluator`,
:mod:`vtsched_lisa.evaluation`); the former ``vtsched segment-eval`` command is gone.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from vtsched.core.cli.checks import add_device, add_output, at_least
from vtsched.core.commands import Command
from vtsched.core.errors import InputError

from vtsched_lisa.demo_lisa import demo_lisa_path

__all__ = ["SegmentCommand", "TrainDemoLisaCommand", "overlay", "save_mask"]


def _model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="LISA checkpoint folder (default: the demo LISA, if shipped)")
    parser.add_argument("--clip", default=None,
                        help="CLIP ViT-L/14-224 folder (default: MODEL/clip, else the config's mm_vision_tower)")
    add_device(parser, default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])


def _scheduler(args: argparse.Namespace) -> Any:
    import torch
    from vtsched.core.cli.common import registry_for

    from vtsched_lisa.segment import lisa_scheduler

    path = args.model or demo_lisa_path()
    if path is None:
        raise InputError("no --model given and no demo LISA is installed (vtsched train-demo-lisa makes one, see "
                         "docs/lisa.md); pass --model FOLDER, a LISA checkpoint")
    dtype = None if args.dtype == "float32" else getattr(torch, args.dtype)
    return lisa_scheduler(str(path), clip=args.clip, device=args.device, dtype=dtype, registry=registry_for(args))


def _request(scheduler: Any, args: argparse.Namespace) -> Any:
    """The command line's request (:func:`vtsched.core.cli.common.request_of`) checked against the model:
    the policy, its partitioner (or None), routed as ``vtsched run`` routes ``-p``, and the budget it runs at
    (the one given, else a saved schedule's own, else the default)."""
    from vtsched.core.app import check_request
    from vtsched.core.cli.common import request_of

    return check_request(scheduler.planner, request_of(args))


class SegmentCommand(Command):
    """Segment what a question asks for with LISA under a policy: mask PNG, overlay, what ran (times apart)."""

    name: ClassVar[str] = "segment"
    help: ClassVar[str] = "segment what a question asks for with LISA under a policy: mask PNG, overlay, what ran"

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        from vtsched.core.cli.common import add_policy_args

        _model_args(parser)
        parser.add_argument("--image", required=True)
        parser.add_argument("--question", required=True,
                            help="e.g. 'What is the big shape in this image? Please output segmentation mask.'")
        add_policy_args(parser)
        parser.add_argument("--generate", action="store_true",
                            help="generate the answer and decode its [SEG] (default: teacher-forced '[SEG].', as "
                                 "LISA evaluates)")
        parser.add_argument("--max-new-tokens", type=at_least(1), default=32)
        add_output(parser, "--out", "folder", default="vtsched-out/segment", help="folder for mask.png and overlay.png")
        add_output(parser, "--json", "file", default=None, metavar="FILE", help="also write the result as JSON")

    @classmethod
    def run(cls, args: argparse.Namespace) -> int:
        from vtsched.core.generation import GenerationConfig
        from vtsched.core.io import load_image, write_atomic

        from vtsched_lisa.segment import LisaSegmenter

        if not args.question.strip():
            raise InputError("--question is empty: ask for something in the image")
        image = load_image(args.image)
        scheduler = _scheduler(args)
        checked = _request(scheduler, args)
        policy, part, budget = checked.policy, checked.make_partitioner(scheduler.planner), checked.budget
        generation = GenerationConfig(max_new_tokens=args.max_new_tokens) if args.generate else None
        result = LisaSegmenter(scheduler).segment([image], [args.question], policy, partitioner=part, budget=budget,
                                                  generation=generation)[0]
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        mask_path, overlay_path = out / "mask.png", out / "overlay.png"
        save_mask(result.mask, mask_path)
        overlay(image, result.mask).save(overlay_path)
        if result.answer is not None:
            print(f"answer: {result.answer}")
        if result.warning:
            print(f"warning: {result.warning}")
        print(f"mask: {mask_path}  overlay: {overlay_path}")
        print(f"ran: {result.summary()}")
        if args.json:
            write_atomic(args.json, json.dumps(result.record(), indent=2) + "\n")
        return 0


class TrainDemoLisaCommand(Command):
    """Train the demo LISA (tiny SAM + [SEG] on the shipped demo LLaVA) on the procedural scenes from a seed."""

    name: ClassVar[str] = "train-demo-lisa"
    help: ClassVar[str] = "train the demo LISA on top of the demo LLaVA from a seed (about 30 min on one CPU thread)"

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        from vtsched_lisa.training import TrainConfig

        defaults = TrainConfig()
        add_output(parser, "--out", "folder", default="vtsched-out/demo-lisa")
        parser.add_argument("--seed", type=at_least(0), default=0)
        parser.add_argument("--steps", type=int, default=defaults.steps,
                            help=f"optimiser steps (default {defaults.steps} reproduces the shipped demo LISA)")
        parser.add_argument("--threads", type=int, default=defaults.threads,
                            help="torch threads (the shipped one was trained on 1)")
        add_device(parser, default="cpu")
        parser.add_argument("--no-progress", action="store_true")

    @classmethod
    def run(cls, args: argparse.Namespace) -> int:
        from dataclasses import replace

        from vtsched_lisa.training import TrainConfig, train_demo_lisa

        if args.steps < 1:
            raise InputError(f"--steps must be at least 1, not {args.steps}")
        config = replace(TrainConfig(), seed=args.seed, steps=args.steps, threads=args.threads, device=args.device,
                         warmup=min(TrainConfig().warmup, max(1, args.steps // 10)))
        facts = train_demo_lisa(args.out, config, progress=not args.no_progress)
        last = facts["history"][-1]
        print(f"trained the demo LISA in {facts['minutes']:.1f} min (final mask loss {last['mask']:.3f}, where "
              f"loss {last['aux']:.3f}); saved to {args.out} ({facts['shipped_bytes'] / 1e6:.1f} MB of weights)")
        return 0


def save_mask(mask: np.ndarray, path: Path) -> None:
    from PIL import Image

    Image.fromarray(np.asarray(mask, dtype=np.uint8) * 255, mode="L").save(path)


def overlay(image: Any, mask: np.ndarray, colour: tuple[int, int, int] = (255, 40, 40), alpha: float = 0.5) -> Any:
    """The image with the mask tinted in ``colour``."""
    from PIL import Image

    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    m = np.asarray(mask, dtype=bool)[..., None]
    tinted = np.where(m, (1 - alpha) * pixels + alpha * np.array(colour, dtype=np.float32), pixels)
    return Image.fromarray(tinted.round().clip(0, 255).astype(np.uint8))
