"""The ``vtsched`` command line: one module per command, each with ``add_parser`` and ``main``.

Plugins add commands through the ``vtsched_register_commands`` hook
(:class:`~vtsched.core.commands.Command`); they are parsed and run like the built-in ones.

User errors print one line (``vtsched: error: ...``) and exit 2, whether the parser finds them (a
number out of range) or the request check (:mod:`vtsched.core.cli.checks`, run on every command line
before its command: devices, output locations) or the command itself; ``--traceback`` shows the
Python traceback instead, for bug reports.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import Any

from vtsched.core.errors import PluginError, VtschedError

__all__ = ["COMMANDS", "build_parser", "main"]

# command name -> module under vtsched.core.cli
COMMANDS = {
    "run": "run", "explain": "explain", "list": "list", "bench": "bench", "search-k": "search_k",
    "eval": "eval", "train-demo": "train_demo",
    "sweep": "sweep", "show": "show", "report": "report",
}


def _module(command: str):  # type: ignore[no-untyped-def]
    return importlib.import_module(f"vtsched.core.cli.{COMMANDS[command]}")


def _plugin_commands(registry: Any) -> dict[str, Any]:
    """Commands registered by plugins (none with ``--no-plugins``); a clash with a built-in is one line."""
    commands = {c.name: c.obj for c in registry.entries("command")}
    for name in commands:
        if name in COMMANDS:
            raise PluginError(f"plugin {registry.plugin_of('command', name)!r} registered command {name!r}, "
                              "which is a built-in vtsched command")
    return commands


class OneLineParser(argparse.ArgumentParser):
    """A parser whose errors are one line and exit 2, like every other vtsched error."""

    def error(self, message: str) -> Any:  # type: ignore[override]
        self.exit(2, f"vtsched: error: {self.prog}: {message} (see {self.prog} --help)\n")


def build_parser(plugin_commands: dict[str, Any] | None = None) -> argparse.ArgumentParser:
    from vtsched.core.cli.common import add_common

    parser = OneLineParser(prog="vtsched", description="Vision-token scheduling for multimodal LLMs.")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        _module(command).add_parser(sub)
    for name, command_cls in (plugin_commands or {}).items():
        command_parser = sub.add_parser(name, help=command_cls.help)
        command_cls.add_arguments(command_parser)
        add_common(command_parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = [*(sys.argv[1:] if argv is None else argv)]  # (``list`` here is the cli.list module)
    from vtsched.core.app import registry as build_registry

    try:  # built once per command: the parser needs plugins' commands, the command its components
        registry = build_registry(no_plugins="--no-plugins" in argv)
        plugin_commands = _plugin_commands(registry)
    except VtschedError as exc:
        print(f"vtsched: error: {exc}", file=sys.stderr)
        return 2
    args = build_parser(plugin_commands).parse_args(argv)
    args.registry = registry
    try:
        from vtsched.core.cli.checks import check_request

        check_request(args)
        if args.command in plugin_commands:
            return int(plugin_commands[args.command].run(args))
        return int(_module(args.command).main(args))
    except VtschedError as exc:
        if args.traceback:
            raise
        print(f"vtsched: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vtsched: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `vtsched explain | head`: the reader left; nothing is wrong
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
