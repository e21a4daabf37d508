"""Attention plumbing the engine hands to unmodified decoder layers.

Every token carries its *original* position id, and a padding slot carries ``-1``. Causality
is therefore a rule on position ids (a query sees keys at positions <= its own), which stays
right however tokens are pruned, inserted or shared between streams.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["build_attention_mask", "KVTap", "KVBuffer", "attention_probs"]


def build_attention_mask(
    query_index: torch.Tensor,
    key_index: torch.Tensor,
    dtype: torch.dtype,
    query_stream: torch.Tensor | None = None,
    key_stream: torch.Tensor | None = None,
) -> torch.Tensor:
    """Additive mask ``(rows, 1, queries, keys)``: 0 where a query may attend, dtype-min elsewhere.

    Args:
        query_index: ``(rows, queries)`` position ids of the queries, ``-1`` for padding.
        key_index: ``(rows, keys)`` position ids of the keys, ``-1`` for padding.
        query_stream, key_stream: ``(queries,)`` / ``(keys,)`` stream number of each column when
            several streams are packed into one row; a key of stream ``-1`` (shared context) is
            visible to every stream.
    A padding query sees every key, so no softmax row is empty (its output is never read).
    """
    allowed = (key_index[:, None, :] >= 0) & (key_index[:, None, :] <= query_index[:, :, None])
    if query_stream is not None and key_stream is not None:
        same = (key_stream[None, :] == query_stream[:, None]) | (key_stream < 0)[None, :]
        allowed &= same[None]
    allowed |= (query_index < 0)[:, :, None]
    zero = torch.zeros((), dtype=dtype, device=query_index.device)
    return torch.where(allowed, zero, torch.finfo(dtype).min)[:, None]


class KVTap:
    """Stands in for a transformers ``Cache`` during one layer call.

    It prepends ``past`` keys/values (a shared prefix, or the decode cache) to the layer's own and
    keeps what the layer attended over, so the engine can cache or probe it. It stores nothing
    across calls and never resizes a tensor it did not create.
    """

    __slots__ = ("past", "keys", "values")

    def __init__(self, past: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        self.past = past
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None

    def update(
        self,
        key_states: torch.Tensor,
        value_states: torch.Tensor,
        layer_idx: int | None = None,
        cache_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(rows, kv_heads, C + T, head_dim)`` keys/values to attend over: ``past`` then the layer's own."""
        if self.past is not None:
            key_states = torch.cat((self.past[0], key_states), dim=2)
            value_states = torch.cat((self.past[1], value_states), dim=2)
        self.keys, self.values = key_states, value_states
        return key_states, value_states



class KVBuffer:
    """One layer's decode cache, kept in buffers with spare room so that a decode step appends in place.

    transformers' ``DynamicCache`` (and :class:`KVTap`) concatenate the whole past with the new
    keys/values at every step and layer, copying the cache each time. Here the first step moves
    the prefill's keys/values into buffers with ``room`` spare tokens, and later steps write only
    the new tokens; the layer attends over a view of the filled part,
    ``(batch, kv_heads, C, head_dim)``, the same values a concatenation would give. When the room
    is used up the buffers are reallocated with ``room`` more. Passed to a layer as its cache.
    """

    __slots__ = ("_keys", "_values", "length", "room")

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, room: int = 256) -> None:
        self._keys, self._values = keys, values  # the prefill's tensors: read, never written
        self.length = keys.shape[2]
        self.room = room

    @property
    def keys(self) -> torch.Tensor:
        return self._keys[:, :, : self.length]

    @property
    def values(self) -> torch.Tensor:
        return self._values[:, :, : self.length]

    def update(
        self,
        key_states: torch.Tensor,
        value_states: torch.Tensor,
        layer_idx: int | None = None,
        cache_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Append ``(batch, kv_heads, n, head_dim)`` new keys/values; return all ``C + n`` of them."""
        n = key_states.shape[2]
        if self.length + n > self._keys.shape[2]:
            self._keys = _with_room(self.keys, self.length + n + self.room)
            self._values = _with_room(self.values, self.length + n + self.room)
        self._keys[:, :, self.length : self.length + n] = key_states
        self._values[:, :, self.length : self.length + n] = value_states
        self.length += n
        return self.keys, self.values


def _with_room(states: torch.Tensor, capacity: int) -> torch.Tensor:
    """A new ``(batch, heads, capacity, dim)`` buffer starting with ``states``."""
    batch, heads, length, dim = states.shape
    buffer = states.new_empty((batch, heads, capacity, dim))
    buffer[:, :, :length] = states
    return buffer

def attention_probs(
    queries: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor | None, scaling: float
) -> torch.Tensor:
    """Softmax attention of a few query rows, in float32.

    Args:
        queries: ``(rows, heads, q, head_dim)``, already rotated.
        keys: ``(rows, kv_heads, k, head_dim)`` as the layer attended over.
        mask: additive ``(rows, 1, q, k)`` or ``None`` (all keys visible).
    Returns ``(rows, heads, q, k)`` probabilities.
    """
    groups = queries.shape[1] // keys.shape[1]
    if groups > 1:
        keys = keys.repeat_interleave(groups, dim=1)
    scores = torch.matmul(queries.float(), keys.float().transpose(2, 3)) * scaling
    if mask is not None:
        scores = scores + mask.float()
    return torch.softmax(scores, dim=-1)
