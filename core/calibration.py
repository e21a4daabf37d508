"""Calibration: the drop-layer search a calibrated policy asks for, run on the scheduler's model.

The smallest K whose scheduled next-token distribution stays close to full.

For a layered policy (one with a layer parameter such as ``drop_layer``), every K from 0 to L is
run on a calibration batch; the KL divergence ``KL(p_full || p_scheduled)`` of the next-token
distribution at the last prompt token is averaged over the samples. The chosen K is the first
whose mean KL is at most the threshold (VTW used 0.003 for LLaVA-1.5-7B over 20 samples).
Optionally alpha (``fixed`` fusion) and the budget are searched too; among the settings that
meet the threshold the one with the fewest prefill FLOPs wins (then the smaller K).

It sits beside the planner, below the scheduler: ``Scheduler.plan`` calibrates with it, and it is
handed the scheduler it runs on (typed only), so the two never import each other at run time.
The ``search-k`` command prints :class:`SearchResult`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from vtsched.core.budget import Budget
from vtsched.core.cost import prefill_flops
from vtsched.core.errors import InputError, VtschedError
from vtsched.core.policy import Calibration, Partitioner, Policy
from vtsched.core.schedule import Schedule
from vtsched.core.tokens import PromptBatch

if TYPE_CHECKING:  # handed in by the scheduler, which imports this module
    from vtsched.core.scheduler import Scheduler

__all__ = ["SearchResult", "Calibrated", "calibrate", "search_drop_layer", "next_token_kl", "load_calibration"]


@dataclass
class SearchResult:
    policy: str
    layer_param: str
    threshold: float
    curve: list[dict[str, Any]] = field(default_factory=list)  # one row per (budget, alpha, K)
    chosen: dict[str, Any] | None = None

    def table(self) -> str:
        lines = [f"KL(full || {self.policy}) by {self.layer_param}, threshold {self.threshold:g}"]
        for row in self.curve:
            mark = " <" if self.chosen and all(row[k] == self.chosen[k] for k in ("budget", "alpha", "layer")) else ""
            extra = f" alpha={row['alpha']:g}" if row["alpha"] is not None else ""
            lines.append(f"  budget={row['budget']}{extra} {self.layer_param}={row['layer']:<3d} "
                         f"KL={row['kl']:.6f}  GFLOPs={row['gflops']:.3f}{mark}")
        lines.append(f"chosen: {self.chosen}" if self.chosen else "no setting meets the threshold")
        return "\n".join(lines)


def next_token_kl(full_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """``(batch,)`` KL(p || q) of next-token distributions given their logits."""
    log_p = torch.log_softmax(full_logits.double(), -1)
    log_q = torch.log_softmax(logits.double(), -1)
    return (log_p.exp() * (log_p - log_q)).sum(-1).clamp(min=0.0)


def search_drop_layer(
    scheduler: Scheduler,
    batch: PromptBatch,
    policy: str,
    *,
    params: dict[str, Any] | None = None,
    budgets: Sequence[str | int | float | Budget] = ("0.111",),
    alphas: Sequence[float] | None = None,
    threshold: float = 0.003,
    layer_param: str = "drop_layer",
    layers: Sequence[int] | None = None,
    partitioner: str | Partitioner | None = None,
    progress: bool = True,
) -> SearchResult:
    from tqdm.auto import tqdm

    if len(batch) == 0:
        raise InputError("the calibration set is empty: give at least one (image, question) sample")
    base = scheduler.registry.policy(policy)
    if layer_param not in {f.name for f in dataclasses.fields(base)}:
        raise VtschedError(f"policy {policy!r} has no layer parameter {layer_param!r} to search")
    geometry = scheduler.adapter.geometry
    layers = list(range(geometry.num_layers + 1)) if layers is None else list(layers)
    full_plan = scheduler.plan(batch, scheduler.make_policy("full"), None, None)
    full_logits = scheduler.engine.prefill(batch, full_plan.schedule, full_plan.partition, use_cache=False).logits
    result = SearchResult(policy, layer_param, threshold)
    settings = [(b, a) for b in budgets for a in (alphas if alphas else [None])]
    bar = tqdm(total=len(settings) * len(layers), desc=f"search {layer_param}", disable=not progress, leave=False)
    candidates = []
    part = scheduler.make_partitioner(partitioner) if partitioner else None  # a name, or one built with its parameters
    for budget_text, alpha in settings:
        budget = Budget.parse(budget_text)
        for layer in layers:
            values = dict(params or {}, **{layer_param: layer})
            if alpha is not None:
                values.update(fusion="fixed", alpha=alpha)
            candidate = scheduler.make_policy(policy, values)
            plan = scheduler.plan(batch, candidate, part, budget)
            out = scheduler.engine.prefill(batch, plan.schedule, plan.partition, use_cache=False)
            row = {
                "budget": str(budget), "alpha": alpha, "layer": layer,
                "kl": float(next_token_kl(full_logits, out.logits).mean()),
                "gflops": float(prefill_flops(out.stats, geometry).mean()) / 1e9,
            }
            result.curve.append(row)
            bar.update()
        meeting = [r for r in result.curve if r["budget"] == str(budget) and r["alpha"] == alpha
                   and r["kl"] <= threshold]
        if meeting:
            candidates.append(min(meeting, key=lambda r: r["layer"]))  # the first K under the threshold
    bar.close()
    if candidates:
        result.chosen = min(candidates, key=lambda r: (r["gflops"], r["layer"]))
    return result


@dataclass(frozen=True)
class Calibrated:
    """The result of calibration: the chosen policy and the schedule it fixes, plus the KL curve."""

    policy: Policy
    schedule: Schedule
    result: SearchResult


def calibrate(
    scheduler: Scheduler, request: Calibration, batch: PromptBatch, partitioner: Partitioner | None,
    budget: Budget | None,
) -> Calibrated:
    """Run the search a calibrated policy asks for; return the chosen policy and its fixed schedule.

    An explicit planning step: the policy states what to search, this function runs it on the
    scheduler's model (``request.data`` if given, else ``batch``) and never plans for the caller.
    """
    if request.data:
        batch = scheduler.prepare(*load_calibration(request.data))
    result = search_drop_layer(
        scheduler, batch, request.base, params=dict(request.params),
        budgets=[budget] if budget is not None else ["0.111"], threshold=request.threshold,
        layer_param=request.layer_param, partitioner=partitioner,
        progress=False,
    )
    if result.chosen is None:
        best = min(result.curve, key=lambda r: r["kl"])
        raise VtschedError(f"search: no {request.layer_param} of {request.base} reaches KL <= {request.threshold:g} "
                           f"(lowest {best['kl']:.4g} at {best['layer']}); raise the threshold")
    chosen = scheduler.make_policy(request.base, dict(request.params, **{request.layer_param: result.chosen["layer"]}))
    planner = scheduler.planner
    schedule = chosen.schedule(planner.geometry, planner.groups(chosen), planner.budget_seen(chosen, budget))
    return Calibrated(chosen, schedule, result)


def load_calibration(path: str | Path) -> tuple[list[Any], list[str]]:
    """Read a JSONL file of ``{"image": path, "question": text}`` (paths relative to the file)."""
    from vtsched.core.io import load_image, read_text

    path = Path(path)
    images, questions = [], []
    for number, line in enumerate(read_text(path, "calibration").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            image_path, question = record["image"], record["question"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise InputError(f"{path}:{number}: expected a JSON object with 'image' and 'question'") from None
        images.append(load_image(path.parent / image_path))
        questions.append(str(question))
    if not images:
        raise InputError(f"the calibration set {path} is empty: add lines {{\"image\": ..., \"question\": ...}}")
    return images, questions
