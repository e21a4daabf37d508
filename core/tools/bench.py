"""Measuring cost side by side: prefill time, time to first token, decode speed, memory, FLOPs.

Cases are interleaved within every repetition (rotating their order), after warm-up, so slow
drift of the machine hits every policy alike and ratios are fair. On CUDA, times come from
CUDA events with synchronisation; on CPU from ``time.perf_counter``. Medians and inter-quartile
ranges are reported, never a single run.
"""

from __future__ import annotations

import statistics
import time
from functools import partial
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from vtsched.core.budget import Budget
from vtsched.core.cost import prefill_flops, scoring_flops, vision_flops
from vtsched.core.scheduler import Scheduler

__all__ = ["expand_cases", "Case", "CaseResult", "BenchReport", "run_bench", "parse_case"]


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


def parse_case(text: str, budget: str | None = None) -> Case:
    """``"parvts:drop_layer=2,fusion=fixed"`` -> Case (budget given separately); ``schedule:PATH`` as is."""
    if text.startswith("schedule:"):
        return Case(text.strip(), budget)
    name, _, rest = text.partition(":")
    params = tuple(tuple(p.split("=", 1)) for p in rest.split(",") if p) if rest else ()
    return Case(name.strip(), budget, tuple((k.strip(), v.strip()) for k, v in params))  # type: ignore[misc]


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
        if case.policy.startswith("schedule:"):
            budget = saved if saved is not None else budgets[-1]
            planner.check(policy, Budget.parse(budget))
            cases.append(Case(case.policy, budget))
        elif not policy.uses_budget:
            planner.check(policy, None)
            cases.append(case)
        else:
            for b in budgets:
                planner.check(policy, Budget.parse(b))
            cases += [Case(case.policy, b, case.params, case.partitioner) for b in budgets]
    return cases


@dataclass
class CaseResult:
    case: Case
    prefill_s: list[float] = field(default_factory=list)
    decode_s: list[float] = field(default_factory=list)  # seconds for `decode_tokens` steps
    peak_bytes: list[int] = field(default_factory=list)
    kv_cache_bytes: int = 0
    flops: float = 0.0
    scoring_flops: float = 0.0
    visual_kept: float = 0.0
    visual_all: float = 0.0

    @staticmethod
    def _median(values: Sequence[float]) -> float:
        return statistics.median(values) if values else float("nan")

    @staticmethod
    def _iqr(values: Sequence[float]) -> float:
        if len(values) < 2:
            return 0.0
        q = statistics.quantiles(values, n=4)
        return q[2] - q[0]

    @property
    def prefill_ms(self) -> float:
        return 1e3 * self._median(self.prefill_s)

    @property
    def prefill_iqr_ms(self) -> float:
        return 1e3 * self._iqr(self.prefill_s)


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

    def baseline(self) -> CaseResult | None:
        return next((r for r in self.results if r.case.policy == "full"), None)

    def rows(self) -> list[dict[str, Any]]:
        base = self.baseline()
        vision_ms = 1e3 * statistics.median(self.vision_s) if self.vision_s else 0.0
        rows = []
        for r in self.results:
            decode_tps = (self.decode_tokens * self.batch_size / statistics.median(r.decode_s)) if r.decode_s else None
            rows.append({
                "case": r.case.label,
                "policy": r.case.policy,
                "budget": r.case.budget,
                "params": dict(r.case.params),
                "prefill_ms": r.prefill_ms,
                "prefill_iqr_ms": r.prefill_iqr_ms,
                "ttft_ms": vision_ms + r.prefill_ms,
                "decode_tokens_per_s": decode_tps,
                "peak_mem_mb": (max(r.peak_bytes) / 2**20) if r.peak_bytes else None,
                "kv_cache_mb": r.kv_cache_bytes / 2**20,
                "prefill_gflops": r.flops / 1e9,
                "scoring_gflops": r.scoring_flops / 1e9,
                "visual_tokens_per_layer": r.visual_kept,
                "visual_tokens_per_layer_all_streams": r.visual_all,
                "time_ratio_to_full": (r.prefill_ms / base.prefill_ms) if base else None,
                "speedup_vs_full": (base.prefill_ms / r.prefill_ms) if base else None,
                "flops_ratio_to_full": (r.flops / base.flops) if base else None,
            })
        return rows

    def table(self) -> str:
        header = (f"{'case':<34s} {'prefill ms':>11s} {'iqr':>7s} {'x full':>7s} {'GFLOPs':>9s} {'x full':>7s} "
                  f"{'vis/layer':>9s} {'dec tok/s':>9s}")
        lines = [f"device {self.device}, shape {self.shape}, {self.dtype}, attention {self.attn}, "
                 f"batch {self.batch_size}, median of {self.repeats} interleaved runs", header, "-" * len(header)]
        for row in self.rows():
            ratio = f"{row['time_ratio_to_full']:.3f}" if row["time_ratio_to_full"] is not None else "-"
            fratio = f"{row['flops_ratio_to_full']:.3f}" if row["flops_ratio_to_full"] is not None else "-"
            tps = f"{row['decode_tokens_per_s']:.1f}" if row["decode_tokens_per_s"] else "-"
            lines.append(
                f"{row['case']:<34s} {row['prefill_ms']:>11.2f} {row['prefill_iqr_ms']:>7.2f} {ratio:>7s} "
                f"{row['prefill_gflops']:>9.2f} {fratio:>7s} {row['visual_tokens_per_layer']:>9.1f} {tps:>9s}"
            )
        vision_ms = 1e3 * statistics.median(self.vision_s) if self.vision_s else 0.0
        lines.append(f"vision tower + projector (common to all cases): {vision_ms:.2f} ms, "
                     f"{self.vision_flops / 1e9:.2f} GFLOPs per image")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "device": self.device, "shape": self.shape, "dtype": self.dtype, "attn": self.attn,
            "batch_size": self.batch_size, "repeats": self.repeats, "decode_tokens": self.decode_tokens,
            "vision_ms": 1e3 * statistics.median(self.vision_s) if self.vision_s else None,
            "vision_gflops_per_image": self.vision_flops / 1e9, "rows": self.rows(),
        }


