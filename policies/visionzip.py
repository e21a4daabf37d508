"""``visionzip``: VisionZip (Yang et al., 2024). Pruned and merged before the LLM.

The budget's R tokens are ``R - c`` *dominant* tokens (highest [CLS] attention) and ``c``
*contextual* tokens (default c = R * 10/64: 54 + 10 for 64, 162 + 30 for 192): the remaining
tokens are merged into ``c`` targets spread evenly over them, each remaining token joining the
target whose key is most similar (cosine of the vision layer's head-averaged keys). The selection
and merging is the ``visionzip`` partitioner (:mod:`vtsched.partitioners.visionzip`); this policy
runs what it kept.

Reproduced (dvlab-research/VisionZip, ``clip_encoder.py``): the dominant selection (the [CLS] row
of the attention in the vision layer whose output LLaVA reads, over heads, top ``R - c``
patches; checked as kept indices against a reference written from that code in
``tests/policies/test_published_references.py``), the key metric (that layer's keys averaged over heads,
cosine similarity) and the argmax assignment to targets.

Differs:

- [CLS]: the official code passes the [CLS] token's own state to the LLM as one more dominant
  token and counts it in ``dominant`` (``dominant=54`` is [CLS] + 53 patches). vtsched's budget
  counts patch tokens only and passes no [CLS] state: R patch tokens of the image, so that a
  budget means the same for every policy: at 64, the official code sends [CLS] + 53 dominant
  patches + 10 contextual tokens, vtsched 54 dominant patches + 10 contextual ones.
- Merging: VisionZip merges the vision encoder's hidden states before the projector; we merge
  the projected features (the mean of projections, not the projection of the mean), so the same
  LLM-side engine runs it. The official contextual token is its target's state plus the mean of
  the tokens assigned to it; here it is the mean of the target and those tokens. The official
  targets are every ``n // c``-th remaining token, here every ``n / c``-th (the same when ``c``
  divides ``n``).
- Positions: the official code hands the LLM [CLS], dominant and contextual tokens as one
  contiguous run (new position ids); here every token keeps its place and a merged token its
  target's position id, the engine's rule."""

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
    budget_counts: ClassVar[str] = "input"
    default_partitioner: ClassVar[str] = "visionzip"

    def schedule(
        self, geometry: ModelGeometry, groups: tuple[str, ...] = DEFAULT_GROUPS, budget: Budget | None = None
    ) -> Schedule:
        return Schedule(geometry.num_layers, groups, (Stream("main", groups[:1]),), "main",
                        meta=(("policy", "visionzip"),))
