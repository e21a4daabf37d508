"""``visionzip``: VisionZip (Yang et al., 2024). Pruned and merged before the LLM.

The budget's R tokens are ``R - c`` *dominant* tokens (highest [CLS] attention) and ``c``
*contextual* tokens (default c = R * 10/64: 54 + 10 for 64, 162 + 30 for 192): the remaining
tokens are merged into ``c`` targets spread evenly over them, each remaining token joining the
target whose key is most similar (cosine of the vision layer's head-averaged keys); a contextual
token is the mean of its target and the tokens that joined it. Merged tokens take the position
id of their target token.
Simplified: VisionZip merges the vision encoder's hidden states before the projector; we merge
the projected features (the mean of projections, not the projection of the mean), so the same
LLM-side engine runs it. The dominant selection and the key-similarity assignment follow the
paper. The selection and merging is the ``visionzip`` partitioner
(:mod:`vtsched.partitioners.visionzip`); this policy runs what it kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from vtsched.core.geometry import ModelGeometry
from vtsched.core.budget import Budget
from vtsched.core.policy import DEFAULT_GROUPS, Policy
from vtsched.core.schedule import Schedule, Stream


@dataclass(frozen=True)
class VisionZip(Policy):
    """Dominant + merged contextual tokens chosen before the LLM; the LLM sees only those."""

    name: ClassVar[str] = "visionzip"
    default_partitioner: ClassVar[str] = "visionzip"

    def schedule(
        self, geometry: ModelGeometry, groups: tuple[str, ...] = DEFAULT_GROUPS, budget: Budget | None = None
    ) -> Schedule:
        return Schedule(geometry.num_layers, groups, (Stream("main", groups[:1]),), "main",
                        meta=(("policy", "visionzip"),))
