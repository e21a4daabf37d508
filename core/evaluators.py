"""Evaluators: kinds of dataset a plugin scores inside ``vtsched eval``.

``vtsched eval`` scores answers (question answering) itself. A plugin whose model answers with
something else (LISA answers with masks, scored by gIoU and cIoU) registers an :class:`Evaluator`
through the ``vtsched_register_evaluators`` hook, and ``vtsched eval --data ...`` hands it the
datasets it serves: those written ``NAME:SPEC`` (``segmentation:synthetic:1:20``), and those its
:meth:`Evaluator.accepts` claims by their layout (a JSONL of image and mask paths). The command
line keeps one shape for every kind of data: the same ``--model``, ``--policies``,
``--partitioners``, ``--budgets``, ``--limit`` and ``--out`` (``results.json`` and
``results.csv``), the same one-line errors. Core never imports the plugin's model code.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

__all__ = ["Evaluator", "EvalRequest", "EvalOutcome", "RESERVED_DATA_PREFIXES", "evaluator_for"]

# --data prefixes core reads itself; no evaluator may be named like them
RESERVED_DATA_PREFIXES = ("synthetic", "hf")


@dataclass(frozen=True)
class EvalRequest:
    """What ``vtsched eval`` asks an evaluator to run.

    ``data``: the dataset spec with the ``NAME:`` prefix removed; ``model``: ``--model`` (``None``:
    the evaluator's own default model); ``policies``: ``POLICY[:NAME=VALUE,...]`` specs besides
    ``full``, which always runs first; ``partitioners``: ``PARTITIONER[:NAME=VALUE,...]`` specs
    crossed with every policy that needs one (``None``: each policy's own); ``budgets``: budget
    texts; ``registry``: the command's registry (plugins as ``--no-plugins`` says).
    """

    data: str
    model: str | None
    policies: Sequence[str]
    budgets: Sequence[str]
    partitioners: Sequence[str] | None = None
    limit: int | None = None
    device: str = "cpu"
    batch_size: int = 16
    progress: bool = True
    registry: Any = None


@dataclass
class EvalOutcome:
    """What an evaluator returns: ``rows`` (one dict per case and split; ``results.csv`` and
    ``results.json``; ``case`` names a row's case as ``vtsched eval`` does, ``full`` first, which is
    how a sweep finds its cell's row), ``table`` (printed) and ``records`` (per-item results,
    ``results.json``)."""

    rows: list[dict[str, Any]]
    table: str
    records: list[dict[str, Any]] = field(default_factory=list)
    model: str = ""


class Evaluator(ABC):
    """A kind of dataset ``vtsched eval`` hands to a plugin.

    Class attributes: ``name`` (``--data NAME:SPEC`` picks it; not ``synthetic`` or ``hf``, no
    ``:``), ``help`` (one line for ``vtsched list``) and ``score`` (the column of its rows, a
    fraction, that a sweep's table and plots show where question answering shows accuracy:
    ``giou`` for segmentation; ``None``: they show none).
    """

    name: ClassVar[str]
    help: ClassVar[str] = ""
    score: ClassVar[str | None] = None

    @classmethod
    def accepts(cls, data: str) -> bool:
        """Whether this evaluator serves ``data`` written without its ``NAME:`` prefix (by the
        dataset's layout: cheap checks, no model loaded). Default: only with the prefix."""
        return False

    @classmethod
    @abstractmethod
    def evaluate(cls, request: EvalRequest) -> EvalOutcome:
        """Score every item under ``full`` and every requested case. Raise
        :class:`~vtsched.core.errors.VtschedError` for a user error (one line, exit 2)."""


def evaluator_for(registry: Any, data: str) -> tuple[type[Evaluator], str] | None:
    """The evaluator serving ``data`` and the spec it gets (prefix removed), or ``None`` (core's
    question answering reads it). ``NAME:SPEC`` picks evaluator ``NAME``; otherwise the evaluators
    whose ``accepts(data)`` is true, in name order (two claiming the same data is refused)."""
    from vtsched.core.errors import InputError

    entries = registry.entries("evaluator")
    head, sep, rest = data.partition(":")
    if sep:
        for component in entries:
            if head in (component.name, *component.aliases):
                return component.obj, rest
    claiming = [c for c in entries if c.obj.accepts(data)]
    if len(claiming) > 1:
        names = ", ".join(f"{c.name} [{c.plugin}]" for c in claiming)
        raise InputError(f"--data {data}: several evaluators claim it ({names}); write NAME:{data}")
    return (claiming[0].obj, data) if claiming else None
