"""Measuring cost side by side: prefill time, time to first token, decode speed, memory, FLOPs.

Cases are interleaved within every repetition (rotating their order), after warm-up, so slow
drift of the machine hits every policy alike and ratios are fair. On CUDA, times come from
CUDA events with synchronisation; on CPU from ``time.perf_counter``. Medians and inter-quartile
ranges are reported, never a single run.

Reference cases measure the engine's own overhead: transformers' language model run directly on
the same input embeddings (the full prompt, and the prompt physically shortened to the kept
visual tokens of the smallest ``prune`` budget, at their original position ids), and
transformers' ``generate`` for decoding. They run in the same interleaved loop, and their
next-token logits (tokens, for ``generate``) are compared with the engine's, so a reference can
never silently time something else.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from vtsched.core.budget import Budget
from vtsched.core.cost import plan_costs, vision_flops
from vtsched.core.engine import DecodeState, Engine, Prefill
from vtsched.core.errors import InputError
from vtsched.core.planner import Plan
from vtsched.core.policy import budget_counts_of
from vtsched.core.scheduler import Scheduler
from vtsched.core.tools.matching import achieved
from vtsched.core.tokens import PromptBatch, Role, Sample

__all__ = ["expand_cases", "check_matched", "TimedEngine", "case_label", "Case", "CaseResult", "ReferenceResult", "BenchReport", "run_bench", "parse_case",
           "parse_component"]


@dataclass(frozen=True)
class Case:
    """One policy configuration: policy name, budget, parameters, partitioner."""

    policy: str
    budget: str | None = None
    params: tuple[tuple[str, Any], ...] = ()
    partitioner: str | None = None

    @property
    def label(self) -> str:
        args = ",".join(f"{k}={v}" for k, v in self.params)
        name = f"{self.policy}({args})" if args else self.policy
        return f"{name}@{self.budget}" if self.budget is not None else name


def parse_component(spec: str, kind: str = "policy") -> tuple[str, dict[str, str]]:
    """``"NAME[:PARAM=VALUE,...]"`` -> ``(name, params)``; only the first ``:`` splits, so a value
    may hold colons (``mask:masks=synthetic:1:40``), not commas. A pair without ``=`` is one line."""
    name, _, rest = spec.partition(":")
    params: dict[str, str] = {}
    for pair in (p for p in rest.split(",") if p.strip()):
        key, sep, value = pair.partition("=")
        if not sep:
            raise InputError(f"{kind} {spec!r}: expected NAME:PARAM=VALUE,..., got {pair!r}")
        params[key.strip()] = value.strip()
    return name.strip(), params


def parse_case(text: str, budget: str | None = None) -> Case:
    """``"parvts:drop_layer=2,fusion=fixed"`` -> Case (budget given separately); ``schedule:PATH`` as is.

    ``POLICY[:PARAMS]+PARTITIONER[:PARAMS]`` names the case's partitioner too (``prune+divprune``: DivPrune
    selecting before the LLM), so one command compares pre-LLM selection methods side by side."""
    if text.startswith("schedule:"):
        return Case(text.strip(), budget)
    policy, plus, partitioner = text.partition("+")
    if plus and not partitioner.strip():
        raise InputError(f"policy {text!r}: expected POLICY+PARTITIONER after '+'")
    name, params = parse_component(policy, "policy")
    return Case(name, budget, tuple(params.items()), partitioner.strip() or None)


def case_label(case: Case) -> str:
    """The case's label, with its partitioner when one was named: ``prune@7 [mask]``."""
    return f"{case.label} [{case.partitioner}]" if case.partitioner else case.label


def expand_cases(planner: Any, specs: Sequence[str], budgets: Sequence[str], *, keep_full: bool) -> list[Case]:
    """Cases for ``specs`` x ``budgets``, each checked by the planner before any weights load.

    ``full`` comes first when ``keep_full``; a policy a budget does not change runs once; a saved
    schedule runs at the budget its file records (else the last budget).
    """
    cases = [Case("full")] if keep_full else []
    for spec in specs:
        case = parse_case(spec)
        policy = planner.policy(case.policy, dict(case.params))  # refuse bad names/params early
        if case.policy == "full":
            continue
        saved = getattr(policy, "saved_budget", None)
        part_name, part_params = parse_component(case.partitioner, "partitioner") if case.partitioner else (None, {})
        if part_name is not None and not policy.needs_partition:
            raise InputError(f"policy {case.policy!r} takes no partitioner ({spec!r})")
        if case.policy.startswith("schedule:"):
            budget = saved if saved is not None else budgets[-1]
            planner.check(policy, Budget.parse(budget))
            cases.append(Case(case.policy, budget))
        elif not policy.uses_budget:
            planner.check(policy, None)
            cases.append(case)
        else:
            for b in budgets:
                planner.check(policy, Budget.parse(b), part_name, part_params)
            cases += [Case(case.policy, b, case.params, case.partitioner) for b in budgets]
    return cases


