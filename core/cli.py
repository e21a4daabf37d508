"""The ``vtsched`` command line: run, explain, list.

User errors print one line (``vtsched: error: ...``) and exit 2; ``--traceback`` shows the
Python traceback instead, for bug reports.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from pathlib import Path

from .budget import Budget
from .demo import demo_model_path, llava_config
from .errors import VtschedError

__all__ = ["main"]

DEFAULT_BUDGET = "0.111"  # 64 of LLaVA-1.5's 576 tokens: 88.9% pruned


def _key_value(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    return key.strip(), value.strip()


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-plugins", action="store_true", help="do not autoload installed plugins")
    parser.add_argument("--traceback", action="store_true", help="show Python tracebacks on errors")


def _policy_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--policy", default="parvts", help="scheduling policy (see `vtsched list`)")
    parser.add_argument("--partitioner", default=None, help="partitioner (default: the policy's, usually cls)")
    parser.add_argument("--budget", default=None,
                        help="subject tokens per image: a count (64), a ratio (0.111) or a percentage (11.1%%); "
                        f"default {DEFAULT_BUDGET} (a schedule file's own budget with --schedule)")
    parser.add_argument("-p", "--param", action="append", type=_key_value, default=[], metavar="NAME=VALUE",
                        help="policy parameter, e.g. -p drop_layer=2 -p fusion=fixed -p alpha=0.7")
    parser.add_argument("--partitioner-param", action="append", type=_key_value, default=[], metavar="NAME=VALUE")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vtsched", description="Vision-token scheduling for multimodal LLMs.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="answer a question about an image under a scheduling policy")
    run.add_argument("--model", default=None,
                     help="checkpoint folder or model id (default: a built-in LLaVA with random weights)")
    run.add_argument("--image", required=True)
    run.add_argument("--question", required=True)
    _policy_args(run)
    run.add_argument("--schedule", default=None, help="run this schedule JSON (from `explain --json`) as it is")
    run.add_argument("--max-new-tokens", type=int, default=32)
    run.add_argument("--do-sample", action="store_true")
    run.add_argument("--temperature", type=float, default=1.0)
    run.add_argument("--top-k", type=int, default=0)
    run.add_argument("--top-p", type=float, default=1.0)
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--device", default="cpu")
    run.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    run.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"], help="attention implementation")
    run.add_argument("--json", default=None, metavar="FILE", help="also write the result as JSON")
    _common(run)

    explain = sub.add_parser("explain", help="print the schedule a policy would run (no weights needed)")
    _policy_args(explain)
    explain.add_argument("--shape", default="llava-1.5-7b", help="named model shape (see vtsched.core.demo)")
    explain.add_argument("--model", default=None, help="read the geometry from this checkpoint's config instead")
    explain.add_argument("--json", default=None, metavar="FILE", help="write the schedule JSON to FILE")
    _common(explain)

    bench = sub.add_parser("bench", help="measure policies side by side: prefill time, FLOPs, decode, memory")
    bench.add_argument("--shape", default=None,
                       help="random-weight model shape (default: llava-1.5-7b on a GPU, llava-1.5-cpu on a CPU)")
    bench.add_argument("--model", default=None, help="benchmark this checkpoint instead of a random shape")
    bench.add_argument("--policies", nargs="+", default=None, metavar="POLICY[:NAME=VALUE,...]",
                       help="cases to compare (default: every built-in policy family); full is always added")
    bench.add_argument("--budgets", nargs="+", default=None,
                       help="budgets per image (default: 192 128 64 scaled to the model's visual tokens)")
    bench.add_argument("--repeats", type=int, default=5)
    bench.add_argument("--warmup", type=int, default=1)
    bench.add_argument("--batch-size", type=int, default=1)
    bench.add_argument("--decode-tokens", type=int, default=8, help="decode steps timed per case (0: skip)")
    bench.add_argument("--question-words", type=int, default=40, help="length of the benchmark question")
    bench.add_argument("--device", default=None, help="cuda if available, else cpu")
    bench.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                       help="default: bfloat16 on a GPU, float32 on a CPU")
    bench.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"])
    bench.add_argument("--out", default="vtsched-out/bench", help="folder for results.json, results.csv, plot.png")
    bench.add_argument("--no-progress", action="store_true")
    _common(bench)

    search = sub.add_parser("search-k", help="choose the drop layer K by KL divergence to full on calibration data")
    search.add_argument("--model", default=None, help="checkpoint (default: a built-in LLaVA with random weights)")
    search.add_argument("--data", default=None, help="calibration JSONL: one {\"image\": path, \"question\": text} per line")
    search.add_argument("--synthetic", type=int, default=0, metavar="N",
                        help="calibrate on N generated images instead of --data (for trying the command)")
    search.add_argument("--policy", default="parvts", help="a layered policy (default parvts)")
    search.add_argument("--layer-param", default="drop_layer", help="the policy's layer parameter")
    search.add_argument("-p", "--param", action="append", type=_key_value, default=[], metavar="NAME=VALUE")
    search.add_argument("--budgets", nargs="+", default=[DEFAULT_BUDGET], help="budgets to search over")
    search.add_argument("--alphas", nargs="+", type=float, default=None,
                        help="also search fixed-fusion alpha over these values")
    search.add_argument("--partitioner", default=None)
    search.add_argument("--threshold", type=float, default=0.003, help="mean KL threshold (VTW: 0.003)")
    search.add_argument("--out", default="vtsched-out/search-k.json", help="where the chosen schedule goes")
    search.add_argument("--device", default="cpu")
    search.add_argument("--no-progress", action="store_true")
    _common(search)

    ev = sub.add_parser("eval", help="answer a dataset under several policies: accuracy, agreement, KL, cost")
    ev.add_argument("--model", default=None, help="checkpoint (default: the shipped demo model)")
    ev.add_argument("--data", default="synthetic:1:30",
                    help="JSONL file or folder with data.jsonl, synthetic:SEED:IMAGES, or hf:PATH[:SPLIT]")
    ev.add_argument("--policies", nargs="+", default=["prune", "parvts:drop_layer=2"],
                    metavar="POLICY[:NAME=VALUE,...]", help="cases besides full, which always runs")
    ev.add_argument("--budgets", nargs="+", default=["7"], help="budgets per image")
    ev.add_argument("--limit", type=int, default=None, help="only the first N samples")
    ev.add_argument("--batch-size", type=int, default=16)
    ev.add_argument("--max-new-tokens", type=int, default=4)
    ev.add_argument("--device", default="cpu")
    ev.add_argument("--out", default="vtsched-out/eval", help="folder for results.json and results.csv")
    ev.add_argument("--no-progress", action="store_true")
    _common(ev)

    train = sub.add_parser("train-demo", help="train the demo LLaVA on the procedural VQA set from a seed")
    train.add_argument("--out", default="vtsched-out/demo-model")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--scale", type=float, default=1.0,
                       help="shorten both training phases by this factor (1.0 reproduces the shipped model)")
    train.add_argument("--device", default=None, help="cuda if available, else cpu")
    train.add_argument("--no-progress", action="store_true")
    _common(train)

    lister = sub.add_parser("list", help="list policies, partitioners, fusion rules, adapters and plugins")
    _common(lister)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _COMMANDS[args.command](args)
    except VtschedError as exc:
        if args.traceback:
            raise
        print(f"vtsched: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vtsched: interrupted", file=sys.stderr)
        return 130


def _registry(args: argparse.Namespace):
    from .registry import build_registry, make_plugin_manager

    return build_registry(make_plugin_manager(load_entrypoints=False if args.no_plugins else None))


def _read_config(path: str) -> Any:
    from transformers import AutoConfig

    from .errors import InputError

    try:
        return AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot load {path!r}: {str(exc).splitlines()[0]}") from None


def _cmd_list(args: argparse.Namespace) -> int:
    from .registry import KINDS

    registry = _registry(args)
    titles = {"policy": "policies", "partitioner": "partitioners", "fusion_rule": "fusion rules",
              "adapter": "model adapters"}
    for kind in KINDS:
        print(f"{titles[kind]}:")
        for c in registry.entries(kind):
            alias = f" (alias {', '.join(c.aliases)})" if c.aliases else ""
            print(f"  {c.name:<20s} {c.summary}{alias}  [{c.plugin}]")
    print("plugins:")
    for plugin, hooks in registry.plugins.items():
        print(f"  {plugin:<28s} {', '.join(hooks)}")
    return 0


def _cmd_explain(args: argparse.Namespace) -> int:
    from .budget import Budget
    from .io import write_atomic

    registry = _registry(args)
    if args.model:
        config = _read_config(args.model)
        source = args.model
    else:
        config = llava_config(args.shape)
        source = f"shape {args.shape}"
    geometry = registry.adapter_for_config(config).geometry_from_config(config)
    policy = registry.policy(args.policy).from_params(dict(args.param))
    budget = Budget.parse(args.budget)
    keep = budget.resolve(geometry.num_visual)
    groups = ("subject", "non_subject") if policy.needs_partition else ("subject",)
    schedule = policy.schedule(geometry, groups, budget if policy.uses_budget else None)
    partitioner = args.partitioner or policy.default_partitioner
    print(f"model: {source} ({geometry.num_layers} layers, {geometry.num_visual} visual tokens per image)")
    if policy.needs_partition:
        print(f"partition: {partitioner}, budget {budget}: subject = {keep} tokens per image, "
              f"non_subject = {geometry.num_visual - keep} ({100 * (1 - keep / geometry.num_visual):.1f}% pruned)")
    elif policy.uses_budget:
        print(f"budget {budget}: {keep} visual tokens per image, applied inside the LLM by the policy")
    print(schedule.explain())
    if args.json:
        saved = _with_run_meta(schedule, budget if policy.uses_budget else None,
                               partitioner if policy.needs_partition else None)
        write_atomic(args.json, saved.to_json() + "\n")
        print(f"wrote {args.json}")
    return 0


def _with_run_meta(schedule, budget, partitioner):
    """The schedule with what else a run needs to reproduce it (budget, partitioner) in its meta."""
    import dataclasses

    meta = dict(schedule.meta)
    if budget is not None:
        meta["budget"] = str(budget)
    if partitioner is not None:
        meta["partitioner"] = partitioner
    return dataclasses.replace(schedule, meta=tuple(sorted(meta.items())))


def _policy_for(registry, name: str, params: dict):
    """Build a policy to check a request before any weights load (``schedule:PATH`` included)."""
    from .policy import build_policy

    return build_policy(registry, name, params)


def _cmd_run(args: argparse.Namespace) -> int:
    import torch

    from .budget import Budget
    from .generation import GenerationConfig
    from .io import load_image, write_atomic
    from .policy import FixedSchedule

    image = load_image(args.image)
    fixed = FixedSchedule.from_file(args.schedule) if args.schedule else None
    budget_text = args.budget or (dict(fixed.fixed.meta).get("budget") if fixed else None) or DEFAULT_BUDGET
    budget = Budget.parse(str(budget_text))
    registry = _registry(args)
    dtype = None if args.dtype == "auto" else getattr(torch, args.dtype)
    model_path = args.model or demo_model_path()
    config = llava_config("demo") if model_path is None else _read_config(str(model_path))
    # Check the request against the config before loading (possibly many GB of) weights.
    geometry = registry.adapter_for_config(config).geometry_from_config(config)
    policy = fixed or registry.policy(args.policy).from_params(dict(args.param))
    if policy.uses_budget:
        budget.resolve(geometry.num_visual)
    if not hasattr(policy, "calibrate"):
        policy.schedule(geometry, fixed.fixed.groups if fixed else ("subject", "non_subject"),
                        budget if policy.uses_budget else None)
    extra = {"attn_implementation": args.attn} | ({"dtype": dtype} if dtype is not None else {})
    scheduler = _load_scheduler(args.model, registry, args.device, **extra)
    partitioner = scheduler.make_partitioner(args.partitioner or policy.default_partitioner,
                                             dict(args.partitioner_param))
    config = GenerationConfig(
        max_new_tokens=args.max_new_tokens, do_sample=args.do_sample, temperature=args.temperature,
        top_k=args.top_k, top_p=args.top_p, seed=args.seed,
        stop_token_ids=scheduler.adapter.stop_token_ids(),
    )
    result = scheduler.run([image], [args.question], policy, partitioner=partitioner, budget=budget,
                           generation=config)
    print(result.texts[0])
    print(f"ran: {result.summary()}")
    if args.json:
        record: dict[str, Any] = {
            "answer": result.texts[0],
            "tokens": result.generated.tokens[0],
            "policy": result.plan.policy.describe(),
            "partitioner": result.plan.partitioner.describe() if result.plan.partitioner else None,
            "budget": str(result.plan.budget) if result.plan.budget else None,
            "schedule": result.plan.schedule.to_dict(),
            "subject_tokens": result.plan.partition.members(0, result.plan.partition.groups[0]).tolist(),
            "prefill_flops": float(result.flops[0]),
            "visual_tokens_per_layer": float(result.visual_per_layer_survivor[0]),
        }
        write_atomic(args.json, json.dumps(record, indent=2) + "\n")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch

    from .bench import Case, parse_case, run_bench
    from .budget import Budget
    from .policy import FixedSchedule
    from .demo import get_shape
    from .errors import InputError
    from .report import plot_time_vs_flops, write_csv, write_json
    from .scheduler import Scheduler
    from .demo import QUESTION_WORDS, random_image

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("--device cuda was asked for but no CUDA GPU is visible")
    on_gpu = device.startswith("cuda")
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if on_gpu else torch.float32)
    registry = _registry(args)
    if args.model:
        config = _read_config(args.model)
        shape_name = args.model
    else:
        shape_name = args.shape or ("llava-1.5-7b" if on_gpu else "llava-1.5-cpu")
        get_shape(shape_name)
        config = llava_config(shape_name)
    geometry = registry.adapter_for_config(config).geometry_from_config(config)
    budgets = args.budgets or _default_budgets(geometry.num_visual)
    for b in budgets:
        Budget.parse(b).resolve(geometry.num_visual)
    specs = args.policies or [p for p in DEFAULT_BENCH_POLICIES if p.split(":")[0] in registry.names("policy")]
    cases = [Case("full")]
    for spec in specs:
        case = parse_case(spec)
        policy = _policy_for(registry, case.policy, dict(case.params))  # refuse bad names/params early
        if isinstance(policy, FixedSchedule):
            budget = dict(policy.fixed.meta).get("budget")
            cases.append(Case(case.policy, str(budget) if budget is not None else budgets[-1]))
            continue
        if not policy.uses_budget:
            policy.schedule(geometry)
            if case.policy != "full":
                cases.append(case)
            continue
        for b in budgets:
            policy.schedule(geometry, budget=Budget.parse(b))
        cases += [Case(case.policy, b, case.params, case.partitioner) for b in budgets]
    print(f"bench: {shape_name} ({geometry.num_layers} layers, hidden {geometry.hidden_size}, "
          f"{geometry.num_visual} visual tokens) on {device}, {str(dtype).replace('torch.', '')}, "
          f"{len(cases)} cases x {args.repeats} runs", file=sys.stderr)
    if args.model:
        scheduler = Scheduler.from_pretrained(args.model, device=device, dtype=dtype, attn_implementation=args.attn,
                                              registry=registry)
    else:
        scheduler = Scheduler.random(shape_name, dtype=dtype, device=device, attn_implementation=args.attn,
                                     registry=registry)
    words = [QUESTION_WORDS[i % len(QUESTION_WORDS)] for i in range(args.question_words)]
    images = [random_image(i, 336, 336) for i in range(args.batch_size)]
    questions = [" ".join(words) + "?" for _ in range(args.batch_size)]
    report = run_bench(scheduler, images, questions, cases, repeats=args.repeats, warmup=args.warmup,
                       decode_tokens=args.decode_tokens, shape=shape_name, progress=not args.no_progress)
    print(report.table())
    out = Path(args.out)
    write_json(out / "results.json", report.to_dict())
    write_csv(out / "results.csv", report.rows())
    plot_time_vs_flops(out / "plot.png", report.rows(), f"{shape_name} on {report.device}, {report.dtype}")
    print(f"wrote {out / 'results.json'}, {out / 'results.csv'}, {out / 'plot.png'}")
    return 0


def _load_scheduler(model: str | None, registry, device: str = "cpu", **kwargs):
    """The checkpoint asked for; else the shipped demo model; else a random one (said plainly)."""
    from .demo import demo_model_path
    from .scheduler import Scheduler

    if model is None:
        model = demo_model_path()
        if model is None:
            print("note: no --model given and no demo model installed; using a LLaVA with random weights: "
                  "its answers are meaningless.", file=sys.stderr)
            return Scheduler.random("demo", device=device, registry=registry, **kwargs)
    return Scheduler.from_pretrained(str(model), device=device, registry=registry, **kwargs)


def _cmd_eval(args: argparse.Namespace) -> int:
    from .bench import Case, parse_case
    from .evaluate import evaluate, load_items
    from .report import write_csv, write_json

    registry = _registry(args)
    cases = []
    for spec in args.policies:
        case = parse_case(spec)
        policy = _policy_for(registry, case.policy, dict(case.params))
        if case.policy == "full":
            continue
        if not policy.uses_budget:
            cases.append(case)
        else:
            cases += [Case(case.policy, b, case.params, case.partitioner) for b in args.budgets]
    for b in args.budgets:
        Budget.parse(b)
    items = load_items(args.data, args.limit)
    scheduler = _load_scheduler(args.model, registry, args.device)
    report = evaluate(scheduler, items, cases, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                      progress=not args.no_progress)
    print(report.table())
    out = Path(args.out)
    write_json(out / "results.json", {"data": args.data, "model": args.model or "demo", "rows": report.rows(),
                                      "predictions": [p.__dict__ for p in report.predictions]})
    write_csv(out / "results.csv", report.rows())
    print(f"wrote {out / 'results.json'}, {out / 'results.csv'}")
    return 0


def _cmd_train_demo(args: argparse.Namespace) -> int:
    import torch

    from .demo_training import train_demo_recipe

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    facts = train_demo_recipe(args.out, seed=args.seed, device=device, progress=not args.no_progress,
                              scale=args.scale)
    print(f"trained {facts['parameters']:,} parameters in {facts['minutes']:.1f} min; saved to {args.out}")
    return 0


def _cmd_search_k(args: argparse.Namespace) -> int:
    from .errors import InputError
    from .io import write_atomic
    from .report import write_json
    from .search import load_calibration, search_drop_layer
    from .demo import QUESTION_WORDS, random_image

    if args.data:
        images, questions = load_calibration(args.data)
    elif args.synthetic > 0:
        images = [random_image(i, 336, 336) for i in range(args.synthetic)]
        questions = [" ".join(QUESTION_WORDS[i % 7: i % 7 + 6]) + "?" for i in range(args.synthetic)]
    else:
        raise InputError("no calibration data: give --data FILE.jsonl (or --synthetic N to try the command)")
    scheduler = _load_scheduler(args.model, _registry(args), args.device)
    batch = scheduler.prepare(images, questions)
    result = search_drop_layer(
        scheduler, batch, args.policy, params=dict(args.param), budgets=args.budgets, alphas=args.alphas,
        threshold=args.threshold, layer_param=args.layer_param, partitioner=args.partitioner,
        progress=not args.no_progress,
    )
    print(result.table())
    out = {"policy": args.policy, "threshold": args.threshold, "curve": result.curve, "chosen": result.chosen}
    if result.chosen is None:
        write_json(Path(args.out).with_suffix(".curve.json"), out)
        raise InputError(f"no {args.layer_param} meets KL <= {args.threshold:g}; the curve is in "
                         f"{Path(args.out).with_suffix('.curve.json')}")
    chosen = result.chosen
    values = dict(args.param, **{args.layer_param: chosen["layer"]})
    if chosen["alpha"] is not None:
        values.update(fusion="fixed", alpha=chosen["alpha"])
    policy = scheduler.make_policy(args.policy, values)
    budget = Budget.parse(chosen["budget"])
    groups = ("subject", "non_subject") if policy.needs_partition else ("subject",)
    schedule = policy.schedule(scheduler.adapter.geometry, groups, budget if policy.uses_budget else None)
    schedule = _with_run_meta(schedule, budget if policy.uses_budget else None,
                              (args.partitioner or policy.default_partitioner) if policy.needs_partition else None)
    write_atomic(args.out, schedule.to_json() + "\n")
    write_json(Path(args.out).with_suffix(".curve.json"), out)
    print(f"wrote {args.out} (run it with: vtsched run --schedule {args.out} ...)")
    return 0


# pdrop at budgets down to 64 of 576 needs its stages earlier than its default 8/16/24 (see its docstring)
DEFAULT_BENCH_POLICIES = ("prune", "parvts:drop_layer=2", "parvts:drop_layer=3", "fastv", "vtw", "pdrop:layers=2/6/12",
                          "visionzip")


def _default_budgets(num_visual: int) -> list[str]:
    if num_visual == 576:
        return ["192", "128", "64"]
    return [str(max(1, round(num_visual * r / 576))) for r in (192, 128, 64)]


_COMMANDS = {"run": _cmd_run, "explain": _cmd_explain, "list": _cmd_list, "bench": _cmd_bench,
             "search-k": _cmd_search_k, "eval": _cmd_eval, "train-demo": _cmd_train_demo}

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
