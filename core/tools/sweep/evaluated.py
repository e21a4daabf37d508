"""Cells whose dataset a plugin's evaluator scores (``segmentation:...`` with the LISA plugin).

``vtsched eval --data NAME:SPEC`` hands such data to the evaluator that serves it
(:func:`vtsched.core.evaluators.evaluator_for`) instead of answering questions itself; a sweep
cell with such data goes the same way. The cell is planned without the model (the evaluator loads
its own: ``demo`` in ``models`` means the evaluator's default model, a folder is passed as
``--model``), its policy and partitioner parameters resolved through the registry, and at run time
it becomes one :class:`~vtsched.core.evaluators.EvalRequest` for its policy, budget and
partitioner. The evaluator runs ``full`` beside every case it is asked for; the cell keeps the
row of its own case.

The row carries the evaluator's row as ``metrics``, the cost columns it shares with every results
row (``visual_tokens_per_layer``, ``prefill_gflops``, ...) and, as ``accuracy``, the column the
evaluator names as its score (:attr:`~vtsched.core.evaluators.Evaluator.score`: gIoU for
segmentation), so the summary table and the plots show it; ``score`` says which column that was.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

from vtsched.core.errors import InputError, VtschedError
from vtsched.core.tools.sweep.cells import (
    Cell,
    as_budget_text,
    cell_hash,
    cell_label,
    model_fingerprint,
    model_path,
)
from vtsched.core.tools.sweep.config import DEMO_MODEL, SweepConfig

__all__ = ["COST_COLUMNS", "evaluated_cells", "evaluated_row"]

# the columns an evaluator's row may share with every results row (vtsched.core.cost's names)
COST_COLUMNS = ("budget_counts", "visual_tokens_input", "visual_tokens_per_layer", "prefill_gflops", "prefill_ms")
# the budget handed to the evaluator for a policy a budget does not change: it needs one, and keeping
# every token is valid for any image
_NO_BUDGET = "100%"


def evaluator_fingerprint(evaluator: type, model: str) -> str:
    """What identifies the model an evaluator cell runs: a checkpoint folder's fingerprint, or for the
    evaluator's own default model (``demo``) the evaluator and the distribution that ships it, with
    its version (a new plugin release may ship another default model)."""
    if model != DEMO_MODEL:
        return model_fingerprint(model)
    from importlib.metadata import packages_distributions, version

    top = evaluator.__module__.split(".")[0]
    shipped = sorted(f"{d} {version(d)}" for d in set(packages_distributions().get(top, [])))
    return hashlib.sha256(f"evaluator {evaluator.__name__} default model; {shipped}".encode()).hexdigest()


def _built(kind: str, name: str, params: Mapping[str, Any], registry: Any) -> tuple[str, dict[str, Any], str | None]:
    """A component's registry name and resolved parameters (defaults included), or its one-line error."""
    cls = registry.policy(name) if kind == "policy" else registry.partitioner(name)
    try:
        return cls.name, cls.from_params(dict(params)).params(), None
    except VtschedError as exc:
        return cls.name, dict(params), str(exc)


def evaluated_cells(config: SweepConfig, model: str, evaluator: Any, dataset: str, spec: Any,
                    variant: Mapping[str, Any], budgets: Sequence[Any], seed: int, version: str,
                    registry: Any) -> list[Cell]:
    """The cells of one policy variant on a dataset ``evaluator`` serves: its budgets x the partitioners
    the config names (none named: the evaluator picks each policy's own). Nothing is estimated: the
    evaluator's model is not read here."""
    fingerprint = evaluator_fingerprint(evaluator, model)
    name, resolved, policy_error = _built("policy", spec.name, variant, registry)
    cls = registry.policy(spec.name)
    written = {k.replace("-", "_") for k in (*spec.params, *spec.grid, *(k for z in spec.zip for k in z))}
    parts: list[tuple[str | None, dict[str, Any], dict[str, Any], str | None]] = [(None, {}, {}, None)]
    named = spec.partitioners or config.partitioners
    if cls.needs_partition and named:
        parts = []
        for part in named:
            for part_variant in part.variants():
                built, pparams, part_error = _built("partitioner", part.name, part_variant, registry)
                parts.append((built, pparams, dict(part_variant), part_error))
    seeds = len(spec.seeds or config.seeds)
    out = []
    for budget_value in (budgets if cls.uses_budget else [None]):
        budget = None if budget_value is None else as_budget_text(budget_value)
        for part_name, pparams, part_written, part_error in parts:
            hashed: dict[str, Any] = {
                "model": model, "dataset": dataset, "evaluator": evaluator.name, "policy": name, "params": resolved,
                "partitioner": part_name, "partitioner_params": pparams, "budget": budget, "seed": seed,
                "limit": config.limit,
            }
            # what the config wrote is what the evaluator is handed (resolved values may not read back as text)
            cell_spec = {**hashed, "written": dict(variant), "partitioner_written": part_written}
            label = cell_label(name, resolved, written, part_name, part_written, bool(part_name), budget, seed, seeds)
            out.append(Cell(cell_hash(hashed, version, fingerprint), cell_spec, label, policy_error or part_error))
    return out


def _component_text(name: str, params: Mapping[str, Any]) -> str:
    """``NAME:KEY=VALUE,...`` as ``vtsched eval`` reads it (lists joined by ``/``); refused when a value
    cannot be written so (a comma in it)."""
    pairs = []
    for key, value in params.items():
        text = "/".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
        if "," in text:
            raise InputError(f"{name}: parameter {key}={value!r} cannot be handed to an evaluator (it holds a comma)")
        pairs.append(f"{key}={text}")
    return f"{name}:{','.join(pairs)}" if pairs else name


def evaluated_row(cell: Cell, registry: Any, *, device: str, batch_size: int) -> dict[str, Any]:
    """Run ``cell`` through its evaluator, as ``vtsched eval --data NAME:SPEC`` would; its metrics, costs
    and score. Raises what the evaluator raises (the caller records it as a failed row)."""
    from vtsched.core.evaluators import EvalRequest, evaluator_for

    spec = cell.spec
    served = evaluator_for(registry, str(spec["dataset"]))
    if served is None or served[0].name != spec["evaluator"]:
        raise InputError(f"no evaluator {spec['evaluator']!r} serves {spec['dataset']} here: is its plugin installed "
                         "(and plugins not disabled)?")
    evaluator, data = served
    policy = _component_text(str(spec["policy"]), spec["written"])
    partitioners = [_component_text(str(spec["partitioner"]), spec["partitioner_written"])] if spec["partitioner"] else None
    model = None if spec["model"] == DEMO_MODEL else model_path(str(spec["model"]))
    request = EvalRequest(data=data, model=model, policies=[] if spec["policy"] == "full" else [policy],
                          budgets=[str(spec["budget"] or _NO_BUDGET)], partitioners=partitioners,
                          limit=spec["limit"], device=device, batch_size=batch_size, progress=False, registry=registry)
    outcome = evaluator.evaluate(request)
    mine = [r for r in outcome.rows if (r.get("case") == "full") == (spec["policy"] == "full")]
    if not mine:
        raise VtschedError(f"evaluator {evaluator.name!r} returned no row for {cell.label}")
    metrics = dict(mine[0])
    score = getattr(evaluator, "score", None)
    return {"status": "ok", "error": None, "n": metrics.get("n"), "score": score,
            "accuracy": metrics.get(score) if score else None, "by_split": {},
            **{k: metrics[k] for k in COST_COLUMNS if k in metrics}, "metrics": metrics,
            "evaluator_model": outcome.model, "predictions": []}