def check_matched(planner: Any, cases: Sequence[Case], kind: str) -> None:
    """Refuse, before weights load, a case whose policy no budget lets meet its ``--match`` target, on an
    image of the model's nominal visual tokens (text lengths are known once a prompt is prepared; they
    only move a ``flops`` target a little)."""
    from vtsched.core.tools.matching import Matcher, SampleText

    matcher = Matcher(planner, kind)
    nominal = SampleText(planner.geometry.num_visual, 0, 0)
    for case in cases:
        if case.budget is None:
            continue
        policy = planner.policy(case.policy, dict(case.params))
        partitioner = planner.partitioner(*parse_component(case.partitioner, "partitioner")) if case.partitioner else None
        matcher.solve(policy, partitioner, Budget.parse(case.budget), nominal, case_label(case))


@dataclass
class CaseResult:
    case: Case
    prefill_s: list[float] = field(default_factory=list)
    decode_s: list[float] = field(default_factory=list)  # seconds for `decode_tokens` steps
    peak_bytes: list[int] = field(default_factory=list)
    kv_cache_bytes: int = 0
    costs: dict[str, float] = field(default_factory=dict)  # the cost columns (vtsched.core.cost.RunCosts.row)
    budget_counts: str = "input"  # what the case's budget counts (Policy.budget_counts)
    match: str | None = None  # what --match held equal (vtsched.core.tools.matching.MATCH_KINDS)
    match_target: float | None = None  # the target's value on the benchmark's samples (mean)
    budget_solved: int | None = None  # the policy's own budget solved for the target (None: not matched)

    @property
    def flops(self) -> float:
        """Prefill FLOPs, the method's scoring included (0 before a measured run)."""
        return 1e9 * self.costs.get("prefill_gflops", 0.0)

    @property
    def prefill_ms(self) -> float:
        return _median_ms(self.prefill_s)

    @property
    def prefill_iqr_ms(self) -> float:
        return _iqr_ms(self.prefill_s)

    def decode_ms_per_token(self, tokens: int) -> float | None:
        return _median_ms(self.decode_s) / tokens if self.decode_s and tokens else None


def _median_ms(seconds: Sequence[float]) -> float:
    """Median of timings in seconds, in ms (NaN when nothing was timed)."""
    return 1e3 * statistics.median(seconds) if seconds else float("nan")


def _iqr_ms(seconds: Sequence[float]) -> float:
    """Interquartile range of timings in seconds, in ms (0 with fewer than two)."""
    if len(seconds) < 2:
        return 0.0
    q = statistics.quantiles(seconds, n=4)
    return 1e3 * (q[2] - q[0])


@dataclass
class ReferenceResult:
    """A transformers reference timed in the same loop as the cases, and the engine case it checks.

    Attributes:
        name: what ran (``"forward"``: the language model on the full prompt, ``"forward-shortened"``:
            on the kept tokens of ``case``; ``"generate"``: decoding).
        case: label of the engine case it is compared with.
        seconds: per measured repetition: the forward's time, or ``generate``'s time per decoded token.
        agreement: ``forward``: max |difference| of next-token logits to the engine's;
            ``generate``: fraction of generated tokens equal to the engine's greedy tokens.
    """

    name: str
    case: str
    seconds: list[float] = field(default_factory=list)
    agreement: float | None = None

    @property
    def decoding(self) -> bool:
        return self.name == "generate"

    @property
    def ms(self) -> float:
        return _median_ms(self.seconds)

    @property
    def iqr_ms(self) -> float:
        return _iqr_ms(self.seconds)


