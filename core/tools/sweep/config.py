"""A sweep's configuration: TOML in, checked, expanded into cells.

A *cell* is one run of the evaluation: (model, dataset, policy and its parameters, partitioner and
its parameters, budget, seed) plus the evaluation settings that change answers. A config names
the models and datasets, and per policy a grid (every combination) and zipped lists (one
combination per position) over its parameters; budgets, seeds and partitioners are crossed with
all of them. A policy a budget does not change runs once; one that needs no partition runs with
none, so such duplicates collapse into one cell.

```toml
[sweep]
name = "ablation"                  # the report's title; output in vtsched-out/sweep/<this file's stem>/
# results = "ablation-results.jsonl"  # a path beside this file instead (report: ablation-results-report/)
models = ["demo"]                  # "demo": the shipped demo model; else checkpoint folders
datasets = ["synthetic:1:12"]      # what `vtsched eval --data` takes; "{seed}" is replaced by the seed
budgets = [4, 7, 16]
# match = "avg-tokens"             # budgets as targets: each policy's own budget solved to meet them
seeds = [0]
partitioners = ["cls", { name = "random", grid = { seed = [0, 1] } }]   # default: each policy's own on each model

[eval]
max_new_tokens = 4
batch_size = 16

[[policy]]
name = "full"

[[policy]]
name = "parvts"
params = { fusion = "size" }                   # fixed parameters
grid = { drop_layer = [1, 2, 3] }              # every combination
zip = { fuse_tokens = ["question", "post_image"], alpha = [0.5, 0.7] }   # position by position
```

Unknown keys, unknown names and empty lists are refused here with one line (the closest known
key suggested); a cell the planner refuses (a layer out of range, a budget larger than the
image) is kept with its error, recorded as failed, and the sweep goes on.
"""

from __future__ import annotations

import difflib
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib
from vtsched.core.errors import InputError

__all__ = ["DEMO_MODEL", "ComponentSpec", "PolicySpec", "SweepConfig", "expand_params", "load_config", "parse_config"]

DEMO_MODEL = "demo"  # the shipped demo model

_TOP = ("sweep", "eval", "policy", "slurm")
_SWEEP = ("name", "models", "datasets", "budgets", "match", "seeds", "partitioners", "results", "out")
_MATCH = ("avg-tokens", "flops", "input-tokens")  # vtsched.core.tools.matching.MATCH_KINDS
_EVAL = ("max_new_tokens", "batch_size", "limit", "device", "dtype")
_POLICY = ("name", "params", "grid", "zip", "budgets", "partitioners", "seeds")
_COMPONENT = ("name", "params", "grid", "zip")
_SLURM = ("partition", "timeout_min", "gpus_per_node", "cpus_per_task", "mem_gb", "array_parallelism", "account",
          "qos", "constraint")


@dataclass(frozen=True)
class ComponentSpec:
    """A named component with fixed parameters, a grid and zipped lists (a partitioner's, here)."""

    name: str
    params: Mapping[str, Any] = field(default_factory=dict)
    grid: Mapping[str, Sequence[Any]] = field(default_factory=dict)
    zip: Sequence[Mapping[str, Any]] = ()

    def variants(self) -> list[dict[str, Any]]:
        return expand_params(self.params, self.grid, self.zip)


@dataclass(frozen=True)
class PolicySpec(ComponentSpec):
    """A policy with its parameter grid; ``budgets``, ``partitioners``, ``seeds`` override the sweep's."""

    budgets: Sequence[Any] | None = None
    partitioners: Sequence[ComponentSpec] | None = None
    seeds: Sequence[int] | None = None


@dataclass(frozen=True)
class SweepConfig:
    """A parsed sweep config. Paths are resolved against the config file's folder."""

    path: Path | None
    name: str
    models: tuple[str, ...]
    datasets: tuple[str, ...]
    budgets: tuple[Any, ...]
    seeds: tuple[int, ...]
    partitioners: tuple[ComponentSpec, ...]  # empty: each policy's own on each model, as `vtsched run` picks
    policies: tuple[PolicySpec, ...]
    results: Path
    out: Path
    max_new_tokens: int = 4
    batch_size: int = 16
    limit: int | None = None
    device: str = "cpu"
    dtype: str | None = None
    slurm: Mapping[str, Any] = field(default_factory=dict)
    match: str | None = None  # budgets read as targets each policy's budget is solved for (--match)


