"""Which cases an evaluation runs: partitioners crossed with the cases that need a partition
(:func:`cross_partitioners`, the data set's spec handed to a partitioner that reads it:
:func:`dataset_params`), and the hard subset's reference cases (:func:`hard_references`,
:func:`with_hard_reference`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from vtsched.core.budget import Budget
from vtsched.core.errors import InputError
from vtsched.core.tools.bench import Case, case_label, parse_component

__all__ = ["cross_partitioners", "dataset_params", "hard_references", "parse_partitioner", "with_hard_reference"]


def parse_partitioner(spec: str) -> tuple[str, dict[str, str]]:
    """``"NAME[:PARAM=VALUE,...]"`` -> ``(name, params)`` (:func:`~vtsched.core.tools.bench.parse_component`)."""
    return parse_component(spec, "partitioner")


def dataset_params(registry: Any, name: str, params: dict[str, str], data: str | None) -> dict[str, str]:
    """``params``, plus the dataset's spec in the partitioner's ``dataset_param`` if it has one left unset."""
    param = getattr(registry.partitioner(name), "dataset_param", None)
    if data and param and param not in params:
        return {**params, param: data}
    return params


def cross_partitioners(planner: Any, cases: Sequence[Case], specs: Sequence[str], *,
                       data: str | None = None) -> list[Case]:
    """Every case whose policy needs a partition once per partitioner spec; the others once.

    Each partitioner is built and each request checked by the planner here, before weights load,
    so an unknown name, a bad parameter or a missing mask or checkpoint file is one line at once.
    """
    out: list[Case] = []
    for case in cases:
        policy = planner.policy(case.policy, dict(case.params))
        if not policy.needs_partition or case.policy.startswith("schedule:"):
            out.append(case)
            continue
        for spec in specs:
            name, params = parse_partitioner(spec)
            planner.check(policy, case.budget, name, dataset_params(planner.registry, name, params, data))
            out.append(Case(case.policy, case.budget, case.params, spec))
    return out


def _prune_with(partitioner: str, budget: Budget | None) -> Case:
    return Case("prune", budget, (), partitioner)


def hard_references(hard: str, cases: Sequence[Case]) -> dict[str, str | None]:
    """Per case label, the case whose wrongly answered items make that row's hard subset.

    ``hard`` is either a case's label (``prune@7 [random]``: one reference for every row) or a
    partitioner's name (``downsample``, what ``--hard-subset`` alone means): then each row's reference
    is ``prune`` with that partitioner at the row's own budget (its target under ``--match``), the
    cheap reference at the same cost that VTC-Bench separates methods by; a row without a budget
    (``full``, ``vtw``) has no reference. :func:`with_hard_reference` adds the reference cases.
    Raises :class:`InputError` (one line) when the reference is not among ``cases``.
    """
    labels = list(dict.fromkeys(["full", *(case_label(c) for c in cases)]))
    if hard in labels:
        return dict.fromkeys(labels, hard)
    budgets = list(dict.fromkeys(c.budget for c in cases if c.budget is not None))
    missing = [case_label(_prune_with(hard, b)) for b in budgets if case_label(_prune_with(hard, b)) not in labels]
    if not budgets or missing:
        raise InputError(f"hard_subset: no case {hard!r} in this eval; cases: {', '.join(labels)} (name a case, "
                         f"or a partitioner whose prune case runs at every budget)")
    return {case_label(c): (case_label(_prune_with(hard, c.budget)) if c.budget is not None else None)
            for c in [Case("full"), *cases]}


def with_hard_reference(registry: Any, cases: Sequence[Case], hard: str | None) -> list[Case]:
    """``cases``, plus ``prune`` with partitioner ``hard`` at each budget when ``hard`` names a
    partitioner (not a case) and that case is not already there: the hard subset's references."""
    out = list(cases)
    if hard is None or hard in {case_label(c) for c in cases} or hard not in registry.names("partitioner"):
        return out
    have = {case_label(c) for c in cases}
    for budget in dict.fromkeys(c.budget for c in cases if c.budget is not None):
        reference = _prune_with(hard, budget)
        if case_label(reference) not in have:
            out.append(reference)
            have.add(case_label(reference))
    return out
