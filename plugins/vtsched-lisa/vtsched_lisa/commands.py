"""``vtsched segment`` and ``vtsched segment-eval``: LISA under a scheduling policy, on one image or a dataset.

Segmentation datasets evaluate in ``vtsched eval`` too (:mod:`vtsched_lisa.evaluator`);
``segment-eval`` is the same evaluation with ``--clip`` and ``--dtype``.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from vtsched.core.commands import Command
from vtsched.core.cli.checks import add_device, add_output, at_least
from vtsched.core.errors import InputError

__all__ = ["SegmentCommand", "SegmentEvalCommand", "TrainDemoLisaCommand", "evaluate_segmentation", "segmentation_cases",
           "format_table"]

DEFAULT_POLICIES = ("full", "prune", "parvts:drop_layer=2,fusion=size,fuse_tokens=post_image")


def _model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="LISA checkpoint folder (default: the demo LISA, if shipped)")
    parser.add_argument("--clip", default=None,
                        help="CLIP ViT-L/14-224 folder (default: MODEL/clip, else the config's mm_vision_tower)")
    add_device(parser, default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])


def _scheduler(args: argparse.Namespace) -> Any:
    import torch

    from vtsched.core.cli.common import registry_for

    from vtsched_lisa import demo_lisa_path
    from vtsched_lisa.segment import lisa_scheduler

    path = args.model or demo_lisa_path()
    if path is None:
        raise InputError("no --model given and no demo LISA is installed (vtsched train-demo-lisa makes one, see "
                         "docs/lisa.md); pass --model FOLDER, a LISA checkpoint")
    dtype = None if args.dtype == "float32" else getattr(torch, args.dtype)
    return lisa_scheduler(str(path), clip=args.clip, device=args.device, dtype=dtype, registry=registry_for(args))


def _policy(scheduler: Any, args: argparse.Namespace, name: str, params: dict[str, str]) -> tuple[Any, Any]:
    """The policy and its partitioner (or None), routed as ``vtsched run`` routes ``-p``."""
    from vtsched.core.cli.common import build_policy_routing_params

    policy, part_params = build_policy_routing_params(scheduler.planner, name, args.partitioner, params,
                                                      dict(args.partitioner_param))
    chosen = scheduler.planner.default_partitioner(policy, args.partitioner)
    part = scheduler.make_partitioner(chosen, part_params) if (chosen and policy.needs_partition) else None
    return policy, part


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
        from vtsched.core.budget import Budget
        from vtsched.core.cli.common import DEFAULT_BUDGET
        from vtsched.core.generation import GenerationConfig
        from vtsched.core.io import load_image, write_atomic

        from vtsched_lisa.segment import LisaSegmenter

        if not args.question.strip():
            raise InputError("--question is empty: ask for something in the image")
        image = load_image(args.image)
        scheduler = _scheduler(args)
        policy, part = _policy(scheduler, args, args.policy, dict(args.param))
        budget = Budget.parse(str(args.budget or getattr(policy, "saved_budget", None) or DEFAULT_BUDGET))
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


class SegmentEvalCommand(Command):
    """gIoU / cIoU of LISA on a segmentation dataset, with --clip and --dtype (else as `vtsched eval`).

    The same evaluation as ``vtsched eval --data segmentation:SPEC``, under its older name, with the
    options ``vtsched eval`` lacks."""

    name: ClassVar[str] = "segment-eval"
    help: ClassVar[str] = ("gIoU / cIoU of LISA on a segmentation dataset (what `vtsched eval --data "
                           "segmentation:SPEC` runs), with --clip and --dtype")

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        from vtsched.core.cli.common import key_value

        _model_args(parser)
        parser.add_argument("--data", required=True,
                            help="a JSONL file (image, mask, question), a ReasonSeg folder or synthetic:SEED:IMAGES")
        parser.add_argument("--limit", type=at_least(1), default=None)
        parser.add_argument("--policies", nargs="+", default=list(DEFAULT_POLICIES),
                            help="NAME[:PARAM=VALUE,...]; full always runs")
        parser.add_argument("--budgets", nargs="+", default=["0.111"])
        parser.add_argument("--partitioner", default=None)
        parser.add_argument("--partitioner-param", action="append", default=[], metavar="NAME=VALUE", type=key_value)
        add_output(parser, "--json", "file", default=None, metavar="FILE", help="also write rows and per-item results")

    @classmethod
    def run(cls, args: argparse.Namespace) -> int:
        from vtsched.core.io import write_atomic

        from vtsched_lisa.data import load_seg_items

        items = load_seg_items(args.data, args.limit)
        scheduler = _scheduler(args)
        partitioners = None
        if args.partitioner:
            params = ",".join(f"{k}={v}" for k, v in args.partitioner_param)
            partitioners = [args.partitioner + (f":{params}" if params else "")]
        cases = segmentation_cases(scheduler, args.policies, args.budgets, partitioners)
        report = evaluate_segmentation(scheduler, items, cases)
        report["data"] = args.data
        print(format_table(report["rows"]))
        if args.json:
            write_atomic(args.json, json.dumps(report, indent=2) + "\n")
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


def segmentation_cases(scheduler: Any, policies: Sequence[str], budgets: Sequence[str],
                       partitioners: Sequence[str] | None = None) -> list[tuple[str, Any, Any, Any]]:
    """``(label, policy, partitioner, budget)`` for ``full`` and every policy x budget (x partitioner,
    for policies that need one), built and checked before any item runs; labels as ``vtsched eval``
    writes them (``prune@7``, ``prune@7 [lisa]``)."""
    from vtsched.core.budget import Budget
    from vtsched.core.cli.common import build_policy_routing_params
    from vtsched.core.tools.evaluate import parse_partitioner

    planner = scheduler.planner
    specs = ["full"] + [p for p in policies if p != "full"]
    cases: list[tuple[str, Any, Any, Any]] = []
    seen = set()
    for spec in specs:
        name, params = parse_partitioner(spec)
        for text in budgets:
            for part_spec in (partitioners or [None]):
                part_name, part_params = parse_partitioner(part_spec) if part_spec else (None, {})
                policy, routed = build_policy_routing_params(planner, name, part_name, params, part_params)
                budget = planner.budget_seen(policy, Budget.parse(text))
                chosen = planner.default_partitioner(policy, part_name)
                part = scheduler.make_partitioner(chosen, routed) if (chosen and policy.needs_partition) else None
                label = spec + (f"@{budget}" if budget is not None else "")
                if part_spec and part is not None:
                    label += f" [{part_spec}]"
                if label not in seen:
                    seen.add(label)
                    cases.append((label, policy, part, budget))
    return cases


def evaluate_segmentation(scheduler: Any, items: list[Any], cases: list[tuple[str, Any, Any, Any]],
                          progress: bool = False) -> dict[str, Any]:
    """Every item under every case (:func:`segmentation_cases`), teacher-forced: rows of gIoU, cIoU
    (overall and by tag), times (LLM prefill, SAM encoder, SAM decoder) and visual tokens.

    SAM's image encoder runs once per image and every case reuses it, so its time is the same cost
    for every case: each row reports the mean over all encoder runs of the evaluation (and how many
    runs that case itself triggered), never zero for the cases that found the embedding cached."""
    from tqdm.auto import tqdm

    from vtsched_lisa.metrics import giou_ciou, intersection_union
    from vtsched_lisa.segment import LisaSegmenter

    segmenter = LisaSegmenter(scheduler)
    loaded = [item.load() for item in items]
    rows, per_item, all_encodes = [], [], []
    bar = tqdm(total=len(cases) * len(items), desc="segmentation eval", disable=not progress)
    for label, policy, part, budget in cases:
        pairs, by_tag = [], defaultdict(list)
        prefill, enc, dec, kept, flops, warnings = [], [], [], [], [], 0
        for item, (image, truth, ignore) in zip(items, loaded):
            result = segmenter.segment([image], [item.question], policy, partitioner=part, budget=budget)[0]
            pair = intersection_union(result.mask, truth, ignore)
            pairs.append(pair)
            by_tag[item.tag].append(pair)
            prefill.append(result.llm_prefill_s)
            if not result.sam_encoder_cached:
                enc.append(result.sam_encoder_s)
                all_encodes.append(result.sam_encoder_s)
            dec.append(result.sam_decoder_s)
            kept.append(result.visual_per_layer)
            flops.append(result.flops)
            warnings += result.warning is not None
            per_item.append({"case": label, "id": item.id, "tag": item.tag, "intersection": pair[0],
                             "union": pair[1], "warning": result.warning})
            bar.update()
        giou, ciou = giou_ciou(pairs)
        row: dict[str, Any] = {"case": label, "n": len(pairs), "giou": giou, "ciou": ciou}
        for tag in sorted(by_tag):
            row[f"giou[{tag}]"], row[f"ciou[{tag}]"] = giou_ciou(by_tag[tag])
        row.update({
            "llm_prefill_ms": 1e3 * statistics.mean(prefill),
            "sam_encoder_computed": len(enc), "sam_decoder_ms": 1e3 * statistics.mean(dec),
            "visual_tokens_per_layer": statistics.mean(kept), "prefill_gflops": statistics.mean(flops) / 1e9,
            "no_seg_warnings": warnings,
        })
        rows.append(row)
    bar.close()
    per_image = 1e3 * statistics.mean(all_encodes) if all_encodes else 0.0
    for row in rows:
        row["sam_encoder_ms"] = per_image  # paid once per image, whatever the case: the same in every row
    return {"rows": rows, "items": per_item}


def format_table(rows: list[dict[str, Any]]) -> str:
    tags = sorted({k[5:-1] for r in rows for k in r if k.startswith("giou[")})
    head = ["case", "gIoU", "cIoU", *[f"gIoU {t}" for t in tags], "vis/layer", "GFLOPs", "LLM prefill ms",
            "SAM enc ms/image (run here)", "SAM dec ms"]
    lines = [head]
    for r in rows:
        lines.append([r["case"], f"{r['giou']:.3f}", f"{r['ciou']:.3f}", *[f"{r.get(f'giou[{t}]', float('nan')):.3f}"
                                                                          for t in tags],
                      f"{r['visual_tokens_per_layer']:.1f}", f"{r['prefill_gflops']:.3g}",
                      f"{r['llm_prefill_ms']:.1f}", f"{r['sam_encoder_ms']:.1f} ({r['sam_encoder_computed']})",
                      f"{r['sam_decoder_ms']:.1f}"])
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines)


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