@dataclass
class BenchReport:
    device: str
    shape: str
    dtype: str
    attn: str
    batch_size: int
    repeats: int
    decode_tokens: int
    vision_s: list[float]
    vision_flops: float
    results: list[CaseResult]
    references: list[ReferenceResult] = field(default_factory=list)

    @property
    def vision_ms(self) -> float | None:
        """Median vision tower + projector time per batch (``None`` when not timed)."""
        return _median_ms(self.vision_s) if self.vision_s else None

    def baseline(self) -> CaseResult | None:
        return next((r for r in self.results if r.case.policy == "full"), None)

    def result(self, label: str) -> CaseResult | None:
        return next((r for r in self.results if case_label(r.case) == label), None)

    def rows(self) -> list[dict[str, Any]]:
        base = self.baseline()
        vision_ms = self.vision_ms or 0.0
        rows = []
        for r in self.results:
            decode_tps = (self.decode_tokens * self.batch_size / statistics.median(r.decode_s)) if r.decode_s else None
            rows.append({
                "case": case_label(r.case),
                "policy": r.case.policy,
                "budget": r.case.budget,
                "partitioner": r.case.partitioner,
                "budget_counts": r.budget_counts,
                "params": dict(r.case.params),
                "prefill_ms": r.prefill_ms,
                "prefill_iqr_ms": r.prefill_iqr_ms,
                "ttft_ms": vision_ms + r.prefill_ms,
                "decode_tokens_per_s": decode_tps,
                "peak_mem_mb": (max(r.peak_bytes) / 2**20) if r.peak_bytes else None,
                "kv_cache_mb": r.kv_cache_bytes / 2**20,
                **r.costs,
                "match": r.match,
                "match_target": r.match_target,
                "match_achieved": achieved(r.match, r.costs) if r.match and r.costs else None,
                "budget_solved": r.budget_solved,
                "time_ratio_to_full": (r.prefill_ms / base.prefill_ms) if base else None,
                "speedup_vs_full": (base.prefill_ms / r.prefill_ms) if base else None,
                "flops_ratio_to_full": (r.flops / base.flops) if base else None,
            })
        return rows

    def reference_rows(self) -> list[dict[str, Any]]:
        """Each reference against its engine case: milliseconds (per decoded token for ``generate``) and ratio."""
        rows = []
        for ref in self.references:
            engine = self.result(ref.case)
            engine_ms = None
            if engine is not None:
                engine_ms = engine.decode_ms_per_token(self.decode_tokens) if ref.decoding else engine.prefill_ms
            rows.append({
                "reference": ref.name,
                "case": ref.case,
                "per": "decoded token" if ref.decoding else "prefill",
                "transformers_ms": ref.ms,
                "transformers_iqr_ms": ref.iqr_ms,
                "engine_ms": engine_ms,
                "engine_to_transformers": engine_ms / ref.ms if engine_ms is not None else None,
                "agreement": ref.agreement,
            })
        return rows

    def flops_predictions(self) -> list[dict[str, Any]]:
        """Each ``parvts`` case against ``prune`` at its budget: time ratio over FLOPs ratio (1.0 = as predicted)."""
        rows = []
        for r in self.results:
            if r.case.policy not in ("parvts", "parallel") or r.case.partitioner:
                continue
            prune = next((p for p in self.results if p.case.policy == "prune" and p.case.budget == r.case.budget
                          and not p.case.params and not p.case.partitioner), None)
            if prune is None or not prune.flops or not prune.prefill_s:
                continue
            time_ratio, flops_ratio = r.prefill_ms / prune.prefill_ms, r.flops / prune.flops
            rows.append({"case": r.case.label, "against": prune.case.label, "time_ratio": time_ratio,
                         "flops_ratio": flops_ratio, "time_over_flops": time_ratio / flops_ratio})
        return rows

    def table(self) -> str:
        """One line per case: what its budget counts, the visual tokens entering the LLM (``vis in``), their
        average per layer over every stream (``vis/layer``, the equivalent tokens), the prefill GFLOPs with
        the method's scoring, the measured prefill, and each as a ratio to ``full``; with ``--match``, the
        target, the value the case achieved and the policy's own budget solved for it."""
        rows = self.rows()
        matched = any(r.get("match") for r in rows)
        width = max([30, *(len(r["case"]) for r in rows)])
        header = (f"{'case':<{width}s} {'budget counts':>17s} {'vis in':>6s} {'vis/layer':>9s} {'GFLOPs':>8s} "
                  f"{'x full':>6s} {'prefill ms':>10s} {'iqr':>7s} {'x full':>6s} {'dec tok/s':>9s}")
        if matched:
            header += f" {'target':>8s} {'achieved':>8s} {'budget':>6s}"
        lines = [f"device {self.device}, shape {self.shape}, {self.dtype}, attention {self.attn}, "
                 f"batch {self.batch_size}, median of {self.repeats} interleaved runs", header, "-" * len(header)]
        for row in rows:
            ratio = f"{row['time_ratio_to_full']:.3f}" if row["time_ratio_to_full"] is not None else "-"
            fratio = f"{row['flops_ratio_to_full']:.3f}" if row["flops_ratio_to_full"] is not None else "-"
            tps = f"{row['decode_tokens_per_s']:.1f}" if row["decode_tokens_per_s"] else "-"
            line = (f"{row['case']:<{width}s} {row['budget_counts']:>17s} {row['visual_tokens_input']:>6.0f} "
                    f"{row['visual_tokens_per_layer']:>9.1f} {row['prefill_gflops']:>8.2f} {fratio:>6s} "
                    f"{row['prefill_ms']:>10.2f} {row['prefill_iqr_ms']:>7.2f} {ratio:>6s} {tps:>9s}")
            if matched:
                target = "-" if row.get("match_target") is None else f"{row['match_target']:.4g}"
                achieved = "-" if row.get("match_achieved") is None else f"{row['match_achieved']:.4g}"
                solved = "-" if row.get("budget_solved") is None else str(row["budget_solved"])
                line += f" {target:>8s} {achieved:>8s} {solved:>6s}"
            lines.append(line)
        vision_ms = self.vision_ms or 0.0
        lines.append(f"vision tower + projector (common to all cases): {vision_ms:.2f} ms, "
                     f"{self.vision_flops / 1e9:.2f} GFLOPs per image; GFLOPs include each method's scoring "
                     "(probes, ranker projections, partitioner similarity matrices)")
        lines += self._reference_lines()
        return "\n".join(lines)

    def _reference_lines(self) -> list[str]:
        lines = []
        if self.references:
            header = (f"{'transformers, same input embeddings':<44s} {'ms':>9s} {'iqr':>7s} {'engine ms':>10s} "
                      f"{'engine/tf':>9s}  check")
            lines += ["", header, "-" * len(header)]
        for row in self.reference_rows():
            what = {"forward": f"forward, full prompt (vs {row['case']})",
                    "forward-shortened": f"forward, kept tokens of {row['case']}",
                    "generate": f"generate, per token (vs {row['case']} decode)"}[row["reference"]]
            engine = f"{row['engine_ms']:.2f}" if row["engine_ms"] is not None else "-"
            ratio = f"{row['engine_to_transformers']:.3f}" if row["engine_to_transformers"] is not None else "-"
            agreement = row["agreement"]
            check = "-" if agreement is None else (
                f"tokens equal {agreement:.0%}" if row["reference"] == "generate" else f"max |dlogit| {agreement:.1e}")
            lines.append(f"{what:<44s} {row['transformers_ms']:>9.2f} {row['transformers_iqr_ms']:>7.2f} "
                         f"{engine:>10s} {ratio:>9s}  {check}")
        for row in self.flops_predictions():
            gap = 100 * (row["time_over_flops"] - 1)
            lines.append(f"{row['case']}: time x {row['against']} {row['time_ratio']:.3f}, FLOPs x {row['against']} "
                         f"{row['flops_ratio']:.3f}: {abs(gap):.1f}% {'above' if gap >= 0 else 'below'} "
                         f"its FLOPs prediction")
        return lines

    def to_dict(self) -> dict[str, Any]:
        return {
            "device": self.device, "shape": self.shape, "dtype": self.dtype, "attn": self.attn,
            "batch_size": self.batch_size, "repeats": self.repeats, "decode_tokens": self.decode_tokens,
            "vision_ms": self.vision_ms,
            "vision_gflops_per_image": self.vision_flops / 1e9, "rows": self.rows(),
            "reference": {"rows": self.reference_rows(), "parvts_time_over_flops": self.flops_predictions()},
        }


