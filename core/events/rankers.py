"""How a ``keep_top`` event scores the visual tokens it chooses among: one small class per ranker.

Rankers are a registry kind (``vtsched_register_rankers``); the built-ins below register through
that hook too, and ``keep_top`` looks its ``ranker`` up by name at run time. A ranker says at which
layers it can score (:meth:`Ranker.unavailable`), which attention it needs read while earlier
layers run (:meth:`Ranker.probes`; most read nothing) and the scores themselves
(:meth:`Ranker.scores`: ``(index, scores)``, both ``(rows, T)``: positions and their scores).
Scores are recomputed for the few query rows a ranker needs, on any attention backend: the model
is never switched to eager attention and no layer runs twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from vtsched.core.engine.layout import Segment
    from vtsched.core.engine.probes import Probe, QueryRows
    from vtsched.core.engine.run import PrefillRun
    from vtsched.core.events.keep_top import KeepTop

__all__ = ["Ranker", "LayerBeforeRanker", "LastTokenAttention", "NextLayerAttention", "BUILTIN_RANKERS"]


class Ranker:
    """Scores a stream's tokens for a ``keep_top`` event at its layer (built without arguments, per use).

    Implement :meth:`scores`; :meth:`unavailable` if it cannot rank at some layers; :meth:`probes` if
    it needs attention read while earlier layers run (see :class:`LastTokenAttention`).
    """

    name: ClassVar[str]

    def unavailable(self, layer: int, num_layers: int) -> str | None:
        """Why this ranker cannot score at ``layer`` (``None``: it can)."""
        return None

    def probes(self, event: KeepTop, run: PrefillRun, segment: Segment, at: int) -> list[tuple[int, Probe]]:
        return []

    def scores(self, event: KeepTop, run: PrefillRun, at: int) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError


class LayerBeforeRanker(Ranker):
    """Base of rankers that read what layer ``event.layer - 1`` computed (attention rows, keys) through a
    probe: :meth:`probes` plans it in the segment that runs that layer, a subclass builds it in
    :meth:`probe` (``block``: the stream's columns in the packed row, ``own``: its key columns), and
    :meth:`scores` returns what the probe left in ``run.readings.rank`` under ``at``."""

    def unavailable(self, layer: int, num_layers: int) -> str | None:
        return f"{self.name} reads the layer before the event: it needs layer >= 1" if layer < 1 else None

    def probes(self, event: KeepTop, run: PrefillRun, segment: Segment, at: int) -> list[tuple[int, Probe]]:
        layer = event.layer - 1
        if not segment.start <= layer < segment.end:
            return []
        block = segment.block(event.stream)
        own = slice(segment.n_context + block.start, segment.n_context + block.stop)
        return [(layer, self.probe(event, run, segment, block, own, at))]

    def probe(self, event: KeepTop, run: PrefillRun, segment: Segment, block: slice, own: slice, at: int) -> Probe:
        raise NotImplementedError

    def scores(self, event: KeepTop, run: PrefillRun, at: int) -> tuple[torch.Tensor, torch.Tensor]:
        return run.readings.rank.pop(at)


class LastTokenAttention(LayerBeforeRanker):
    """The attention the last prompt token gave each token in the layer before the event (FastV's signal),
    recomputed for that one query row from what that layer attended over."""

    name = "last_token_attention"

    def probe(self, event: KeepTop, run: PrefillRun, segment: Segment, block: slice, own: slice, at: int) -> Probe:
        import torch

        from vtsched.core.engine.probes import QueryRows

        sel = torch.zeros_like(segment.row_roles, dtype=torch.bool)
        sel[:, block] = run.bound.fused(segment.rows.index[:, block], "last")  # every stream has the prompt's text
        return RankProbe(QueryRows.select(segment, sel, block), at, own, segment.rows.index[:, block])


class NextLayerAttention(Ranker):
    """The attention the last prompt token would give each token in layer ``event.layer`` itself, from
    that layer's own input norm and query/key projections on the states entering it, before the drop
    (PyramidDrop's signal). Only one query row and the key projection are computed; the layer itself
    then runs once, on the kept tokens."""

    name = "next_layer_attention"

    def unavailable(self, layer: int, num_layers: int) -> str | None:
        return (f"ranking by the next layer's attention needs a layer after it (layer < {num_layers})"
                if layer >= num_layers else None)

    def scores(self, event: KeepTop, run: PrefillRun, at: int) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        from vtsched.core.engine.attention import attention_probs, build_attention_mask

        layer, rows, context = event.layer, run.streams[event.stream], run.context
        if context is not None and layer >= len(context.keys):  # the shared prefix joins at this boundary
            assert run.prefix is not None
            rows, context = rows.merge(run.prefix), None
        rotary = run.bound.rotary_positions(rows.index)
        cos, sin = run.parts.rotary(rows.hidden, rotary)
        keys = run.parts.key_rows(layer, rows.hidden, cos, sin)
        run.stats.add_projection(layer, rows.valid.sum(1), keys.shape[1] * keys.shape[3])
        key_index, n_context = rows.index, 0
        if context is not None:  # the prefix's keys as the layer will see them
            keys = torch.cat((context.keys[layer], keys), dim=2)
            key_index, n_context = torch.cat((context.index, rows.index), dim=1), context.index.shape[1]
        slot = run.bound.fused(rows.index, "last").to(torch.int8).argmax(1)  # (rows,) the last prompt token
        row = torch.arange(rows.num_rows, device=slot.device)
        queries = run.parts.query_rows(layer, rows.hidden[row, slot][:, None], cos[row, slot][:, None],
                                       sin[row, slot][:, None])
        mask = build_attention_mask(rows.index[row, slot][:, None], key_index, rows.hidden.dtype)
        run.stats.add_probe(layer, torch.ones_like(slot), key_index.shape[1])
        probs = attention_probs(queries, keys, mask, run.parts.scaling)  # (rows, heads, 1, C + T)
        return rows.index, probs[:, :, 0, n_context:].mean(1)


@dataclass(frozen=True)
class RankProbe:
    """For ``last_token_attention``: the attention the stream's last prompt token gives each of its tokens.

    ``own``: the stream's key columns; ``index``: ``(rows, T_s)`` their positions. Kept in
    ``run.readings.rank`` under the event's place ``at``.
    """

    queries: QueryRows
    at: int
    own: slice
    index: torch.Tensor

    def read(self, run: PrefillRun, layer: int, layer_input: torch.Tensor, keys: torch.Tensor) -> None:
        probs = self.queries.probs(run, layer, layer_input, keys)
        run.readings.rank[self.at] = (self.index, probs[..., self.own][:, :, 0].mean(1))  # by position


BUILTIN_RANKERS: dict[str, type[Ranker]] = {r.name: r for r in (LastTokenAttention, NextLayerAttention)}
"""The built-in rankers (a registry adds its plugins': ``Registry.rankers()``)."""
