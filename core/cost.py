"""FLOPs of what ran, in the field's usual accounting (FastV).

One decoder layer computing ``q`` tokens that attend over ``k`` tokens costs
``4*q*d^2 + 2*q*k*d + 2*q*d*m`` (projections, attention, MLP; ``d`` hidden, ``m`` MLP width).
For a plain causal pass ``q = k = n``, which is FastV's ``4nd^2 + 2n^2d + 2ndm``.
"""

from __future__ import annotations

import torch

from vtsched.core.geometry import ModelGeometry
from vtsched.core.engine.stats import RunStats

__all__ = [
    "layer_flops", "prefill_flops", "executed_prefill_flops", "nominal_parallel_flops", "vision_flops", "scoring_flops",
]


def layer_flops(queries, keys, geometry: ModelGeometry):
    d, m = geometry.hidden_size, geometry.intermediate_size
    return 4 * queries * d * d + 2 * queries * keys * d + 2 * queries * d * m


def prefill_flops(stats: RunStats, geometry: ModelGeometry, *, executed: bool = False) -> torch.Tensor:
    """``(batch,)`` decoder FLOPs of a prefill, from the token counts the engine recorded.

    By default attention counts the keys each token may attend to (the field's accounting);
    ``executed=True`` counts every key column the kernel scored, masked cross-stream ones included.
    """
    total = torch.zeros(stats.batch_size, dtype=torch.float64)
    if stats.prefix is not None:
        p = stats.prefix.double()
        total += stats.prefix_layers * layer_flops(p, p, geometry)
    for w in stats.work:
        keys = w.packed_keys if executed else w.keys
        total += w.layers * layer_flops(w.queries.double(), keys.double(), geometry)
    return total


def nominal_parallel_flops(
    geometry: ModelGeometry, *, system: int, question: int, keep: int, drop_layer: int, share_prefix: bool = False
) -> float:
    """METHOD.md's closed form for ParVTS: ``K*[F(n_S) + F(n_N)] + (L-K)*F(n_S)``.

    With ``share_prefix`` the system prefix runs once for layers < K and each stream's tokens
    attend over it as context, which is what the engine does.
    """
    n_s = system + keep + question
    n_n = system + (geometry.num_visual - keep) + question

    def f(q: int, k: int | None = None) -> float:
        return float(layer_flops(q, q if k is None else k, geometry))

    if share_prefix:
        parallel = f(system) + f(n_s - system, n_s) + f(n_n - system, n_n)
    else:
        parallel = f(n_s) + f(n_n)
    return drop_layer * parallel + (geometry.num_layers - drop_layer) * f(n_s)


def vision_flops(geometry: ModelGeometry) -> float:
    """FLOPs of the vision tower for one image (same accounting), plus the projector."""
    n, d, m = geometry.vision_tokens, geometry.vision_hidden_size, geometry.vision_intermediate_size
    tower = geometry.vision_layers * (4 * n * d * d + 2 * n * n * d + 2 * n * d * m)
    projector = 2 * geometry.num_visual * (d * geometry.hidden_size + geometry.hidden_size**2)
    return float(tower + projector)


def scoring_flops(stats: RunStats, geometry: ModelGeometry) -> torch.Tensor:
    """``(batch,)`` FLOPs of attention read for decisions: query projections and score rows, and the
    projections rankers compute to decide (``RunStats.add_projection``)."""
    total = torch.zeros(stats.batch_size, dtype=torch.float64)
    d = geometry.hidden_size
    for _layer, queries, keys in stats.probes:
        total += 2 * queries.double() * d * d + 2 * queries.double() * keys * d
    for _layer, tokens, width in stats.projections:  # e.g. next_layer_attention's key projection
        total += 2 * tokens.double() * d * width
    return total


def executed_prefill_flops(stats: RunStats, geometry: ModelGeometry) -> torch.Tensor:
    """``(batch,)`` FLOPs (2 per multiply-add) of the decoder matmuls the engine executed.

    Unlike the field's accounting this follows the model exactly: grouped K/V projections, the
    gated MLP's three matrices, and attention over every packed key column (masked ones too).
    It is what ``torch.utils.flop_counter`` measures, and the tests hold it to that.
    """
    d, m = geometry.hidden_size, geometry.intermediate_size
    attn = geometry.num_heads * geometry.head_dim
    kv = geometry.num_kv_heads * geometry.head_dim

    def layer(q, k):
        return 2 * q * d * (attn + 2 * kv) + 2 * q * attn * d + 4 * q * k * attn + 6 * q * d * m

    total = torch.zeros(stats.batch_size, dtype=torch.float64)
    if stats.prefix is not None:
        p = stats.prefix.double()
        total += stats.prefix_layers * layer(p, p)
    for w in stats.work:
        total += w.layers * layer(w.queries.double(), w.packed_keys.double())
    return total
