"""The ``vtsched`` command line: one module per command, each with ``add_parser`` and ``main``.

User errors print one line (``vtsched: error: ...``) and exit 2; ``--traceback`` shows the
Python traceback instead, for bug reports.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from vtsched.core.errors import VtschedError

__all__ = ["main", "build_parser", "COMMANDS"]

# command name -> module under vtsched.core.cli
COMMANDS = {
    "run": "run", "explain": "explain", "list": "list", "bench": "bench", "search-k": "search_k",
    "eval": "eval", "train-demo": "train_demo",
    "sweep": "sweep",
}


def _module(command: str):  # type: ignore[no-untyped-def]
    return importlib.import_module(f"vtsched.core.cli.{COMMANDS[command]}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vtsched", description="Vision-token scheduling for multimodal LLMs.")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        _module(command).add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(_module(args.command).main(args))
    except VtschedError as exc:
        if args.traceback:
            raise
        print(f"vtsched: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vtsched: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
