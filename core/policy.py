"""Policies and partitioners: the two small, declarative kinds of component.

A policy is a frozen dataclass whose fields are its parameters. It turns the partition's
group names and the model's geometry into a :class:`Schedule`, and never touches a tensor.
A partitioner turns a prepared batch and a budget into a :class:`Partition`.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar, Literal, get_args, get_origin

from vtsched.core.geometry import ModelGeometry
from vtsched.core.budget import Budget
from vtsched.core.errors import ScheduleError, VtschedError
from vtsched.core.partition import NON_SUBJECT, SUBJECT, Partition
from vtsched.core.schedule import Schedule
from vtsched.core.tokens import PromptBatch

__all__ = ["Policy", "Partitioner", "CalibratedPolicy", "Calibration", "DEFAULT_GROUPS", "coerce_params",
           "BUDGET_COUNTS", "budget_counts_of"]

DEFAULT_GROUPS = (SUBJECT, NON_SUBJECT)

#: What a policy's budget counts (``Policy.budget_counts``), in words. The same number means a
#: different cost under each: 64 ``input`` tokens run through every layer, 64 ``after_drop``
#: tokens only through the layers after the drop layer, 64 ``average_per_layer`` is an average.
BUDGET_COUNTS: dict[str, str] = {
    "input": "the subject group chosen before the LLM (the visual tokens that stay to the last layer)",
    "after_drop": "the visual tokens kept after the drop layer K (all of them enter the LLM)",
    "average_per_layer": "the visual tokens per layer, averaged over all layers",
    "none": "nothing: the policy takes no budget",
}


def budget_counts_of(policy: Any, registry: Any = None) -> str:
    """What ``policy``'s budget counts (a key of :data:`BUDGET_COUNTS`): its ``budget_counts``; a
    calibrated policy's is its base policy's when ``registry`` can name it; ``none`` for a policy a
    budget does not change."""
    if not getattr(policy, "uses_budget", True):
        return "none"
    if isinstance(policy, CalibratedPolicy) and registry is not None:
        try:
            return str(getattr(registry.policy(policy.calibration_request().base), "budget_counts", "input"))
        except VtschedError:  # an unknown base is the planner's error to report, not this label's
            pass
    return str(getattr(policy, "budget_counts", "input"))


class _Parametrised:
    name: ClassVar[str]

    @classmethod
    def from_params(cls, params: Mapping[str, Any] | None = None) -> Any:
        """Build from ``{field: value}``; strings (from the CLI) are converted to the field's type."""
        return cls(**coerce_params(cls, params or {}))

    def params(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    def describe(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self.params().items())
        return f"{self.name}({args})"


class Policy(_Parametrised, ABC):
    """A scheduling policy.

    Class attributes:
        name: registry name; ``aliases``: other names.
        needs_partition: ``False`` for policies that see every visual token as one group (``full``,
            and in-LLM pruning that ranks tokens itself, like ``fastv``).
        uses_budget: ``False`` for policies a budget does not change (``full``, ``vtw``).
        budget_required: ``False`` for a budget-using policy that also runs without one (``pdrop``
            then keeps its ``ratio``); the planner refuses a missing budget otherwise.
        default_partitioner: used when the user names none.
        budget_counts: what the budget counts, one of :data:`BUDGET_COUNTS`: ``input`` (the subject
            group chosen before the LLM: ``prune``, ``parvts``, the partitioner-based policies),
            ``after_drop`` (tokens kept after the drop layer: ``fastv``, ``dart``),
            ``average_per_layer`` (``pdrop``) or ``none`` (``full``, ``vtw``). ``vtsched list``,
            ``explain`` and every results row of ``eval``, ``run --json`` and ``bench`` show it
            beside the visual tokens that entered the LLM and the average per layer.

    ``schedule(geometry, groups, budget)`` receives the budget for policies that act on it inside
    the LLM; partition-based policies get it already applied through the partition.
    """

    aliases: ClassVar[tuple[str, ...]] = ()
    needs_partition: ClassVar[bool] = True
    uses_budget: ClassVar[bool] = True
    budget_required: ClassVar[bool] = True
    default_partitioner: ClassVar[str] = "cls"
    budget_counts: ClassVar[str] = "input"

    @abstractmethod
    def schedule(
        self, geometry: ModelGeometry, groups: tuple[str, ...] = DEFAULT_GROUPS, budget: Budget | None = None
    ) -> Schedule:
        """The schedule for a partition with ``groups`` (``groups[0]`` is the subject)."""

    def check_layer(self, param: str, value: int, geometry: ModelGeometry, minimum: int = 0) -> int:
        """``value`` if it is a layer boundary of the model (``minimum..num_layers``), else a clear error."""
        if not minimum <= value <= geometry.num_layers:
            raise ScheduleError(f"{self.name}: {param} {value} outside {minimum}..{geometry.num_layers}")
        return value


@dataclass(frozen=True)
class Calibration:
    """What a calibrated policy asks the planner to search before it can run.

    The planner runs ``base`` (built with ``params``) at every value of ``layer_param`` on the
    calibration data (``data``: a JSONL file; empty means the batch being answered) and keeps the
    first value whose mean next-token KL to ``full`` is at most ``threshold``.
    """

    base: str
    layer_param: str = "drop_layer"
    threshold: float = 0.003
    data: str = ""
    params: tuple[tuple[str, Any], ...] = ()


class CalibratedPolicy(Policy):
    """A policy whose parameters are chosen on data (drop-layer search) before it runs.

    It never calls the scheduler: it states a :class:`Calibration` (``calibration_request()``), and the scheduler's planning
    step (:func:`vtsched.core.calibration.calibrate`) returns the chosen policy and its fixed
    schedule. ``schedule()`` of a calibrated policy itself is refused.
    """

    @abstractmethod
    def calibration_request(self) -> Calibration:
        """The search to run before planning."""

    def schedule(
        self, geometry: ModelGeometry, groups: tuple[str, ...] = DEFAULT_GROUPS, budget: Budget | None = None
    ) -> Schedule:
        raise ScheduleError(f"{self.name}: needs a model to calibrate on; run it through a Scheduler")


class Partitioner(_Parametrised, ABC):
    """Splits each sample's visual tokens into a subject group of the budget's size and the rest."""

    aliases: ClassVar[tuple[str, ...]] = ()

    @abstractmethod
    def partition(self, batch: PromptBatch, budget: Budget) -> Partition: ...

    def group_names(self) -> tuple[str, ...]:
        """The groups its partitions name (subject first), known before any image is seen, so a
        schedule can be explained and checked without weights. Override for more than two groups."""
        return DEFAULT_GROUPS

    def selection_flops(self, num_visual: int, keep: int, geometry: ModelGeometry) -> float:
        """FLOPs (2 per multiply-add, matmuls only) this partitioner computes to choose ``keep`` of an
        image's ``num_visual`` tokens, beyond what every case shares (the vision tower, its attention
        scores): the similarity, distance or kernel matrices of diversity methods. Every results row adds
        it to the prefill's FLOPs (``prefill_gflops``), so a method's scoring is not free. Default 0: a
        partitioner that ranks scores it is handed (``cls``, ``random``, ``downsample``'s pooling) adds
        nothing material. Counted for one selection over the image; a per-tile selection computes less."""
        return 0.0


def coerce_params(cls: Any, params: Mapping[str, Any]) -> dict[str, Any]:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    out: dict[str, Any] = {}
    for key, value in params.items():
        key = key.replace("-", "_")
        if key not in fields:
            known = ", ".join(fields) or "none"
            raise VtschedError(f"{cls.name} has no parameter {key!r}; parameters: {known}")
        out[key] = _convert(cls.name, key, value, hints[key])
    return out


def _convert(owner: str, key: str, value: Any, hint: Any) -> Any:
    if not isinstance(value, str):
        return value
    options = get_args(hint) if get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    for option in options:
        if get_origin(option) is tuple:  # "8/16/24" or "8,16,24"
            item = get_args(option)[0]
            try:
                return tuple(item(v) for v in re.split(r"[/,;]", value) if v.strip())
            except ValueError:
                continue
        if get_origin(option) is Literal:
            if value in get_args(option):
                return value
            continue
        try:
            if option is bool:
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                continue
            if option in (int, float, str):
                return option(value)
            if option is type(None) and value.lower() == "none":
                return None
        except ValueError:
            continue
    raise VtschedError(f"{owner}: parameter {key}={value!r} is not {_expected(hint)}")


def _expected(hint: Any) -> str:
    """What a value of ``hint`` looks like, in words: ``a whole number``, ``one of 'a', 'b'``, ..."""
    options = get_args(hint) if get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    words = []
    for option in options:
        if get_origin(option) is Literal:
            words.append("one of " + ", ".join(repr(v) for v in get_args(option)))
        elif get_origin(option) is tuple:
            words.append(f"a list of {_expected(get_args(option)[0]).removeprefix('a ')}s like 8/16/24")
        elif option is type(None):
            words.append("none")
        else:
            words.append({int: "a whole number", float: "a number", bool: "true or false", str: "text"}.get(
                option, f"a {getattr(option, '__name__', option)}"))
    return " or ".join(words)
