"""Running cells: one model loaded per worker and device, each cell evaluated, its row appended.

A cell is answered the way ``vtsched eval`` answers a case (``Scheduler.prepare``, ``Scheduler.plan``
through the one planner, :func:`~vtsched.core.generation.generate`, normalised exact match), with
the prefill timed on its own (CUDA events on a GPU). Under ``torchrun`` / ``accelerate launch`` each
rank answers its shard of the samples (``items[rank::world]``) and rank 0 gathers the predictions,
puts them back in dataset order and writes the row: the same row a single process writes, bar the
timings. A cell whose dataset a plugin's evaluator serves is handed to that evaluator whole, on rank
0 (:mod:`.evaluated`), as ``vtsched eval`` hands it.

A cell that fails (a parameter the planner refuses, out of memory, a bad sample) is written as a
``failed`` row with its one-line error and the worker goes on to the next cell.
"""

from __future__ import annotations

import datetime
import os
import socket
import statistics
import time
import traceback
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from vtsched.core.errors import VtschedError
from vtsched.core.tools.sweep.cells import Cell, cell_request, layer_param, model_path
from vtsched.core.tools.sweep.results import FORMAT, append_row

__all__ = ["Answers", "Ranks", "cell_row", "evaluate_cell", "failed_row", "one_line", "run_cells"]


@dataclass
class Answers:
    """What one process answered for a cell: per sample (dataset index) and the time it took."""

    index: list[int] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    types: list[str] = field(default_factory=list)
    answers: list[str] = field(default_factory=list)
    predictions: list[str] = field(default_factory=list)
    correct: list[bool] = field(default_factory=list)
    visual: list[float] = field(default_factory=list)
    gflops: list[float] = field(default_factory=list)
    prefill_s: float = 0.0
    vision_s: float = 0.0
    visual_input: list[float] = field(default_factory=list)  # visual tokens entering the LLM, per sample
    budget_counts: str = "input"  # what the cell's budget counts (Policy.budget_counts)
    targets: list[float] = field(default_factory=list)  # matched cells: the target per sample
    solved: list[int] = field(default_factory=list)  # matched cells: the policy's budget solved per sample

    def merged(self, others: Sequence[Answers]) -> Answers:
        """All answers in dataset order, times added up."""
        parts = [self, *others]
        out = Answers(prefill_s=sum(p.prefill_s for p in parts), vision_s=sum(p.vision_s for p in parts),
                      budget_counts=self.budget_counts)
        rows = sorted((i, p, k) for p in range(len(parts)) for k, i in enumerate(parts[p].index))
        for _, p, k in rows:
            src = parts[p]
            for name in ("index", "ids", "tags", "types", "answers", "predictions", "correct", "visual", "gflops",
                         "visual_input"):
                getattr(out, name).append(getattr(src, name)[k])
            for name in ("targets", "solved"):  # only matched cells have them
                if getattr(src, name):
                    getattr(out, name).append(getattr(src, name)[k])
        return out


def evaluate_cell(scheduler: Any, items: Sequence[Any], spec: Mapping[str, Any], *, batch_size: int,
                  indices: Sequence[int] | None = None) -> Answers:
    """Answer ``items`` (those at ``indices``, else all) under the cell ``spec``."""
    import torch
    from vtsched.core.app import TimedEngine, answer_timed
    from vtsched.core.budget import Budget
    from vtsched.core.generation import GenerationConfig
    from vtsched.core.policy import budget_counts_of
    from vtsched.core.tools.evaluate import normalise
    from vtsched.core.tools.matching import Matcher, split_by_budget

    torch.manual_seed(int(spec["seed"]))
    request = cell_request(spec)
    policy = scheduler.make_policy(request.policy, dict(request.params))
    partitioner = (scheduler.make_partitioner(request.partitioner, dict(request.partitioner_params))
                   if request.partitioner else None)
    budget = request.budget
    config = GenerationConfig(max_new_tokens=int(spec["max_new_tokens"]))
    cuda = scheduler.adapter.device.type == "cuda"
    timed = TimedEngine(scheduler.engine, cuda)
    matcher = Matcher(scheduler.planner, str(spec["match"])) if spec.get("match") else None
    out = Answers(budget_counts=budget_counts_of(policy, scheduler.registry))
    chosen = list(range(len(items))) if indices is None else list(indices)
    for start in range(0, len(chosen), batch_size):
        index = chosen[start : start + batch_size]
        chunk = [items[i] for i in index]
        t0 = time.perf_counter()
        batch = scheduler.prepare([it.load() for it in chunk], [it.question for it in chunk])
        if cuda:
            torch.cuda.synchronize()
        out.vision_s += time.perf_counter() - t0
        solved: list[int | None] = [None] * len(chunk)
        if matcher is not None and budget is not None:
            solved, targets = matcher.solve_batch(policy, partitioner, budget, batch, str(spec["policy"]))
            out.targets += targets
            out.solved += [int(b) for b in solved if b is not None]
        texts: list[str] = [""] * len(chunk)
        costs: list[dict[str, float]] = [{}] * len(chunk)
        for group, count in split_by_budget(solved):
            sub = batch if len(group) == len(chunk) else batch.select(group)
            # the partitioner's selection is part of the prefill's cost: answer_timed times the plan too
            answered, _ = answer_timed(scheduler, sub, policy, partitioner,
                                       Budget(count=count) if count is not None else budget, config, timed)
            assert answered.costs is not None  # Scheduler.answer computes them
            for k, i in enumerate(group):
                texts[i], costs[i] = answered.texts[k], answered.costs.row(k)
        for k, (i, item) in enumerate(zip(index, chunk)):
            out.index.append(i)
            out.ids.append(item.id)
            out.tags.append(item.tag)
            out.types.append(item.type)
            out.answers.append(item.answer)
            out.predictions.append(texts[k])
            out.correct.append(normalise(texts[k]) == normalise(item.answer))
            out.visual.append(costs[k]["visual_tokens_per_layer"])
            out.gflops.append(costs[k]["prefill_gflops"])
            out.visual_input.append(costs[k]["visual_tokens_input"])
    out.prefill_s = timed.seconds
    return out


