"""The engine: executes a :class:`~vtsched.core.schedule.Schedule` on an unmodified decoder, layer by layer.

This package is the only place that does sequence surgery: it builds the rows of every stream,
their position ids, masks and rotary embeddings, batches the live streams into one call per
layer, applies events between layers, keeps the surviving stream's KV cache and decodes from
it. Policies and partitioners never touch these tensors.

:class:`Engine` is the front: ``prefill`` binds the batch (:mod:`.binding`), runs the shared
prefix and each segment of layers (:mod:`.loop`, :mod:`.layout`), applies events between
segments (:mod:`.events`) with the attention they need read by probes (:mod:`.probes`), and
``extend`` decodes from the cache (:mod:`.decode`). One :class:`~.run.PrefillRun` holds the state
of a call.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from vtsched.core.engine.parts import DecoderParts
from vtsched.core.engine import decode
from vtsched.core.engine.binding import bind, initial_rows
from vtsched.core.engine.decode import DecodeState, decode_state
from vtsched.core.engine.events import apply_events
from vtsched.core.events.rankers import BUILTIN_RANKERS
from vtsched.core.engine.loop import run_prefix, run_segment
from vtsched.core.engine.run import PrefillRun
from vtsched.core.engine.stats import RunStats
from vtsched.core.errors import ScheduleError
from vtsched.core.fusion import FusionRule
from vtsched.core.partition import Partition
from vtsched.core.schedule import Schedule
from vtsched.core.tokens import PromptBatch, Role

__all__ = ["Engine", "Prefill", "DecodeState"]

SUPPORTED_ATTENTION = ("sdpa", "eager")
SPLIT_ABOVE = 1024  # prompt tokens above which parallel streams run one layer call each


@dataclass
class Prefill:
    """Result of a prefill.

    Attributes:
        logits: ``(batch, vocab)`` next-token logits at each sample's last token.
        hidden: ``(batch, T, hidden)`` last-layer states of the surviving stream, before the final
            norm (when asked); ``all_logits`` are their logits.
        index: ``(batch, T)`` positions of those states in the sample as given, ``-1`` for padding, for
            copies carried from other streams and for tokens an event made (a ``recycle``'s merges)
            (when asked): a position names one token, its own copy.
        state: the decode cache (when asked).
        stats: token counts of what ran, per layer and stream.
    """

    logits: torch.Tensor
    stats: RunStats
    state: DecodeState | None = None
    hidden: torch.Tensor | None = None
    index: torch.Tensor | None = None
    all_logits: torch.Tensor | None = None

    def slots(self, sample: int, positions: torch.Tensor) -> torch.Tensor:
        """Where the tokens at ``positions`` (in the prompt as given, tail included) sit in ``hidden`` /
        ``all_logits`` for ``sample``. Raises when one did not run (a schedule that dropped it)."""
        if self.index is None:
            raise ScheduleError("slots() needs a prefill run with return_hidden=True")
        index = self.index[sample]
        positions = positions.to(index.device)
        match = index[None, :] == positions[:, None]
        if not bool(match.any(1).all()):
            missing = positions[~match.any(1)].tolist()
            raise ScheduleError(f"sample {sample}: positions {missing} are not in the sequence that ran")
        return match.int().argmax(1)


class Engine:
    """Runs schedules on one model through its adapter's :class:`~vtsched.core.engine.parts.DecoderParts`.

    Args:
        parts: the decoder pieces (from ``adapter.decoder()``).
        fusion_rules: name -> fusion rule class (from the registry).
        rankers: name -> ranker class for ``keep_top`` events (from the registry; default: the built-ins).
        share_prefix: compute the common text prefix once when streams run in parallel.
        split_above: prompts longer than this many tokens run parallel streams in one layer call
            each instead of packed into one row (``None``: always packed). Packing costs exactly
            the tokens the streams carry, but the streams then need a block mask, and SDPA's masked
            kernel costs about twice its causal one on long rows (LLaVA-NeXT's 2,928-token spans);
            split, each stream carries the text prefix itself and runs the unmasked causal kernel.
    """

    def __init__(
        self,
        parts: DecoderParts,
        fusion_rules: Mapping[str, type[FusionRule]] | None = None,
        share_prefix: bool = True,
        split_above: int | None = SPLIT_ABOVE,
        rankers: Mapping[str, type] | None = None,
    ) -> None:
        if parts.attn_implementation not in SUPPORTED_ATTENTION:
            raise ScheduleError(
                f"the engine runs with attn_implementation {' or '.join(SUPPORTED_ATTENTION)}, "
                f"not {parts.attn_implementation!r}; load the model with attn_implementation='sdpa'"
            )
        self.parts = parts
        self.fusion_rules = dict(fusion_rules or {})
        self.rankers = dict(rankers if rankers is not None else BUILTIN_RANKERS)
        self.share_prefix = share_prefix
        self.split_above = split_above

    @torch.inference_mode()
    def prefill(
        self,
        batch: PromptBatch,
        schedule: Schedule,
        partition: Partition,
        *,
        tail: list[torch.Tensor] | None = None,
        use_cache: bool = True,
        return_hidden: bool = False,
    ) -> Prefill:
        """Run the prompt through every layer as ``schedule`` says.

        ``tail`` appends token ids to each sample that only the surviving stream carries and no
        fusion touches: exactly how decoded tokens are treated, so a prefill with the generated
        tokens as tail is the no-cache reference of cached decoding.
        """
        if schedule.num_layers != len(self.parts.layers):
            raise ScheduleError(
                f"schedule is for {schedule.num_layers} layers, the model has {len(self.parts.layers)}"
            )
        parallel_until = _parallel_until(schedule)
        split = self.split_above is not None and parallel_until > 0 and max(s.length for s in batch.samples) > self.split_above
        shared_until = parallel_until if self.share_prefix and not split else 0
        run = self._start(batch, schedule, partition, tail, use_cache, shared_until > 0)
        run.split = split
        if shared_until > 0:
            run_prefix(run, shared_until)
        for start, end, _events in schedule.segments():
            apply_events(run, start)
            if run.context is not None and start >= shared_until:
                run.join_prefix()
            if end > start:
                run_segment(run, start, end)
        return self._finish(run, return_hidden)

    @torch.inference_mode()
    def extend(self, state: DecodeState, token_ids: torch.Tensor) -> torch.Tensor:
        """Feed ``(batch, n)`` new tokens after the cache; return their ``(batch, n, vocab)`` logits.

        New tokens take the next original positions and attend to the cached keys of each layer
        (the surviving stream's, fused where the schedule fused). ``state`` is updated.
        """
        return decode.extend(self.parts, state, token_ids)

    @torch.inference_mode()
    def extend_states(self, state: DecodeState, token_ids: torch.Tensor) -> torch.Tensor:
        """As :meth:`extend`, returning the new tokens' ``(batch, n, hidden)`` last-layer states before
        the final norm (``Prefill.hidden``'s convention); ``parts.lm_head(parts.norm(states))`` are
        their logits. What :func:`~vtsched.core.generation.generate` calls when it returns states."""
        return decode.extend_states(self.parts, state, token_ids)

    def _start(
        self,
        batch: PromptBatch,
        schedule: Schedule,
        partition: Partition,
        tail: list[torch.Tensor] | None,
        use_cache: bool,
        share: bool,
    ) -> PrefillRun:
        """Bind the batch and build every stream's initial rows."""
        bound = bind(self.parts, batch, partition, schedule, tail)
        streams = {
            s.name: initial_rows(bound, partition, s.groups, share_prefix=share, survivor=s.name == schedule.survivor)
            for s in schedule.streams
        }
        return PrefillRun(
            parts=self.parts, rules=self.fusion_rules, rankers=self.rankers, schedule=schedule, partition=partition, bound=bound,
            streams=streams, stats=RunStats(batch_size=len(batch)), use_cache=use_cache,
        )

    def _finish(self, run: PrefillRun, return_hidden: bool) -> Prefill:
        """Next-token logits at each sample's last token, and what was asked for besides."""
        survivor = run.streams[run.schedule.survivor]
        last = survivor.valid.sum(1) - 1
        rows = torch.arange(survivor.num_rows, device=last.device)
        logits = self.parts.lm_head(self.parts.norm(survivor.hidden[rows, last])).float()
        result = Prefill(logits=logits, stats=run.stats)
        if return_hidden:
            result.hidden, result.index = survivor.hidden, _sample_positions(run, survivor.index)
            result.all_logits = self.parts.lm_head(self.parts.norm(survivor.hidden)).float()
        if run.use_cache:
            result.state = decode_state(run.cache, run.bound.lengths.clone(), run.bound.next_rotary.clone())
        return result


def _sample_positions(run: PrefillRun, index: torch.Tensor) -> torch.Tensor:
    """Slots -> positions in the sample as given; carried copies read ``-1`` (see :mod:`.carry`)."""
    bound = run.bound
    if bound.origin is None:
        return index
    carried = bound.lookup(bound.roles, index) == Role.CARRIED
    return bound.lookup(bound.origin, index).masked_fill(carried, -1)


def _parallel_until(schedule: Schedule) -> int:
    """First layer entered by a single stream (0 if never parallel). Streams all start at layer 0,
    so once one stream is left it stays alone."""
    for layer in range(schedule.num_layers + 1):
        if len(schedule.layout_at(layer)) == 1:
            return layer
    return schedule.num_layers