class TimedEngine:
    """An engine with the seconds spent in ``prefill`` added up (``extend`` passes through): how ``eval``
    and ``sweep`` measure ``prefill_ms`` while answering (CUDA synchronised around each prefill)."""

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


class _Clock:
    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def __call__(self, fn: Callable[[], Any]) -> tuple[Any, float]:
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            out = fn()
            end.record()
            torch.cuda.synchronize()
            return out, start.elapsed_time(end) / 1e3
        t0 = time.perf_counter()
        out = fn()
        return out, time.perf_counter() - t0


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
    clock = _Clock(device)
    batch = scheduler.prepare(images, questions)
    bench = _Bench(scheduler, batch, cases, clock, decode_tokens)
    if match is not None:
        bench.solve(match)
    if reference:
        bench.references = _references(scheduler, batch, bench, clock)
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


@dataclass
class _Reference:
    """A reference job: its result, and a call returning ``(seconds, output)`` for one run."""

    result: ReferenceResult
    run: Callable[[], tuple[float, torch.Tensor]]
    output: torch.Tensor | None = None


class _Bench:
    """One benchmark's cases, references and measurements; each run of a case or reference is a job."""

    def __init__(self, scheduler: Scheduler, batch: PromptBatch, cases: Sequence[Case], clock: _Clock,
                 decode_tokens: int) -> None:
        self.scheduler, self.batch, self.clock, self.decode_tokens = scheduler, batch, clock, decode_tokens
        self.policies = [(c, scheduler.make_policy(c.policy, dict(c.params)),
                          scheduler.make_partitioner(*parse_component(c.partitioner, "partitioner"))
                          if c.partitioner else None) for c in cases]
        self.results = [CaseResult(c) for c in cases]
        self.references: list[_Reference] = []
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
            budgets, targets = matcher.solve_batch(policy, partitioner, Budget.parse(case.budget), self.batch,
                                                   case_label(case))
            if len(set(budgets)) != 1:
                raise InputError(f"--match: {case_label(case)} solves to budgets {sorted(set(budgets))} on the "
                                 "benchmark's samples; benchmark samples of one size (--batch-size 1)")
            r.match_target, r.budget_solved = statistics.fmean(targets), budgets[0]

    def jobs(self) -> list[Callable[[bool, bool], None]]:
        """One callable per case and reference: ``job(measured, first_measured)``."""
        cases = [partial(self.run_case, i) for i in range(len(self.results))]
        return cases + [partial(self.run_reference, ref) for ref in self.references]

    def plan(self, i: int) -> Plan:
        case, policy, partitioner = self.policies[i]
        solved = self.results[i].budget_solved
        budget = Budget(count=solved) if solved is not None else (
            Budget.parse(case.budget) if case.budget is not None else None)
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
        r.costs = plan_costs(plan, out.stats, self.scheduler.adapter.geometry).row()
        r.budget_counts = budget_counts_of(plan.policy, self.scheduler.registry)
        self.logits[case_label(r.case)] = out.logits
        if tokens is not None:
            self.tokens[case_label(r.case)] = tokens

    def run_reference(self, ref: _Reference, measured: bool, first: bool) -> None:
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


