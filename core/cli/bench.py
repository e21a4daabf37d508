"""``vtsched bench``: policies side by side: prefill time, FLOPs, decode speed, memory; overhead against transformers."""

from __future__ import annotations

import argparse
import sys

from vtsched.core.cli.checks import add_device, add_output, at_least, model_name
from vtsched.core.cli.common import add_common, registry_for

# The main job (issue 21 item 5): every method family, the 2026 pre-LLM selection methods as prune's
# partitioners beside random selection and plain downsampling, at matched average tokens per layer.
# pdrop at budgets down to 64 of 576 needs its stages earlier than its default (see its docstring).
DEFAULT_BENCH_POLICIES = ("prune", "parvts:drop_layer=2", "fastv", "pdrop:layers=2/6/12", "vtw", "visionzip", "dart",
                          "sparsevlm", "prune+divprune", "prune+cdpruner", "prune+vispruner", "prune+random",
                          "prune+downsample")
DEFAULT_BENCH_MATCH = "avg-tokens"  # what the default comparison holds equal


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    bench = sub.add_parser("bench", help="measure policies side by side: prefill time, FLOPs, decode, memory")
    bench.add_argument("--shape", default=None,
                       help="random-weight model shape (default: llava-1.5-7b on a GPU, llava-1.5-cpu on a CPU; "
                            "llava-next-7b/-cpu, qwen2.5-vl-7b/-cpu for the other families)")
    bench.add_argument("--model", default=None, type=model_name, help="benchmark this checkpoint instead of a random shape")
    bench.add_argument("--policies", nargs="+", default=None, metavar="POLICY[:NAME=VALUE,...]",
                       help="cases to compare (default: every built-in policy family); full is always added")
    bench.add_argument("--budgets", nargs="+", default=None,
                       help="budgets per image (default: 192 128 64 scaled to the model's visual tokens)")
    bench.add_argument("--match", default=None, choices=["avg-tokens", "flops", "input-tokens", "none"],
                       help="read each budget as a target and solve every policy's own budget to meet it: average "
                            "visual tokens per layer over all streams, prune's FLOPs at that budget, or the visual "
                            "tokens entering the LLM (default: avg-tokens for the default policies, none with "
                            "--policies)")
    bench.add_argument("--repeats", type=at_least(1), default=None,
                       help="measured runs per case (default: 3 for the default comparison, else 5)")
    bench.add_argument("--warmup", type=at_least(0), default=1)
    bench.add_argument("--batch-size", type=at_least(1), default=1)
    bench.add_argument("--decode-tokens", type=at_least(0), default=None,
                       help="decode steps timed per case (0: skip; default: 4 for the default comparison, else 8)")
    bench.add_argument("--question-words", type=at_least(1), default=40, help="length of the benchmark question")
    add_device(bench, default=None, help="cuda if available, else cpu")
    bench.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                       help="default: bfloat16 on a GPU, float32 on a CPU")
    bench.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"])
    bench.add_argument("--no-reference", action="store_true",
                       help="skip the transformers references (its forward on the full and shortened prompt, "
                            "its generate) that measure the engine's overhead")
    bench.add_argument("--video", action="store_true",
                       help="measure video prompts instead: clips of --frames frames on the tiny Qwen2-VL and "
                            "Qwen2.5-VL shapes (or --shape, or a --model checkpoint), each video method against "
                            "full and transformers' forward, at the first of --budgets (default 25%%)")
    bench.add_argument("--frames", type=at_least(2), nargs="+", default=None,
                       help="with --video: frames per clip (default: 8 16 32)")
    add_output(bench, "--out", "folder", default="vtsched-out/bench", help="folder for results.json, results.csv, plot.png")
    bench.add_argument("--no-progress", action="store_true")
    add_common(bench)


def default_budgets(num_visual: int) -> list[str]:
    if num_visual == 576:
        return ["192", "128", "64"]
    return [str(max(1, round(num_visual * r / 576))) for r in (192, 128, 64)]


