"""``vispruner``: VisPruner (Zhang et al., ICCV 2025), important tokens by visual attention plus diverse ones.

The subject group is the budget's R tokens: ``int(R * important_ratio)`` *important* tokens, the
highest by the vision tower's [CLS] attention, and the rest *diverse* tokens, what is left of the
other tokens after removing duplicates round by round: the remaining tokens, in order of attention,
are split into alternating halves (1st, 3rd, ... against 2nd, 4th, ...), each token of the first half
scores its highest cosine similarity to the second half, and the (up to) 8 highest-scoring tokens of
the first half are removed, until R tokens are left in all. Every other token is non-subject. Used
by ``prune`` this is VisPruner itself (selection before the LLM); ``parvts`` and the sequential
policies can use it as their split like any partitioner.

Reproduced (from the official code, Theia-4869/VisPruner, ``encode_images`` in ``llava_arch.py`` and
``feature_select`` in ``clip_encoder.py``):

- the importance: the head-averaged [CLS] -> patch attention of the vision feature layer (the layer
  whose hidden states LLaVA projects: ``attentions[select_layer][:, :, 0, 1:]``), ``sample.cls_scores``;
- the split: ``int(R * important_ratio)`` important tokens (default ratio 0.5), ``R`` minus that diverse;
- the diverse step as the code has it: the remaining tokens kept in descending-attention order;
  each round ``r = min(8, remaining - diverse)`` tokens removed; the first half is the even places
  (``[::2]``), the second the odd places (``[1::2]``); a first-half token's score is its largest
  cosine similarity to any second-half token; the ``r`` highest-scoring first-half tokens go; the
  next round's order is the surviving first-half tokens by descending score, then the second half
  in its order; it stops when exactly the diverse count is left;
- the features compared: the vision tower's, before the projector (``hidden_states[select_layer]``
  without [CLS]), which the adapters hand over as ``extras["vision_features"]``.

Per family:

- LLaVA-1.5: exactly the above (features: the ``vision_feature_layer`` hidden states).
- LLaVA-NeXT: the official LLaVA-1.6 path selects in every tile on its own with the same count per
  tile (``R`` per tile, newline tokens all kept on top of it, and a tile's tokens that fall in the
  unpadded margin lost after selection). Here ``budget_mode="per_tile"`` is the closest: newline
  tokens first, the rest of R split over the tiles in proportion to their (unpadded) tokens
  (:func:`~vtsched.partitioners.cls.tile_quotas`, as ``cls`` splits it), each tile selecting on its own
  scores and features, so the count is exact (``per_frame``, on video: R split evenly over the
  frames, :func:`~vtsched.partitioners.cls.frame_quotas`, each frame selecting on its own).
  ``budget_mode="global"`` (the default, as for every
  pre-LLM partitioner here) selects once over the whole span; newline tokens score above every image
  token (the adapter's ``NEWLINE_SCORE``) so they are the first important tokens, and their features
  are zero rows (similarity 0 to every token). Features: the tiles' tower states, packed like the
  LLM's features.
- Qwen2-VL / Qwen2.5-VL (not in the official code; no [CLS] token): the importance is the attention
  each merged token receives in the tower's last full-attention block (``extras["attention_scores"]``,
  as the issue asks and as ``visionzip`` does on Qwen), and the features are the merger's input, the
  2x2 patch states of each merged token side by side (the vector the merger's MLP reads, before its
  LayerNorm). Selection is on merged tokens; kept tokens keep their M-RoPE positions.

Differs, and why:

- positions: the official code drops tokens before the LLM and the model numbers the shortened
  sequence 0..n-1; vtsched keeps every kept token's original position id, its rule for every pre-LLM
  method.
- ties: the official ``argsort`` is not stable; here every ordering is stable (equal scores keep the
  lower token index first), so the selection is deterministic on every device.
- similarities are computed in float64 (the official code uses the model's dtype).
- the count is the budget's (the official code takes ``visual_token_num`` per image, or per tile on
  LLaVA-1.6).

Scores: each token's importance (the [CLS] or received attention): higher means "more attended".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from vtsched.core.budget import Budget
from vtsched.core.errors import InputError
from vtsched.core.geometry import ModelGeometry
from vtsched.core.partition import NON_SUBJECT, SUBJECT, Partition
from vtsched.core.pixels import token_scores
from vtsched.core.policy import Partitioner
from vtsched.core.tokens import PromptBatch, Sample
from vtsched.partitioners.cls import BudgetMode, selection_parts

__all__ = ["VisPruner", "remove_duplicates", "removal_rounds", "vispruner_select"]

REMOVED_PER_ROUND = 8  # the official code removes at most 8 duplicates per round


def remove_duplicates(features: torch.Tensor, residual: torch.Tensor, count: int) -> torch.Tensor:
    """VisPruner's iterative duplicate removal: ``count`` of the ``residual`` token indices survive.

    ``features``: ``(n, C)`` of every token; ``residual``: the candidates in descending-attention order.
    Returns the survivors, in the order the last round left them.
    """
    if count <= 0:
        return residual[:0]
    normed = torch.nn.functional.normalize(features.detach().double(), dim=-1)
    while True:
        remove = min(REMOVED_PER_ROUND, residual.numel() - count)
        if remove <= 0:
            return residual
        first, second = residual[0::2], residual[1::2]
        duplicated = (normed[first] @ normed[second].T).max(dim=-1).values  # each first-half token's best match
        distinct = torch.sort(-duplicated, stable=True).indices[remove:]  # drop the r most duplicated
        residual = torch.cat((first[distinct], second))


def removal_rounds(candidates: int, count: int) -> list[int]:
    """The remaining token counts at each round of :func:`remove_duplicates` on ``candidates`` tokens
    keeping ``count`` (each round removes up to :data:`REMOVED_PER_ROUND`)."""
    rounds: list[int] = []
    if count <= 0:
        return rounds
    while candidates - count > 0:
        rounds.append(candidates)
        candidates -= min(REMOVED_PER_ROUND, candidates - count)
    return rounds


def vispruner_select(scores: torch.Tensor, features: torch.Tensor, count: int,
                     important_ratio: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(important, diverse)`` token indices: ``int(count * important_ratio)`` by ``scores``, the rest by
    :func:`remove_duplicates` among the others."""
    important_count = int(count * important_ratio)
    order = torch.sort(-scores.double(), stable=True).indices
    important, residual = order[:important_count], order[important_count:]
    return important, remove_duplicates(features, residual, count - important_count)


