"""``vtsched sweep CONFIG.toml``: ablations over a grid of cells, resumable, on one or many devices."""

from __future__ import annotations

import argparse
import sys

from vtsched.core.cli.checks import add_device, add_output, at_least
from vtsched.core.cli.common import add_common


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    sw = sub.add_parser("sweep", help="run an ablation grid from a TOML config; resumable; plots and CSV at the end",
                        description="Run every cell of CONFIG (models x datasets x policies x parameters x "
                        "partitioners x budgets x seeds) that has no result yet, appending one JSON line per "
                        "cell to the results file; then print a summary table and write a CSV and plots.")
    sw.add_argument("config", help="sweep config (TOML); see docs/ablations.md")
    sw.add_argument("--dry-run", action="store_true", help="list the cells with their estimated FLOPs; run nothing")
    sw.add_argument("--retry-failed", action="store_true", help="run failed cells again")
    sw.add_argument("--executor", default="local", choices=("local", "submitit"),
                    help="local: this process, or a process per device / --workers; submitit: Slurm job arrays")
    sw.add_argument("--workers", type=at_least(1), default=1, help="worker processes on the CPU (local executor)")
    sw.add_argument("--devices", default=None,
                    help="comma-separated devices, one worker each (cuda:0,cuda:1), or 'all' for every visible GPU")
    sw.add_argument("--cluster", default=None, help="submitit cluster: slurm (default where srun exists) or local")
    add_output(sw, "--results", "file", default=None,
               help="results file (default: the config's results key, else vtsched-out/sweep/CONFIG-STEM/results.jsonl)")
    add_output(sw, "--out", "folder", default=None,
               help="folder for the summary, CSV and plots (default: report/ beside the default results, "
               "RESULTS-STEM-report/ beside a results file given)")
    add_device(sw, default=None, help="device of every worker (overrides [eval] device)")
    sw.add_argument("--strict", action="store_true",
                    help="exit with status 1 when any cell of the config has failed (default: 0, failures are rows)")
    sw.add_argument("--no-progress", action="store_true")
    add_common(sw)


def _devices(text: str | None) -> list[str] | None:
    if not text:
        return None
    if text == "all":
        import torch
        from vtsched.core.errors import InputError

        if not torch.cuda.is_available():
            raise InputError("--devices all: no CUDA device is visible; use --workers N on a CPU")
        return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    from vtsched.core.cli.checks import check_device

    return [check_device(d.strip(), "--devices") for d in text.split(",") if d.strip()]


def main(args: argparse.Namespace) -> int:
    from vtsched.core.cli.checks import check_device
    from vtsched.core.io import prepare_output
    from vtsched.core.tools.sweep import load_config, run_sweep, with_overrides

    config = with_overrides(load_config(args.config), results=args.results, out=args.out, device=args.device)
    devices = _devices(args.devices)
    if args.executor == "local" and not devices:
        check_device(config.device, "[eval] device")
    if not args.dry_run:
        prepare_output(config.results, "file", "results file", create=False)
        prepare_output(config.out, "folder", "report folder", create=False)
    outcome = run_sweep(config, executor=args.executor, workers=args.workers, devices=devices,
              retry_failed=args.retry_failed, dry_run=args.dry_run, progress=not args.no_progress,
              no_plugins=args.no_plugins, cluster=args.cluster)
    if outcome.failed:
        print(f"{outcome.failed} of {len(outcome.cells)} cells failed (their errors are in the table and the "
              f"results file; --retry-failed runs them again)", file=sys.stderr)
        return 1 if args.strict else 0
    return 0
