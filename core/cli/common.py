"""What every command's argument parsing shares: common flags, the policy arguments, the request
they make (:func:`request_of`), the registry of the command line. What is not argument parsing
(loading a model, planning, running, the request itself) is the application layer's,
:mod:`vtsched.core.app`."""

from __future__ import annotations

import argparse
from typing import Any

from vtsched.core.app import DEFAULT_BUDGET, Request

__all__ = ["DEFAULT_BUDGET", "add_common", "add_policy_args", "key_value", "registry_for", "request_of"]


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
    from vtsched.core.app import registry as build

    return build(no_plugins=args.no_plugins)


def request_of(args: argparse.Namespace, policy: str | None = None) -> Request:
    """The request the arguments of :func:`add_policy_args` make (``--model`` too, where the command has
    it), the budget parsed once here; ``policy`` stands in for ``--policy`` (``run --schedule FILE``:
    ``schedule:FILE``, whose schedule names its own parameters)."""
    return Request.from_words(
        policy or args.policy, params={} if policy else dict(args.param), partitioner=args.partitioner,
        partitioner_params=dict(args.partitioner_param), budget=args.budget, model=getattr(args, "model", None))