def load_config(path: str | Path) -> SweepConfig:
    """Read and check a sweep config file (TOML)."""
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"sweep config not found: {p}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read sweep config {p}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{p.name}: not valid TOML: {exc}") from None
    return parse_config(data, p)


def _where(path: Path | None) -> str:
    return f"{path.name}: " if path is not None else ""


def _check_keys(table: Mapping[str, Any], known: Sequence[str], section: str, path: Path | None) -> None:
    for key in table:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(known)}"
            raise InputError(f"{_where(path)}unknown key {key!r} in {section}{hint}")


def _list(value: Any, key: str, section: str, path: Path | None) -> list[Any]:
    if isinstance(value, (str, int, float, dict)):
        return [value]
    if not isinstance(value, list):
        raise InputError(f"{_where(path)}{section} {key} must be a list, not {type(value).__name__}")
    if not value:
        raise InputError(f"{_where(path)}the grid expands to zero cells: {section} {key} is an empty list")
    return value


def _table(value: Any, key: str, section: str, path: Path | None) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InputError(f"{_where(path)}{section} {key} must be a table, e.g. {key} = {{ name = value }}")
    return value


def _zip(value: Any, section: str, path: Path | None) -> list[dict[str, Any]]:
    """``zip = {a = [1, 2], b = [3, 4]}`` (equal lengths) or ``zip = [{a = 1, b = 3}, {a = 2}]``."""
    if isinstance(value, list):
        if not value:
            raise InputError(f"{_where(path)}the grid expands to zero cells: {section} zip is an empty list")
        if not all(isinstance(v, dict) for v in value):
            raise InputError(f"{_where(path)}{section} zip is a table of equal-length lists or a list of tables")
        return [dict(v) for v in value]
    lists = {k: _list(v, k, f"{section} zip", path) for k, v in _table(value, "zip", section, path).items()}
    lengths = {len(v) for v in lists.values()}
    if len(lengths) > 1:
        sizes = ", ".join(f"{k}: {len(v)}" for k, v in lists.items())
        raise InputError(f"{_where(path)}{section} zip lists must have equal lengths ({sizes})")
    n = lengths.pop() if lengths else 0
    return [{k: v[i] for k, v in lists.items()} for i in range(n)]


def _component(raw: Any, section: str, path: Path | None, known: Sequence[str] = _COMPONENT) -> dict[str, Any]:
    if isinstance(raw, str):
        return {"name": raw}
    table = _table(raw, "entry", section, path)
    _check_keys(table, known, section, path)
    if not isinstance(table.get("name"), str) or not table["name"]:
        raise InputError(f"{_where(path)}every {section} needs a name, e.g. name = \"parvts\"")
    out: dict[str, Any] = {"name": table["name"]}
    out["params"] = _table(table.get("params", {}), "params", section, path)
    out["grid"] = {k: _list(v, k, f"{section} {table['name']} grid", path)
                   for k, v in _table(table.get("grid", {}), "grid", section, path).items()}
    out["zip"] = _zip(table["zip"], f"{section} {table['name']}", path) if "zip" in table else []
    return out


