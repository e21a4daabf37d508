"""``fastv``: FastV (Chen et al., 2024). After layer K, keep the R visual tokens that the last
prompt token attended to most in layer K-1.

Reproduced (pkunlp-icler/FastV, its ``modeling_llama.py``): the ranking signal (head-averaged
attention of the last prompt token at layer K-1 over the visual tokens; ``KeepTop`` ranker
``last_token_attention``), the drop point (default K = 2), kept tokens keeping their position ids
(FastV sets ``position_ids = keep_indexs``). The attention row is recomputed from layer K-1's input
and the keys that layer attended over: no layer runs twice, no KV entry is duplicated, and the
model stays on its attention backend (FastV switches layer K-1 to eager attention to read it).
Checked against a reference written from that code (``tests/policies/test_published_references.py``).

Differs: FastV states R as a ratio of dropped tokens (50% at K=2, kept ``round(N * (1 - r))``); here
the budget is the number (or share) of kept tokens, like every other policy."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from vtsched.core.geometry import ModelGeometry
from vtsched.core.budget import Budget
from vtsched.core.errors import ScheduleError
from vtsched.core.policy import DEFAULT_GROUPS, Policy
from vtsched.core.events import KeepTop
from vtsched.core.schedule import Schedule, Stream


def keep_amount(budget: Budget | None, policy: str) -> int | float:
    if budget is None:
        raise ScheduleError(f"{policy} needs a budget: the visual tokens it keeps")
    if budget.count is not None:
        return budget.count
    return float(budget.ratio) if budget.ratio else 0  # a ratio of 0 keeps nothing


@dataclass(frozen=True)
class FastV(Policy):
    """All visual tokens until layer K, then the top R by the last prompt token's attention at K-1."""

    name: ClassVar[str] = "fastv"
    budget_counts: ClassVar[str] = "after_drop"
    needs_partition: ClassVar[bool] = False
    ranker: ClassVar[str] = "last_token_attention"  # what ranks the tokens at K (a subclass may change only this)
    drop_layer: int = 2

    def schedule(
        self, geometry: ModelGeometry, groups: tuple[str, ...] = DEFAULT_GROUPS, budget: Budget | None = None
    ) -> Schedule:
        self.check_layer("drop_layer", self.drop_layer, geometry, minimum=1)
        keep = keep_amount(budget, self.name)
        events = (KeepTop(self.drop_layer, "main", groups[0], keep, self.ranker),)
        return Schedule(geometry.num_layers, groups, (Stream("main", groups),), "main", events,
                        meta=(("policy", self.describe()),))
