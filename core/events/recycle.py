"""``recycle``: a ``keep_top`` whose dropped tokens are partly recycled into a few merged tokens (SparseVLM).

SparseVLM (Gumpest/SparseVLMs, ``LlamaDynamicvitModel.forward`` with ``cluster_and_merge`` in
``llava/model/language_model/utils.py``) does not simply drop the visual tokens a stage prunes: the
top 30% of them by the same scores are clustered by DPC-KNN and each cluster's mean joins the
sequence as a new token after the kept visual tokens, and later stages rank those too. Here that is
one event kind, a variant of :class:`~vtsched.core.events.keep_top.KeepTop` rather than a separate
event after one: the dropped tokens' states and the ranker's scores exist only while the keep-top
runs, so a separate event would need a new channel through the run between two events that must
stay adjacent, and the dry run would need to know what the keep-top before it dropped. As a
variant it ranks once, keeps what a ``keep_top`` keeps and says its own effect on the counts.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from vtsched.core.errors import ScheduleError
from vtsched.core.events.base import DrawState, Layout, TokenCounts
from vtsched.core.events.keep_top import KeepTop

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from vtsched.core.engine.run import PrefillRun

__all__ = ["Recycle", "cluster_count", "dpc_knn_merge", "recycled_count"]


@dataclass(frozen=True, slots=True)
class Recycle(KeepTop):
    """Keep the top ``keep`` of ``group`` in ``stream`` by ``ranker`` (as ``keep_top``); of the tokens that
    leave, merge the top ``share`` by the same scores into ``cluster_size``-fold fewer new tokens.

    Of ``d`` dropped tokens, the ``int(d * share) + 1`` scored highest (at most ``d``) are clustered
    with DPC-KNN into ``int(m / cluster_size) + 1`` clusters (at most ``m``), on their states entering
    ``layer`` (the output of layer ``layer - 1``: where SparseVLM takes them), and each cluster's mean
    becomes a new token (:func:`dpc_knn_merge`). The merged tokens:

    - sit after the image's visual tokens (every group's, and earlier merged tokens), in cluster order,
      before the text that follows the image; they have no position in the sample as given
      (``Prefill.index`` reads ``-1``) and no layer-0 embedding (an ``insert`` of the group elsewhere
      does not bring them);
    - are visual tokens of ``group`` in ``stream`` only, so a later ``keep_top`` or ``recycle`` of the
      group ranks and may drop them, and the visual tokens per layer count them;
    - take the rotary id of the image's last token (their place in the causal order is after it);
      with ``renumber`` the stream is renumbered ``0..n-1`` after they join, merged tokens included,
      as SparseVLM's ``position_ids[:, :n]`` does;
    - run through the layers from ``layer`` on and are in those layers' decode cache (not in the
      layers before).

    The clustering's pairwise distances come from the ``m x m`` Gram matrix of the chosen states, a
    matmul declared as scoring work (``RunStats.add_projection``: ``2 m^2 d`` FLOPs per sample).
    """

    kind: ClassVar[str] = "recycle"
    share: float = 0.3
    cluster_size: int = 10

    def describe(self) -> str:
        return (f"{KeepTop.describe(self)}; recycle the top {self.share:g} of the dropped into DPC-KNN merges "
                f"(1 per {self.cluster_size})")

    def check(self, layout: Layout) -> None:
        KeepTop.check(self, layout)
        if isinstance(self.share, bool) or not isinstance(self.share, (int, float)) or not 0.0 < self.share <= 1.0:
            raise ScheduleError(f"share must be a ratio in (0, 1], not {self.share!r}")
        if isinstance(self.cluster_size, bool) or not isinstance(self.cluster_size, int) or self.cluster_size < 1:
            raise ScheduleError(f"cluster_size must be a count >= 1, not {self.cluster_size!r}")

    def count(self, tokens: TokenCounts) -> None:
        carried = tokens.visual[self.stream]
        before = carried.get(self.group, 0)
        KeepTop.count(self, tokens)
        dropped = before - carried[self.group]
        carried[self.group] += cluster_count(recycled_count(dropped, self.share), self.cluster_size)

    def apply(self, run: PrefillRun, at: int) -> None:
        """Keep as ``keep_top`` does, merge part of the rest, add the merged tokens, then renumber if asked."""
        import torch
        from vtsched.core.engine.copies import NewTokens, insert_tokens, rope_table
        from vtsched.core.tokens import Role

        keep, scores, in_group = self.choose(run, at)
        rows, bound = run.streams[self.stream], run.bound
        dropped = in_group & ~keep
        rope = rope_table(bound, run.parts.rope_rows)
        group = run.partition.group_id(self.group)
        merged, new = [], []
        for b in range(rows.num_rows):
            gone = torch.nonzero(dropped[b]).flatten()
            m = recycled_count(gone.numel(), self.share)
            k = cluster_count(m, self.cluster_size)
            chosen = rows.hidden[b, gone[torch.sort(-scores[b, gone], stable=True).indices[:m]]]
            merged.append(dpc_knn_merge(chosen, k))
            if m:
                tokens = torch.zeros(rows.num_rows, dtype=torch.long)
                tokens[b] = m
                run.stats.add_projection(self.layer, tokens, m)  # the Gram matrix of the m chosen states
            visual = torch.nonzero(bound.roles[b] == Role.VISUAL).flatten()
            last = visual.max() if visual.numel() else bound.lengths[b] - 1
            before = (last + 1).expand(k).to(torch.long)
            new.append(NewTokens(before, bound.embeds.new_zeros(k, bound.embeds.shape[-1]),
                                 torch.full_like(before, Role.VISUAL), torch.full_like(before, group),
                                 torch.full_like(before, -1), rope[:, b, last][:, None].expand(-1, k)))
        run.streams[self.stream] = rows.keep(keep)
        placed = insert_tokens(run, new)
        run.streams[self.stream] = run.streams[self.stream].add(merged, placed)
        if self.renumber:
            self._renumber(run)

    @classmethod
    def draws(cls, state: DrawState):
        from hypothesis import strategies as st

        events = KeepTop.draws.__func__(cls, state)  # type: ignore[attr-defined]
        if events is None:
            return None
        shares = st.one_of(st.just(0.3), st.floats(0.05, 1.0, allow_subnormal=False))
        return st.builds(lambda e, share, size: dataclasses.replace(e, share=share, cluster_size=size),
                         events, shares, st.integers(1, 4) | st.just(10))


def recycled_count(dropped: int, share: float) -> int:
    """How many of ``dropped`` tokens are recycled: ``int(dropped * share) + 1`` (SparseVLM's top 30%), at most all."""
    return min(dropped, int(dropped * share) + 1) if dropped > 0 else 0


def cluster_count(recycled: int, cluster_size: int) -> int:
    """Into how many tokens ``recycled`` tokens merge: ``int(recycled / cluster_size) + 1``, at most one each."""
    return min(recycled, int(recycled / cluster_size) + 1) if recycled > 0 else 0


def dpc_knn_merge(tokens: torch.Tensor, clusters: int) -> torch.Tensor:
    """``(clusters, d)``: the ``(m, d)`` ``tokens`` clustered by DPC-KNN and each cluster averaged, in
    the order of the cluster centres (highest centre score first), as SparseVLM's ``cluster_and_merge``.

    Distances are Euclidean divided by ``sqrt(d)``; a token's density is ``exp(-mean d^2)`` over its
    ``clusters`` nearest tokens (itself included); its parent distance is the distance to the nearest
    denser token (the largest distance of all for the densest); the ``clusters`` tokens with the
    highest ``density * parent distance`` are the centres; every token joins its nearest centre (the
    first on ties) and each centre its own cluster; a cluster's token is its members' sum divided by
    ``count + 1e-6`` (every token weighs one). Ties in density go to the earlier token (the official
    code adds uniform noise of 1e-6 instead, which is not reproducible); ties in centre score too.
    Density ties are common, not accidents: with two clusters (10 to 19 tokens) a density reads one
    neighbour, so every pair of mutual nearest neighbours ties, which is why the distances are made
    exactly symmetric. Computed in float32 at least, returned in ``tokens``' dtype.
    """
    import torch

    m, d = tokens.shape
    if clusters == 0 or m == 0:
        return tokens[:0]
    x = tokens.to(torch.promote_types(tokens.dtype, torch.float32))
    squared = (x * x).sum(-1)
    gram = x @ x.T
    dist = (squared[:, None] + squared[None, :] - (gram + gram.T)).clamp(min=0)  # exactly symmetric
    dist = dist.fill_diagonal_(0).sqrt() / d**0.5
    density = (-(dist.topk(clusters, dim=-1, largest=False).values ** 2).mean(-1)).exp()
    order = torch.arange(m, device=x.device)
    denser = (density[None, :] > density[:, None]) | ((density[None, :] == density[:, None])
                                                       & (order[None, :] < order[:, None]))  # [i, j]: j denser
    parent = torch.where(denser, dist, dist.max()).min(-1).values
    centres = torch.sort(-(parent * density), stable=True).indices[:clusters]
    assignment = dist[centres].argmin(0)
    assignment[centres] = torch.arange(clusters, device=x.device)
    sums = x.new_zeros(clusters, d).index_add_(0, assignment, x)
    counts = x.new_zeros(clusters).index_add_(0, assignment, x.new_ones(m))
    return (sums / (counts + 1e-6)[:, None]).to(tokens.dtype)