def parse_config(data: Mapping[str, Any], path: Path | None = None) -> SweepConfig:
    """Check a config's structure (keys, types, empty lists); names and parameters are checked when
    cells are resolved against a model (:func:`vtsched.core.tools.sweep.plan.resolve_cells`)."""
    _check_keys(data, _TOP, "the config (top level)", path)
    sweep = _table(data.get("sweep", {}), "[sweep]", "the config", path)
    _check_keys(sweep, _SWEEP, "[sweep]", path)
    ev = _table(data.get("eval", {}), "[eval]", "the config", path)
    _check_keys(ev, _EVAL, "[eval]", path)
    slurm = _table(data.get("slurm", {}), "[slurm]", "the config", path)
    _check_keys(slurm, _SLURM, "[slurm]", path)
    if "policy" not in data:
        raise InputError(f"{_where(path)}the config names no policy: add a [[policy]] table with a name")
    raw_policies = data["policy"] if isinstance(data["policy"], list) else [data["policy"]]
    if not raw_policies:
        raise InputError(f"{_where(path)}the grid expands to zero cells: [[policy]] is empty")

    def partitioners(raw: Any, section: str) -> tuple[ComponentSpec, ...]:
        return tuple(ComponentSpec(**_component(p, section, path)) for p in _list(raw, "partitioners", section, path))

    policies = []
    for raw in raw_policies:
        spec = _component(raw, "[[policy]]", path, _POLICY)
        section = f"[[policy]] {spec['name']}"
        policies.append(PolicySpec(
            **spec,
            budgets=_list(raw["budgets"], "budgets", section, path) if "budgets" in raw else None,
            partitioners=partitioners(raw["partitioners"], section) if "partitioners" in raw else None,
            seeds=tuple(_ints(_list(raw["seeds"], "seeds", section, path), "seeds", path)) if "seeds" in raw else None,
        ))
    base = path.parent if path is not None else Path.cwd()
    name = str(sweep.get("name") or (path.stem if path is not None else "sweep"))
    if "results" in sweep:  # beside the config file, its report beside it
        results = (base / str(sweep["results"])).absolute()
        report = results.parent / f"{results.stem}-report"
    else:  # where every command writes: vtsched-out/ under the working directory, in a folder named after
        # the config file (two configs copied from one, their `name` unedited, keep their own results)
        folder = path.stem if path is not None else name
        results = Path.cwd() / "vtsched-out" / "sweep" / folder / "results.jsonl"
        report = results.parent / "report"  # beside results.jsonl, its lock and workers/: the folder to open
    out = (base / str(sweep["out"])).absolute() if "out" in sweep else report
    limit = ev.get("limit")
    match = sweep.get("match")
    if match is not None and match not in _MATCH:
        raise InputError(f"{_where(path)}[sweep] match must be one of {', '.join(map(repr, _MATCH))}, not {match!r}")
    return SweepConfig(
        match=match,
        path=path, name=name,
        models=tuple(str(m) for m in _list(sweep.get("models", [DEMO_MODEL]), "models", "[sweep]", path)),
        datasets=tuple(str(d) for d in _list(sweep.get("datasets", ["synthetic:1:12"]), "datasets", "[sweep]", path)),
        budgets=tuple(_list(sweep.get("budgets", ["0.111"]), "budgets", "[sweep]", path)),
        seeds=tuple(_ints(_list(sweep.get("seeds", [0]), "seeds", "[sweep]", path), "seeds", path)),
        partitioners=partitioners(sweep["partitioners"], "[sweep] partitioners") if "partitioners" in sweep else (),
        policies=tuple(policies), results=results, out=out,
        max_new_tokens=_int(ev.get("max_new_tokens", 4), "max_new_tokens", path, minimum=1),
        batch_size=_int(ev.get("batch_size", 16), "batch_size", path, minimum=1),
        limit=None if limit in (None, 0) else _int(limit, "limit", path, minimum=1),
        device=str(ev.get("device", "cpu")), dtype=str(ev["dtype"]) if "dtype" in ev else None,
        slurm=dict(slurm),
    )


def _int(value: Any, key: str, path: Path | None, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InputError(f"{_where(path)}{key} must be a whole number >= {minimum}, not {value!r}")
    return value


def _ints(values: Sequence[Any], key: str, path: Path | None) -> list[int]:
    return [_int(v, key, path) for v in values]


def expand_params(params: Mapping[str, Any], grid: Mapping[str, Sequence[Any]],
                  zipped: Sequence[Mapping[str, Any]] = ()) -> list[dict[str, Any]]:
    """Fixed ``params``, crossed with every combination of ``grid``, crossed with each ``zipped`` entry.

    >>> expand_params({"a": 1}, {"b": [1, 2]}, [{"c": 0}, {"c": 1, "d": 2}])  # doctest: +NORMALIZE_WHITESPACE
    [{'a': 1, 'b': 1, 'c': 0}, {'a': 1, 'b': 1, 'c': 1, 'd': 2},
     {'a': 1, 'b': 2, 'c': 0}, {'a': 1, 'b': 2, 'c': 1, 'd': 2}]
    """
    keys = list(grid)
    out = []
    for values in itertools.product(*(grid[k] for k in keys)):
        for extra in (zipped or [{}]):
            out.append({**params, **dict(zip(keys, values)), **extra})
    return out
