"""``pdrop``: PyramidDrop (Xing et al., 2024). Visual tokens are dropped in stages inside the LLM.

Of the ``N`` visual tokens, stage ``s`` (before layer ``layers[s]``) keeps the
``floor(N * ratio ** (s + 1))`` that the last instruction token attends to most in that layer.
Defaults follow the paper's placement on a 32-layer model (stages at layers 8/16/24, ratio 0.5:
288/144/72 of 576) scaled to the model's depth: stages at a quarter, half and three quarters of
the layers (1/3/4 on the 6-layer demo model).

Reproduced (Cooperx521/PyramidDrop, ``modeling_llama_pdrop.py``):

- the ranking: before stage layer ``k`` runs, the states entering it go through layer ``k``'s own
  input norm and query/key projections with its rotary embedding; the last instruction token's
  softmax attention over the whole prefix, averaged over heads, ranks the image tokens still
  present (``KeepTop`` ranker ``next_layer_attention``: one query row and the key projection are
  computed; the layer itself runs once, on the kept tokens, on its usual attention backend);
- the query: in inference PyramidDrop takes the last token of the prompt, which in LLaVA's
  template is the end of ``ASSISTANT:``; so does vtsched (the last prompt token);
- the stage counts: ``floor(N * ratio ** (s + 1))`` of the original ``N`` at stage ``s`` (19/5/1
  of 64 at ratio 0.3), not the ratio applied to the current count stage by stage;
- the positions: after each stage the remaining tokens take rotary ids ``0..n-1`` and decoded
  tokens continue after them at each layer (``renumber=True``, the ``KeepTop`` event's
  ``renumber``); the causal order is unchanged.

Differs:

- ``renumber=False`` keeps every token's original rotary id instead (the engine's rule for every
  other policy, under which a kept token attends as it did in the full prompt). It is an option,
  not the default: PyramidDrop renumbers, and its model was evaluated that way. On Qwen2-VL's
  M-RoPE the ids are grid coordinates, not indices, so there is nothing to renumber and tokens keep them.
- Budget (vtsched's, not PyramidDrop's): when one is given, ``ratio`` is solved per image so that
  the visual tokens per layer, averaged over all layers, do not exceed the budget and come as
  close to it as the floored counts allow (the "average tokens" convention later papers compare
  PDrop by). Every token runs through the layers before the first stage, so with given ``layers``
  a budget below that floor is refused with the stage placement that reaches it. Without
  ``layers``, a budget below the quarter placement's floor moves the first stage earlier, to the
  last layer at which it is reachable (layer 0 at worst: ranked by layer 0's own projections of
  the embeddings); PyramidDrop's own stages start at layer 1 or later.
- Stages at layer 0 are allowed (PyramidDrop's first is always after a layer); a stage at the
  last layer's output has no layer to rank with and is refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from vtsched.core.geometry import ModelGeometry
from vtsched.core.budget import Budget
from vtsched.core.errors import BudgetError, ScheduleError
from vtsched.core.policy import DEFAULT_GROUPS, Policy
from vtsched.core.events import KeepTop
from vtsched.core.schedule import Schedule, Stream

_EPS = 1e-9  # N * ratio ** s computed in floats: 0.7 ** 2 * 100 is 48.999...; PyramidDrop's list holds 0.49


def stage_counts(num_visual: int, stages: int, ratio: float) -> tuple[int, ...]:
    """Tokens kept at each stage: ``floor(num_visual * ratio ** (s + 1))`` for ``s = 0..stages-1``."""
    return tuple(min(num_visual, int(num_visual * ratio ** (s + 1) + _EPS)) for s in range(stages))


def average_tokens(num_visual: int, layers: tuple[int, ...], ratio: float, depth: int) -> float:
    """Visual tokens per layer averaged over ``depth`` layers for stages at ``layers`` keeping ``ratio``."""
    counts = (num_visual, *stage_counts(num_visual, len(layers), ratio))
    marks = (0, *layers, depth)
    return sum(c * (marks[i + 1] - marks[i]) for i, c in enumerate(counts)) / depth


@dataclass(frozen=True)
class PDrop(Policy):
    """Multi-stage drops (default at 1/4, 1/2, 3/4 of the depth, each stage keeping ``ratio`` times the last)."""

    name: ClassVar[str] = "pdrop"
    budget_counts: ClassVar[str] = "average_per_layer"
    needs_partition: ClassVar[bool] = False
    budget_required: ClassVar[bool] = False  # without one, the stages keep N * ratio ** (s + 1)
    layers: tuple[int, ...] | None = None  # None: a quarter, half and three quarters of the depth
    ratio: float = 0.5
    renumber: bool = True  # PyramidDrop's positions; False keeps the original rotary ids

    def stage_layers(self, geometry: ModelGeometry, budget: Budget | None = None) -> tuple[int, ...]:
        """The stage layers: the given ones, else a quarter, half and three quarters of the depth, the
        first moved earlier where a budget is below what they reach (see the module docstring)."""
        if self.layers is not None:
            return tuple(self.layers)
        depth = geometry.num_layers
        layers = tuple(sorted({max(1, depth * q // 4) for q in (1, 2, 3)} - {depth}))
        if budget is not None and layers:
            target = budget.resolve(geometry.num_visual)
            if target < average_tokens(geometry.num_visual, layers, 0.0, depth) - _EPS:
                first = min(layers[0], math.floor(target * depth / geometry.num_visual + _EPS))
                layers = (first, *(k for k in layers[1:] if k > first))
        return layers

    def stage_ratio(self, geometry: ModelGeometry, budget: Budget | None) -> float:
        """``ratio``, or without one the largest ratio whose average tokens per layer stay within ``budget``."""
        if budget is None:
            return self.ratio
        layers = self.stage_layers(geometry, budget)
        n, depth = geometry.num_visual, geometry.num_layers
        target = budget.resolve(n)
        floor = average_tokens(n, layers, 0.0, depth)
        if target < floor - _EPS:
            first = math.floor(target * depth / n + _EPS)
            raise BudgetError(
                f"pdrop with stages at layers {'/'.join(map(str, layers))} keeps at least {floor:.1f} visual tokens "
                f"per layer on average; budget {budget} is below that: start the stages at layer {first} or "
                f"earlier (-p layers={'/'.join(map(str, (first, *(k for k in layers[1:] if k > first))))})"
            )
        if average_tokens(n, layers, 1.0, depth) <= target + _EPS:
            return 1.0
        lo, hi = 0.0, 1.0  # average_tokens grows with the ratio (in steps): the last ratio within the budget
        for _ in range(60):
            mid = (lo + hi) / 2
            if average_tokens(n, layers, mid, depth) <= target + _EPS:
                lo = mid
            else:
                hi = mid
        return lo

    def schedule(
        self, geometry: ModelGeometry, groups: tuple[str, ...] = DEFAULT_GROUPS, budget: Budget | None = None
    ) -> Schedule:
        layers = self.stage_layers(geometry, budget)
        if list(layers) != sorted(set(layers)) or not all(0 <= k < geometry.num_layers for k in layers):
            raise ScheduleError(f"pdrop: stage layers {layers} must increase within 0..{geometry.num_layers - 1}")
        ratio = self.stage_ratio(geometry, budget)
        if not 0.0 <= ratio <= 1.0:
            raise ScheduleError(f"pdrop: ratio {ratio} outside [0, 1]")
        counts = stage_counts(geometry.num_visual, len(layers), ratio)
        events = tuple(KeepTop(k, "main", groups[0], c, "next_layer_attention", self.renumber)
                       for k, c in zip(layers, counts))
        positions = "" if self.renumber else ", renumber=False"
        return Schedule(geometry.num_layers, groups, (Stream("main", groups),), "main", events,
                        meta=(("policy", f"pdrop(layers={'/'.join(map(str, layers))}, ratio={ratio:.4g}{positions})"),))
