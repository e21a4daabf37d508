"""key_norm: rank visual tokens by the norm of their keys in the event's own layer.

Tokens whose keys are long dominate attention logits wherever a query points; DART picks its pivot
tokens by this signal. This file is the finished ranker of docs/tutorial-write-a-ranker.md.
"""

from __future__ import annotations

import torch

from vtsched.core.events import Ranker


class KeyNorm(Ranker):
    """The L2 norm of each token's keys (all heads) in layer ``event.layer``, from that layer's own
    input norm and key projection on the states entering it."""

    name = "key_norm"

    def unavailable(self, layer: int, num_layers: int) -> str | None:
        return f"key_norm reads the keys of the layer it ranks at (layer < {num_layers})" if layer >= num_layers else None

    def scores(self, event, run, at) -> tuple[torch.Tensor, torch.Tensor]:
        rows = run.streams[event.stream]  # (rows, T) positions and their states entering the layer
        cos, sin = run.parts.rotary(rows.hidden, run.bound.rotary_positions(rows.index))
        keys = run.parts.key_rows(event.layer, rows.hidden, cos, sin)  # (rows, kv_heads, T, head_dim)
        run.stats.add_projection(event.layer, rows.valid.sum(1), keys.shape[1] * keys.shape[3])  # its FLOPs
        return rows.index, keys.float().pow(2).sum(dim=(1, 3)).sqrt()
