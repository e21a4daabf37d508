"""From a sweep config to cells: resolved against each model's config, hashed, costed, sharded.

Nothing here loads weights. Each model's geometry comes from its ``config.json`` and the planner
(:meth:`~vtsched.core.planner.Planner.check`) refuses a cell before anything runs, the same check
``vtsched eval`` makes; a partitioner the config does not name is the policy's own on that model,
as ``vtsched run`` picks it. What a cell is and how it is hashed: :mod:`.cells`. A dataset a
plugin's evaluator serves makes its cells in :mod:`.evaluated`, without reading the model.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from vtsched.core.budget import Budget
from vtsched.core.cost import nominal_group_sizes
from vtsched.core.errors import InputError, VtschedError
from vtsched.core.geometry import ModelGeometry
from vtsched.core.schedule import Schedule
from vtsched.core.tools.sweep.cells import (
    Cell,
    cell_hash,
    cell_label,
    model_fingerprint,
    model_path,
    read_budget,
)
from vtsched.core.tools.sweep.config import SweepConfig

__all__ = ["estimate_prefill_flops", "resolve_cells", "shard_cells"]


@dataclass
class _ModelInfo:
    name: str
    fingerprint: str
    planner: Any
    geometry: ModelGeometry
    adapter: Any
    text_lengths: dict[str, Counter[tuple[int, int]]] = field(default_factory=dict)  # dataset -> (prefix, suffix)


def _model_info(model: str, registry: Any) -> _ModelInfo:
    from vtsched.core.io import read_config
    from vtsched.core.planner import Planner

    config = read_config(model_path(model))
    adapter = registry.adapter_for_config(config)
    geometry = adapter.geometry_from_config(config)
    # the family's own partitioner stands in for a policy's default ``cls`` (``attention`` on Qwen2-VL,
    # whose vision tower has no [CLS] token), as in every other entry point
    planner = Planner(registry, geometry, adapter.default_partitioner)
    return _ModelInfo(model, model_fingerprint(model), planner, geometry, adapter)


def _text_lengths(info: _ModelInfo, dataset: str, limit: int | None) -> Counter[tuple[int, int]]:
    """Per sample: text tokens before the image and after it, counted with the model's tokenizer."""
    if dataset in info.text_lengths:
        return info.text_lengths[dataset]
    from vtsched.core.tools.evaluate import load_items

    items = load_items(dataset, limit)
    head, tail = info.adapter.prompt_template.split(info.adapter.image_placeholder)
    counts: Counter[tuple[int, int]] = Counter()
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_path(info.name))
        prefix = len(tokenizer(head, add_special_tokens=True)["input_ids"])
        for question, n in Counter(it.question for it in items).items():
            counts[(prefix, len(tokenizer(tail.replace("{question}", question), add_special_tokens=False)["input_ids"]))] += n
    except (OSError, ValueError):  # no tokenizer here: words as tokens
        for question, n in Counter(it.question for it in items).items():
            counts[(len(head.split()) + 1, len(tail.replace("{question}", question).split()))] += n
    info.text_lengths[dataset] = counts
    return counts


def estimate_prefill_flops(schedule: Schedule, geometry: ModelGeometry, group_sizes: Mapping[str, int], *,
                           prefix: int, suffix: int, question: int | None = None, share_prefix: bool = True) -> float:
    """Nominal decoder prefill FLOPs of one sample under ``schedule`` (no weights: token counts only):
    :func:`vtsched.core.cost.nominal_run`'s, the one walk of a schedule's events over token counts."""
    from vtsched.core.cost import nominal_run

    return nominal_run(schedule, geometry, group_sizes, prefix=prefix, suffix=suffix, question=question,
                       share_prefix=share_prefix).prefill_flops


def _component_error(kind: str, name: str, registry: Any, where: str) -> InputError:
    known = registry.names(kind)
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(known)}"
    return InputError(f"{where}unknown {kind} {name!r}; {hint}")


