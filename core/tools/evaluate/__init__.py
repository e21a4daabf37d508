"""``vtsched eval``: what scheduling does to answers (moved into a package; split by concern next)."""

from vtsched.core.tools.evaluate.run import (
    EvalItem,
    EvalReport,
    Prediction,
    case_label,
    cross_partitioners,
    evaluate,
    hard_references,
    load_items,
    normalise,
    parse_partitioner,
    summarise,
    with_hard_reference,
)

__all__ = [
    "EvalItem",
    "EvalReport",
    "Prediction",
    "case_label",
    "cross_partitioners",
    "evaluate",
    "hard_references",
    "load_items",
    "normalise",
    "parse_partitioner",
    "summarise",
    "with_hard_reference",
]
