"""From a sweep config to cells: resolved against each model's config, hashed, costed, sharded.

Nothing here loads weights. Each model's geometry comes from its ``config.json`` and the planner
(:meth:`~vtsched.core.planner.Planner.check`) refuses a cell before anything runs, the same check
``vtsched eval`` makes. A cell's hash is the SHA-256 of the canonical JSON of its fully resolved
configuration (every policy and partitioner parameter, defaults included), the vtsched version and
the model's fingerprint (its config and the headers of its weight files), so a changed checkpoint or
a new vtsched never reuses an old row, and the same cell written in two configs is one cell.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import os
import struct
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vtsched.core.budget import Budget
from vtsched.core.cost import nominal_group_sizes
from vtsched.core.errors import InputError, VtschedError
from vtsched.core.geometry import ModelGeometry
from vtsched.core.schedule import Schedule
from vtsched.core.tools.sweep.config import DEMO_MODEL, SweepConfig

__all__ = [
    "Cell", "resolve_cells", "model_path", "model_fingerprint", "estimate_prefill_flops", "shard_cells",
    "LAYER_PARAMS", "layer_param",
]

LAYER_PARAMS = ("drop_layer", "switch_layer", "insert_layer", "layer")  # what "K" is, per policy


@dataclass(frozen=True)
class Cell:
    """One run of the evaluation. ``spec`` is the fully resolved configuration that is hashed."""

    hash: str
    spec: Mapping[str, Any]
    label: str
    error: str | None = None  # the planner refused it: recorded as failed, never run
    est_gflops: float | None = None  # per sample, nominal prefill (None: chosen on data)
    est_samples: int = 0

    @property
    def model(self) -> str:
        return str(self.spec["model"])

    def to_dict(self) -> dict[str, Any]:
        return {"hash": self.hash, "spec": dict(self.spec), "label": self.label, "error": self.error,
                "est_gflops": self.est_gflops, "est_samples": self.est_samples}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Cell:
        return cls(data["hash"], data["spec"], data["label"], data.get("error"), data.get("est_gflops"),
                   data.get("est_samples", 0))


def layer_param(params: Mapping[str, Any]) -> int | None:
    """The K of a layered policy (its drop/switch/insert layer), if it has one."""
    for name in LAYER_PARAMS:
        value = params.get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def model_path(model: str) -> str:
    """``demo`` -> the shipped demo model's folder; anything else as written."""
    if model == DEMO_MODEL:
        from vtsched.core.demo import demo_model_path

        shipped = demo_model_path()
        if shipped is None:
            raise InputError("the shipped demo model is not installed; name a checkpoint folder in models")
        return str(shipped)
    return model