def _checked_params(cls: Any, params: Mapping[str, Any], where: str) -> None:
    """Refuse a misspelt parameter name with the closest real one (a config error, not a cell's)."""
    fields = [f.name for f in dataclasses.fields(cls)]
    for key in params:
        if key.replace("-", "_") not in fields:
            close = difflib.get_close_matches(key, fields, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"parameters: {', '.join(fields) or 'none'}"
            raise InputError(f"{where}{cls.name} has no parameter {key!r}; {hint}")


def resolve_cells(config: SweepConfig, registry: Any, *, estimate: bool = True) -> list[Cell]:
    """Every cell of the config, in config order, duplicates removed; each checked by the planner.

    Unknown policy or partitioner names and misspelt parameter names are config errors
    (:class:`InputError`); a cell the planner refuses comes back with ``error`` set.
    """
    from vtsched.core import __version__

    where = f"{config.path.name}: " if config.path is not None else ""
    for spec in config.policies:  # names first: a typo is the config's error, whatever the model
        if spec.name not in registry.components["policy"]:
            raise _component_error("policy", spec.name, registry, where)
        cls = registry.policy(spec.name)
        for variant in spec.variants():
            _checked_params(cls, {k: v for k, v in variant.items() if k != "budget"}, f"{where}[[policy]] {spec.name}: ")
        for part in (spec.partitioners or config.partitioners):
            if part.name not in registry.components["partitioner"]:
                raise _component_error("partitioner", part.name, registry, where)
            for variant in part.variants():
                _checked_params(registry.partitioner(part.name), variant, f"{where}partitioner {part.name}: ")
    from vtsched.core.evaluators import evaluator_for
    from vtsched.core.tools.sweep.evaluated import evaluated_cells

    cells: dict[str, Cell] = {}
    for model in config.models:
        info: _ModelInfo | None = None  # read when a dataset is answered here, not by a plugin's evaluator
        for dataset_spec in config.datasets:
            for spec in config.policies:
                for seed in (spec.seeds or config.seeds):
                    dataset = dataset_spec.replace("{seed}", str(seed))
                    served = evaluator_for(registry, dataset)
                    if served is None and info is None:
                        info = _model_info(model, registry)
                    for variant in spec.variants():
                        variant = dict(variant)
                        budgets = [variant.pop("budget")] if "budget" in variant else list(spec.budgets or config.budgets)
                        if served is not None:
                            found = evaluated_cells(config, model, served[0], dataset, spec, variant, budgets, seed,
                                                    __version__, registry)
                        else:
                            assert info is not None
                            found = _cells_of(config, info, dataset, spec, variant, budgets, seed, __version__,
                                              registry, estimate)
                        for cell in found:
                            cells.setdefault(cell.hash, cell)
    if not cells:
        raise InputError(f"{where}the grid expands to zero cells")
    return list(cells.values())


def _partitioner_choices(spec: Any, config: SweepConfig, seed: int, registry: Any, default: str
                         ) -> list[tuple[str, dict[str, Any], set[str], str | None]]:
    """Per partitioner variant: its name, resolved parameters (the cell's seed for a seeded one that
    fixes none), the parameter names the config wrote, and the error that refuses it, if any. Without
    partitioners in the config, ``default``: the policy's own on this model (the planner's rule)."""
    out: list[tuple[str, dict[str, Any], set[str], str | None]] = []
    named = spec.partitioners or config.partitioners
    variants = [(p.name, p.variants()) for p in named] if named else [(default, [{}])]
    for part_name, part_variants in variants:
        cls = registry.partitioner(part_name)
        written = {k for v in part_variants for k in v}
        for variant in part_variants:
            params = dict(variant)
            if "seed" in {f.name for f in dataclasses.fields(cls)} and "seed" not in params:
                params["seed"] = seed
            try:
                out.append((cls.name, cls.from_params(params).params(), written, None))
            except VtschedError as exc:
                out.append((cls.name, params, written, str(exc)))
    return out


def _cells_of(config: SweepConfig, info: _ModelInfo, dataset: str, spec: Any, params: dict[str, Any],
              budgets: Sequence[Any], seed: int, version: str, registry: Any, estimate: bool) -> list[Cell]:
    """The cells of one policy variant: its budgets x partitioner variants (collapsed where unused)."""
    planner = info.planner
    policy_error = None
    try:
        policy = planner.policy(spec.name, params)
    except VtschedError as exc:  # a value the policy refuses: every cell of this variant fails alike
        policy, policy_error = None, str(exc)
    cls = registry.policy(spec.name)
    name = cls.name
    resolved = policy.params() if policy is not None else dict(params)
    written = {k.replace("-", "_") for k in (*spec.params, *spec.grid, *(k for z in spec.zip for k in z))}
    choices: list[tuple[str | None, dict[str, Any], set[str], str | None]] = [(None, {}, set(), None)]
    default = (planner.default_partitioner(policy) if policy is not None else None) or cls.default_partitioner
    if cls.needs_partition:
        choices = list(_partitioner_choices(spec, config, seed, registry, default))
    show_partitioner = len(choices) > 1 or choices[0][0] not in (None, default)
    seeds = len(spec.seeds or config.seeds)
    out = []
    for budget_value in (budgets if cls.uses_budget else [None]):
        budget, budget_text, budget_error = read_budget(budget_value)
        for part_name, pparams, part_written, part_error in choices:
            error = policy_error or part_error
            check = None
            if error is None and budget_error is not None:
                error = budget_error
            elif error is None:
                try:
                    check = planner.check(policy, budget, part_name, pparams)
                except VtschedError as exc:
                    error = str(exc)
            keep = check.keep if check is not None else None
            if config.match is not None and check is not None and budget_text is not None:
                keep = _solve_nominal(planner, config.match, policy, part_name, pparams, budget, budget_text,
                                      where_of(config))
            cell_spec = {
                "model": info.name, "dataset": dataset, "policy": name, "params": resolved,
                "partitioner": part_name, "partitioner_params": pparams,
                "budget": budget_text, "seed": seed, "max_new_tokens": config.max_new_tokens, "limit": config.limit,
            }
            if config.match is not None:  # only then: the hashes of unmatched cells stay what they were
                cell_spec["match"] = config.match
            shown = {k: v for k, v in pparams.items() if k in part_written}
            label = cell_label(name, resolved, written, part_name, shown, show_partitioner, budget_text, seed, seeds)
            est, samples = None, 0
            if estimate and check is not None and check.schedule is not None:
                lengths = _text_lengths(info, dataset, config.limit)
                schedule = check.schedule
                if keep != check.keep and policy is not None:  # matched: the solved budget's schedule
                    schedule = planner.check(policy, Budget(count=keep), part_name, pparams).schedule or schedule
                sizes = nominal_group_sizes(schedule.groups, keep, info.geometry.num_visual)
                samples = sum(lengths.values())
                est = sum(n * estimate_prefill_flops(schedule, info.geometry, sizes, prefix=p, suffix=s)
                          for (p, s), n in lengths.items()) / max(1, samples) / 1e9
            out.append(Cell(cell_hash(cell_spec, version, info.fingerprint), cell_spec, label, error, est, samples))
    return out


def where_of(config: SweepConfig) -> str:
    return f"{config.path.name}: " if config.path is not None else ""


def _solve_nominal(planner: Any, kind: str, policy: Any, part_name: str | None, pparams: Mapping[str, Any],
                   budget: Any, budget_text: str, where: str) -> int | None:
    """A matched cell's budget on an image of the model's nominal visual tokens, or the config's one-line
    error (:class:`~vtsched.core.tools.matching.MatchError`) when no budget of the policy meets the target.
    Each batch solves again on its own samples when the cell runs."""
    from vtsched.core.tools.matching import Matcher, MatchError, SampleText

    partitioner = planner.partitioner(part_name, pparams) if part_name else None
    try:
        return Matcher(planner, kind).solve(policy, partitioner, budget,
                                            SampleText(planner.geometry.num_visual, 0, 0),
                                            f"{policy.name}@{budget_text}" + (f" [{part_name}]" if part_name else ""))
    except MatchError as exc:
        raise MatchError(f"{where}{str(exc).replace(f'--match {kind}:', f'[sweep] match = {kind!r}:', 1)}") from None


def shard_cells(cells: Sequence[Cell], workers: int) -> list[list[Cell]]:
    """Split cells over ``workers``: longest estimated first onto the least loaded worker, with a
    worker's cells grouped by model so each loads a model once. Empty shards are dropped."""
    loads = [0.0] * workers
    shards: list[list[Cell]] = [[] for _ in range(workers)]
    by_cost = sorted(cells, key=lambda c: -((c.est_gflops or 1.0) * max(1, c.est_samples)))
    for cell in by_cost:
        i = loads.index(min(loads))
        shards[i].append(cell)
        loads[i] += (cell.est_gflops or 1.0) * max(1, cell.est_samples)
    order = {c.hash: i for i, c in enumerate(cells)}
    return [sorted(s, key=lambda c: (c.model, order[c.hash])) for s in shards if s]
