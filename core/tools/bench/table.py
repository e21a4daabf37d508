"""The bench's report: its rows (for CSV and JSON), the printed table, the references against the engine's
cases, and the ``parvts`` time-over-FLOPs predictions."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

from vtsched.core.tools.bench.case import case_label
from vtsched.core.tools.bench.results import CaseResult, ReferenceResult, median_ms
from vtsched.core.tools.matching import achieved

__all__ = ["BenchReport"]


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
        return median_ms(self.vision_s) if self.vision_s else None

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
                "budget": r.case.budget.text if r.case.budget is not None else None,
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
        lines = [(f"device {self.device}, shape {self.shape}, {self.dtype}, attention {self.attn}, "
                 f"batch {self.batch_size}, median of {self.repeats} interleaved runs"), header, "-" * len(header)]
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
