"""``sparsevlm``: SparseVLM (Zhang et al., 2025), text-guided multi-stage pruning: the question tokens
most relevant to the image ("raters") score the visual tokens by their attention, and after each of a
few layers the visual tokens they attend to least leave.

Raters are chosen once, on the layer-0 embeddings: each visual token's dot products with the text
tokens after the image, softmaxed over those text tokens and averaged over the visual tokens, give each
text token a relevance; the raters are the text tokens whose relevance is above the mean. After each
pruning layer l, the attention the raters gave the visual tokens in layer l (head-averaged, then
averaged over the raters) ranks them and the top ``c_s`` of stage s stay; the top 30% of the others
are clustered and merged into a few new tokens that stay beside them (token recycling); the sequence's
rotary ids are renumbered ``0..n-1``. The ``sparsevlm_raters`` ranker reads those few query rows (the raters) from
layer l's input and the keys it attended over, on any attention backend: the model is never switched to
eager attention and no layer runs twice.

Reproduced (the official code, Gumpest/SparseVLMs: ``LlamaDynamicvitModel.forward`` in
``llava/model/language_model/modelling_sparse_llama.py``, ``attn_postprocess_topk`` with its
``layer_dict`` and per-budget lists in ``score.py`` and ``cluster_and_merge`` in ``utils.py``, read
from a public copy of the repository):

- the raters (``m_v_t = v_t @ t_t^T``, unscaled, softmax over the text tokens after the image, mean
  over the visual tokens, raters where ``m_v_t > m_v_t.mean()``), on the layer-0 embeddings of the
  image's own tokens;
- the pruning layers ``pruning_loc`` 2, 6, 15 (``layer_dict``) on a 32-layer model: the ranking is
  layer l's own attention (softmax over every causal key, mean over heads, rows of the raters, the
  visual columns, mean over the raters) and the pruning acts on layer l's output, so here an event at
  layer l + 1 ranked by layer l;
- the schedule of kept tokens per stage: 300/200/110 for 192 retained tokens, 303/110/36 for 128 and
  66/30/17 for 64 (``sparse_token_list_192/128/64``), as shares of LLaVA-1.5's 576 visual tokens;
  each stage keeps a count, not a share of what enters it (the merged tokens do not raise it);
- token recycling at every stage (a :class:`~vtsched.core.events.recycle.Recycle` event): of the
  ``d`` pruned visual tokens, the ``int(0.3 d) + 1`` the raters scored highest (``relation_vis_text``)
  are clustered with DPC-KNN into ``int(m / 10) + 1`` clusters, on layer l's output states
  (``layer_outputs[0]``); each cluster is the plain mean of its members (every token weighs one; the
  attention-weighted variant in ``cluster_and_merge`` is commented out there), divided by
  ``count + 1e-6`` as there; the merged tokens sit after the kept visual tokens, in cluster-centre
  order, count as visual tokens from then on, and the next stages rank and prune (and recycle) them
  with the rest (``v_token_num = kept + cluster_num``). DPC-KNN as in ``cluster_and_merge``:
  distances ``||x_i - x_j|| / sqrt(C)``, density ``exp(-mean d^2)`` over the ``cluster_num`` nearest
  tokens (self included), parent distance to the nearest denser token (the largest distance for the
  densest), centres the top ``density * parent distance``, every token to its nearest centre;
- the position ids after each stage (``position_ids[:, :n]``: renumbered ``0..n-1``, merged tokens
  included), with the kept tokens in their order; in decoding each layer continues after its own
  cache's length, as the official flash-attention path does.

Differs:

- DPC-KNN's density ties: the official code adds uniform noise of 1e-6 to the densities, which is
  neither reproducible nor batch-independent; here a tie goes to the token the raters scored higher
  (so densities closer than 1e-6 may order differently than one official run would). Distances come
  from the Gram matrix in float32 at least (the official code forms every difference in the model's
  dtype: equal up to rounding), and the Gram matmul counts as scoring FLOPs.
- the official ``score.py`` hard-codes the 128 list whatever the budget; here the budget chooses the
  list (192, 128, 64, as counts or as ``R / 576`` ratios). Another budget scales the first stage of the
  nearest list by ``R / R_list`` (the later stages keep the list's ratios to the stage before). The
  counts scale with the image's tokens (each image's own, solved per sample), and the official cap
  ``min(c_s, v - 1)`` (never all of ``v``) is not applied. The budget names the official setting
  (``budget_counts`` ``average_per_layer``, the paper's "retained tokens"); it is not solved for: on
  32 layers and 576 tokens the visual tokens per layer, merged tokens included, average 206.5, 145.4
  and 82.25 at 192, 128 and 64 (202.75, 140.8 and 79.2 with ``recycle=false``, which drops the pruned
  tokens instead).
- on a model that is not 32 layers deep the pruning layers scale with the depth (``layers`` sets them).
- when no text token is above the mean relevance (one text token, or all equal), every text token
  after the image rates (the official code would average no rows); the official code runs batch size
  1, here each sample chooses its raters and clusters on its own; the raters are chosen again at each
  stage from the same layer-0 embeddings (same raters), their ``2 * N_v * N_t * d`` FLOPs declared
  each time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch
from vtsched.core.budget import Budget
from vtsched.core.errors import ScheduleError
from vtsched.core.events import KeepTop, Recycle
from vtsched.core.events.rankers import LayerBeforeRanker
from vtsched.core.geometry import ModelGeometry
from vtsched.core.policy import DEFAULT_GROUPS, Policy
from vtsched.core.schedule import Schedule, Stream
from vtsched.core.tokens import Role

if TYPE_CHECKING:
    from vtsched.core.engine.probes import QueryRows

__all__ = ["OFFICIAL_COUNTS", "OFFICIAL_LAYERS", "SparseVLM", "SparseVLMRaters", "raters", "stage_counts"]

OFFICIAL_VISUAL = 576  # LLaVA-1.5's visual tokens, what the official lists count
OFFICIAL_DEPTH = 32
OFFICIAL_LAYERS = (2, 6, 15)  # pruning_loc: tokens are pruned on these layers' outputs
OFFICIAL_COUNTS = {192: (300, 200, 110), 128: (303, 110, 36), 64: (66, 30, 17)}


def raters(visual: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """``(T,)`` bool: which of the ``(T, d)`` text embeddings rate the ``(N, d)`` visual ones (SparseVLM's
    relevance above its mean; every text token when none is above it)."""
    relevance = (visual @ text.T).softmax(-1).mean(0)
    chosen = relevance > relevance.mean()
    return chosen if bool(chosen.any()) else torch.ones_like(chosen)


class SparseVLMRaters(LayerBeforeRanker):
    """The attention the raters (text tokens chosen on the layer-0 embeddings) gave each token in the
    layer before the event, head-averaged and averaged over the raters (SparseVLM's signal), recomputed
    for those query rows from what that layer attended over."""

    name = "sparsevlm_raters"

    def probe(self, event, run, segment, block, own, at):
        from vtsched.core.engine.probes import QueryRows

        index = segment.rows.index[:, block]
        sel = torch.zeros_like(segment.row_roles, dtype=torch.bool)
        sel[:, block] = self.rater_slots(event, run, index, event.layer - 1)
        return _RaterProbe(QueryRows.select(segment, sel, block), at, own, index)

    @staticmethod
    def rater_slots(event, run, index: torch.Tensor, layer: int) -> torch.Tensor:
        """``(rows, T)``: which slots at positions ``index`` are raters, chosen per sample on the layer-0
        embeddings of the group's visual tokens and the text after the image (the FLOPs declared)."""
        bound = run.bound
        group = run.partition.group_id(event.group)
        text = bound.fused(index, "post_image")
        out = torch.zeros_like(text)
        rows = index.shape[0]
        for b in range(rows):
            own = (bound.roles[b] == Role.VISUAL) & (bound.groups[b] == group) & bound.given()[b]  # not merged ones
            visual = torch.nonzero(own).flatten()
            slots = torch.nonzero(text[b]).flatten()
            if slots.numel() == 0:
                continue
            if visual.numel() == 0:
                out[b, slots] = True
                continue
            embeds = bound.embeds[b]
            chosen = raters(embeds[visual], embeds[index[b, slots]])
            out[b, slots[chosen]] = True
            tokens = torch.zeros(rows, dtype=torch.long)
            tokens[b] = visual.numel()
            run.stats.add_projection(layer, tokens, int(slots.numel()))  # v_t @ t_t^T
        return out


@dataclass(frozen=True)
class _RaterProbe:
    """Reads, at the layer before the event, the raters' head-averaged attention, averaged over them."""

    queries: QueryRows
    at: int
    own: slice
    index: torch.Tensor

    def read(self, run, layer, layer_input, keys) -> None:
        probs = self.queries.probs(run, layer, layer_input, keys)[..., self.own].mean(1)  # (rows, q, T_s)
        count = self.queries.count.to(probs.device)
        real = torch.arange(probs.shape[1], device=probs.device)[None] < count[:, None]
        total = (probs * real[..., None].to(probs.dtype)).sum(1)
        run.readings.rank[self.at] = (self.index, total / count.clamp(min=1)[:, None].to(probs.dtype))


def stage_counts(budget: Budget, num_visual: int = OFFICIAL_VISUAL) -> tuple[int, ...]:
    """How many visual tokens each stage keeps of an image's ``num_visual``: :func:`stage_keeps`' shares
    applied in turn (what the stages keep when pruned tokens are dropped). Counts, not shares, so the
    tokens a stage recycles do not raise what the next one keeps (the official lists are counts)."""
    counts, n = [], num_visual
    for keep in stage_keeps(budget, num_visual):
        n = min(n, keep) if isinstance(keep, int) else int(round(keep * n))
        counts.append(n)
    return tuple(counts)


def stage_keeps(budget: Budget, num_visual: int = OFFICIAL_VISUAL) -> tuple[int | float, ...]:
    """Each stage's ``keep`` as a share of the tokens entering it (see the module docstring). A count
    budget is a share of the image's own ``num_visual`` tokens (64 of 576 on LLaVA-1.5; 7 of 64 on the
    demo model picks the same list)."""
    if budget.ratio is not None:
        share = budget.ratio
    else:
        assert budget.count is not None  # a budget is a ratio or a count
        share = budget.count / max(num_visual, 1)
    listed = min(OFFICIAL_COUNTS, key=lambda r: (abs(r / OFFICIAL_VISUAL - share), -r))
    counts = OFFICIAL_COUNTS[listed]
    first = min(1.0, counts[0] / OFFICIAL_VISUAL * share * OFFICIAL_VISUAL / listed)
    if first <= 0.0:
        return (0, 0, 0)
    return (first, counts[1] / counts[0], counts[2] / counts[1])


@dataclass(frozen=True)
class SparseVLM(Policy):
    """Raters' attention prunes the visual tokens after layers 2, 6 and 15 (on 32 layers), to the
    official counts for 192, 128 or 64 retained tokens, recycling part of the pruned ones."""

    name: ClassVar[str] = "sparsevlm"
    budget_counts: ClassVar[str] = "average_per_layer"
    needs_partition: ClassVar[bool] = False
    layers: tuple[int, ...] | None = None  # the pruning layers (ranked by their attention); None: 2/6/15 scaled
    renumber: bool = True  # the official position ids; False keeps the original rotary ids
    recycle: bool = True  # the official token recycling; False drops the pruned tokens

    def pruning_layers(self, geometry: ModelGeometry) -> tuple[int, ...]:
        """The given ``layers``, else 2/6/15 scaled to the depth (kept increasing, before the last layer)."""
        if self.layers is not None:
            return tuple(self.layers)
        depth = geometry.num_layers
        out: list[int] = []
        for layer in OFFICIAL_LAYERS:
            k = max(round(layer * depth / OFFICIAL_DEPTH), out[-1] + 1 if out else 0)
            if k <= depth - 2:
                out.append(k)
        return tuple(out)

    def schedule(
        self, geometry: ModelGeometry, groups: tuple[str, ...] = DEFAULT_GROUPS, budget: Budget | None = None
    ) -> Schedule:
        if budget is None:
            raise ScheduleError("sparsevlm needs a budget: 192, 128 or 64 retained tokens (or a ratio)")
        layers = self.pruning_layers(geometry)
        if list(layers) != sorted(set(layers)) or not all(0 <= k < geometry.num_layers - 1 for k in layers) \
                or len(layers) > len(OFFICIAL_LAYERS):
            raise ScheduleError(f"sparsevlm: pruning layers {layers} must be at most 3, increasing within "
                                f"0..{geometry.num_layers - 2}")
        kind = Recycle if self.recycle else KeepTop
        events = tuple(kind(k + 1, "main", groups[0], keep, "sparsevlm_raters", self.renumber)
                       for k, keep in zip(layers, stage_counts(budget, geometry.num_visual)))
        return Schedule(geometry.num_layers, groups, (Stream("main", groups),), "main", events,
                        meta=(("policy", self.describe()),))
