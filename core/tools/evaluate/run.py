"""Answering the items under every case: :func:`evaluate` (``full`` first, the reference), each
case's partitioner timed around its calls, budgets solved per sample under ``--match``."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from vtsched.core.app import TimedEngine
from vtsched.core.budget import Budget
from vtsched.core.calibration import next_token_kl
from vtsched.core.errors import InputError
from vtsched.core.generation import GenerationConfig
from vtsched.core.policy import budget_counts_of
from vtsched.core.scheduler import Scheduler
from vtsched.core.tools.bench import Case, case_label
from vtsched.core.tools.evaluate.cases import dataset_params, hard_references, parse_partitioner
from vtsched.core.tools.evaluate.items import EvalItem, normalise
from vtsched.core.tools.evaluate.summary import EvalReport, Prediction

__all__ = ["evaluate"]


class _Timed:
    """A partitioner seen through a stopwatch: what eval hands the planner to charge partition time.

    Duck-types the partitioner surface the planner and scheduler use (``partition``, ``name``,
    ``describe``, ``params``, ``group_names``); ``spent_flops`` of the wrapped partitioner, if any,
    is read around each call.
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name = inner.name
        self.seconds = 0.0
        self.flops = 0.0

    def partition(self, batch: Any, budget: Budget) -> Any:
        spent = getattr(self.inner, "spent_flops", None)
        before = float(spent()) if callable(spent) else 0.0
        start = time.perf_counter()
        try:
            return self.inner.partition(batch, budget)
        finally:
            self.seconds += time.perf_counter() - start
            if callable(spent):
                self.flops += float(spent()) - before

    def take(self) -> tuple[float, float]:
        """Seconds and FLOPs spent since the last ``take``."""
        spent = (self.seconds, self.flops)
        self.seconds = self.flops = 0.0
        return spent

    def describe(self) -> str:
        return str(self.inner.describe())

    def params(self) -> dict[str, Any]:
        return dict(self.inner.params())

    def group_names(self) -> tuple[str, ...]:
        return tuple(self.inner.group_names())

    def selection_flops(self, num_visual: int, keep: int, geometry: Any) -> float:
        return float(self.inner.selection_flops(num_visual, keep, geometry)) if hasattr(
            self.inner, "selection_flops") else 0.0


def _partitioner_for(scheduler: Scheduler, case: Case, policy: Any, data: str | None) -> _Timed | None:
    """The case's partitioner (the named one, else the policy's default), timed; None without a partition."""
    if not policy.needs_partition or getattr(policy, "groups", None) is not None:
        return None
    name: str | None
    if case.partitioner:
        name, params = parse_partitioner(case.partitioner)
        params = dataset_params(scheduler.planner.registry, name, params, data)
    else:
        name, params = scheduler.planner.default_partitioner(policy), {}  # the planner's own default rule
        if name is None:
            return None
    return _Timed(scheduler.make_partitioner(name, params))


