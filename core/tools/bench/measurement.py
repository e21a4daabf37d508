"""Measuring the cases: every case and reference run interleaved (rotating their order) after warm-up, the
first measured run of each recording its costs, logits and tokens."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import torch
from vtsched.core.app import run_costs
from vtsched.core.budget import Budget
from vtsched.core.cost import vision_flops
from vtsched.core.engine import DecodeState, Engine, Prefill
from vtsched.core.errors import InputError
from vtsched.core.planner import Plan
from vtsched.core.policy import budget_counts_of
from vtsched.core.scheduler import Scheduler
from vtsched.core.tokens import PromptBatch
from vtsched.core.tools.bench.case import Case, case_label, parse_component
from vtsched.core.tools.bench.clock import Clock
from vtsched.core.tools.bench.reference import Reference, references
from vtsched.core.tools.bench.results import CaseResult
from vtsched.core.tools.bench.table import BenchReport

__all__ = ["Bench", "run_bench"]


def run_bench(
    scheduler: Scheduler,
    images: Sequence[Any],
    questions: Sequence[str],
    cases: Sequence[Case],
    *,
    repeats: int = 5,
    warmup: int = 1,
    decode_tokens: int = 8,
    shape: str = "?",
    progress: bool = True,
    reference: bool = True,
    match: str | None = None,
) -> BenchReport:
    """Time ``cases`` (and, with ``reference``, transformers' own forward and generate) interleaved.

    References need the adapter's ``language_model`` and prompts of equal length; without them
    the report has none. ``match`` (``--match``): each case's budget is a target its policy's own
    budget is solved for (:mod:`vtsched.core.tools.matching`), on the benchmark's samples, before
    anything is timed.
    """
    from tqdm.auto import tqdm

    device = scheduler.adapter.device
    clock = Clock(device)
    batch = scheduler.prepare(images, questions)
    bench = Bench(scheduler, batch, cases, clock, decode_tokens)
    if match is not None:
        bench.solve(match)
    if reference:
        bench.references = references(scheduler, batch, bench, clock)
    jobs = bench.jobs()
    vision_s: list[float] = []
    bar = tqdm(total=(warmup + repeats) * (len(jobs) + 1), desc="bench", disable=not progress, leave=False)
    for rep in range(warmup + repeats):
        _, seconds = clock(lambda: scheduler.prepare(images, questions))
        if rep >= warmup:
            vision_s.append(seconds)
        bar.update()
        order = list(range(len(jobs)))
        order = order[rep % len(order):] + order[: rep % len(order)]  # rotate: no case always goes first
        for i in order:
            jobs[i](rep >= warmup, rep == warmup)
            bar.update()
    bar.close()
    bench.check_references()
    return BenchReport(
        device=_device_name(device), shape=shape, dtype=str(scheduler.adapter.dtype).replace("torch.", ""),
        attn=scheduler.engine.parts.attn_implementation, batch_size=len(batch), repeats=repeats,
        decode_tokens=decode_tokens, vision_s=vision_s, vision_flops=vision_flops(scheduler.adapter.geometry),
        results=bench.results, references=[r.result for r in bench.references],
    )


class Bench:
    """One benchmark's cases, references and measurements; each run of a case or reference is a job."""

    def __init__(self, scheduler: Scheduler, batch: PromptBatch, cases: Sequence[Case], clock: Clock,
                 decode_tokens: int) -> None:
        self.scheduler, self.batch, self.clock, self.decode_tokens = scheduler, batch, clock, decode_tokens
        self.policies = [(c, scheduler.make_policy(c.policy, dict(c.params)),
                          scheduler.make_partitioner(*parse_component(c.partitioner, "partitioner"))
                          if c.partitioner else None) for c in cases]
        self.results = [CaseResult(c) for c in cases]
        self.references: list[Reference] = []
        self.logits: dict[str, torch.Tensor] = {}  # engine next-token logits by case label (first measured run)
        self.tokens: dict[str, torch.Tensor] = {}  # engine greedy tokens, first one included

    def solve(self, kind: str) -> None:
        """Solve every case's budget for ``kind`` on this benchmark's batch (one budget per case: the
        samples of a benchmark share their size; a batch whose samples solve differently is refused)."""
        from vtsched.core.tools.matching import Matcher

        matcher = Matcher(self.scheduler.planner, kind)
        for (case, policy, partitioner), r in zip(self.policies, self.results):
            r.match = kind
            if case.budget is None:
                continue
            budgets, targets = matcher.solve_batch(policy, partitioner, case.budget, self.batch,
                                                   case_label(case))
            if len(set(budgets)) != 1:
                solved = sorted(set(budgets), key=lambda b: -1 if b is None else b)
                raise InputError(f"--match: {case_label(case)} solves to budgets {solved} on the "
                                 "benchmark's samples; benchmark samples of one size (--batch-size 1)")
            r.match_target, r.budget_solved = statistics.fmean(targets), budgets[0]

    def jobs(self) -> list[Callable[[bool, bool], None]]:
        """One callable per case and reference: ``job(measured, first_measured)``."""
        cases: list[Callable[[bool, bool], None]] = [partial(self.run_case, i) for i in range(len(self.results))]
        return cases + [partial(self.run_reference, ref) for ref in self.references]

    def plan(self, i: int) -> Plan:
        case, policy, partitioner = self.policies[i]
        solved = self.results[i].budget_solved
        budget = Budget(count=solved) if solved is not None else case.budget
        return self.scheduler.plan(self.batch, policy, partitioner, budget)

    def run_case(self, i: int, measured: bool, first: bool) -> None:
        if self.clock.cuda:
            torch.cuda.reset_peak_memory_stats()
        (plan, out), seconds = self.clock(partial(self._prefill, i))
        kv_bytes = _cache_bytes(out.state, len(self.batch)) if out.state is not None else 0  # before decoding
        decode_seconds, tokens = None, None
        if self.decode_tokens > 0:
            first_token = out.logits.argmax(-1)[:, None]
            tokens, decode_seconds = self.clock(
                partial(_decode, self.scheduler.engine, out.state, first_token, self.decode_tokens))
        if not measured:
            return
        r = self.results[i]
        r.prefill_s.append(seconds)
        if decode_seconds is not None:
            r.decode_s.append(decode_seconds)
        if self.clock.cuda:
            r.peak_bytes.append(torch.cuda.max_memory_allocated())
        if first:
            r.kv_cache_bytes = kv_bytes
            self._record_first(r, plan, out, tokens)

    def _prefill(self, i: int) -> tuple[Plan, Prefill]:
        """What a request costs from the partition on: plan (scoring included) and prefill."""
        plan = self.plan(i)
        return plan, self.scheduler.engine.prefill(self.batch, plan.schedule, plan.partition, use_cache=True)

    def _record_first(self, r: CaseResult, plan: Plan, out: Prefill, tokens: torch.Tensor | None) -> None:
        r.costs = run_costs(self.scheduler, plan, out.stats).row()
        r.budget_counts = budget_counts_of(plan.policy, self.scheduler.registry)
        self.logits[case_label(r.case)] = out.logits
        if tokens is not None:
            self.tokens[case_label(r.case)] = tokens

    def run_reference(self, ref: Reference, measured: bool, first: bool) -> None:
        seconds, output = ref.run()
        if measured:
            ref.result.seconds.append(seconds)
        if first:
            ref.output = output

    def check_references(self) -> None:
        """Compare each reference's output with its engine case's (from the first measured run)."""
        for ref in self.references:
            if ref.output is None:
                continue
            if ref.result.decoding:
                ours = self.tokens.get(ref.result.case)
                if ours is not None and ours.shape == ref.output.shape:
                    ref.result.agreement = float((ours == ref.output.to(ours.device)).float().mean())
            else:
                logits = self.logits.get(ref.result.case)
                if logits is not None:
                    ref.result.agreement = float((logits - ref.output.to(logits.device)).abs().max())


def _decode(engine: Engine, state: DecodeState | None, token: torch.Tensor, steps: int) -> torch.Tensor:
    """Greedy decode ``steps`` tokens after ``token``; ``(batch, steps + 1)`` tokens, ``token`` first."""
    assert state is not None
    tokens = [token]
    for _ in range(steps):
        token = engine.extend(state, token)[:, -1].argmax(-1)[:, None]
        tokens.append(token)
    return torch.cat(tokens, dim=1)


def _cache_bytes(state: DecodeState, batch_size: int) -> int:
    """KV-cache bytes per sample at the end of prefill (before decoding grew it)."""
    total = sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in zip(state.keys, state.values))
    return total // max(batch_size, 1)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
