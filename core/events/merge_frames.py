"""``merge_frames``: a visual token that repeats the same patch of the frame before it merges into it (FrameFusion).

FrameFusion (Fu et al., 2025; thu-nics/FrameFusion, ``FrameFusion.forward`` with
``compute_similarity_and_token_index_by_patch`` and ``merge_tokens_and_get_mask`` in
``framefusion/main.py``) merges, in the first layers of the LLM, each video token whose state is
similar to the token of the same merged patch in the previous frame still present. This kind is that
merge, one layer at a time, on the states entering ``layer``:

- *the same patch*: visual tokens of a sample with equal M-RoPE height and width ids (the model's
  own grid coordinates, so no frame layout has to travel with the schedule); among them, position
  order is frame order. A still image has one token per patch and merges nothing; a family whose
  rotary ids are not grid coordinates (LLaVA) has no patches across frames and merges nothing;
- *similar*: cosine similarity of the two states ``>= threshold`` (the official
  ``similarity_lower_bound``, 0.6);
- *merge*: a run of consecutive tokens of one patch that each pass merges into the token before the
  run (its root, which stays): the root's state becomes the mean of itself and the run's tokens,
  and the run's tokens leave the stream. The root keeps its position and rotary ids;
- ``floor``: at most ``n - floor`` of the group's ``n`` tokens in the stream merge; when more pass,
  the most similar merge (the official top-k branch, taken when merging alone would exceed the
  compute budget). ``floor`` is a count, or one count per sample.

How many tokens merge depends on the states, which no schedule knows before the run: :meth:`count`
leaves the counts unchanged, so the dry run's FLOPs (``vtsched sweep --dry-run``) are an upper
bound for this kind and the executed ones are what the engine reports. The similarities (one cosine
per adjacent pair, element-wise) are not counted as FLOPs, like DART's scoring.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from vtsched.core.errors import ScheduleError
from vtsched.core.events.base import DrawState, Event, Layout, TokenCounts

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from vtsched.core.engine.run import PrefillRun

__all__ = ["MergeFrames", "frame_merges"]


@dataclass(frozen=True, slots=True)
class MergeFrames(Event):
    """Merge, in ``stream``, each visual token of ``group`` whose state has cosine similarity ``>= threshold``
    with the same patch's token in the previous frame still present, keeping at least ``floor`` of the group."""

    kind: ClassVar[str] = "merge_frames"
    layer: int
    stream: str
    group: str
    threshold: float = 0.6
    floor: int | tuple[int, ...] = 0

    def describe(self) -> str:
        floor = "/".join(map(str, self.floor)) if isinstance(self.floor, tuple) else str(self.floor)
        return (f"merge {self.group} in {self.stream} into the previous frame's patch at cosine >= {self.threshold:g}, "
                f"keeping at least {floor}")

    def check(self, layout: Layout) -> None:
        if layout.group(self.group) not in layout.carried(self.stream):
            raise ScheduleError(f"{self.stream} does not carry {self.group}")
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float)) \
                or not -1.0 <= self.threshold <= 1.0:
            raise ScheduleError(f"threshold must be a cosine similarity in [-1, 1], not {self.threshold!r}")
        floors = self.floor if isinstance(self.floor, tuple) else (self.floor,)
        if not floors or not all(isinstance(f, int) and not isinstance(f, bool) and f >= 0 for f in floors):
            raise ScheduleError(f"floor must be a count >= 0 (or one per sample), not {self.floor!r}")

    def count(self, tokens: TokenCounts) -> None:
        """No change: how many merge depends on the states (the dry run is an upper bound)."""

    def per_sample(self, each: Sequence[Event]) -> Event | None:
        """Events differing only in a single ``floor`` each merge into one with a ``floor`` per sample."""
        same = dataclasses.replace(self, floor=0)
        if all(isinstance(e, MergeFrames) and not isinstance(e.floor, tuple) and dataclasses.replace(e, floor=0) == same
               for e in each):
            return dataclasses.replace(self, floor=tuple(e.floor for e in each))  # type: ignore[attr-defined, misc]
        return Event.per_sample(self, each)

    # -- the engine -------------------------------------------------------------------------------
    def apply(self, run: PrefillRun, at: int) -> None:
        """Merge each sample's similar tokens into their roots, then drop the merged tokens from the stream."""
        import torch
        from vtsched.core.tokens import Role

        rows, bound = run.streams[self.stream], run.bound
        if bound.rope is None or bound.rope.shape[0] < 3:
            return  # rotary ids that are not grid coordinates: no patch repeats across frames
        floors = self.floor if isinstance(self.floor, tuple) else (self.floor,) * rows.num_rows
        if len(floors) != rows.num_rows:
            raise ScheduleError(f"{self.describe()}: {len(floors)} per-sample floors for {rows.num_rows} samples")
        group = run.partition.group_id(self.group)
        in_group = (bound.lookup(bound.roles, rows.index) == Role.VISUAL) \
            & (bound.lookup(bound.groups, rows.index) == group)
        height, width = bound.lookup(bound.rope[1], rows.index), bound.lookup(bound.rope[2], rows.index)
        hidden, keep = rows.hidden.clone(), torch.ones_like(in_group)
        for b in range(rows.num_rows):
            slots = torch.nonzero(in_group[b]).flatten()  # in position order: frame order within a patch
            roots, members = frame_merges(rows.hidden[b, slots], height[b, slots], width[b, slots], self.threshold,
                                          max(slots.numel() - floors[b], 0))
            if not members:
                continue
            root_slots, member_slots = slots[torch.tensor(roots)], slots[torch.tensor(members)]
            summed = hidden[b].index_add(0, root_slots, rows.hidden[b, member_slots])
            counts = torch.zeros(hidden.shape[1], dtype=hidden.dtype, device=hidden.device)
            counts.index_add_(0, root_slots, torch.ones_like(root_slots, dtype=hidden.dtype))
            hidden[b] = summed / (counts + 1)[:, None]
            keep[b, member_slots] = False
        run.streams[self.stream] = dataclasses.replace(rows, hidden=hidden).keep(keep)

    @classmethod
    def draws(cls, state: DrawState):
        from hypothesis import strategies as st

        carried = [(s, g) for s, gs in state.layout.alive.items() for g in gs]
        if not carried:
            return None
        thresholds = st.sampled_from([-1.0, 0.0, 0.6, 0.9]) | st.floats(-1.0, 1.0, allow_subnormal=False)
        return st.builds(lambda sg, t, f: cls(state.layer, sg[0], sg[1], t, f),
                         st.sampled_from(carried), thresholds, st.integers(0, 8))