class _Clock:
    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def __call__(self, fn):
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
) -> BenchReport:
    from tqdm.auto import tqdm

    device = scheduler.adapter.device
    clock = _Clock(device)
    geometry = scheduler.adapter.geometry
    batch = scheduler.prepare(images, questions)
    policies = [(c, scheduler.make_policy(c.policy, dict(c.params)),
                 scheduler.make_partitioner(c.partitioner) if c.partitioner else None) for c in cases]
    results = [CaseResult(c) for c in cases]
    vision_s: list[float] = []
    steps = (warmup + repeats) * (len(cases) + 1)
    bar = tqdm(total=steps, desc="bench", disable=not progress, leave=False)
    for rep in range(warmup + repeats):
        _, seconds = clock(lambda: scheduler.prepare(images, questions))
        if rep >= warmup:
            vision_s.append(seconds)
        bar.update()
        order = list(range(len(cases)))
        order = order[rep % len(order):] + order[: rep % len(order)]  # rotate: no case always goes first
        for i in order:
            case, policy, partitioner = policies[i]
            budget = Budget.parse(case.budget) if case.budget is not None else None
            if clock.cuda:
                torch.cuda.reset_peak_memory_stats()

            (plan, out), seconds = clock(partial(_prefill, scheduler, batch, policy, partitioner, budget))
            kv_bytes = _cache_bytes(out.state, len(batch)) if out.state is not None else 0
            decode_seconds = None
            if decode_tokens > 0:
                first = out.logits.argmax(-1)[:, None]
                _, decode_seconds = clock(partial(_decode, scheduler.engine, out.state, first, decode_tokens))
            if rep >= warmup:
                r = results[i]
                r.prefill_s.append(seconds)
                if decode_seconds is not None:
                    r.decode_s.append(decode_seconds)
                if clock.cuda:
                    r.peak_bytes.append(torch.cuda.max_memory_allocated())
                if rep == warmup:
                    stats = out.stats
                    r.flops = float(prefill_flops(stats, geometry).mean())
                    r.scoring_flops = float(scoring_flops(stats, geometry).mean())
                    r.visual_kept = float(stats.visual_per_layer(geometry.num_layers, plan.schedule.survivor).mean())
                    r.visual_all = float(stats.visual_per_layer(geometry.num_layers).mean())
                    r.kv_cache_bytes = kv_bytes
            del out
            bar.update()
    bar.close()
    return BenchReport(
        device=_device_name(device), shape=shape, dtype=str(scheduler.adapter.dtype).replace("torch.", ""),
        attn=scheduler.engine.parts.attn_implementation, batch_size=len(batch), repeats=repeats,
        decode_tokens=decode_tokens, vision_s=vision_s, vision_flops=vision_flops(geometry), results=results,
    )


def _prefill(scheduler: Scheduler, batch, policy, partitioner, budget):
    """What a request costs from the partition on: plan (scoring included) and prefill."""
    plan = scheduler.plan(batch, policy, partitioner, budget)
    return plan, scheduler.engine.prefill(batch, plan.schedule, plan.partition, use_cache=True)


def _decode(engine, state, token: torch.Tensor, steps: int) -> None:
    for _ in range(steps):
        token = engine.extend(state, token)[:, -1].argmax(-1)[:, None]


def _cache_bytes(state, batch_size: int) -> int:
    """KV-cache bytes per sample at the end of prefill (before decoding grew it)."""
    total = sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in zip(state.keys, state.values))
    return total // max(batch_size, 1)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
