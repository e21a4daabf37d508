"""``keep_top``: a stream keeps only the tokens of a group that a ranker scores highest."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from vtsched.core.errors import ScheduleError
from vtsched.core.events.base import DrawState, Event, Layout, TokenCounts
from vtsched.core.events.rankers import BUILTIN_RANKERS

if TYPE_CHECKING:  # pragma: no cover
    from vtsched.core.engine.layout import Segment
    from vtsched.core.engine.probes import Probe
    from vtsched.core.engine.run import PrefillRun

__all__ = ["KeepTop", "kept_count"]


@dataclass(frozen=True, slots=True)
class KeepTop(Event):
    """Keep, in ``stream``, the ``keep`` visual tokens of ``group`` that ``ranker`` scores highest.

    The kept tokens stay in ``group``; the others leave the stream. ``keep`` is a count, or
    a ratio of the group's current size when it is a float in (0, 1]; or a tuple of those, one per
    sample of the batch (a policy that solves its budget per sample, e.g. ``pdrop`` with a count
    budget on images with different token counts). ``ranker`` names how the engine scores tokens
    (:mod:`vtsched.core.events.rankers`):

    - ``"last_token_attention"``: the attention the last prompt token gave them in layer ``layer - 1``
      (FastV's signal), recomputed for that one query row from what that layer attended over;
    - ``"next_layer_attention"``: the attention the last prompt token would give them in layer
      ``layer`` itself, from that layer's own input norm and query/key projections applied to its
      input, before the drop (PyramidDrop's signal); it needs ``layer < num_layers``, not a layer before.

    ``renumber``: after the drop, the stream's tokens take rotary ids ``0..n-1`` in their order
    (their causal order is unchanged) and decoded tokens continue after them at the layers that
    follow, as PyramidDrop does; for one stream without carried copies, and only where rotary ids are
    indices (Qwen2-VL's M-RoPE ids are grid coordinates and stay). By default every token keeps its
    rotary id, the engine's rule.
    """

    kind: ClassVar[str] = "keep_top"
    layer: int
    stream: str
    group: str
    keep: int | float | tuple[int | float, ...]
    ranker: str = "last_token_attention"
    renumber: bool = False

    def describe(self) -> str:
        if isinstance(self.keep, tuple):
            amount = "per sample " + "/".join(f"{k:.4g}" if isinstance(k, float) else str(k) for k in self.keep) + " of"
        else:
            amount = f"{self.keep:g} of" if isinstance(self.keep, float) else f"top {self.keep} of"
        renumbered = ", renumbered" if self.renumber else ""
        return f"keep {amount} {self.group} in {self.stream} by {self.ranker}{renumbered}"

    def check(self, layout: Layout) -> None:
        if layout.group(self.group) not in layout.carried(self.stream):
            raise ScheduleError(f"{self.stream} does not carry {self.group}")
        if not all(_valid_keep(k) for k in (self.keep if isinstance(self.keep, tuple) else (self.keep,))):
            raise ScheduleError("keep must be a count >= 0 or a ratio in (0, 1] (or one per sample)")
        if not isinstance(self.ranker, str) or not self.ranker:
            raise ScheduleError("ranker must be a ranker's name")
        ranker = BUILTIN_RANKERS.get(self.ranker)  # a plugin's ranker is checked against the registry
        reason = ranker().unavailable(self.layer, layout.num_layers) if ranker is not None else None
        if reason:
            raise ScheduleError(reason)

    def check_components(self, registry: Any) -> None:
        """The ranker is registered (built-in or a plugin's) and can rank at this layer."""
        rankers = registry.rankers()
        if self.ranker not in rankers:
            raise ScheduleError(f"{self.describe()}: unknown ranker {self.ranker!r}; known: "
                                f"{', '.join(registry.names('ranker'))}")

    def count(self, tokens: TokenCounts) -> None:
        carried = tokens.visual[self.stream]
        keep = self.keep[0] if isinstance(self.keep, tuple) else self.keep  # one sample's amount
        carried[self.group] = kept_count(keep, carried.get(self.group, 0))

    def per_sample(self, each: Sequence[Event]) -> Event | None:
        """Events differing only in a single ``keep`` each merge into one with a ``keep`` per sample."""
        same = dataclasses.replace(self, keep=0)
        if all(isinstance(e, KeepTop) and not isinstance(e.keep, tuple) and dataclasses.replace(e, keep=0) == same
               for e in each):
            return dataclasses.replace(self, keep=tuple(e.keep for e in each))  # type: ignore[attr-defined]
        return Event.per_sample(self, each)

    # -- the engine -------------------------------------------------------------------------------
    def probes(self, run: PrefillRun, segment: Segment, at: int) -> list[tuple[int, Probe]]:
        return run.ranker(self.ranker).probes(self, run, segment, at)

    def apply(self, run: PrefillRun, at: int) -> None:
        """Keep the group's tokens that the ranker scored highest (stable on ties)."""
        keep, _scores, _in_group = self.choose(run, at)
        run.streams[self.stream] = run.streams[self.stream].keep(keep)
        if self.renumber:
            self._renumber(run)

    def choose(self, run: PrefillRun, at: int) -> tuple[Any, Any, Any]:
        """``(keep, scores, in_group)``, each ``(rows, T_s)`` over the stream's slots: which slots stay (every
        slot outside the group, and the group's top ``keep`` by the ranker, stable on ties), the ranker's
        score of each group slot (``-inf`` elsewhere, and for group slots it did not score) and which
        slots are the group's. What a variant that also uses the dropped tokens (``recycle``) starts from."""
        import torch

        rows, bound = run.streams[self.stream], run.bound
        ranked_index, ranked = self._scores(run, at)
        by_position = torch.full(bound.roles.shape, float("-inf"), device=ranked.device)
        valid = ranked_index >= 0
        by_position[torch.nonzero(valid)[:, 0], ranked_index[valid]] = ranked[valid]
        in_group = bound.lookup(bound.groups, rows.index) == run.partition.group_id(self.group)
        scores = by_position.gather(1, rows.positions).masked_fill(~in_group, float("-inf"))
        keep = ~in_group
        amounts = self.keep if isinstance(self.keep, tuple) else (self.keep,) * rows.num_rows
        if len(amounts) != rows.num_rows:
            raise ScheduleError(f"{self.describe()}: {len(amounts)} per-sample amounts for {rows.num_rows} samples")
        for b, amount in enumerate(amounts):  # among the group's slots only: a slot the ranker did not score
            group = torch.nonzero(in_group[b]).flatten()  # (-inf) must not tie with the slots outside it
            top = group[torch.sort(-scores[b, group], stable=True).indices[:kept_count(amount, group.numel())]]
            keep[b, top] = True
        return keep, scores, in_group

    def _scores(self, run: PrefillRun, at: int) -> tuple[Any, Any]:
        """The ranker's ``(index, scores)``, refused in one line naming it when malformed."""
        import torch

        ranker = run.ranker(self.ranker)
        reason = ranker.unavailable(self.layer, run.schedule.num_layers)
        if reason:
            raise ScheduleError(f"{self.describe()}: {reason}")
        index, scores = ranker.scores(self, run, at)
        if not (isinstance(index, torch.Tensor) and isinstance(scores, torch.Tensor)) or index.shape != scores.shape \
                or index.dim() != 2 or index.shape[0] != run.streams[self.stream].num_rows:
            shapes = tuple(getattr(index, "shape", ())), tuple(getattr(scores, "shape", ()))
            raise ScheduleError(f"ranker {self.ranker!r} returned index/scores of shapes {shapes}; it must return "
                                "two (rows, T) tensors, positions and their scores")
        if not bool(torch.isfinite(scores[index >= 0]).all()):
            raise ScheduleError(f"ranker {self.ranker!r} returned scores that are not finite (NaN or infinite)")
        return index, scores

    def _renumber(self, run: PrefillRun) -> None:
        """The stream's tokens take rotary ids ``0..n-1`` in causal order, and the next token ``n``.

        Only the rotary ids change: positions (the causal order, the mask) stay. Layers already run keep
        the keys they cached with the old ids; :class:`~vtsched.core.engine.layout.Segment` records each
        layer's next rotary id, so decoded tokens continue after the tokens of each layer's own cache.
        Defined for one stream, no shared prefix apart and no carried copies (a copy shares its token's
        rotary id; there is no order to number them in). Tokens an event made in the stream (a
        ``recycle``'s merges) are ordinary slots and are numbered with the rest. Multi-row rotary ids
        (Qwen2-VL's M-RoPE) are grid coordinates, not indices: there is nothing to renumber.
        """
        import torch
        from vtsched.core.tokens import Role

        bound, rows = run.bound, run.streams[self.stream]
        if run.parts.rope_rows > 1:
            return
        if len(run.streams) > 1 or run.context is not None or bool((bound.roles == Role.CARRIED).any()):
            raise ScheduleError(f"{self.describe()}: renumbering needs one stream, no shared prefix apart and no "
                                "carried copies")
        valid = rows.valid
        table = (bound.rope[0] if bound.rope is not None
                 else torch.arange(bound.roles.shape[1], device=valid.device).expand_as(bound.roles)).clone()
        b_idx, t_idx = torch.nonzero(valid, as_tuple=True)
        table[b_idx, rows.index[b_idx, t_idx]] = (valid.cumsum(1) - 1)[b_idx, t_idx]
        run.bound = dataclasses.replace(bound, rope=table[None], next_rotary=valid.sum(1))

    @classmethod
    def draws(cls, state: DrawState):
        from hypothesis import strategies as st

        carried = [(s, g) for s, gs in state.layout.alive.items() for g in gs]
        rankers = [name for name, ranker in state.rankers.items()
                   if ranker().unavailable(state.layer, state.layout.num_layers) is None]
        if not carried or not rankers:
            return None
        keep = st.one_of(st.integers(0, 8), st.floats(0.0, 1.0, exclude_min=True, allow_subnormal=False))
        return st.builds(lambda sg, k, r: cls(state.layer, sg[0], sg[1], k, r),
                         st.sampled_from(carried), keep, st.sampled_from(rankers))


def kept_count(keep: int | float, n: int) -> int:
    """How many of a group's ``n`` tokens a ``keep`` amount keeps: a count (at most ``n``) or a ratio of ``n``."""
    return min(n, keep) if isinstance(keep, int) else int(round(keep * n))


def _valid_keep(keep: object) -> bool:
    if isinstance(keep, bool):
        return False
    if isinstance(keep, float):
        return 0.0 < keep <= 1.0
    return isinstance(keep, int) and keep >= 0