def _meta(cell: Cell) -> dict[str, Any]:
    from vtsched.core import __version__

    return {"format": FORMAT, "vtsched": __version__, "hash": cell.hash, "label": cell.label, "spec": dict(cell.spec),
            "k": layer_param(cell.spec["params"]), "est_gflops": cell.est_gflops, "host": socket.gethostname(),
            "pid": os.getpid(), "finished_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def cell_row(cell: Cell, answers: Answers, *, wall_s: float, device: str, ranks: int = 1) -> dict[str, Any]:
    """The ``ok`` row of a cell: accuracy overall and per tag and type, cost, timings, predictions."""
    n = len(answers.correct)
    splits: dict[str, list[bool]] = defaultdict(list)
    for tag, qtype, ok in zip(answers.tags, answers.types, answers.correct):
        splits[f"tag={tag}"].append(ok)
        splits[f"type={qtype}"].append(ok)
    return {
        **_meta(cell), "status": "ok", "error": None, "n": n,
        "accuracy": statistics.fmean(answers.correct) if n else float("nan"),
        "by_split": {k: statistics.fmean(v) for k, v in sorted(splits.items())},
        "budget_counts": answers.budget_counts,
        "visual_tokens_input": statistics.fmean(answers.visual_input) if answers.visual_input else float("nan"),
        "visual_tokens_per_layer": statistics.fmean(answers.visual) if n else float("nan"),
        "prefill_gflops": statistics.fmean(answers.gflops) if n else float("nan"),
        "prefill_ms": 1e3 * answers.prefill_s / n if n else float("nan"),
        **_matched(cell, answers),
        "vision_ms": 1e3 * answers.vision_s / n if n else float("nan"),
        "wall_s": round(wall_s, 3), "device": device, "ranks": ranks,
        "predictions": [[i, p, c] for i, p, c in zip(answers.ids, answers.predictions, answers.correct)],
    }


def _matched(cell: Cell, answers: Answers) -> dict[str, Any]:
    """A matched cell's ``match``, ``match_target``, ``match_achieved`` and ``budget_solved`` (means over its
    samples); nothing for a cell that was not matched (its row keeps the form it had)."""
    kind = cell.spec.get("match")
    if not kind:
        return {}
    from vtsched.core.tools.matching import MATCH_KINDS

    column = {"visual_tokens_per_layer": answers.visual, "prefill_gflops": answers.gflops,
              "visual_tokens_input": answers.visual_input}[MATCH_KINDS[kind]]
    return {"match": kind, "match_target": statistics.fmean(answers.targets) if answers.targets else None,
            "match_achieved": statistics.fmean(column) if column else None,
            "budget_solved": statistics.fmean(answers.solved) if answers.solved else None}


def failed_row(cell: Cell, error: str, *, device: str | None = None) -> dict[str, Any]:
    return {**_meta(cell), "status": "failed", "error": error, "device": device}


def one_line(exc: BaseException) -> str:
    """The error as one line a user can act on: out of memory said plainly, else type and first line."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if type(exc).__name__ == "OutOfMemoryError" or "out of memory" in text.lower():
        return f"out of memory: {text[:200]} (lower [eval] batch_size, or use a larger device)"
    if isinstance(exc, VtschedError):
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class Ranks:
    """This process's place among data-parallel ranks (torchrun / accelerate launch); one rank alone."""

    def __init__(self) -> None:
        self.rank, self.world = 0, 1

    @classmethod
    def from_environment(cls, device: str) -> Ranks:
        """Join the process group the launcher describes (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``):
        gloo on a CPU, nccl on GPUs; a single rank when no launcher started this process."""
        ranks = cls()
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return ranks
        import datetime as dt

        import torch.distributed as dist

        if not dist.is_initialized():
            backend = "nccl" if device.startswith("cuda") else "gloo"
            dist.init_process_group(backend, timeout=dt.timedelta(hours=24))  # uneven ranks may wait long
        ranks.rank, ranks.world = dist.get_rank(), dist.get_world_size()
        return ranks

    @property
    def main(self) -> bool:
        return self.rank == 0

    def broadcast(self, value: Any) -> Any:
        if self.world == 1:
            return value
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value: Any) -> list[Any]:
        """``value`` of every rank, on rank 0 (``[]`` elsewhere)."""
        if self.world == 1:
            return [value]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world if self.main else []
        dist.gather_object(value, out if self.main else None, dst=0)
        return out

    def close(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.barrier()
                dist.destroy_process_group()


def _evaluated(cell: Cell, registry: Any, *, device: str, batch_size: int) -> dict[str, Any]:
    """The row of a cell a plugin's evaluator scores (:mod:`.evaluated`), or its ``failed`` row."""
    from vtsched.core.tools.sweep.evaluated import evaluated_row

    start = time.perf_counter()
    try:
        row = evaluated_row(cell, registry, device=device, batch_size=batch_size)
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # recorded with its one line; the sweep goes on
        if os.environ.get("VTSCHED_SWEEP_TRACEBACK"):
            traceback.print_exc()
        return failed_row(cell, one_line(exc), device=device)
    return {**_meta(cell), **row, "wall_s": round(time.perf_counter() - start, 3), "device": device, "ranks": 1}


def run_cells(cells: Sequence[Cell], results: str, *, device: str = "cpu", batch_size: int = 16,
              dtype: str | None = None, no_plugins: bool = False, ranks: Ranks | None = None,
              on_row: Callable[[dict[str, Any]], None] | None = None) -> int:
    """Run ``cells`` in order, loading each model once, appending one row per cell; the rows written.

    With ``ranks`` (data parallel) every rank must call this with the same cells; rank 0 writes.
    """
    import torch
    from vtsched.core.app import models
    from vtsched.core.generation import GenerationConfig
    from vtsched.core.tools.evaluate import load_items

    ranks = ranks or Ranks()
    warm = False
    registry = models.registry(no_plugins)
    torch_dtype = getattr(torch, dtype) if dtype else None
    schedulers: dict[str, Any] = {}
    datasets: dict[tuple[str, Any], list[Any]] = {}
    written = 0

    def emit(row: dict[str, Any]) -> None:
        nonlocal written
        if ranks.main:
            append_row(results, row)
            written += 1
            if on_row is not None:
                on_row(row)

    for cell in cells:
        if cell.error is not None:
            emit(failed_row(cell, cell.error))
            continue
        if cell.spec.get("evaluator"):  # a plugin's evaluator loads its model and runs it whole, on rank 0
            if ranks.main:
                emit(_evaluated(cell, registry, device=device, batch_size=batch_size))
            continue
        start = time.perf_counter()
        error: str | None = None
        answers: Answers | None = None
        try:
            if cell.model not in schedulers:
                schedulers.clear()  # one model in memory at a time
                schedulers[cell.model] = models.load_scheduler(model_path(cell.model), registry, device,
                                                               dtype=torch_dtype)
                warm = True
            key = (cell.spec["dataset"], cell.spec["limit"])
            if key not in datasets:
                datasets[key] = load_items(str(key[0]), key[1])
            items = datasets[key]
            if warm:  # the first call of a fresh model is slow; keep it out of the first cell's times
                schedulers[cell.model].run([items[0].load()], [items[0].question], "full",
                                           generation=GenerationConfig(max_new_tokens=2))
                warm = False
            answers = evaluate_cell(schedulers[cell.model], items, cell.spec, batch_size=batch_size,
                                    indices=range(ranks.rank, len(items), ranks.world))
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # recorded with its one line; the sweep goes on
            error = one_line(exc)
            if os.environ.get("VTSCHED_SWEEP_TRACEBACK"):
                traceback.print_exc()
            if "out of memory" in error and torch.cuda.is_available():
                torch.cuda.empty_cache()
        gathered = ranks.gather((answers, error))
        if not ranks.main:
            continue
        errors = [e for _, e in gathered if e is not None]
        if errors:
            emit(failed_row(cell, errors[0], device=device))
            continue
        parts = [a for a, _ in gathered]
        merged = parts[0].merged(parts[1:])
        emit(cell_row(cell, merged, wall_s=time.perf_counter() - start, device=device, ranks=ranks.world))
    return written
