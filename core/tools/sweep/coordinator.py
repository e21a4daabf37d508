"""The coordinator: :func:`run_sweep` takes the results file's lock, decides which cells run, hands
them to an executor (or answers this rank's shard under torchrun), follows the results file for
progress, and writes the report over every cell of the config.

Also here: the ``--dry-run`` table and the command line's overrides of a config's paths and device.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO

from vtsched.core.errors import InputError, VtschedError
from vtsched.core.tools.sweep.cells import Cell
from vtsched.core.tools.sweep.config import SweepConfig, load_config
from vtsched.core.tools.sweep.launch import InlineExecutor, Job, make_executor
from vtsched.core.tools.sweep.plan import resolve_cells, shard_cells
from vtsched.core.tools.sweep.report import (
    summary_rows,
    summary_table,
    summary_text,
    write_report,
)
from vtsched.core.tools.sweep.results import (
    ResultsFile,
    SweepLock,
    drop_torn_tail,
    read_rows,
)
from vtsched.core.tools.sweep.run import Ranks, run_cells

__all__ = ["Progress", "SweepOutcome", "dry_run_table", "run_sweep", "with_overrides"]


@dataclass
class SweepOutcome:
    """What a sweep did: its cells, how many ran now, and the report over all of them."""

    cells: list[Cell]
    ran: int = 0
    skipped: int = 0
    failed: int = 0  # cells of this config whose latest result is a failure
    rows: list[dict[str, Any]] = field(default_factory=list)  # summary rows, one per cell with a result
    files: list[Path] = field(default_factory=list)
    wall_s: float = 0.0
    rank: int = 0

    def table(self) -> str:
        return summary_table(self.rows)


class Progress:
    """Follows the results file: a progress bar (cells, ETA) over the rows of this sweep's pending cells."""

    def __init__(self, results: Path, pending: Sequence[Cell], enabled: bool, desc: str) -> None:
        from tqdm.auto import tqdm

        self.results = results
        self.pending = {c.hash for c in pending}
        self.seen: set[str] = set()
        self.offset = results.stat().st_size if results.exists() else 0
        self.bar = tqdm(total=len(self.pending), unit="cell", desc=desc, disable=not enabled, file=sys.stderr)

    def __call__(self) -> None:
        rows, self.offset = read_rows(self.results, self.offset)
        for row in rows:
            h = row.get("hash")
            if h in self.pending and h not in self.seen:
                self.seen.add(h)
                self.bar.update(1)
                if row.get("status") == "failed":
                    self.bar.write(f"failed: {row.get('label')}: {row.get('error')}", file=sys.stderr)

    def close(self) -> None:
        self.bar.close()


def _status(cell: Cell, finished: AbstractSet[str], failed: AbstractSet[str]) -> str:
    if cell.hash in finished:
        return "done"
    if cell.hash in failed:
        return "failed"
    return "invalid" if cell.error else "pending"


def dry_run_table(cells: Sequence[Cell], finished: AbstractSet[str] = frozenset(),
                  failed: AbstractSet[str] = frozenset()) -> str:
    """The cells with their estimated prefill FLOPs (per sample and in total) and their status."""
    header = (f"{'hash':<10s} {'model':<10s} {'dataset':<18s} {'cell':<40s} {'n':>5s} {'GFLOPs/sample':>13s} "
              f"{'TFLOPs':>8s}  status")
    lines = [header, "-" * len(header)]
    total = 0.0
    for c in cells:
        est = "-" if c.est_gflops is None else f"{c.est_gflops:.4f}"
        tf = "-" if c.est_gflops is None else f"{c.est_gflops * c.est_samples / 1e3:.4f}"
        total += (c.est_gflops or 0.0) * c.est_samples / 1e3 if c.error is None else 0.0
        status = _status(c, finished, failed)
        line = (f"{c.hash[:10]:<10s} {Path(c.model).name[:10]:<10s} {str(c.spec['dataset'])[:18]:<18s} "
                f"{c.label[:40]:<40s} {c.est_samples:>5d} {est:>13s} {tf:>8s}  {status}")
        if c.error:
            line += f": {c.error}"
        lines.append(line)
    lines.append(f"{len(cells)} cells, {total:.4f} TFLOPs of decoder prefill in all (nominal, from each schedule)")
    return "\n".join(lines)


def _registry(no_plugins: bool) -> Any:
    from vtsched.core.app import registry

    return registry(no_plugins)


