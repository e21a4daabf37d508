"""``framefusion``: FrameFusion (Fu et al., 2025) on video: merge tokens that repeat the same patch of the
previous frame in the first layers, then keep the R most attended visual tokens.

Schedule: a ``merge_frames`` event (:mod:`vtsched.core.events.merge_frames`) entering each of layers
``0 .. merge_layers - 1``, then FastV's ``keep_top`` at ``drop_layer`` by the last prompt token's
attention in the layer before. Each merge keeps at least R visual tokens, so after the drop exactly R
remain (fewer only if the clip has fewer than R). On a still image, or a family whose rotary ids are
not grid coordinates, nothing merges and this is FastV.

Reproduced (thu-nics/FrameFusion, ``framefusion/main.py`` and the Qwen2-VL patch in
``framefusion/models/qwen2/modeling_qwen2_vl.py``, read from the public repository):

- what is compared: each visual token with the token of the same merged patch in the previous frame
  still present (``compute_similarity_and_token_index_by_patch``: tokens sorted by patch, then by
  sequence order), by cosine similarity of the hidden states (``dot / (|a| |b|)``, no epsilon);
- what merges: tokens at or above ``similarity_lower_bound`` (default 0.6, here ``threshold``);
  a run of consecutive merging tokens of one patch joins the token before the run, whose state
  becomes the plain mean of the root and the run (``merge_tokens_and_get_mask``); the merged tokens
  leave the sequence, the root keeps its position ids;
- cascaded merging in the first layers, the first on the layer-0 embeddings, then importance pruning;
- the cap: when more tokens pass than the budget allows, only the most similar merge (the official
  top-k branch); here the cap is ``n - R`` tokens (the merges never go below the budget).

Simplified:

- the layers: the official code merges again after each layer's attention until fewer than
  ``ratio_lower_bound`` (10%) of the visual tokens pass, then prunes in the next layer; the number of
  merging layers therefore depends on the video. Here the merges happen at fixed layer boundaries
  (``merge_layers``, on the states entering the layer, not between a layer's attention and its MLP)
  and the prune at ``drop_layer``: a schedule is fixed before the run;
- the budget: the official ``cost`` (the share of the full model's visual-token-layers to spend) sets
  the pruning ratio from the merges that happened (``_compute_pruning_ratio``). Here the budget is
  the number (or share) of visual tokens kept after ``drop_layer``, as for FastV, so methods compare
  at equal kept tokens; ``vtsched eval --match avg-tokens`` compares them at equal average tokens
  per layer, which is the official cost's quantity;
- the pruning signal: the official code averages the attention of the last four query rows over heads
  in the pruning layer itself; here the last prompt token's attention in layer ``drop_layer - 1``
  (FastV's ``last_token_attention`` ranker), recomputed without switching to eager attention;
- batches: the official code runs one sample at a time; here each sample of a batch merges on its own
  (a batch equals its samples one by one).

Code and paper: the paper states the cost over the model's layers; the code's cost arithmetic
(``_compute_pruning_ratio``, called without its ``num_layers`` argument) assumes 28 layers (Qwen2-VL-7B,
LLaVA-Video-7B) whatever the model. Nothing here depends on it: the budget is a token count.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from vtsched.core.budget import Budget
from vtsched.core.errors import ScheduleError
from vtsched.core.events import KeepTop, MergeFrames
from vtsched.core.geometry import ModelGeometry
from vtsched.core.policy import DEFAULT_GROUPS, Policy
from vtsched.core.schedule import Schedule, Stream

__all__ = ["FrameFusion"]


@dataclass(frozen=True)
class FrameFusion(Policy):
    """Merge repeated patches across frames entering layers ``0..merge_layers-1``, keep the top R at ``drop_layer``."""

    name: ClassVar[str] = "framefusion"
    budget_counts: ClassVar[str] = "after_drop"
    needs_partition: ClassVar[bool] = False
    merge_layers: int = 2
    drop_layer: int = 2
    threshold: float = 0.6

    def schedule(
        self, geometry: ModelGeometry, groups: tuple[str, ...] = DEFAULT_GROUPS, budget: Budget | None = None
    ) -> Schedule:
        self.check_layer("drop_layer", self.drop_layer, geometry, minimum=1)
        if not 0 <= self.merge_layers <= self.drop_layer:
            raise ScheduleError(f"{self.name}: merge_layers {self.merge_layers} outside 0..drop_layer ({self.drop_layer})")
        if budget is None:
            raise ScheduleError(f"{self.name} needs a budget: the visual tokens it keeps")
        keep = budget.resolve(geometry.num_visual)  # a count, so every merge and the drop agree on R
        group = groups[0]
        merges = tuple(MergeFrames(layer, "main", group, float(self.threshold), keep) for layer in range(self.merge_layers))
        events = (*merges, KeepTop(self.drop_layer, "main", group, keep, "last_token_attention"))
        return Schedule(geometry.num_layers, groups, (Stream("main", groups),), "main", events,
                        meta=(("policy", self.describe()),))
