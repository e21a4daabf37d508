"""``vtsched explain``: the schedule a policy would run, for a named shape or a checkpoint's config."""

from __future__ import annotations

import argparse

from vtsched.core.cli.checks import add_output, print_notes, request_notes, model_name
from vtsched.core.cli.common import (
    add_common,
    add_policy_args,
    registry_for,
    request_of,
)


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    explain = sub.add_parser("explain", help="print the schedule a policy would run (no weights needed)")
    add_policy_args(explain)
    explain.add_argument("--shape", default="llava-1.5-7b",
                         help="named model shape (see vtsched.core.demo); demo: the shipped demo model")
    explain.add_argument("--model", default=None, type=model_name, help="read the geometry from this checkpoint's config instead")
    add_output(explain, "--json", "file", default=None, metavar="FILE", help="write the schedule JSON to FILE")
    add_common(explain)


def main(args: argparse.Namespace) -> int:
    from vtsched.core.app import check_request, config_and_source, with_run_meta
    from vtsched.core.errors import VtschedError
    from vtsched.core.io import write_atomic
    from vtsched.core.planner import Planner
    from vtsched.core.policy import BUDGET_COUNTS, budget_counts_of

    registry = registry_for(args)
    config, source = config_and_source(getattr(args, "model", None), args.shape)
    adapter = registry.adapter_for_config(config)
    geometry = adapter.geometry_from_config(config)
    planner = Planner(registry, geometry, adapter.default_partitioner)
    checked = check_request(planner, request_of(args))
    check, policy, budget, partitioner_params = checked.check, checked.policy, checked.budget, checked.partitioner_params
    if check.schedule is None:
        raise VtschedError(f"policy {policy.name!r} chooses its schedule on data; run `vtsched search-k` to see it")
    print_notes(request_notes(check))
    print(f"model: {source} ({geometry.num_layers} layers, {geometry.num_visual} visual tokens per image)")
    assert budget is not None  # budget_for gives the default when none is given
    keep = budget.resolve(geometry.num_visual)
    counts = budget_counts_of(policy, registry)
    print(f"budget counts: {counts}: {BUDGET_COUNTS.get(counts, 'declared by the policy')}")
    if check.partitioner is not None:
        subject, *others = check.groups
        rest = " + ".join(others) if others else "nothing"
        print(f"partition: {check.partitioner}, budget {budget}: {subject} = {keep} tokens per image, "
              f"{rest} = {geometry.num_visual - keep} ({100 * (1 - keep / geometry.num_visual):.1f}% pruned)")
    elif check.budget is not None:
        print(f"budget {budget}: {keep} visual tokens per image, applied inside the LLM by the policy")
    for note in adapter.budget_notes(config, keep, check.partitioner, partitioner_params):
        print(f"  {note}")
    print(check.schedule.explain())
    if args.json:
        saved = with_run_meta(check.schedule, check.budget, check.partitioner)
        write_atomic(args.json, saved.to_json() + "\n")
        print(f"wrote {args.json}")
    return 0
