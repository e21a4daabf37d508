"""``vtsched eval``: answer a dataset under several policies: accuracy, agreement with full, KL, cost.

A dataset a plugin's evaluator serves (``--data NAME:SPEC``, or one whose layout an evaluator
claims, :mod:`vtsched.core.evaluators`) is handed to it with the same options: segmentation data
with the LISA plugin, scored by gIoU and cIoU.
"""

from __future__ import annotations

import argparse
from typing import Any

from vtsched.core.app import load_scheduler, model_config, planner_for_config
from vtsched.core.cli.checks import add_device, add_output, at_least, model_name
from vtsched.core.cli.common import add_common, registry_for


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    ev = sub.add_parser("eval", help="answer a dataset under several policies: accuracy, agreement, KL, cost")
    ev.add_argument("--model", default=None, type=model_name,
                    help="checkpoint, or a shipped demo model by name: demo (the default), demo-phase1")
    ev.add_argument("--data", default="synthetic:1:30",
                    help="JSONL file or folder with data.jsonl, synthetic:SEED:IMAGES, hf:PATH[:SPLIT], or a dataset "
                    "a plugin's evaluator serves (NAME:SPEC, e.g. segmentation:synthetic:1:20; see `vtsched list`)")
    ev.add_argument("--policies", nargs="+", default=["prune", "parvts:drop_layer=2"],
                    metavar="POLICY[:NAME=VALUE,...]", help="cases besides full, which always runs")
    ev.add_argument("--partitioners", nargs="+", default=None, metavar="PARTITIONER[:NAME=VALUE,...]",
                    help="partitioners crossed with every policy that needs one (default: each policy's own); "
                    "`mask` reads the dataset's own masks")
    ev.add_argument("--budgets", nargs="+", default=["7"], help="budgets per image")
    ev.add_argument("--limit", type=at_least(1), default=None, help="only the first N samples")
    ev.add_argument("--batch-size", type=at_least(1), default=16)
    ev.add_argument("--max-new-tokens", type=at_least(1), default=4)
    add_device(ev, default="cpu")
    add_output(ev, "--out", "folder", default="vtsched-out/eval", help="folder for results.json and results.csv")
    ev.add_argument("--paired-against", default="full", metavar="CASE",
                    help="the case every row is paired with in McNemar's test, named as in the table "
                    "(e.g. 'prune@7', 'prune@7 [random]'; default full)")
    ev.add_argument("--hard-subset", nargs="?", const="downsample", default=None, metavar="CASE",
                    help="also score every row on the items this case (named as in the table) answers wrongly; "
                    "a partitioner's name (alone: downsample) means prune with it at each row's own budget or "
                    "target, added to the eval if missing")
    ev.add_argument("--match", default=None, choices=["avg-tokens", "flops", "input-tokens"],
                    help="read each budget as a target and solve every policy's own budget, per sample, to meet it: "
                    "average visual tokens per layer over all streams, prune's FLOPs at that budget, or the visual "
                    "tokens entering the LLM")
    ev.add_argument("--no-progress", action="store_true")
    add_common(ev)


def main(args: argparse.Namespace) -> int:
    from pathlib import Path

    from vtsched.core.cli.checks import check_prompt_fits
    from vtsched.core.errors import InputError
    from vtsched.core.evaluators import evaluator_for
    from vtsched.core.tools.bench import check_matched, expand_cases
    from vtsched.core.tools.evaluate import (
        case_label,
        cross_partitioners,
        evaluate,
        hard_references,
        load_items,
        with_hard_reference,
    )
    from vtsched.core.tools.report import write_csv, write_json

    registry = registry_for(args)
    served = evaluator_for(registry, args.data)
    if served is not None:
        if args.hard_subset is not None or args.paired_against != "full" or args.match:
            raise InputError("--paired-against, --hard-subset and --match apply to question-answer datasets, "
                             f"not to {args.data!r} (scored by the {served[0].name!r} evaluator)")
        return _run_evaluator(args, registry, *served)
    config = model_config(args.model)
    planner = planner_for_config(config, registry)
    cases = expand_cases(planner, args.policies, args.budgets, keep_full=False)
    if args.partitioners:
        cases = cross_partitioners(planner, cases, args.partitioners, data=args.data)
    cases = with_hard_reference(registry, cases, args.hard_subset)
    if args.match:
        check_matched(planner, cases, args.match)
    labels = ["full", *(case_label(c) for c in cases if c.policy != "full")]
    if args.paired_against not in labels:
        raise InputError(f"--paired-against: no case {args.paired_against!r} in this eval; cases: {', '.join(labels)}")
    if args.hard_subset is not None:
        try:
            hard_references(args.hard_subset, cases)
        except InputError as error:
            raise InputError("--hard-subset" + str(error).removeprefix("hard_subset")) from None
    items = load_items(args.data, args.limit)
    check_prompt_fits(config, planner.geometry.num_visual, [item.question for item in items], "question of sample")
    scheduler = load_scheduler(args.model, registry, args.device)
    report = evaluate(scheduler, items, cases, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                      progress=not args.no_progress, data=args.data, paired_against=args.paired_against,
                      hard_subset=args.hard_subset, match=args.match)
    print(report.table())
    out = Path(args.out)
    write_json(out / "results.json", {"data": args.data, "model": args.model or "demo", "rows": report.rows(),
                                      "predictions": [p.__dict__ for p in report.predictions]})
    write_csv(out / "results.csv", report.rows())
    print(f"wrote {out / 'results.json'}, {out / 'results.csv'}")
    return 0


def _run_evaluator(args: argparse.Namespace, registry: object, evaluator: Any, data: str) -> int:
    from pathlib import Path

    from vtsched.core.evaluators import EvalRequest
    from vtsched.core.tools.report import write_csv, write_json

    request = EvalRequest(data=data, model=args.model, policies=list(args.policies), budgets=list(args.budgets),
                          partitioners=args.partitioners, limit=args.limit, device=args.device,
                          batch_size=args.batch_size, progress=not args.no_progress, registry=registry)
    outcome = evaluator.evaluate(request)
    print(outcome.table)
    out = Path(args.out)
    write_json(out / "results.json", {"data": args.data, "evaluator": evaluator.name,
                                      "model": outcome.model or args.model or "default", "rows": outcome.rows,
                                      "items": outcome.records})
    write_csv(out / "results.csv", outcome.rows)
    print(f"wrote {out / 'results.json'}, {out / 'results.csv'}")
    return 0
