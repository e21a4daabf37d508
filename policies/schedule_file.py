"""``schedule-file``: run a saved schedule exactly as written (``run --schedule FILE``, ``schedule:PATH``).

Saved schedules come from ``vtsched explain --json`` and ``vtsched search-k``; their meta
records the budget and partitioner the run needs, so a saved schedule reproduces a run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from vtsched.core.budget import Budget
from vtsched.core.errors import ScheduleError
from vtsched.core.geometry import ModelGeometry
from vtsched.core.policy import DEFAULT_GROUPS, Policy
from vtsched.core.schedule import Schedule

__all__ = ["FixedSchedule"]


@dataclass(frozen=True)
class FixedSchedule(Policy):
    """Runs a saved schedule exactly as written (``run --schedule FILE`` or ``--policy schedule:FILE``).

    Parameters: ``path`` (a schedule JSON) or ``fixed`` (a :class:`Schedule` in memory, as
    calibration returns it). ``partitioner_name`` defaults to the one the schedule's meta names.
    """

    name: ClassVar[str] = "schedule-file"
    path: str = ""
    fixed: Schedule | None = None
    partitioner_name: str = ""

    def __post_init__(self) -> None:
        if self.fixed is None:
            if not self.path:
                raise ScheduleError("schedule-file needs a schedule: -p path=FILE (or --schedule FILE)")
            from vtsched.core.io import read_text

            object.__setattr__(self, "fixed", Schedule.from_json(read_text(self.path, "schedule")))
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
