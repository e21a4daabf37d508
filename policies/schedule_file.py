"""``schedule-file``: run a saved schedule exactly as written (``run --schedule FILE``, ``schedule:PATH``).

Saved schedules come from ``vtsched explain --json`` and ``vtsched search-k``; their meta
records the budget and partitioner the run needs, so a saved schedule reproduces a run.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from vtsched.core.budget import Budget
from vtsched.core.errors import ScheduleError
from vtsched.core.geometry import ModelGeometry
from vtsched.core.policy import DEFAULT_GROUPS, Policy
from vtsched.core.schedule import Schedule

__all__ = ["FixedSchedule", "read_schedule"]

FORMAT = 1  # the "vtsched_schedule" value Schedule.to_dict writes


def read_schedule(path: str, kinds: Mapping[str, type] | None = None) -> Schedule:
    """The schedule saved in ``path``, or one line saying what is wrong with the file.

    ``kinds``: event classes by kind (the registry's, so a plugin's events load; default: core's)."""
    import json

    from vtsched.core.io import read_text

    text = read_text(path, "schedule")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ScheduleError(f"schedule file {path} is not JSON (line {exc.lineno}: {exc.msg}); "
                            "save a schedule with `vtsched explain --json FILE`") from None
    if not isinstance(data, dict) or "vtsched_schedule" not in data:
        raise ScheduleError(f"schedule file {path} is not a vtsched schedule (no 'vtsched_schedule' key); "
                            "save one with `vtsched explain --json FILE`")
    if data["vtsched_schedule"] != FORMAT:
        raise ScheduleError(f"schedule file {path} has schedule format {data['vtsched_schedule']!r}; this vtsched "
                            f"reads format {FORMAT}: save it again with this vtsched's `explain --json`")
    try:
        return Schedule.from_dict(data, kinds)
    except ScheduleError as exc:
        raise ScheduleError(f"schedule file {path}: {exc}") from None
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        raise ScheduleError(f"schedule file {path}: malformed schedule ({type(exc).__name__}: {exc})") from None


@dataclass(frozen=True)
class FixedSchedule(Policy):
    """Runs a saved schedule exactly as written (``run --schedule FILE`` or ``--policy schedule:FILE``).

    Parameters: ``path`` (a schedule JSON) or ``fixed`` (a :class:`Schedule` in memory, as
    calibration returns it). ``partitioner_name`` defaults to the one the schedule's meta names.
    """

    name: ClassVar[str] = "schedule-file"
    budget_counts: ClassVar[str] = "input"  # the partition's subject group, as the run that saved it
    read: ClassVar[Any] = staticmethod(read_schedule)  # how the planner reads ``path`` with the registry's kinds
    path: str = ""
    fixed: Schedule | None = None
    partitioner_name: str = ""

    def __post_init__(self) -> None:
        if self.fixed is None:
            if not self.path:
                raise ScheduleError("schedule-file needs a schedule: -p path=FILE (or --schedule FILE)")
            object.__setattr__(self, "fixed", read_schedule(self.path))
        if not self.partitioner_name:
            object.__setattr__(self, "partitioner_name", str(self.saved.get("partitioner", "cls")))

    @property
    def saved_schedule(self) -> Schedule:
        assert self.fixed is not None  # __post_init__ guarantees it
        return self.fixed

    @property
    def saved(self) -> dict[str, object]:
        """The schedule's meta: the policy that wrote it, and the budget and partitioner of its run."""
        return dict(self.saved_schedule.meta)

    @property
    def saved_budget(self) -> str | None:
        budget = self.saved.get("budget")
        return None if budget is None else str(budget)

    @property
    def default_partitioner(self) -> str:  # type: ignore[override]
        return self.partitioner_name

    @property
    def needs_partition(self) -> bool:  # type: ignore[override]
        return len(self.saved_schedule.groups) > 1

    @property
    def groups(self) -> tuple[str, ...]:
        return tuple(self.saved_schedule.groups)

    def schedule(
        self, geometry: ModelGeometry, groups: tuple[str, ...] = DEFAULT_GROUPS, budget: Budget | None = None
    ) -> Schedule:
        fixed = self.saved_schedule
        if fixed.num_layers != geometry.num_layers:
            raise ScheduleError(
                f"the schedule file is for {fixed.num_layers} layers, the model has {geometry.num_layers}"
            )
        if tuple(groups) != tuple(fixed.groups):
            raise ScheduleError(f"the schedule file names groups {list(fixed.groups)}, the partition {list(groups)}")
        return fixed

    def params(self) -> dict[str, object]:
        return {"path": self.path, "partitioner_name": self.partitioner_name}

    def describe(self) -> str:
        return f"schedule-file({self.saved.get('policy', 'custom')})"
