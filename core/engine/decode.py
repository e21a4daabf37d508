"""Decoding from the surviving stream's cache, one step for all layers.

After prefill the surviving stream's keys/values per layer form the cache (layers before a fuse
hold its own states, later layers the fused ones). New tokens continue the original position
numbering and attend to every cached key of their layer.

Layers whose cached keys sit at the same positions share one :class:`KeyLayout`, so a step
builds one mask per layout, not one per layer. A single new token after a cache without padding
may attend to every key: it gets no mask at all, as in transformers' own decoding, so SDPA runs
its unmasked kernel.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from vtsched.core.engine.parts import DecoderParts
from vtsched.core.engine.attention import KVBuffer, build_attention_mask
from vtsched.core.engine.layout import LayerInputs, layer_inputs
from vtsched.core.engine.loop import call_layer
from vtsched.core.engine.run import LayerCache

__all__ = ["DecodeState", "KeyLayout", "decode_state", "extend"]


@dataclass(frozen=True)
class KeyLayout:
    """Positions of the cached keys of one or more layers.

    Attributes:
        index: ``(batch, C)`` original positions, ``-1`` for padding.
        padded: whether any slot is padding (new tokens never are, so this stays as prefill left it).
        next_rotary: ``(batch,)`` rotary id of the next token at these layers, or ``None`` for the
            state's own (they differ only after a renumbering ``keep_top``).
    """

    index: torch.Tensor
    padded: bool
    next_rotary: torch.Tensor | None = None

    def grown(self, new_index: torch.Tensor) -> KeyLayout:
        """The layout after ``(batch, n)`` new tokens at positions ``new_index`` joined the cache."""
        n = new_index.shape[1]
        rotary = None if self.next_rotary is None else self.next_rotary + n
        return KeyLayout(torch.cat((self.index, new_index), dim=1), self.padded, rotary)

    def mask(self, query_index: torch.Tensor, dtype: torch.dtype) -> torch.Tensor | None:
        """Additive ``(batch, 1, n, C)`` mask for queries at ``query_index`` over this layout (``None``: see all)."""
        if query_index.shape[1] == 1 and not self.padded:
            return None  # one query after unpadded earlier keys sees every key
        return build_attention_mask(query_index, self.index, dtype)


@dataclass
class DecodeState:
    """The surviving stream's cache after prefill: what decoding continues from.

    Attributes:
        caches: per layer, its keys/values (a :class:`~vtsched.core.engine.attention.KVBuffer`).
        layouts: the distinct key layouts; ``layer_layout[l]`` indexes the one layer ``l`` follows.
        next_position: ``(batch,)`` position of the next token (its place in the sequence).
        next_rotary: ``(batch,)`` its rotary id (the same on every row of multi-row rotary ids).
    """

    caches: list[KVBuffer]
    layouts: list[KeyLayout]
    layer_layout: list[int]
    next_position: torch.Tensor
    next_rotary: torch.Tensor

    @property
    def keys(self) -> list[torch.Tensor]:
        """Per layer ``(batch, kv_heads, C_l, head_dim)`` cached keys."""
        return [c.keys for c in self.caches]

    @property
    def values(self) -> list[torch.Tensor]:
        """Per layer ``(batch, kv_heads, C_l, head_dim)`` cached values."""
        return [c.values for c in self.caches]

    def key_index(self, layer: int) -> torch.Tensor:
        """``(batch, C_l)`` positions of layer ``layer``'s cached keys, ``-1`` for padding."""
        return self.layouts[self.layer_layout[layer]].index


def decode_state(cache: list[LayerCache], next_position: torch.Tensor, next_rotary: torch.Tensor) -> DecodeState:
    """Collect a prefill's per-layer caches; layers with equal key positions share one layout."""
    layouts: list[KeyLayout] = []
    layer_layout: list[int] = []
    for entry in cache:
        rotary = None if entry.next_rotary is None or _same(entry.next_rotary, next_rotary) else entry.next_rotary
        last = layouts[-1] if layouts else None
        if last is None or not (_same_or_none(last.index, entry.index) and _same_or_none(last.next_rotary, rotary)):
            layouts.append(KeyLayout(entry.index, bool((entry.index < 0).any()), rotary))
        layer_layout.append(len(layouts) - 1)
    return DecodeState(
        caches=[KVBuffer(e.keys, e.values) for e in cache],
        layouts=layouts, layer_layout=layer_layout, next_position=next_position, next_rotary=next_rotary,
    )


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and bool(torch.equal(a, b))


def _same_or_none(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    """Both ``None``, the same tensor, or equal ones (checked by identity first: layers of one segment
    share one tensor)."""
    if a is None or b is None:
        return a is b
    return a is b or _same(a, b)


def extend(parts: DecoderParts, state: DecodeState, token_ids: torch.Tensor) -> torch.Tensor:
    """Feed ``(batch, n)`` new tokens after the cache; return their ``(batch, n, vocab)`` logits.

    ``state`` is updated in place: each layer's cache grows by the new tokens.
    """
    return parts.lm_head(parts.norm(extend_states(parts, state, token_ids))).float()


def extend_states(parts: DecoderParts, state: DecodeState, token_ids: torch.Tensor) -> torch.Tensor:
    """As :func:`extend`, returning the new tokens' ``(batch, n, hidden)`` last-layer states before
    the final norm (``Prefill.hidden``'s convention) instead of their logits."""
    n = token_ids.shape[1]
    steps = torch.arange(n, device=token_ids.device)
    index = state.next_position[:, None] + steps
    hidden = parts.embed_tokens(token_ids)

    def rotary_inputs(next_rotary: torch.Tensor) -> LayerInputs:
        rotary = next_rotary[:, None] + steps
        if parts.rope_rows > 1:
            rotary = rotary[None].expand(parts.rope_rows, -1, -1)
        return layer_inputs(parts, hidden, rotary, None)

    shared = rotary_inputs(state.next_rotary)
    rotary = [shared if layout.next_rotary is None else rotary_inputs(layout.next_rotary) for layout in state.layouts]
    state.layouts = [layout.grown(index) for layout in state.layouts]
    inputs = [dataclasses.replace(r, mask=layout.mask(index, hidden.dtype)) for r, layout in zip(rotary, state.layouts)]
    for layer, cache in enumerate(state.caches):
        hidden = call_layer(parts, layer, hidden, inputs[state.layer_layout[layer]], cache)
    state.next_position = state.next_position + n
    state.next_rotary = state.next_rotary + n
    return hidden
