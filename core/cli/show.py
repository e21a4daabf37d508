"""``vtsched show``: what a schedule does to an image's tokens, as figures (and the JSON behind them).

Takes the options of ``vtsched run`` (the same request, checked the same way before any weights
load), answers the question while recording which tokens ran where, and writes one PNG per figure
and ``sheet.png`` with all of them to ``--out`` (see :mod:`vtsched.core.tools.show`).
"""

from __future__ import annotations

import argparse

from vtsched.core.cli.checks import add_output


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from vtsched.core.cli import run

    scratch = argparse.ArgumentParser(add_help=False).add_subparsers()
    run.add_parser(scratch)  # the options of `run`, kept in step with it
    show = sub.add_parser(
        "show", parents=[scratch.choices["run"]], conflict_handler="resolve",
        help="draw what a schedule does: the partition, kept tokens per layer and stream, token flow, fusion "
             "weights, attention",
    )
    add_output(show, "--json", "file", default=None, metavar="FILE", help="also write the data behind the figures")
    add_output(show, "--out", "folder", default="vtsched-out/show", metavar="DIR",
               help="folder for the PNGs (one per figure, and sheet.png); default vtsched-out/show")
    show.add_argument("--attention", default=None, metavar="LAYERS",
                      help="also draw where the last prompt token looks at these layers, e.g. 0,2,5-7")


def main(args: argparse.Namespace) -> int:
    from vtsched.core.cli.run import prepare
    from vtsched.core.tools.show import check_attention_layers, parse_layers, show

    layers: list[int] = []

    def check_layers(planner) -> None:  # before any weights load, like the rest of the request
        layers.extend(check_attention_layers(parse_layers(args.attention) if args.attention else (),
                                             planner.geometry.num_layers))

    request = prepare(args, check_layers)
    result = show(request.scheduler, request.image, args.question, request.policy, partitioner=request.partitioner,
                  budget=request.budget, attention_layers=tuple(layers), generation=request.generation)
    print(result.data["answer"])
    for path in result.save(args.out, json_path=args.json):
        print(f"wrote {path}")
    return 0
