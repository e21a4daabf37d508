"""``vtw``: Visual Tokens Withdrawal (Lin et al., 2024). Every visual token leaves after layer K.

Reproduced (lzhxmu/VTW): all visual tokens for layers < K, none from K on (the text tokens keep
what they absorbed, and their position ids: VTW cuts the image span out of ``position_ids``), KV
cache of layers >= K without visual entries. Checked against a reference written from that
algorithm (``tests/policies/test_published_references.py``).

Differs: VTW picks K per model by a KL-divergence search on calibration data (``vtsched search-k``
does that); the default here is half the depth (16 of LLaVA-1.5-7B's 32 layers, close to the K the
VTW paper reports). A budget does not apply. VTW's code cuts a hard-coded span (35..35+256 in its
LISA port); here the image's tokens are found by their role."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from vtsched.core.geometry import ModelGeometry
from vtsched.core.budget import Budget
from vtsched.core.policy import DEFAULT_GROUPS, Policy
from vtsched.core.events import RemoveGroup
from vtsched.core.schedule import Schedule, Stream


@dataclass(frozen=True)
class VTW(Policy):
    """All visual tokens until layer K, then none (default K: half the depth)."""

    name: ClassVar[str] = "vtw"
    budget_counts: ClassVar[str] = "none"
    needs_partition: ClassVar[bool] = False
    uses_budget: ClassVar[bool] = False
    drop_layer: int | None = None

    def schedule(
        self, geometry: ModelGeometry, groups: tuple[str, ...] = DEFAULT_GROUPS, budget: Budget | None = None
    ) -> Schedule:
        k = self.check_layer("drop_layer", geometry.num_layers // 2 if self.drop_layer is None else self.drop_layer,
                             geometry)
        events = tuple(RemoveGroup(k, "main", g) for g in groups)
        return Schedule(geometry.num_layers, groups, (Stream("main", groups),), "main", events,
                        meta=(("policy", f"vtw(drop_layer={k})"),))
