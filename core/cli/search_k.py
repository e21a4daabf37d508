"""``vtsched search-k``: choose the drop layer K by KL divergence to full on calibration data."""

from __future__ import annotations

import argparse
from typing import Any

from vtsched.core.app import load_scheduler, model_config, planner_for_config
from vtsched.core.cli.checks import add_device, add_output, at_least, within, model_name
from vtsched.core.cli.common import DEFAULT_BUDGET, add_common, key_value, registry_for


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    search = sub.add_parser("search-k", help="choose the drop layer K by KL divergence to full on calibration data")
    search.add_argument("--model", default=None, type=model_name,
                    help="checkpoint, or a shipped demo model by name: demo (the default), demo-phase1")
    search.add_argument("--data", default=None, help="calibration JSONL: one {\"image\": path, \"question\": text} per line")
    search.add_argument("--synthetic", type=at_least(0), default=0, metavar="N",
                        help="calibrate on N generated images instead of --data (for trying the command)")
    search.add_argument("--policy", default="parvts", help="a layered policy (default parvts)")
    search.add_argument("--layer-param", default="drop_layer", help="the policy's layer parameter")
    search.add_argument("-p", "--param", action="append", type=key_value, default=[], metavar="NAME=VALUE")
    search.add_argument("--budgets", nargs="+", default=[DEFAULT_BUDGET], help="budgets to search over")
    search.add_argument("--alphas", nargs="+", type=within(0.0, 1.0), default=None,
                        help="also search fixed-fusion alpha over these values")
    search.add_argument("--partitioner", default=None)
    search.add_argument("--threshold", type=at_least(0.0, float), default=0.003, help="mean KL threshold (VTW: 0.003)")
    add_output(search, "--out", "file", default="vtsched-out/search-k.json", help="where the chosen schedule goes")
    add_device(search, default="cpu")
    search.add_argument("--no-progress", action="store_true")
    add_common(search)


def main(args: argparse.Namespace) -> int:
    from pathlib import Path

    from vtsched.core.app import parse_budgets, with_run_meta
    from vtsched.core.calibration import load_calibration, search_drop_layer
    from vtsched.core.demo import QUESTION_WORDS, random_image
    from vtsched.core.errors import InputError
    from vtsched.core.io import write_atomic
    from vtsched.core.tools.report import write_json

    if args.data:
        images, questions = load_calibration(args.data)
    elif args.synthetic > 0:
        images = [random_image(i, 336, 336) for i in range(args.synthetic)]
        questions = [" ".join(QUESTION_WORDS[i % 7: i % 7 + 6]) + "?" for i in range(args.synthetic)]
    else:
        raise InputError("no calibration data: give --data FILE.jsonl (or --synthetic N to try the command)")
    budgets = parse_budgets(args.budgets)  # the budgets' words, read once
    _check(args, questions, budgets)
    scheduler = load_scheduler(args.model, registry_for(args), args.device)
    batch = scheduler.prepare(images, questions)
    result = search_drop_layer(
        scheduler, batch, args.policy, params=dict(args.param), budgets=budgets, alphas=args.alphas,
        threshold=args.threshold, layer_param=args.layer_param, partitioner=args.partitioner,
        progress=not args.no_progress,
    )
    print(result.table())
    out = {"policy": args.policy, "threshold": args.threshold, "curve": result.curve, "chosen": result.chosen}
    curve_path = Path(args.out).with_suffix(".curve.json")
    if result.chosen is None:
        write_json(curve_path, out)
        raise InputError(f"no {args.layer_param} meets KL <= {args.threshold:g}; the curve is in {curve_path}")
    chosen = result.chosen
    values = dict(args.param, **{args.layer_param: chosen["layer"]})
    if chosen["alpha"] is not None:
        values.update(fusion="fixed", alpha=chosen["alpha"])
    planner = scheduler.planner
    policy = planner.policy(args.policy, values)
    chosen_budget = next(b for b in budgets if str(b) == chosen["budget"])  # the curve writes str(budget)
    check = planner.check(policy, chosen_budget, args.partitioner)
    assert check.schedule is not None
    schedule = with_run_meta(check.schedule, check.budget, check.partitioner)
    write_atomic(args.out, schedule.to_json() + "\n")
    write_json(curve_path, out)
    print(f"wrote {args.out} (run it with: vtsched run --schedule {args.out} ...)")
    return 0


def _check(args: argparse.Namespace, questions: list[str], budgets: list[Any]) -> None:
    """The search's request against the model's config, before weights load: the policy and its layer
    parameter, every budget (and alpha) it will try, the partitioner, the prompts' length."""
    import dataclasses

    from vtsched.core.cli.checks import check_prompt_fits
    from vtsched.core.errors import InputError

    config = model_config(args.model)
    planner = planner_for_config(config, registry_for(args))
    fields = {f.name for f in dataclasses.fields(planner.registry.policy(args.policy))}
    if args.layer_param.replace("-", "_") not in fields:
        raise InputError(f"policy {args.policy!r} has no layer parameter {args.layer_param!r} to search "
                         f"(--layer-param); its parameters: {', '.join(sorted(fields)) or 'none'}")
    extra = {"fusion": "fixed", "alpha": args.alphas[0]} if args.alphas else {}
    policy = planner.policy(args.policy, {**dict(args.param), **extra})  # at its default layer
    for budget in budgets:
        planner.check(policy, budget, args.partitioner)
    check_prompt_fits(config, planner.geometry.num_visual, questions, "calibration question")
