"""``search``: any layered policy with its layer chosen by drop-layer search (after VTW).

Before planning, the scheduler calls :meth:`Search.calibrate`: the wrapped policy (``base``) runs
at every K on the calibration set (``calibration``, a JSONL file; empty means the batch being
answered), and the first K whose mean next-token KL divergence to ``full`` is at most
``threshold`` is used. With a calibration file the choice is computed once per scheduler.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from vtsched.core.adapters.base import ModelGeometry
from vtsched.core.budget import Budget
from vtsched.core.errors import ScheduleError, VtschedError
from vtsched.core.policy import DEFAULT_GROUPS, Policy
from vtsched.core.schedule import Schedule


@dataclass(frozen=True)
class Search(Policy):
    """A layered policy (default parvts) whose layer is the smallest K with KL to full under a threshold."""

    name: ClassVar[str] = "search"
    base: str = "parvts"
    threshold: float = 0.003
    layer_param: str = "drop_layer"
    calibration: str = ""

    def calibrate(self, scheduler: Any, batch: Any, partitioner: Any, budget: Budget | None) -> Policy:
        from vtsched.core.search import load_calibration, search_drop_layer

        if self.calibration:
            batch = scheduler.prepare(*load_calibration(self.calibration))
        result = search_drop_layer(
            scheduler, batch, self.base, budgets=[str(budget)] if budget is not None else ["0.111"],
            threshold=self.threshold, layer_param=self.layer_param,
            partitioner=partitioner.name if partitioner is not None else None, progress=False,
        )
        if result.chosen is None:
            best = min(result.curve, key=lambda r: r["kl"])
            raise VtschedError(f"search: no {self.layer_param} of {self.base} reaches KL <= {self.threshold:g} "
                               f"(lowest {best['kl']:.4g} at {best['layer']}); raise the threshold")
        return scheduler.make_policy(self.base, {self.layer_param: result.chosen["layer"]})

    def schedule(
        self, geometry: ModelGeometry, groups: tuple[str, ...] = DEFAULT_GROUPS, budget: Budget | None = None
    ) -> Schedule:
        raise ScheduleError("the search policy needs a model to calibrate on: run it through a Scheduler")
