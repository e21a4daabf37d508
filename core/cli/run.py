"""``vtsched run``: answer a question about an image under a scheduling policy."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vtsched.core.cli.checks import add_device, add_output, at_least, within, model_name
from vtsched.core.cli.common import (
    add_common,
    add_policy_args,
    key_value,
    registry_for,
    request_of,
)


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    run = sub.add_parser("run", help="answer a question about an image under a scheduling policy")
    run.add_argument("--model", default=None, type=model_name,
                     help="checkpoint folder or model id, or a shipped demo model by name: demo (the default), demo-phase1")
    source = run.add_mutually_exclusive_group()
    source.add_argument("--image", default=None)
    source.add_argument("--video", default=None, metavar="FILE",
                        help="a video instead of an image (Qwen2-VL, Qwen2.5-VL): frames read with PyAV, sampled "
                             f"evenly (--frames N) or at a rate (--fps F; default {DEFAULT_VIDEO_FPS:g} per second)")
    sampling = run.add_mutually_exclusive_group()
    sampling.add_argument("--frames", type=at_least(1), default=None, help="sample this many frames of --video")
    sampling.add_argument("--fps", type=within(0.0, 1000.0, low_open=True), default=None,
                          help="sample --video at this many frames per second")
    run.add_argument("--question", required=True)
    add_policy_args(run)
    run.add_argument("--schedule", default=None, help="run this schedule JSON (from `explain --json`) as it is")
    run.add_argument("--max-new-tokens", type=at_least(1), default=32)
    run.add_argument("--do-sample", action="store_true")
    run.add_argument("--temperature", type=float, default=1.0)
    run.add_argument("--top-k", type=at_least(0), default=0)
    run.add_argument("--top-p", type=within(0.0, 1.0, low_open=True), default=1.0)
    run.add_argument("--seed", type=int, default=0)
    add_device(run, default="cpu")
    run.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    run.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"], help="attention implementation")
    run.add_argument("--adapter-param", action="append", type=key_value, default=[], metavar="NAME=VALUE",
                     help="model-family option, e.g. --adapter-param image_size=672 for LLaVA-NeXT (fix the input at 672x672)")
    add_output(run, "--json", "file", default=None, metavar="FILE", help="also write the result as JSON")
    add_common(run)


@dataclass
class RunRequest:
    """A ``run`` command line checked against the model's config and then loaded: what to run it with."""

    image: Any
    planner: Any
    scheduler: Any
    policy: Any
    partitioner: Any
    budget: Any
    generation: Any


DEFAULT_VIDEO_FPS = 2.0  # qwen-vl-utils' default sampling rate for the Qwen models


def visual_input(args: argparse.Namespace) -> Any:
    """The image (``--image``) or the sampled video (``--video`` with ``--frames`` or ``--fps``) of a request,
    or a one-line refusal (neither given, sampling options without a video, an unreadable or empty clip)."""
    from vtsched.core.errors import InputError
    from vtsched.core.io import load_image

    video, frames, fps = getattr(args, "video", None), getattr(args, "frames", None), getattr(args, "fps", None)
    if video is None:
        if frames is not None or fps is not None:
            raise InputError("--frames and --fps sample a video: give --video FILE")
        if args.image is None:
            raise InputError("the following arguments are required: --image (or --video FILE)")
        return load_image(args.image)
    from vtsched.core.pixels.video import read_video

    return read_video(video, frames=frames, fps=DEFAULT_VIDEO_FPS if frames is None and fps is None else fps)


def prepare(args: argparse.Namespace, check_more: Callable[[Any], None] | None = None) -> RunRequest:
    """Check the whole request before any weights load (``check_more(planner)``: a command's own
    checks, e.g. ``show``'s attention layers), then load the model: shared by ``run`` and ``show``."""
    import torch
    from vtsched.core.app import (
        check_request,
        load_scheduler,
        model_config,
        planner_for_config,
    )
    from vtsched.core.cli.checks import (
        check_adapter_options,
        check_prompt_fits,
        image_notes,
        print_notes,
        request_notes,
    )
    from vtsched.core.errors import InputError
    from vtsched.core.generation import GenerationConfig
    from vtsched.core.pixels.video import Video

    if not args.question.strip():
        raise InputError("--question is empty: ask something about the image")
    image = visual_input(args)
    registry = registry_for(args)
    # Check the request against the config before loading (possibly many GB of) weights.
    config = model_config(args.model)
    planner = planner_for_config(config, registry)
    checked = check_request(planner, request_of(args, f"schedule:{args.schedule}" if args.schedule else None))
    check = checked.check
    if check_more is not None:
        check_more(planner)
    check_prompt_fits(config, planner.geometry.num_visual, [args.question])
    adapter_class = registry.adapter_for_config(config)
    if isinstance(image, Video) and not adapter_class.takes_video:
        raise InputError(f"--video: the {adapter_class.name} family takes still images only; video runs on "
                         "Qwen2-VL and Qwen2.5-VL models")
    check_adapter_options(adapter_class, dict(args.adapter_param))
    print_notes([*request_notes(check), *image_notes([image], config)])
    dtype = None if args.dtype == "auto" else getattr(torch, args.dtype)
    extra = {"attn_implementation": args.attn} | ({"dtype": dtype} if dtype is not None else {})
    if args.adapter_param:
        extra["adapter_options"] = dict(args.adapter_param)
    scheduler = load_scheduler(args.model, registry, args.device, **extra)
    partitioner = checked.make_partitioner(scheduler.planner)
    generation = GenerationConfig(
        max_new_tokens=args.max_new_tokens, do_sample=args.do_sample, temperature=args.temperature,
        top_k=args.top_k, top_p=args.top_p, seed=args.seed,
    )
    return RunRequest(image, planner, scheduler, checked.policy, partitioner, checked.budget, generation)


def main(args: argparse.Namespace) -> int:
    from vtsched.core.io import write_atomic

    request = prepare(args)
    result, prefill_s = _answer(request, args.question)
    print(result.texts[0])
    print(f"ran: {result.summary()}")
    if args.json:
        write_atomic(args.json, json.dumps(_record(result, request.scheduler, prefill_s), indent=2) + "\n")
    return 0


def _answer(request: RunRequest, question: str) -> tuple[Any, float]:
    """What ``Scheduler.run`` does (prepare, plan, answer), with the plan (the partitioner's selection)
    and the prefill timed: the ``prefill_ms`` every results row reports."""
    from vtsched.core.app import run_request

    return run_request(request.scheduler, [request.image], [question], request.policy, request.partitioner,
                       request.budget, request.generation)


def _record(result: Any, scheduler: Any, prefill_s: float) -> dict[str, Any]:
    from vtsched.core.app import cost_row

    plan = result.plan
    return {
        "answer": result.texts[0],
        "tokens": result.generated.tokens[0],
        "policy": plan.policy.describe(),
        "partitioner": plan.partitioner.describe() if plan.partitioner else None,
        "budget": str(plan.budget) if plan.budget else None,
        "schedule": plan.schedule.to_dict(),
        "subject_tokens": plan.partition.members(0, plan.partition.groups[0]).tolist(),
        "prefill_flops": float(result.flops[0]),
        **cost_row(scheduler, plan.policy, result.costs, 0, 1e3 * prefill_s),
        "carried_tokens_per_layer": float(result.carried_per_layer[0]) if result.carried_per_layer is not None else 0.0,
    }