@dataclass(frozen=True)
class VisPruner(Partitioner):
    """Important tokens by [CLS] attention plus diverse tokens by VisPruner's duplicate removal."""

    name: ClassVar[str] = "vispruner"
    important_ratio: float = 0.5
    budget_mode: BudgetMode = "global"

    def __post_init__(self) -> None:
        if not 0.0 <= float(self.important_ratio) <= 1.0:
            raise InputError(f"vispruner: important_ratio {self.important_ratio} must lie in [0, 1]")
        if self.budget_mode not in ("global", "per_tile", "per_frame"):
            raise InputError(f"vispruner: budget_mode {self.budget_mode!r} is not 'global', 'per_tile' or 'per_frame'")

    def selection_flops(self, num_visual: int, keep: int, geometry: ModelGeometry) -> float:
        """The duplicate removal's similarity blocks: each round compares the first half of the ``m``
        remaining tokens with the second (``2 ceil(m/2) floor(m/2) C``, ``C`` the tower features' width:
        the tower's, times the tokens merged into one where a merger packs several), until the diverse
        count is left (:func:`removal_rounds`)."""
        width = geometry.vision_hidden_size * max(1, geometry.vision_tokens // max(1, geometry.num_visual))
        important = int(keep * self.important_ratio)
        return float(sum(2 * (-(-m // 2)) * (m // 2) * width
                         for m in removal_rounds(num_visual - important, keep - important)))

    def partition(self, batch: PromptBatch, budget: Budget) -> Partition:
        assignment, scores = [], []
        for b, sample in enumerate(batch.samples):
            keep = budget.resolve(sample.num_visual)
            importance, features = _signals(b, sample)
            ids = torch.ones(sample.num_visual, dtype=torch.long)
            for part, count in selection_parts(sample, keep, self.budget_mode):
                important, diverse = vispruner_select(importance[part], features[part], count, self.important_ratio)
                ids[part[important]] = 0
                ids[part[diverse]] = 0
            assignment.append(ids)
            scores.append(importance.float())
        return Partition((SUBJECT, NON_SUBJECT), tuple(assignment), tuple(scores))



def _signals(b: int, sample: Sample) -> tuple[torch.Tensor, torch.Tensor]:
    """The sample's importance ``(N,)`` and pre-projector features ``(N, C)``, or one line saying what is missing."""
    importance, _ = token_scores(sample)
    if importance is None:
        raise InputError(f"sample {b}: vispruner needs the vision tower's [CLS] attention (or, without [CLS], the "
                         "attention each token receives); this adapter gives neither")
    features = sample.extras.get("vision_features")
    if not isinstance(features, torch.Tensor) or features.dim() != 2 or features.shape[0] != sample.num_visual:
        raise InputError(f"sample {b}: vispruner needs the vision tower's features before the projector "
                         f"(extras['vision_features'], one row per visual token); this adapter does not give them")
    return importance, features