def evaluate(
    scheduler: Scheduler,
    items: Sequence[EvalItem],
    cases: Sequence[Case],
    *,
    batch_size: int = 8,
    max_new_tokens: int = 4,
    progress: bool = True,
    data: str | None = None,
    paired_against: str = "full",
    hard_subset: str | None = None,
    match: str | None = None,
) -> EvalReport:
    """Answer ``items`` under every case (``full`` first, as the reference).

    ``data``: the dataset's spec, handed to partitioners that read the dataset themselves (the
    ``mask`` partitioner's masks) when their parameter is unset. ``paired_against`` and
    ``hard_subset`` name cases by label (:func:`case_label`; :class:`EvalReport`). ``match``
    (``--match``, :mod:`vtsched.core.tools.matching`): each case's budget is a target, and its
    policy's own budget is solved for it per sample; samples that solve differently run apart.
    """
    from tqdm.auto import tqdm
    from vtsched.core.tools.matching import Matcher

    cases = [Case("full")] + [c for c in cases if c.policy != "full"]
    labels = [case_label(c) for c in cases]
    built = []
    for c in cases:
        policy = scheduler.make_policy(c.policy, dict(c.params))
        built.append((c, policy, _partitioner_for(scheduler, c, policy, data)))
    config = GenerationConfig(max_new_tokens=max_new_tokens)
    if paired_against not in labels:
        raise InputError(f"paired_against: no case {paired_against!r} in this eval; cases: {', '.join(labels)}")
    report = EvalReport(labels, paired_against=paired_against, hard_subset=hard_subset, match=match,
                        hard_references=hard_references(hard_subset, cases) if hard_subset is not None else {})
    matcher = Matcher(scheduler.planner, match) if match is not None else None
    bar = tqdm(total=len(items) * len(cases), desc="eval", disable=not progress)
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        batch = scheduler.prepare([it.load() for it in chunk], [it.question for it in chunk])
        reference: _Answered | None = None
        for (case, policy, partitioner), label in zip(built, labels):
            answered = _answer_case(scheduler, batch, case, policy, partitioner, config, matcher)
            if reference is None:  # the first case is full
                reference = answered
            kl = next_token_kl(reference.logits, answered.logits)
            counts = budget_counts_of(policy, scheduler.registry)
            for i, item in enumerate(chunk):
                text, costs = answered.texts[i], answered.costs[i]
                report.predictions.append(Prediction(
                    label, item.id, item.tag, item.type, item.answer, text,
                    normalise(text) == normalise(item.answer),
                    normalise(text) == normalise(reference.texts[i]),
                    float(kl[i]), costs["visual_tokens_per_layer"], costs["prefill_gflops"],
                    answered.partitioner_ms[i], answered.partitioner_gflops[i], counts, costs["visual_tokens_input"],
                    answered.prefill_ms[i], answered.targets[i], answered.solved[i],
                ))
            bar.update(len(chunk))
    bar.close()
    return report


@dataclass
class _Answered:
    """One case's answers to a batch, per sample in batch order (however the samples were planned)."""

    texts: list[str]
    logits: Any  # (batch, vocab) next-token logits
    costs: list[dict[str, float]]  # the cost columns (vtsched.core.cost.RunCosts.row)
    prefill_ms: list[float]
    partitioner_ms: list[float]
    partitioner_gflops: list[float]
    targets: list[float | None]
    solved: list[int | None]


def _answer_case(scheduler: Scheduler, batch: Any, case: Case, policy: Any, partitioner: Any,
                 config: GenerationConfig, matcher: Any) -> _Answered:
    """Plan and answer ``batch`` under one case: as one batch, or, when ``matcher`` solves different
    budgets for its samples, one sub-batch per solved budget (the planner takes one budget a batch)."""
    import torch
    from vtsched.core.tools.matching import split_by_budget

    size = len(batch)
    budget = case.budget
    targets: list[float | None] = [None] * size
    solved: list[int | None] = [None] * size
    if matcher is not None and budget is not None:
        solved_budgets, solved_targets = matcher.solve_batch(policy, partitioner, budget, batch, case_label(case))
        solved, targets = list(solved_budgets), list(solved_targets)
    out = _Answered([""] * size, None, [{}] * size, [0.0] * size, [0.0] * size, [0.0] * size, targets, solved)
    logits: list[Any] = [None] * size
    timed = TimedEngine(scheduler.engine, scheduler.adapter.device.type == "cuda")
    for index, count in split_by_budget(solved):
        sub = batch if len(index) == size else batch.select(index)
        plan = scheduler.plan(sub, policy, partitioner, Budget(count=count) if count is not None else budget)
        seconds, part_flops = partitioner.take() if partitioner is not None else (0.0, 0.0)
        timed.seconds = 0.0
        answered = scheduler.answer(sub, plan, config, engine=timed)
        for k, i in enumerate(index):
            assert answered.costs is not None  # Scheduler.answer computes them
            out.texts[i], out.costs[i], logits[i] = (answered.texts[k], answered.costs.row(k),
                                                     answered.generated.prefill.logits[k])
            out.partitioner_ms[i] = 1e3 * seconds / len(index)
            out.partitioner_gflops[i] = part_flops / len(index) / 1e9
            out.prefill_ms[i] = 1e3 * (seconds + timed.seconds) / len(index)
    out.logits = torch.stack(logits)
    return out