def model_fingerprint(model: str) -> str:
    """SHA-256 of a checkpoint's ``config.json`` and its weight files (safetensors: name, size and
    header, which names every tensor's dtype, shape and offsets; other files: name, size, mtime)."""
    path = Path(os.path.expanduser(model_path(model)))
    digest = hashlib.sha256()
    if not path.is_dir():  # a hub id: its config is what can be read here
        from vtsched.core.io import read_config

        digest.update(f"hub:{model}\n".encode())
        digest.update(read_config(model).to_json_string().encode())
        return digest.hexdigest()
    config = path / "config.json"
    if not config.exists():
        raise InputError(f"{path} has no config.json: is it a checkpoint folder?")
    digest.update(config.read_bytes())
    for weights in sorted(path.iterdir()):
        if weights.suffix == ".safetensors":
            with weights.open("rb") as handle:
                (size,) = struct.unpack("<Q", handle.read(8))
                header = handle.read(min(size, 100_000_000))
            digest.update(f"{weights.name} {weights.stat().st_size}\n".encode())
            digest.update(hashlib.sha256(header).digest())
        elif weights.suffix in (".bin", ".pt", ".pth", ".ckpt"):
            st = weights.stat()
            digest.update(f"{weights.name} {st.st_size} {st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _canonical(value: Any) -> Any:
    """JSON-able, order-free: tuples become lists, mappings sorted (by json.dumps)."""
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def cell_hash(spec: Mapping[str, Any], version: str, fingerprint: str) -> str:
    blob = json.dumps({"cell": _canonical(spec), "vtsched": version, "model": fingerprint},
                      sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def _label(policy: str, params: Mapping[str, Any], written: set[str], partitioner: str | None,
           pparams: Mapping[str, Any], show_partitioner: bool, budget: str | None, seed: int, seeds: int) -> str:
    """A short name: the policy with the parameters the config wrote, partitioner, budget, seed."""
    args = ",".join(f"{k}={v}" for k, v in params.items() if k in written)
    name = f"{policy}({args})" if args else policy
    if partitioner is not None and (show_partitioner or pparams):
        pargs = ",".join(f"{k}={v}" for k, v in pparams.items())
        name += f"/{partitioner}({pargs})" if pargs else f"/{partitioner}"
    if budget is not None:
        name += f"@{budget}"
    return name + (f"#s{seed}" if seeds > 1 else "")


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
    return _ModelInfo(model, model_fingerprint(model), Planner(registry, geometry), geometry, adapter)


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
    cells: dict[str, Cell] = {}
    for model in config.models:
        info = _model_info(model, registry)
        for dataset_spec in config.datasets:
            for spec in config.policies:
                for seed in (spec.seeds or config.seeds):
                    dataset = dataset_spec.replace("{seed}", str(seed))
                    for variant in spec.variants():
                        variant = dict(variant)
                        budgets = [variant.pop("budget")] if "budget" in variant else list(spec.budgets or config.budgets)
                        for cell in _cells_of(config, info, dataset, spec, variant, budgets, seed, __version__,
                                              registry, estimate):
                            cells.setdefault(cell.hash, cell)
    if not cells:
        raise InputError(f"{where}the grid expands to zero cells")
    return list(cells.values())


def _partitioner_choices(spec: Any, config: SweepConfig, seed: int, registry: Any
                         ) -> list[tuple[str, dict[str, Any], set[str], str | None]]:
    """Per partitioner variant: its name, resolved parameters (the cell's seed for a seeded one that
    fixes none), the parameter names the config wrote, and the error that refuses it, if any."""
    out: list[tuple[str, dict[str, Any], set[str], str | None]] = []
    for part in (spec.partitioners or config.partitioners):
        cls = registry.partitioner(part.name)
        written = {k for v in part.variants() for k in v}
        for variant in part.variants():
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
    if cls.needs_partition:
        choices = list(_partitioner_choices(spec, config, seed, registry))
    show_partitioner = len(choices) > 1 or choices[0][0] not in (None, cls.default_partitioner)
    seeds = len(spec.seeds or config.seeds)
    out = []
    for budget_value in (budgets if cls.uses_budget else [None]):
        budget_text = None if budget_value is None else _budget_text(budget_value)
        for part_name, pparams, part_written, part_error in choices:
            error = policy_error or part_error
            check = None
            if error is None:
                try:
                    budget = Budget.parse(budget_value) if budget_value is not None else None
                    check = planner.check(policy, budget, part_name, pparams)
                except VtschedError as exc:
                    error = str(exc)
            keep = check.keep if check is not None else None
            if config.match is not None and check is not None and budget_text is not None:
                keep = _solve_nominal(planner, config.match, policy, part_name, pparams, budget_text, where_of(config))
            cell_spec = {
                "model": info.name, "dataset": dataset, "policy": name, "params": resolved,
                "partitioner": part_name, "partitioner_params": pparams,
                "budget": budget_text, "seed": seed, "max_new_tokens": config.max_new_tokens, "limit": config.limit,
            }
            if config.match is not None:  # only then: the hashes of unmatched cells stay what they were
                cell_spec["match"] = config.match
            shown = {k: v for k, v in pparams.items() if k in part_written}
            label = _label(name, resolved, written, part_name, shown, show_partitioner, budget_text, seed, seeds)
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
                   budget_text: str, where: str) -> int | None:
    """A matched cell's budget on an image of the model's nominal visual tokens, or the config's one-line
    error (:class:`~vtsched.core.tools.matching.MatchError`) when no budget of the policy meets the target.
    Each batch solves again on its own samples when the cell runs."""
    from vtsched.core.tools.matching import Matcher, MatchError, SampleText

    partitioner = planner.partitioner(part_name, pparams) if part_name else None
    try:
        return Matcher(planner, kind).solve(policy, partitioner, Budget.parse(budget_text),
                                            SampleText(planner.geometry.num_visual, 0, 0),
                                            f"{policy.name}@{budget_text}" + (f" [{part_name}]" if part_name else ""))
    except MatchError as exc:
        raise MatchError(f"{where}{str(exc).replace(f'--match {kind}:', f'[sweep] match = {kind!r}:', 1)}") from None


def _budget_text(value: Any) -> str:
    """The budget as ``Budget`` prints it (``7``, ``0.111``), or as written when it does not parse
    (the planner then refuses the cell with the budget's own error)."""
    try:
        return str(Budget.parse(value))
    except VtschedError:
        return str(value)


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
