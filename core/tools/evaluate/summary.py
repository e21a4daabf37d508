"""What an evaluation reports: one :class:`Prediction` per item and case, summarised per case and
split (:func:`summarise`) into the rows of an :class:`EvalReport`, with the accuracy's interval,
McNemar's test and the hard subset (:mod:`vtsched.core.tools.significance`), and its printed table."""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["EvalReport", "Prediction", "summarise"]


@dataclass
class Prediction:
    case: str
    id: str
    tag: str
    type: str
    answer: str
    prediction: str
    correct: bool
    agrees_with_full: bool
    kl_to_full: float
    visual_tokens_per_layer: float
    prefill_gflops: float
    partitioner_ms: float = 0.0  # the partitioner's wall time for this sample (its batch's share)
    partitioner_gflops: float = 0.0  # FLOPs the partitioner reported spending on this sample
    budget_counts: str = "input"  # what the case's budget counts (Policy.budget_counts)
    visual_tokens_input: float = 0.0  # visual tokens entering the LLM (its first layer, every stream)
    prefill_ms: float = 0.0  # measured: the partitioner's call and the LLM prefill, this sample's share
    match_target: float | None = None  # --match: the target on this sample
    budget_solved: int | None = None  # --match: the policy's own budget solved for it


@dataclass
class EvalReport:
    """Predictions of every case, summarised per case and split by :meth:`rows`.

    ``paired_against``: the case each row is paired with in McNemar's test (``full`` unless named);
    ``hard_subset``: what the user named as the hard subset's reference (None: none), and
    ``hard_references`` that reference resolved per case (:func:`hard_references`; empty: the
    named case for every row).
    """

    cases: list[str]
    predictions: list[Prediction] = field(default_factory=list)
    paired_against: str = "full"
    hard_subset: str | None = None
    hard_references: dict[str, str | None] = field(default_factory=dict)
    match: str | None = None  # what --match held equal (vtsched.core.tools.matching.MATCH_KINDS)

    def rows(self) -> list[dict[str, Any]]:
        from vtsched.core.tools.significance import paired_rows

        outcomes: dict[tuple[str, str], list[tuple[str, bool]]] = defaultdict(list)
        for p in self.predictions:
            for split in ("all", f"tag={p.tag}", f"type={p.type}"):
                outcomes[(p.case, split)].append((p.id, p.correct))
        rows = paired_rows(summarise(self.predictions, self.cases), outcomes,
                           paired_against=self.paired_against,
                           hard=(self.hard_references or self.hard_subset) if self.hard_subset is not None else None)
        if self.match is not None:
            from vtsched.core.tools.matching import achieved

            for row in rows:
                row["match"], row["match_achieved"] = self.match, achieved(self.match, row)
        return rows

    def table(self) -> str:
        """One line per case and split; ``budget`` what its budget counts, ``vis in`` the visual tokens
        entering the LLM, ``vis/layer`` every stream's visual tokens per layer averaged over all layers;
        ``GFLOPs`` is the LLM's prefill with the method's scoring, ``ms`` the measured prefill (the
        partitioner's call included), ``part ms`` / ``part GF`` the partitioner's own time and the FLOPs
        a partitioner reports spending (SAM's), per sample; ``target`` / ``achieved`` with ``--match``;
        ``95% CI`` the accuracy's Wilson interval, ``p`` McNemar's test against ``paired_against``,
        ``hard`` the accuracy on the items ``hard_subset`` answers wrongly (and how many)."""
        rows = self.rows()
        width = max([34, *(len(r["case"]) for r in rows)])
        header = (f"{'case':<{width}s} {'split':<24s} {'n':>5s} {'acc':>6s} {'95% CI':>11s} {'p':>6s} {'agree':>6s} "
                  f"{'KL':>8s} {'budget':>17s} {'vis in':>7s} {'vis/layer':>9s} {'GFLOPs':>8s} {'part ms':>8s} "
                  f"{'part GF':>8s} {'ms':>7s}" + (f" {'hard':>12s}" if self.hard_subset is not None else "")
                  + (f" {'target':>8s} {'achieved':>8s}" if self.match is not None else ""))
        lines = [header, "-" * len(header)]
        for r in rows:
            ci = f"{100 * r['accuracy_ci_low']:.1f}-{100 * r['accuracy_ci_high']:.1f}"
            p = "-" if r["mcnemar_p"] is None else f"{r['mcnemar_p']:.3f}"
            line = (f"{r['case']:<{width}s} {r['split']:<24s} {r['n']:>5d} {100 * r['accuracy']:>6.1f} {ci:>11s} "
                    f"{p:>6s} {100 * r['agreement']:>6.1f} {r['kl']:>8.4f} {r['budget_counts']:>17s} "
                    f"{r['visual_tokens_input']:>7.1f} {r['visual_tokens_per_layer']:>9.1f} "
                    f"{r['prefill_gflops']:>8.4f} {r['partitioner_ms']:>8.2f} {r['partitioner_gflops']:>8.4f} "
                    f"{r['prefill_ms']:>7.2f}")
            if self.hard_subset is not None:
                hard = "-" if r["hard_accuracy"] is None else f"{100 * r['hard_accuracy']:.1f}"
                line += f" {hard + ' of ' + str(r['hard_n']) if r['hard_n'] is not None else '-':>12s}"
            if self.match is not None:
                target = "-" if r["match_target"] is None else f"{r['match_target']:.4g}"
                line += f" {target:>8s} {r['match_achieved']:>8.4g}"
            lines.append(line)
        note = f"p: McNemar's test against {self.paired_against!r} on the same items"
        if self.match is not None:
            note += f"; budgets solved so every row meets its target ({self.match})"
        if self.hard_subset is not None:
            note += f"; hard: accuracy on the items {self.hard_subset!r} answers wrongly"
        return "\n".join([*lines, note])


