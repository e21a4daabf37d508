"""Which visual tokens ran where: the tokens of every stream in every run of layers, read during a prefill.

:class:`~vtsched.core.engine.stats.RunStats` counts what ran; :mod:`vtsched.core.tools.show` needs
*which* tokens (a ``keep_top`` keeps tokens that only the model's attention decides). The engine
already hands its statistics each run of layers as it packs it (``RunStats.add_segment``: the packed
rows, each stream's column block, the role of each slot), so a :class:`TracingEngine` gives a prefill
a :class:`TraceStats`, which records, besides the counts, each stream's visual tokens (in image
order, the order of ``Sample.pixel_boxes``) and its carried text copies. Nothing in the engine
changes: the same prefill runs, and the counts are the ones every report uses.

With ``attention_layers`` the engine also reads where each live stream's last prompt token (the
token whose next-token distribution is the answer's first token, in the surviving stream) looks at
those layers: the layer's own query projection of that one row against the keys the layer attended
over, under the layer's mask, with :func:`~vtsched.core.engine.attention.attention_probs`, as the
engine's probes do. It works under SDPA (the model never switches to eager attention) because only
that one row is recomputed; the probe reads a layer's input and keys through a forward hook that
lives only for the prefill.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from vtsched.core.engine import Engine
from vtsched.core.engine.attention import attention_probs
from vtsched.core.engine.rows import Rows
from vtsched.core.engine.stats import RunStats
from vtsched.core.tokens import PromptBatch, Role

__all__ = ["StreamTokens", "TraceStats", "TracingEngine", "LastTokenAttention"]


@dataclass(frozen=True)
class StreamTokens:
    """The tokens one stream carried through layers ``start..end-1``, for one sample.

    ``visual``: visual token numbers in image order (indices into ``Sample.pixel_boxes``), sorted;
    ``carried``: copies of other streams' text tokens it carried (``carry``).
    """

    start: int
    end: int
    stream: str
    visual: tuple[int, ...]
    carried: int


@dataclass(frozen=True)
class LastTokenAttention:
    """Head-averaged attention of a stream's last prompt token at one layer, for one sample.

    ``visual``: ``(num_visual,)`` its attention on each visual token (image order; 0 for tokens the
    stream does not carry); ``total``: the sum over all its keys (1 up to rounding), so
    ``visual.sum() / total`` is the share that went to the image.
    """

    layer: int
    stream: str
    visual: torch.Tensor
    total: float


@dataclass
class TraceStats(RunStats):
    """:class:`RunStats` that also records which tokens each stream carried in each run of layers.

    ``visual_number``: ``(batch, T_max)`` long, a position's visual token number (``-1`` for other
    tokens); ``origin``: reads the run's current slot-to-position table (carried copies renumber
    slots), set by :class:`TracingEngine`.
    """

    visual_number: torch.Tensor | None = None
    origin: Any = None
    tokens: list[list[StreamTokens]] = field(default_factory=list)  # per sample
    layout: dict[str, Any] = field(default_factory=dict)  # the segment being run, for the attention probe

    def add_segment(self, start: int, end: int, names: list[str], rows: Rows, blocks: list[slice],
                    context_index: torch.Tensor, roles: torch.Tensor, split: bool = False) -> None:
        super().add_segment(start, end, names, rows, blocks, context_index, roles, split)
        assert self.visual_number is not None
        positions = self.origin(rows.index) if self.origin is not None else rows.index
        numbers = self.visual_number.to(positions.device).gather(1, positions.clamp(min=0))
        numbers = numbers.masked_fill((positions < 0) | (roles != Role.VISUAL), -1)
        if not self.tokens:
            self.tokens = [[] for _ in range(self.batch_size)]
        for name, block in zip(names, blocks):
            for b in range(self.batch_size):
                visual = numbers[b, block]
                self.tokens[b].append(StreamTokens(
                    start, end, name, tuple(sorted(int(v) for v in visual[visual >= 0].tolist())),
                    int((roles[b, block] == Role.CARRIED).sum())))
        self.layout = {"start": start, "end": end, "names": list(names), "blocks": list(blocks),
                       "index": rows.index, "numbers": numbers, "split": split, "calls": {}}


class TracingEngine(Engine):
    """An :class:`Engine` whose prefills record which tokens ran (:class:`TraceStats`) and, at
    ``attention_layers``, where each live stream's last prompt token looked
    (:class:`LastTokenAttention`, in ``attention``, per sample). Shares ``engine``'s decoder and rules."""

    def __init__(self, engine: Engine, attention_layers: tuple[int, ...] = ()) -> None:
        super().__init__(engine.parts, engine.fusion_rules, share_prefix=engine.share_prefix,
                         split_above=engine.split_above, rankers=engine.rankers)
        self.attention_layers = tuple(attention_layers)
        self.attention: list[list[LastTokenAttention]] = []
        self._run: Any = None

    def prefill(self, batch: PromptBatch, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        self.attention = [[] for _ in range(len(batch))]
        hooks = [self.parts.layers[layer].register_forward_hook(self._probe(layer), with_kwargs=True)
                 for layer in self.attention_layers]
        try:
            return super().prefill(batch, *args, **kwargs)
        finally:
            for hook in hooks:
                hook.remove()
            self._run = None

    def _start(self, batch: PromptBatch, *args: Any, **kwargs: Any) -> Any:
        run = super()._start(batch, *args, **kwargs)
        numbers = torch.full(run.bound.roles.shape, -1, dtype=torch.long)
        for b, sample in enumerate(batch.samples):
            numbers[b, sample.visual_positions] = torch.arange(sample.num_visual)
        stats = TraceStats(batch_size=len(batch), visual_number=numbers)

        def origin(index: torch.Tensor) -> torch.Tensor:
            bound = run.bound  # read at call time: a carry replaces the tables
            return index if bound.origin is None else bound.lookup(bound.origin, index)

        stats.origin = origin
        run.stats = stats
        self._run = run
        return run

    def _probe(self, layer: int) -> Any:
        def read(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
            run = self._run
            layout = run.stats.layout if run is not None else {}
            if not layout or not layout["start"] <= layer < layout["end"]:
                return  # the shared prefix pass (no visual tokens), or decoding
            hidden = args[0] if args else kwargs["hidden_states"]
            blocks = layout["blocks"]
            if layout["split"]:  # one call per stream, in block order
                call = layout["calls"].get(layer, 0)
                layout["calls"][layer] = call + 1
                chosen, offset = [call], blocks[call].start
            else:
                chosen, offset = list(range(len(blocks))), 0
            self._read(run, layer, hidden, kwargs, layout, chosen, offset)

        return read

    def _read(self, run: Any, layer: int, hidden: torch.Tensor, kwargs: dict[str, Any], layout: dict[str, Any],
              chosen: list[int], offset: int) -> None:
        """Each chosen stream's last prompt token: its attention over the keys this call attended over."""
        keys = kwargs["cache"].keys  # (rows, kv_heads, C + T, head_dim): what the layer attended over
        cos, sin = kwargs["position_embeddings"]
        mask = kwargs.get("attention_mask")
        width = hidden.shape[1]
        n_context = keys.shape[2] - width
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        for i in chosen:
            block = layout["blocks"][i]
            index = layout["index"][:, block]
            last = run.bound.fused(index, "last")  # (rows, T_block)
            has = last.any(1)
            slot = last.to(torch.int8).argmax(1) + block.start - offset  # slot in this call's columns
            queries = self.parts.query_rows(layer, hidden[rows, slot][:, None], cos[rows, slot][:, None],
                                            sin[rows, slot][:, None])
            if mask is not None:
                row_mask = mask[rows, :, slot][:, :, None]  # (rows, 1, 1, C + T)
            else:  # plain causal: a slot sees the slots up to its own
                allowed = torch.arange(keys.shape[2], device=hidden.device)[None] <= (slot + n_context)[:, None]
                row_mask = torch.zeros(allowed.shape, dtype=torch.float32, device=hidden.device)
                row_mask = row_mask.masked_fill(~allowed, torch.finfo(torch.float32).min)[:, None, None]
            probs = attention_probs(queries, keys, row_mask, self.parts.scaling)[:, :, 0].mean(1)  # (rows, C + T)
            own = probs[:, n_context + block.start - offset: n_context + block.stop - offset]
            numbers = layout["numbers"][:, block]
            for b in range(hidden.shape[0]):
                if not bool(has[b]):
                    continue
                visual = torch.zeros(int(run.stats.visual_number[b].max()) + 1, dtype=torch.float64)
                on_image = numbers[b] >= 0
                visual[numbers[b][on_image].cpu()] = own[b][on_image].double().cpu()
                self.attention[b].append(LastTokenAttention(layer, layout["names"][i], visual,
                                                            float(probs[b].sum())))
