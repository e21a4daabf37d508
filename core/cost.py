"""FLOPs of what ran, in the field's usual accounting (FastV).

One decoder layer computing ``q`` tokens that attend over ``k`` tokens costs
``4*q*d^2 + 2*q*k*d + 2*q*d*m`` (projections, attention, MLP; ``d`` hidden, ``m`` MLP width).
For a plain causal pass ``q = k = n``, which is FastV's ``4nd^2 + 2n^2d + 2ndm``.
"""

from __future__ import annotations

import torch

from .adapters.base import ModelGeometry
from .stats import RunStats

__all__ = ["layer_flops", "prefill_flops", "nominal_parallel_flops"]


def layer_flops(queries, keys, geometry: ModelGeometry):
    d, m = geometry.hidden_size, geometry.intermediate_size
    return 4 * queries * d * d + 2 * queries * keys * d + 2 * queries * d * m


def prefill_flops(stats: RunStats, geometry: ModelGeometry) -> torch.Tensor:
    """``(batch,)`` decoder FLOPs of a prefill, from the token counts the engine recorded."""
    total = torch.zeros(stats.batch_size, dtype=torch.float64)
    if stats.prefix is not None:
        p = stats.prefix.double()
        total += geometry.num_layers * layer_flops(p, p, geometry)
    for w in stats.work:
        total += w.layers * layer_flops(w.queries.double(), w.keys.double(), geometry)
    return total


def nominal_parallel_flops(
    geometry: ModelGeometry, *, system: int, question: int, keep: int, drop_layer: int, share_prefix: bool = False
) -> float:
    """METHOD.md's closed form for ParVTS: ``K*[F(n_S) + F(n_N)] + (L-K)*F(n_S)``."""
    n_s = system + keep + question
    n_n = system + (geometry.num_visual - keep) + question

    def f(n: int) -> float:
        return float(layer_flops(n, n, geometry))

    total = drop_layer * (f(n_s) + f(n_n)) + (geometry.num_layers - drop_layer) * f(n_s)
    if share_prefix:
        total -= drop_layer * f(system)
    return total