def _references(scheduler: Scheduler, batch: PromptBatch, bench: _Bench, clock: _Clock) -> list[_Reference]:
    """transformers' forward on the full and the shortened prompt, and its ``generate``, where they apply.

    Families whose rotary ids are not positions (Qwen2-VL's M-RoPE) get their own ids as
    ``position_ids``, and no ``generate`` reference: from embeddings alone it cannot rebuild them.
    """
    lm = getattr(scheduler.adapter, "language_model", None)
    if lm is None or len({s.length for s in batch.samples}) != 1:
        return []  # needs the model's own language model, and prompts that need no padding
    head = scheduler.engine.parts.lm_head
    embeds = _merged_embeddings(lm, batch)
    rows = torch.arange(embeds.shape[0], device=embeds.device)[:, None]
    positions = torch.arange(embeds.shape[1], device=embeds.device)[None].expand(embeds.shape[0], -1)
    rope = _rope_positions(batch, embeds.device)  # (R, batch, T) where rotary ids are not positions
    labels = [case_label(r.case) for r in bench.results]
    refs = []
    if "full" in labels:
        ids = positions if rope is None else rope
        refs.append(_Reference(ReferenceResult("forward", "full"),
                               partial(_timed, clock, partial(_forward, lm, head, embeds, ids))))
    shortened = _smallest_prune(bench)
    if shortened is not None:
        label, kept = shortened
        ids = kept if rope is None else rope[..., rows, kept]
        refs.append(_Reference(ReferenceResult("forward-shortened", label),
                               partial(_timed, clock, partial(_forward, lm, head, embeds[rows, kept], ids))))
    if "full" in labels and bench.decode_tokens > 0 and rope is None:  # generate would recompute M-RoPE ids
        model = scheduler.adapter.model
        refs.append(_Reference(ReferenceResult("generate", "full"),
                               partial(_generate, model, embeds, bench.decode_tokens, clock.cuda)))
    return refs