def main(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch
    from vtsched.core.app import planner_for_config
    from vtsched.core.cli.checks import check_prompt_fits
    from vtsched.core.errors import InputError
    from vtsched.core.demo import QUESTION_WORDS, get_shape, llava_config, random_image
    from vtsched.core.io import read_config
    from vtsched.core.scheduler import Scheduler
    from vtsched.core.tools.bench import check_matched, expand_cases, run_bench
    from vtsched.core.tools.report import plot_time_vs_flops, write_csv, write_json

    if args.video:
        return _video(args)
    if args.frames:
        raise InputError("--frames sets a clip's length: it goes with --video")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")  # an asked-for device is checked
    on_gpu = device.startswith("cuda")
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if on_gpu else torch.float32)
    registry = registry_for(args)
    if args.model:
        config = read_config(args.model)
        shape_name = args.model
    else:
        shape_name = args.shape or ("llava-1.5-7b" if on_gpu else "llava-1.5-cpu")
        get_shape(shape_name)
        config = llava_config(shape_name)
    adapter = registry.adapter_for_config(config)
    planner = planner_for_config(config, registry)
    geometry = planner.geometry
    side = adapter.nominal_image_side(config)  # 336 for LLaVA-1.5, 672 for LLaVA-NeXT and Qwen2-VL
    budgets = args.budgets or default_budgets(geometry.num_visual)
    specs = args.policies or [p for p in DEFAULT_BENCH_POLICIES
                               if p.split("+")[0].split(":")[0] in registry.names("policy")
                               and ("+" not in p or p.split("+")[1] in registry.names("partitioner"))]
    match = args.match or (None if args.policies else DEFAULT_BENCH_MATCH)
    match = None if match == "none" else match
    repeats = args.repeats or (5 if args.policies else 3)  # the default comparison trims repeats, not methods
    decode_tokens = args.decode_tokens if args.decode_tokens is not None else (8 if args.policies else 4)
    cases = expand_cases(planner, specs, budgets, keep_full=True)
    if match:
        check_matched(planner, cases, match)
    check_prompt_fits(config, geometry.num_visual, [" ".join(["w"] * args.question_words)], "--question-words")
    print(f"bench: {shape_name} ({geometry.num_layers} layers, hidden {geometry.hidden_size}, "
          f"{geometry.num_visual} visual tokens) on {device}, {str(dtype).replace('torch.', '')}, "
          f"{len(cases)} cases x {repeats} runs", file=sys.stderr)
    if args.model:
        scheduler = Scheduler.from_pretrained(args.model, device=device, dtype=dtype, attn_implementation=args.attn,
                                              registry=registry)
    else:
        scheduler = Scheduler.random(shape_name, dtype=dtype, device=device, attn_implementation=args.attn,
                                     registry=registry)
    words = [QUESTION_WORDS[i % len(QUESTION_WORDS)] for i in range(args.question_words)]
    images = [random_image(i, side, side) for i in range(args.batch_size)]
    questions = [" ".join(words) + "?" for _ in range(args.batch_size)]
    report = run_bench(scheduler, images, questions, cases, repeats=repeats, warmup=args.warmup,
                       decode_tokens=decode_tokens, shape=shape_name, progress=not args.no_progress,
                       reference=not args.no_reference, match=match)
    print(report.table())
    out = Path(args.out)
    write_json(out / "results.json", report.to_dict())
    write_csv(out / "results.csv", report.rows())
    plot_time_vs_flops(out / "plot.png", report.rows(), f"{shape_name} on {report.device}, {report.dtype}")
    print(f"wrote {out / 'results.json'}, {out / 'results.csv'}, {out / 'plot.png'}")
    return 0


def _video(args: argparse.Namespace) -> int:
    """``bench --video``: the video methods on clips of the tiny Qwen shapes (tools/video_bench.py)."""
    from pathlib import Path

    from vtsched.core.errors import InputError
    from vtsched.core.tools.report import write_csv, write_json
    from vtsched.core.tools.video_bench import format_video_table, run_video_bench

    for flag, given in (("--policies", args.policies), ("--match", args.match),
                        ("--device", args.device), ("--dtype", args.dtype)):
        if given:
            raise InputError(f"bench --video measures its own video methods on the CPU; "
                             f"{flag} is not supported with --video")
    if args.budgets and len(args.budgets) > 1:
        raise InputError("bench --video measures one budget: give one value to --budgets")
    models = [args.model] if args.model else [args.shape] if args.shape else ["qwen2-vl-tiny", "qwen2.5-vl-tiny"]
    rows = run_video_bench(args.frames or (8, 16, 32), models=models, budget=(args.budgets or ["25%"])[0],
                           repeats=args.repeats or 15, progress=not args.no_progress)
    print(format_video_table(rows))
    out = Path(args.out)
    write_json(out / "results.json", {"video": rows})
    write_csv(out / "results.csv", rows)
    print(f"wrote {out / 'results.json'}, {out / 'results.csv'}")
    return 0
