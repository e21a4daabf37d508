"""``vtsched show``: what a schedule does to an image's tokens, as figures (and the JSON behind them).

Takes the options of ``vtsched run`` (the same request, checked the same way before any weights
load), answers the question while recording which tokens ran where, and writes one PNG per figure
and ``sheet.png`` with all of them to ``--out`` (see :mod:`vtsched.core.tools.show`).
"""

from __future__ import annotations

import argparse

from vtsched.core.cli.checks import add_output


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from vtsched.core.cli import run

    scratch = argparse.ArgumentParser(add_help=False).add_subparsers()
    run.add_parser(scratch)  # the options of `run`, kept in step with it
    show = sub.add_parser(
        "show", parents=[scratch.choices["run"]], conflict_handler="resolve",
        help="draw what a schedule does: the partition, kept tokens per layer and stream, token flow, fusion "
             "weights, attention",
    )
    add_output(show, "--json", "file", default=None, metavar="FILE", help="also write the data behind the figures")
    add_output(show, "--out", "folder", default="vtsched-out/show", metavar="DIR",
               help="folder for the PNGs (one per figure, and sheet.png); default vtsched-out/show")
    show.add_argument("--attention", default=None, metavar="LAYERS",
                      help="also draw where the last prompt token looks at these layers, e.g. 0,2,5-7")


def main(args: argparse.Namespace) -> int:
    import torch

    from vtsched.core.budget import Budget
    from vtsched.core.cli.checks import check_adapter_options, check_prompt_fits, image_notes, print_notes, request_notes
    from vtsched.core.cli.common import (
        DEFAULT_BUDGET, build_policy_routing_params, load_scheduler, model_config, planner_for_config, registry_for,
    )
    from vtsched.core.errors import InputError
    from vtsched.core.generation import GenerationConfig
    from vtsched.core.io import load_image
    from vtsched.core.tools.show import check_attention_layers, parse_layers, show

    if not args.question.strip():
        raise InputError("--question is empty: ask something about the image")
    image = load_image(args.image)
    registry = registry_for(args)
    config = model_config(args.model)  # the request is checked against the config before weights load
    planner = planner_for_config(config, registry)
    policy, partitioner_params = build_policy_routing_params(
        planner, f"schedule:{args.schedule}" if args.schedule else args.policy, args.partitioner,
        {} if args.schedule else dict(args.param), dict(args.partitioner_param))
    budget = Budget.parse(str(args.budget or getattr(policy, "saved_budget", None) or DEFAULT_BUDGET))
    check = planner.check(policy, budget, args.partitioner, partitioner_params)
    layers = check_attention_layers(parse_layers(args.attention) if args.attention else (), planner.geometry.num_layers)
    check_prompt_fits(config, planner.geometry.num_visual, [args.question])
    check_adapter_options(registry.adapter_for_config(config), dict(args.adapter_param))
    print_notes([*request_notes(check), *image_notes([image], config)])
    dtype = None if args.dtype == "auto" else getattr(torch, args.dtype)
    extra = {"attn_implementation": args.attn} | ({"dtype": dtype} if dtype is not None else {})
    if args.adapter_param:
        extra["adapter_options"] = dict(args.adapter_param)
    scheduler = load_scheduler(args.model, registry, args.device, **extra)
    partitioner = (scheduler.make_partitioner(check.partitioner, partitioner_params)
                   if check.partitioner is not None else None)
    generation = GenerationConfig(
        max_new_tokens=args.max_new_tokens, do_sample=args.do_sample, temperature=args.temperature,
        top_k=args.top_k, top_p=args.top_p, seed=args.seed,
    )
    result = show(scheduler, image, args.question, policy, partitioner=partitioner, budget=budget,
                  attention_layers=layers, generation=generation)
    print(result.data["answer"])
    for path in result.save(args.out, json_path=args.json):
        print(f"wrote {path}")
    return 0
