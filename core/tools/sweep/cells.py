"""What a cell is: its resolved configuration, the model's fingerprint, the hash of both, its label.

A cell's hash is the SHA-256 of the canonical JSON of its fully resolved configuration (every
policy and partitioner parameter, defaults included), the vtsched version and the model's
fingerprint (its config and the headers of its weight files), so a changed checkpoint or a new
vtsched never reuses an old row, and the same cell written in two configs is one cell. The planner
(:mod:`.plan`) and the cells a plugin's evaluator scores (:mod:`.evaluated`) both build cells so.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vtsched.core.app import Request, parse_budget
from vtsched.core.budget import Budget
from vtsched.core.errors import InputError, VtschedError
from vtsched.core.tools.sweep.config import DEMO_MODEL

__all__ = [
    "LAYER_PARAMS",
    "Cell",
    "as_budget_text",
    "cell_hash",
    "cell_label",
    "cell_request",
    "layer_param",
    "model_fingerprint",
    "model_path",
    "read_budget",
]

LAYER_PARAMS = ("drop_layer", "switch_layer", "insert_layer", "layer")  # what "K" is, per policy


@dataclass(frozen=True)
class Cell:
    """One run of the evaluation. ``spec`` is the fully resolved configuration that is hashed (a cell
    a plugin's evaluator scores also keeps, unhashed, the parameters the config wrote: :mod:`.evaluated`)."""

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


def cell_label(policy: str, params: Mapping[str, Any], written: set[str], partitioner: str | None,
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


def read_budget(value: Any) -> tuple[Budget | None, str | None, str | None]:
    """A config's budget, read once: the budget, its text as ``Budget`` prints it (``7``, ``0.111``; the
    cell's hash and label use it), and the budget's own one-line error when it does not parse (the
    text is then as written, and the cell is refused with that error). ``None``: no budget."""
    if value is None:
        return None, None, None
    try:
        budget = parse_budget(value)
    except VtschedError as exc:
        return None, str(value), str(exc)
    return budget, str(budget), None


def as_budget_text(value: Any) -> str:
    """The budget as ``Budget`` prints it (``7``, ``0.111``), or as written when it does not parse
    (the planner then refuses the cell with the budget's own error)."""
    return read_budget(value)[1] or str(value)


def _thaw(params: Mapping[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in params.items()}


def cell_request(spec: Mapping[str, Any]) -> Request:
    """The request a cell's resolved configuration (read back from JSON: lists are tuples again) makes:
    the sweep's edge, where a cell's budget text is read."""
    return Request.from_words(str(spec["policy"]), params=_thaw(spec["params"]), partitioner=spec["partitioner"],
                              partitioner_params=_thaw(spec["partitioner_params"] or {}), budget=spec["budget"],
                              model=spec.get("model"))
