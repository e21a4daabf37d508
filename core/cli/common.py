"""What every command shares: arguments, the registry, reading configs, loading a model, planning."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any

from vtsched.core.budget import Budget
from vtsched.core.io import read_config
from vtsched.core.schedule import Schedule

__all__ = [
    "DEFAULT_BUDGET", "key_value", "add_common", "add_policy_args", "registry_for", "read_config", "load_scheduler",
    "with_run_meta", "config_and_source", "planner_for_model", "planner_for_config", "model_config",
    "build_policy_routing_params",
]

DEFAULT_BUDGET = "0.111"  # 64 of LLaVA-1.5's 576 tokens: 88.9% pruned


def key_value(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    return key.strip(), value.strip()


def add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-plugins", action="store_true", help="do not autoload installed plugins")
    parser.add_argument("--traceback", action="store_true", help="show Python tracebacks on errors")


def add_policy_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--policy", default="parvts", help="scheduling policy (see `vtsched list`)")
    parser.add_argument("--partitioner", default=None, help="partitioner (default: the policy's, usually cls)")
    parser.add_argument("--budget", default=None,
                        help="subject tokens per image: a count (64), a ratio (0.111) or a percentage (11.1%%); "
                        f"default {DEFAULT_BUDGET} (a schedule file's own budget with --schedule)")
    parser.add_argument("-p", "--param", action="append", type=key_value, default=[], metavar="NAME=VALUE",
                        help="policy parameter, e.g. -p drop_layer=2 -p fusion=fixed -p alpha=0.7")
    parser.add_argument("--partitioner-param", action="append", type=key_value, default=[], metavar="NAME=VALUE")


def registry_for(args: argparse.Namespace) -> Any:
    """The registry ``main`` built for this command line (plugins as ``--no-plugins`` says)."""
    registry = getattr(args, "registry", None)
    if registry is not None:
        return registry
    from vtsched.core.registry import build_registry, make_plugin_manager

    return build_registry(make_plugin_manager(load_entrypoints=False if args.no_plugins else None))


def config_and_source(args: argparse.Namespace, shape: str) -> tuple[Any, str]:
    """The config of ``--model`` if given, else of the named random shape; and what to call it.

    ``demo`` names the shipped demo model where it is installed (what ``run`` answers with when no
    ``--model`` is given), so a schedule saved from it runs there; the random ``demo`` shape otherwise.
    """
    from vtsched.core.demo import demo_model_path, llava_config

    if getattr(args, "model", None):
        return read_config(args.model), args.model
    shipped = demo_model_path() if shape == "demo" else None
    if shipped is not None:
        return read_config(str(shipped)), "the shipped demo model"
    return llava_config(shape), f"shape {shape}"


def model_config(model: str | None) -> Any:
    """The config of ``--model``, else of the shipped demo model (else the random demo shape): no weights."""
    from vtsched.core.demo import demo_model_path, llava_config

    path = model or demo_model_path()
    return llava_config("demo") if path is None else read_config(str(path))


def planner_for_config(config: Any, registry: Any) -> Any:
    """A planner for a model of this config (its adapter's geometry and score partitioner)."""
    from vtsched.core.planner import Planner

    adapter = registry.adapter_for_config(config)
    return Planner(registry, adapter.geometry_from_config(config), adapter.default_partitioner)


def planner_for_model(model: str | None, registry: Any) -> Any:
    """A planner for ``--model`` (else the shipped demo model) from its config alone: no weights load."""
    return planner_for_config(model_config(model), registry)


def load_scheduler(model: str | None, registry: Any, device: str = "cpu", **kwargs: Any) -> Any:
    """The checkpoint asked for; else the shipped demo model; else a random one (said plainly)."""
    from vtsched.core.demo import demo_model_path
    from vtsched.core.scheduler import Scheduler

    if model is None:
        shipped = demo_model_path()
        if shipped is None:
            print("note: no --model given and no demo model installed; using a LLaVA with random weights: "
                  "its answers are meaningless.", file=sys.stderr)
            return Scheduler.random("demo", device=device, registry=registry, **kwargs)
        model = str(shipped)
    return Scheduler.from_pretrained(str(model), device=device, registry=registry, **kwargs)


def build_policy_routing_params(planner: Any, policy_name: str, partitioner_name: str | None,
                                params: dict[str, str], partitioner_params: dict[str, str]) -> tuple[Any, dict[str, str]]:
    """The policy from ``-p`` parameters, and the partitioner's parameters.

    ``-p NAME=VALUE`` goes to the policy when the policy has that parameter; otherwise to the
    partitioner the run uses if it has it (so ``--partitioner sam -p checkpoint=PATH`` works); a
    name neither has is refused by the policy's usual one-line error. ``--partitioner-param``
    always goes to the partitioner (use it when both have a parameter of that name).
    """
    import dataclasses

    if policy_name.startswith("schedule:"):
        policy_fields: set[str] = set()
    else:
        policy_fields = {f.name for f in dataclasses.fields(planner.registry.policy(policy_name))}
    own = {k: v for k, v in params.items() if k.replace("-", "_") in policy_fields}
    rest = {k: v for k, v in params.items() if k not in own}
    policy = planner.policy(policy_name, own)
    name = planner.default_partitioner(policy, partitioner_name)
    routed = dict(partitioner_params)
    if rest:
        fields = ({f.name for f in dataclasses.fields(planner.registry.partitioner(name))}
                  if name is not None else set())
        unknown = {k: v for k, v in rest.items() if k.replace("-", "_") not in fields}
        if unknown:
            planner.policy(policy_name, {**own, **unknown})  # raises "<policy> has no parameter ..."
        routed = {**rest, **routed}
    return policy, routed


def with_run_meta(schedule: Schedule, budget: Budget | None, partitioner: str | None) -> Schedule:
    """The schedule with what else a run needs to reproduce it (budget, partitioner) in its meta."""
    meta = dict(schedule.meta)
    if budget is not None:
        meta["budget"] = str(budget)
    if partitioner is not None:
        meta["partitioner"] = partitioner
    return dataclasses.replace(schedule, meta=tuple(sorted(meta.items())))
