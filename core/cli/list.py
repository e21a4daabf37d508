"""``vtsched list``: every component by kind, with the plugin that provided it; each policy with what
its budget counts (``budget: input | after_drop | average_per_layer | none``, ``Policy.budget_counts``)."""

from __future__ import annotations

import argparse

from vtsched.core.cli.common import add_common, registry_for

TITLES = {"policy": "policies", "partitioner": "partitioners", "fusion_rule": "fusion rules",
          "adapter": "model adapters", "command": "commands from plugins",
          "evaluator": "evaluators (dataset kinds for vtsched eval)",
          "event": "schedule events (what the engine can do between layers)",
          "ranker": "rankers (what keep_top events rank visual tokens by)"}


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    lister = sub.add_parser("list", help="list policies, partitioners, fusion rules, adapters, commands, evaluators, "
                                         "events, rankers and plugins")
    add_common(lister)


def main(args: argparse.Namespace) -> int:
    from vtsched.core.policy import budget_counts_of
    from vtsched.core.registry import KINDS

    registry = registry_for(args)
    for kind in KINDS:
        print(f"{TITLES[kind]}:")
        for c in registry.entries(kind):
            alias = f" (alias {', '.join(c.aliases)})" if c.aliases else ""
            counts = f"  budget: {budget_counts_of(c.obj, registry)}" if kind == "policy" else ""
            print(f"  {c.name:<20s} {c.summary}{alias}{counts}  [{c.plugin}]")
    print("plugins:")
    for plugin, hooks in registry.plugins.items():
        print(f"  {plugin:<28s} {', '.join(hooks)}")
    return 0
