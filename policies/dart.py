"""``dart``: DART (Wen et al., 2025), "duplication matters more": after layer K, keep visual tokens that
duplicate the chosen pivots least.

At the drop layer K the states layer K-1 passed on are normalised by the model's final norm; the
pivots are the 4 image tokens and the 4 text tokens after the image whose keys in layer K-1 have the
largest L1 norm; then, pivot after pivot, the ``TOKEN_TOPK`` image tokens least similar (cosine) to
that pivot's state join the kept set and leave the candidates. The kept visual tokens are the image
pivots and every token chosen this way; no attention weights are needed (the ``dart_duplication``
ranker reads layer K-1's keys, which the layer computes anyway, and the states entering layer K).

Reproduced (the official code, ZichenWen1/DART, ``get_retained_image_token`` in
``llava/model/language_model/modeling_llama_self.py``, read from a public copy of the repository):

- the drop point (``pruned_layer`` 2: the selection runs before layer K on layer K-1's outputs) and
  the kept tokens' original position ids (``position_ids = keep_indexs``);
- the pivots: ``topk`` of the keys' L1 norm (all heads) among the image tokens (4) and among the
  text tokens after the image (4); the text pivots select but are not kept;
- the duplication rule: per pivot, in the order of the official loop (Python's iteration over the
  set of pivot indices, which vtsched reproduces on the same positions), ``topk`` of the negative
  cosine similarity between the pivot's normalised state and the remaining candidates;
- ``TOKEN_TOPK = M // (pivots)`` with ``M`` the truncation count.

Differs:

- the count: the official code keeps the 4 image pivots plus ``8 * (M // 8)`` tokens, 4 more than its
  ``max_num_trunction`` M (132 of 576 at M = 128). Here the budget R is what is kept: ``M = R - 4``, and
  when ``R - 4`` is not a multiple of 8 the remaining tokens continue the same rule, one per pivot in
  the same order, until R are chosen (so R = 132 keeps exactly the official 132).
- the official code runs on batch size 1; here each sample selects on its own (a batch equals its
  samples one by one).
- scoring cost (one L1 norm per key row, 8 cosine rows) is not counted in the FLOPs, like the
  official paper's accounting.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from vtsched.core.events.rankers import LayerBeforeRanker
from vtsched.core.tokens import Role

from .fastv import FastV

__all__ = ["DART", "DartDuplication", "dart_order"]

PIVOT_IMAGE_TOKENS = 4
PIVOT_TEXT_TOKENS = 4


def dart_order(key_l1: torch.Tensor, states: torch.Tensor, image: torch.Tensor, text: torch.Tensor,
               keep: int) -> list[int]:
    """DART's selection as an order over the image positions: the first ``keep`` are what DART keeps
    (positions past ``keep`` follow in index order: nothing reads their order).

    Args:
        key_l1: ``(P,)`` L1 norm of each position's keys at layer K-1 (positions 0..P-1 of the prompt).
        states: ``(P, hidden)`` each position's state entering layer K, after the final norm.
        image: the image positions.
        text: the text positions after the image.
        keep: the budget R (how many the official rule chooses before the continuation).
    """
    image_pivots = image[torch.topk(key_l1[image], min(PIVOT_IMAGE_TOKENS, image.numel())).indices].tolist()
    text_pivots = text[torch.topk(key_l1[text], min(PIVOT_TEXT_TOKENS, text.numel())).indices].tolist()
    pivots = list(set(image_pivots + text_pivots))  # the official loop's order: iteration over a set of ints
    order = list(image_pivots)
    candidates = set(image.tolist()) - set(image_pivots)  # a set, listed as the official loop lists it
    per_pivot = max(keep - len(image_pivots), 0) // max(len(pivots), 1)
    first = True
    while candidates and pivots and (first or len(order) < keep):  # past the budget, the order is not used
        for pivot in pivots:
            take = per_pivot if first else 1
            if not candidates or take <= 0 or (not first and len(order) >= keep):
                continue
            listed = list(candidates)
            dissimilar = -torch.nn.functional.cosine_similarity(states[pivot][None], states[listed], dim=-1)
            chosen = [listed[i] for i in torch.topk(dissimilar, min(take, len(listed))).indices.tolist()]
            order += chosen
            candidates.difference_update(chosen)
        first = False
    return order + sorted(candidates)


class DartDuplication(LayerBeforeRanker):
    """DART's duplication rule (pivots by key L1 norm at layer K-1, then the least similar tokens), as a
    ranking whose top R is what DART keeps at budget R."""

    name = "dart_duplication"

    def probe(self, event, run, segment, block, own, at):
        return _KeyNorms(at, own, segment.rows.index[:, block])

    def scores(self, event, run, at):
        index, norms = run.readings.rank.pop(at)  # (rows, T): positions, their keys' L1 norm at K-1
        rows, bound = run.streams[event.stream], run.bound
        states = run.parts.norm(rows.hidden)
        group = run.partition.group_id(event.group)
        amounts = event.keep if isinstance(event.keep, tuple) else (event.keep,) * rows.num_rows
        scores = torch.zeros(rows.index.shape, dtype=torch.float32, device=rows.index.device)
        row_roles = bound.lookup(bound.roles, rows.index)  # (rows, T): tables are looked up row by row
        row_groups = bound.lookup(bound.groups, rows.index)
        after_image = bound.fused(rows.index, "post_image")
        for b in range(rows.num_rows):
            valid = rows.index[b] >= 0
            positions = rows.index[b][valid]
            width = int(positions.max()) + 1
            key_l1 = torch.zeros(width, dtype=torch.float64)
            known = index[b] >= 0
            key_l1[index[b][known].cpu()] = norms[b][known].double().cpu()
            by_position = torch.zeros(width, states.shape[-1], dtype=states.dtype, device=states.device)
            by_position[positions] = states[b][valid]
            image = positions[((row_roles[b] == Role.VISUAL) & (row_groups[b] == group))[valid]].cpu()
            text = positions[after_image[b][valid]].cpu()
            amount = amounts[b]
            keep = min(image.numel(), amount) if isinstance(amount, int) else int(round(amount * image.numel()))
            order = dart_order(key_l1, by_position.cpu(), image, text, keep)
            rank = torch.zeros(width)
            rank[torch.tensor(order, dtype=torch.long)] = torch.arange(len(order), 0, -1, dtype=torch.float32)
            scores[b, valid] = rank[positions.cpu()].to(scores.device)
        return rows.index, scores


@dataclass(frozen=True)
class _KeyNorms:
    """Reads, at layer K-1, the L1 norm of each of the stream's keys over all heads."""

    at: int
    own: slice
    index: torch.Tensor

    def read(self, run, layer, layer_input, keys) -> None:
        run.readings.rank[self.at] = (self.index, keys[:, :, self.own].float().abs().sum(dim=(1, 3)))


@dataclass(frozen=True)
class DART(FastV):
    """All visual tokens until layer K, then the R that duplicate DART's pivots least (FastV's schedule,
    ranked by ``dart_duplication``)."""

    name: ClassVar[str] = "dart"
    ranker: ClassVar[str] = "dart_duplication"
