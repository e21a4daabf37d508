"""``vtsched sweep``: ablations over models, datasets, policies, partitioners, budgets and seeds.

A sweep config (:mod:`.config`) expands into cells (:mod:`.plan`), each hashed from its fully
resolved configuration. The coordinator (:mod:`.coordinator`) hands the cells that have no result
yet to an executor (:mod:`.launch`: this process, one process per device, or Slurm arrays through
submitit), or, under torchrun / accelerate launch, every rank runs it and answers its shard of the
samples. A worker answers a cell (:mod:`.run`) and appends one JSON line to the results file
(:mod:`.results`); running the same sweep again skips finished cells, ``retry_failed`` reruns
failed ones. At the end: a summary table, a CSV and plots (:mod:`.report`) over the cells of
this config.

The names below are the sweep's Python API (docs/ablations.md uses them); the modules hold the rest.
They load on first use, so a worker process started as ``python -m vtsched.core.tools.sweep.launch``
and a reader of results files (:mod:`.results`) do not import the coordinator first.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vtsched.core.tools.sweep.config import load_config
    from vtsched.core.tools.sweep.coordinator import (
        Progress,
        SweepOutcome,
        dry_run_table,
        run_sweep,
        with_overrides,
    )

_LAZY = {
    "load_config": "vtsched.core.tools.sweep.config",
    **dict.fromkeys(("run_sweep", "SweepOutcome", "dry_run_table", "Progress", "with_overrides"),
                    "vtsched.core.tools.sweep.coordinator"),
}

__all__ = ["Progress", "SweepOutcome", "dry_run_table", "load_config", "run_sweep", "with_overrides"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'vtsched.core.tools.sweep' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
