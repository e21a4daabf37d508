"""Running a request: plan and answer with the prefill timed, the cost row every results row carries,
and a schedule saved with what reproduces its run.

The cost columns of a run are computed once, by :func:`vtsched.core.cost.plan_costs`, when the
scheduler answers (``RunResult.costs``); :func:`cost_row` adds what the budget counts and the measured
prefill time, the same way for ``run --json``, ``eval``, ``sweep`` and the plugins.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

import torch
from vtsched.core.app.request import Request, check_request
from vtsched.core.budget import Budget
from vtsched.core.cost import RunCosts, plan_costs
from vtsched.core.generation import GenerationConfig
from vtsched.core.planner import Plan
from vtsched.core.policy import Partitioner, Policy, budget_counts_of
from vtsched.core.schedule import Schedule
from vtsched.core.scheduler import RunResult, Scheduler
from vtsched.core.tokens import PromptBatch

__all__ = ["TimedEngine", "answer_timed", "cost_row", "run", "run_costs", "run_request", "with_run_meta"]


class TimedEngine:
    """An engine with the seconds spent in ``prefill`` added up (``extend`` passes through): how ``run``,
    ``eval`` and ``sweep`` measure ``prefill_ms`` while answering (CUDA synchronised around each prefill)."""

    def __init__(self, engine: Any, cuda: bool) -> None:
        self.engine, self.cuda, self.seconds = engine, cuda, 0.0

    def prefill(self, *args: Any, **kwargs: Any) -> Any:
        if self.cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = self.engine.prefill(*args, **kwargs)
        if self.cuda:
            torch.cuda.synchronize()
        self.seconds += time.perf_counter() - start
        return out

    def extend(self, *args: Any, **kwargs: Any) -> Any:
        return self.engine.extend(*args, **kwargs)


def run_costs(scheduler: Scheduler, plan: Plan, stats: Any) -> RunCosts:
    """The cost columns of a planned prefill on ``scheduler``'s model, for a prefill run outside
    :meth:`~vtsched.core.scheduler.Scheduler.answer` (which computes them itself: ``RunResult.costs``)."""
    return plan_costs(plan, stats, scheduler.adapter.geometry)


def cost_row(scheduler: Scheduler, policy: Policy, costs: RunCosts, sample: int | None, prefill_ms: float) -> dict[str, Any]:
    """What a results row says a run cost: what its budget counts, the cost columns of ``sample`` (their
    means with ``None``) and the measured prefill in milliseconds."""
    return {"budget_counts": budget_counts_of(policy, scheduler.registry), **costs.row(sample), "prefill_ms": prefill_ms}


def answer_timed(scheduler: Scheduler, batch: PromptBatch, policy: Policy, partitioner: Partitioner | None,
                 budget: Budget | None, generation: GenerationConfig | None = None,
                 timed: TimedEngine | None = None, **answer: Any) -> tuple[RunResult, float]:
    """Plan and answer a prepared batch, timing the plan (the partitioner's selection is part of the
    prefill's cost) and the prefill: the result and those seconds (added to ``timed``'s when given)."""
    timed = timed or TimedEngine(scheduler.engine, scheduler.adapter.device.type == "cuda")
    before = timed.seconds
    start = time.perf_counter()
    plan = scheduler.plan(batch, policy, partitioner, budget)
    timed.seconds += time.perf_counter() - start
    result = scheduler.answer(batch, plan, generation, engine=timed, **answer)
    return result, timed.seconds - before


def run_request(scheduler: Scheduler, images: Sequence[Any], questions: Sequence[str], policy: Policy,
                partitioner: Partitioner | None, budget: Budget | None,
                generation: GenerationConfig | None = None) -> tuple[RunResult, float]:
    """What :meth:`Scheduler.run <vtsched.core.scheduler.Scheduler.run>` does (prepare, plan, answer) for
    a checked request's components, with the plan and the prefill timed: the result and those seconds,
    the ``prefill_ms`` every results row reports."""
    batch = scheduler.prepare(images, questions)
    return answer_timed(scheduler, batch, policy, partitioner, budget, generation)


def run(scheduler: Scheduler, request: Request, images: Sequence[Any], questions: Sequence[str],
        generation: GenerationConfig | None = None) -> tuple[RunResult, float]:
    """A :class:`~vtsched.core.app.request.Request` run on ``scheduler``: checked against its planner
    (:func:`~vtsched.core.app.request.check_request`: routing, the budget a run uses), then
    :func:`run_request`. The Python API's edge: ``run(s, Request.from_words("prune", budget="11%"), ...)``."""
    checked = check_request(scheduler.planner, request)
    return run_request(scheduler, images, questions, checked.policy, checked.make_partitioner(scheduler.planner),
                       checked.budget, generation)


def with_run_meta(schedule: Schedule, budget: Budget | None, partitioner: str | None) -> Schedule:
    """The schedule with what else a run needs to reproduce it (budget, partitioner) in its meta."""
    meta = dict(schedule.meta)
    if budget is not None:
        meta["budget"] = str(budget)
    if partitioner is not None:
        meta["partitioner"] = partitioner
    return dataclasses.replace(schedule, meta=tuple(sorted(meta.items())))