def run_sweep(
    config: SweepConfig | str | Path,
    *,
    executor: str = "local",
    workers: int = 1,
    devices: Sequence[str] | None = None,
    retry_failed: bool = False,
    dry_run: bool = False,
    progress: bool = True,
    no_plugins: bool = False,
    cluster: str | None = None,
    report: bool = True,
    stream: TextIO | None = None,
) -> SweepOutcome:
    """Run the cells of ``config`` that have no result yet; report over all of them.

    Under torchrun / accelerate launch (``WORLD_SIZE`` > 1) every rank calls this; rank 0 holds the
    lock, decides what runs and writes the rows and the report, the others answer their shards.
    """
    out = stream or sys.stdout
    if not isinstance(config, SweepConfig):
        config = load_config(config)
    start = time.perf_counter()
    ranks = Ranks() if dry_run else Ranks.from_environment(config.device)
    registry = _registry(no_plugins)
    cells = resolve_cells(config, registry)
    results = config.results
    if dry_run:
        done = ResultsFile.read(results) if results.exists() else ResultsFile(results)
        print(dry_run_table(cells, done.finished(), done.failed()), file=out)
        return SweepOutcome(cells, wall_s=time.perf_counter() - start)
    lock = SweepLock(results)
    decision: tuple[str, Any] = ("ok", None)
    if ranks.main:
        try:
            lock.acquire()
            if drop_torn_tail(results):
                print(f"note: dropped the unfinished last line of {results.name} (a run cut off mid-write); "
                      "its cell runs again", file=sys.stderr)
            done = ResultsFile.read(results)
            finished, failed = done.finished(), done.failed()
            pending = [c for c in cells if c.hash not in finished and (
                c.hash not in failed or (retry_failed and c.error is None))]
            decision = ("ok", [c.hash for c in pending])
        except VtschedError as exc:
            decision = ("error", str(exc))
    decision = ranks.broadcast(decision)
    if decision[0] == "error":
        lock.release()
        ranks.close()
        raise InputError(decision[1])
    chosen = set(decision[1])
    pending = [c for c in cells if c.hash in chosen]
    outcome = SweepOutcome(cells, skipped=len(cells) - len(pending), rank=ranks.rank)
    try:
        if ranks.main:
            where = f"{ranks.world} data-parallel ranks" if ranks.world > 1 else _where(executor, workers, devices)
            print(f"sweep {config.name}: {len(cells)} cells, {len(cells) - len(pending)} already in {results.name}, "
                  f"{len(pending)} to run on {where}", file=out, flush=True)
        if pending:
            job = Job(results=str(results), folder=str(config.out / "workers"), device=config.device,
                      batch_size=config.batch_size, dtype=config.dtype, no_plugins=no_plugins)
            follow = Progress(results, pending, progress and ranks.main, config.name)
            try:
                if ranks.world > 1:
                    run_cells(pending, str(results), device=_rank_device(config.device), batch_size=config.batch_size,
                              dtype=config.dtype, no_plugins=no_plugins, ranks=ranks, on_row=lambda _r: follow())
                else:
                    if devices is None and workers > 1 and config.device.startswith("cuda"):
                        devices = [f"cuda:{i}" for i in range(workers)]  # a GPU per worker
                    chosen_executor = make_executor(executor, workers=workers, devices=devices, slurm=dict(config.slurm),
                                                    cluster=cluster)
                    shards = shard_cells(pending, 1 if isinstance(chosen_executor, InlineExecutor) else
                                         len(getattr(chosen_executor, "devices", [])) or workers)
                    chosen_executor.run(shards, job, follow)
            except KeyboardInterrupt:
                follow()
                follow.close()
                print(f"\ninterrupted: {len(follow.seen)} of {len(pending)} cells finished and kept in {results}; "
                      "run the same command again to resume", file=sys.stderr)
                raise
            follow.close()
            outcome.ran = len(follow.seen)
        if ranks.main:
            latest = ResultsFile.read(results).latest()
            mine = [latest[c.hash] for c in cells if c.hash in latest]
            outcome.failed = sum(r.get("status") == "failed" for r in mine)
            outcome.rows = summary_rows(mine)
            if report:
                print(summary_text(outcome.rows), file=out)
                outcome.files = write_report(outcome.rows, config.out, config.name)
                print(f"wrote {', '.join(str(p) for p in outcome.files)}", file=out)
    finally:
        lock.release()
        ranks.close()
    outcome.wall_s = time.perf_counter() - start
    return outcome


def _rank_device(device: str) -> str:
    """On GPUs each rank takes the device of its local rank."""
    import os

    if device.startswith("cuda"):
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return device


def _where(executor: str, workers: int, devices: Sequence[str] | None) -> str:
    if devices:
        return f"{executor}: one worker per device ({', '.join(devices)})"
    if executor == "local":
        return "this process" if workers <= 1 else f"local: {workers} worker processes"
    return executor


def with_overrides(config: SweepConfig, *, results: str | None = None, out: str | None = None,
                   device: str | None = None) -> SweepConfig:
    """The config with command-line overrides of its results path, report folder and device."""
    changes: dict[str, Any] = {}
    if results:
        changes["results"] = Path(results).absolute()
        if not out:
            changes["out"] = changes["results"].parent / f"{changes['results'].stem}-report"
    if out:
        changes["out"] = Path(out).absolute()
    if device:
        changes["device"] = device
    return replace(config, **changes)