def frame_merges(states: torch.Tensor, height: torch.Tensor, width: torch.Tensor, threshold: float,
                 most: int) -> tuple[list[int], list[int]]:
    """Which of ``states`` merge into which: ``(roots, members)``, member ``members[i]`` merging into
    ``roots[i]`` (indices into ``states``).

    ``states`` ``(n, d)`` are one sample's visual tokens in position order; ``height``/``width`` ``(n,)``
    their grid coordinates (equal pairs: the same patch, in frame order). Token ``j`` is compared with the
    token before it of its patch; those with cosine ``>= threshold`` merge, at most ``most`` of them (the
    most similar first, earlier first on ties), each into the nearest earlier token of its patch that does
    not merge (so a run of merging tokens shares one root), as ``merge_tokens_and_get_mask`` does.
    """
    import torch

    n = states.shape[0]
    if n < 2 or most <= 0:
        return [], []
    _, patch = torch.unique(torch.stack((height, width), 1), dim=0, return_inverse=True)
    order = torch.sort(patch, stable=True).indices  # by patch, then position: FrameFusion's token_index_by_patch
    ordered, kinds = states[order], patch[order]
    dot = (ordered[:-1] * ordered[1:]).sum(-1)  # the official cosine: dot / (|a| |b|), no epsilon
    similarity = dot / (ordered[:-1].norm(dim=-1) * ordered[1:].norm(dim=-1))
    similarity = torch.cat((similarity.new_full((1,), float("-inf")),
                            torch.where(kinds[1:] == kinds[:-1], similarity, float("-inf"))))
    passing = torch.nonzero(similarity >= threshold).flatten()
    if passing.numel() > most:
        passing = passing[torch.sort(-similarity[passing], stable=True).indices[:most]]
    merged = set(passing.tolist())
    roots, members = [], []
    for j in sorted(merged):
        root = j - 1
        while root in merged:
            root -= 1
        roots.append(int(order[root]))
        members.append(int(order[j]))
    return roots, members