def _merged_embeddings(lm: Any, batch: PromptBatch) -> torch.Tensor:
    """``(batch, T, hidden)`` the language model's input embeddings with the image features in place."""
    embed = lm.get_input_embeddings()
    device = next(embed.parameters()).device
    with torch.inference_mode():
        embeds = embed(torch.stack([s.input_ids for s in batch.samples]).to(device))
        for b, sample in enumerate(batch.samples):
            embeds[b, sample.visual_positions.to(device)] = sample.visual_features.to(device, embeds.dtype)
    return embeds


def _rope_positions(batch: PromptBatch, device: torch.device) -> torch.Tensor | None:
    """``(R, batch, T)`` the samples' own rotary ids (``Sample.rope_positions``), or ``None`` where they are positions."""
    if all(s.rope_positions is None for s in batch.samples):
        return None
    ids = [s.rope_positions if s.rope_positions is not None else torch.arange(s.length) for s in batch.samples]
    rope = torch.stack([i.reshape(-1, i.shape[-1]) for i in ids], dim=1).to(device)
    return rope[0] if rope.shape[0] == 1 else rope


def _smallest_prune(bench: _Bench) -> tuple[str, torch.Tensor] | None:
    """The ``prune`` case keeping the fewest tokens, and ``(batch, T')`` positions of the tokens it keeps."""
    best: tuple[str, torch.Tensor] | None = None
    for i, r in enumerate(bench.results):
        if r.case.policy != "prune" or r.case.partitioner:
            continue
        plan = bench.plan(i)
        kept = [_kept_positions(plan, b, sample) for b, sample in enumerate(bench.batch.samples)]
        if plan.schedule.events or len({k.numel() for k in kept}) != 1:
            continue  # not a plain prune, or samples keep different counts (would need padding)
        if best is None or kept[0].numel() < best[1].shape[1]:
            best = (case_label(r.case), torch.stack(kept))
    return best


def _kept_positions(plan: Plan, b: int, sample: Sample) -> torch.Tensor:
    """Positions of sample ``b``'s text tokens and of the visual tokens the surviving stream starts with."""
    survivor = next(s for s in plan.schedule.streams if s.name == plan.schedule.survivor)
    groups = torch.tensor([plan.partition.group_id(g) for g in survivor.groups], dtype=torch.long)
    keep = sample.roles != Role.VISUAL
    keep[sample.visual_positions[torch.isin(plan.partition.assignment[b].cpu(), groups)]] = True
    device = sample.visual_features.device
    return torch.nonzero(keep).flatten().to(device)


def _timed(clock: _Clock, fn: Callable[[], torch.Tensor]) -> tuple[float, torch.Tensor]:
    out, seconds = clock(fn)
    return seconds, out


def _forward(lm: Any, head: torch.nn.Module, embeds: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """transformers' language model on ``(batch, T, hidden)`` embeddings; ``(batch, vocab)`` next-token logits.

    ``use_cache=True`` as in a real prefill; it also keeps transformers from reading position ids
    with gaps (a shortened prompt) as several packed sequences.
    """
    with torch.inference_mode():
        hidden = lm(inputs_embeds=embeds, position_ids=positions, use_cache=True).last_hidden_state
        return head(hidden[:, -1]).float()


class _StepClock(LogitsProcessor):
    """Stamps the time whenever ``generate`` has new logits: after the prefill and after each decode step."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        self.stamps: list[float] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.cuda:
            torch.cuda.synchronize()
        self.stamps.append(time.perf_counter())
        return scores


def _generate(model: Any, embeds: torch.Tensor, steps: int, cuda: bool) -> tuple[float, torch.Tensor]:
    """transformers' greedy ``generate`` for ``steps`` decode steps after the prefill's token.

    Returns seconds per decode step (prefill excluded) and the ``(batch, steps + 1)`` tokens.
    """
    clock = _StepClock(cuda)
    mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
    with torch.inference_mode():
        out = model.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=steps + 1,
                             min_new_tokens=steps + 1, do_sample=False, eos_token_id=None, pad_token_id=0,
                             logits_processor=LogitsProcessorList([clock]))
    return (clock.stamps[-1] - clock.stamps[0]) / steps, out[:, -(steps + 1):]


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