def summarise(predictions: Sequence[Prediction], cases: Sequence[str]) -> list[dict[str, Any]]:
    """One row per case and split (``all``, ``tag=...``, ``type=...``), in case order."""
    groups: dict[tuple[str, str], list[Prediction]] = defaultdict(list)
    for p in predictions:
        for split in ("all", f"tag={p.tag}", f"type={p.type}"):
            groups[(p.case, split)].append(p)
    rows = []
    for case in cases:
        splits = sorted({s for c, s in groups if c == case}, key=lambda s: (s != "all", not s.startswith("tag"), s))
        for split in splits:
            mine = groups[(case, split)]
            rows.append({
                "case": case, "split": split, "n": len(mine),
                "budget_counts": mine[0].budget_counts,
                "accuracy": statistics.fmean(p.correct for p in mine),
                "agreement": statistics.fmean(p.agrees_with_full for p in mine),
                "kl": statistics.fmean(p.kl_to_full for p in mine),
                "visual_tokens_input": statistics.fmean(p.visual_tokens_input for p in mine),
                "visual_tokens_per_layer": statistics.fmean(p.visual_tokens_per_layer for p in mine),
                "prefill_gflops": statistics.fmean(p.prefill_gflops for p in mine),
                "prefill_ms": statistics.fmean(p.prefill_ms for p in mine),
                "partitioner_ms": statistics.fmean(p.partitioner_ms for p in mine),
                "partitioner_gflops": statistics.fmean(p.partitioner_gflops for p in mine),
                "match_target": _mean_or_none([p.match_target for p in mine]),
                "budget_solved": _mean_or_none([p.budget_solved for p in mine]),
            })
    return rows


def _mean_or_none(values: Sequence[float | int | None]) -> float | None:
    """The mean of the values present (``None`` when none is: a row that was not matched)."""
    present = [float(v) for v in values if v is not None]
    return statistics.fmean(present) if present else None
