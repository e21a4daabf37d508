"""``search``: any layered policy with its layer chosen by drop-layer search (after VTW).

The policy only states the search (:class:`~vtsched.core.policy.Calibration`): the wrapped
policy (``base``), its layer parameter, the KL threshold and the calibration data (``calibration``,
a JSONL file; empty means the batch being answered). The scheduler's planning step runs the
search and plans the chosen policy's fixed schedule; with a calibration file the choice is
computed once per scheduler.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from vtsched.core.policy import CalibratedPolicy, Calibration


@dataclass(frozen=True)
class Search(CalibratedPolicy):
    """A layered policy (default parvts) whose layer is the smallest K with KL to full under a threshold."""

    name: ClassVar[str] = "search"
    budget_counts: ClassVar[str] = "input"  # the base policy's, when a registry can name it (budget_counts_of)
    base: str = "parvts"
    threshold: float = 0.003
    layer_param: str = "drop_layer"
    calibration: str = ""

    def calibration_request(self) -> Calibration:
        return Calibration(self.base, self.layer_param, self.threshold, self.calibration)
