"""The interface the engine calls: the pieces of a language model it drives, layer by layer.

The engine owns this contract (it is what ``Engine`` is built from); an adapter builds one for its
family (:meth:`~vtsched.core.adapters.base.ModelAdapter.decoder`), so the engine never imports an
adapter and an adapter imports the engine's interface, not the other way round.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["DecoderParts"]


@dataclass
class DecoderParts:
    """The pieces of the language model the engine drives, layer by layer.

    ``query_rows(layer, hidden, cos, sin)`` recomputes the rotated attention queries of a few
    tokens of one layer (``hidden``: ``(rows, q, hidden)`` layer input) so the engine can read
    attention without switching the model to eager attention; ``key_rows(layer, hidden, cos, sin)``
    likewise the rotated keys ``(rows, kv_heads, T, head_dim)`` a layer would compute from its input,
    for rankers that read a layer's attention before it runs (PyramidDrop's).

    ``rotary(hidden, positions)`` takes ``(rows, T)`` position ids, or ``(rope_rows, rows, T)``
    when ``rope_rows > 1``, and returns ``(cos, sin)`` of shape ``(rows, T, head_dim)``.
    ``layer_position_ids``: whether decoder layers are called with ``position_ids`` (the 1-D
    rotary ids, as LLaMA's model does) or ``None`` (as Qwen2-VL's text model does for unpacked
    sequences; its layers only read them for packed FlashAttention).
    """

    embed_tokens: nn.Module
    layers: Sequence[nn.Module]
    rotary: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
    norm: nn.Module
    lm_head: nn.Module
    attn_implementation: str
    query_rows: Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
    key_rows: Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
    scaling: float
    rope_rows: int = 1  # rows of rotary position ids: 1 (LLaMA-style), 3 (Qwen2-VL's M-RoPE)
    layer_position_ids: bool = True  # decoder layers get the 1-D rotary ids, as the family's own model passes them
