"""FLOPs of what ran, in the field's usual accounting (FastV), and the cost columns of every results row.

One decoder layer computing ``q`` tokens that attend over ``k`` tokens costs
``4*q*d^2 + 2*q*k*d + 2*q*d*m`` (projections, attention, MLP; ``d`` hidden, ``m`` MLP width).
For a plain causal pass ``q = k = n``, which is FastV's ``4nd^2 + 2n^2d + 2ndm``.

Every results row (``run --json``, ``bench``, ``eval``, ``sweep``, the lmms-eval plugin, ``report``)
reports the same cost columns, computed here and nowhere else (:func:`run_costs` from what a prefill
ran, :func:`nominal_run` from a schedule alone, for ``sweep --dry-run`` and ``--match``):

- ``visual_tokens_input``: visual tokens entering the LLM (its first layer, every stream);
- ``visual_tokens_per_layer``: every visual token row a layer processed, in every stream, summed per
  layer and averaged over all layers: the field's "equivalent tokens". ``parvts`` at K=2 with R of N
  counts ``(2N + (L-2)R) / L``, as ``fastv`` keeping R after layer 2 does;
- ``prefill_gflops``: the decoder's FLOPs in the field's accounting *plus* the method's own scoring
  (``scoring_gflops``: probes read for decisions, projections rankers compute, and the similarity or
  kernel matrices a partitioner builds, :meth:`~vtsched.core.policy.Partitioner.selection_flops`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from vtsched.core.geometry import ModelGeometry
from vtsched.core.engine.stats import RunStats

if TYPE_CHECKING:
    from vtsched.core.schedule import Schedule

__all__ = [
    "layer_flops", "prefill_flops", "executed_prefill_flops", "nominal_parallel_flops", "vision_flops", "scoring_flops",
    "RunCosts", "run_costs", "plan_costs", "selection_flops", "NominalRun", "nominal_run", "nominal_group_sizes", "COST_COLUMNS",
]

#: The cost columns every results row carries, with these names (beside ``budget_counts`` and ``prefill_ms``).
COST_COLUMNS = ("visual_tokens_input", "visual_tokens_per_layer", "prefill_gflops", "scoring_gflops")


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


def visual_input(stats: RunStats) -> torch.Tensor:
    """``(batch,)`` visual tokens entering the LLM: those in the first decoder layer, every stream counted
    (``parvts`` sends all of them in, in parallel streams; ``prune`` only the subject group). Tokens a
    schedule inserts later (``subject-first``) show in the average per layer, not here."""
    total = torch.zeros(stats.batch_size)
    for work in stats.work:
        if work.start == 0:
            total += work.visual.float()
    return total


@dataclass(frozen=True)
class RunCosts:
    """The cost columns of one prefill, per sample (each a ``(batch,)`` tensor); see the module docstring."""

    visual_tokens_input: torch.Tensor
    visual_tokens_per_layer: torch.Tensor  # every stream, averaged over all layers
    prefill_flops: torch.Tensor  # decoder (field's accounting) + scoring
    scoring_flops: torch.Tensor  # probes, ranker projections, partitioner selection

    def row(self, sample: int | None = None) -> dict[str, float]:
        """The :data:`COST_COLUMNS` of one sample, or their means over the batch (``sample=None``)."""
        def pick(values: torch.Tensor) -> float:
            return float(values.double().mean()) if sample is None else float(values[sample])

        return {"visual_tokens_input": pick(self.visual_tokens_input),
                "visual_tokens_per_layer": pick(self.visual_tokens_per_layer),
                "prefill_gflops": pick(self.prefill_flops) / 1e9, "scoring_gflops": pick(self.scoring_flops) / 1e9}


def run_costs(stats: RunStats, geometry: ModelGeometry, selection: torch.Tensor | float = 0.0) -> RunCosts:
    """The cost columns of a prefill from the engine's statistics; ``selection``: the partitioner's
    FLOPs per sample (:func:`selection_flops`), added to the scoring cost."""
    scoring = scoring_flops(stats, geometry) + torch.as_tensor(selection, dtype=torch.float64)
    return RunCosts(
        visual_tokens_input=visual_input(stats),
        visual_tokens_per_layer=stats.visual_per_layer(geometry.num_layers),
        prefill_flops=prefill_flops(stats, geometry) + scoring,
        scoring_flops=scoring,
    )


def selection_flops(partitioner: Any, keep: Sequence[int], num_visual: Sequence[int],
                    geometry: ModelGeometry) -> torch.Tensor:
    """``(batch,)`` FLOPs a partitioner spent choosing ``keep[b]`` of ``num_visual[b]`` tokens (0 without one,
    or for one that declares none: :meth:`~vtsched.core.policy.Partitioner.selection_flops`)."""
    declared = getattr(partitioner, "selection_flops", None)
    if declared is None:
        return torch.zeros(len(keep), dtype=torch.float64)
    return torch.tensor([float(declared(n, k, geometry)) for k, n in zip(keep, num_visual)], dtype=torch.float64)


def plan_costs(plan: Any, stats: RunStats, geometry: ModelGeometry) -> RunCosts:
    """:func:`run_costs` of a planned prefill, the partitioner's selection (of the subject group's size
    per sample, out of each sample's visual tokens) included."""
    partition = plan.partition
    keep = [int((a == 0).sum()) for a in partition.assignment]
    sizes = [int(a.numel()) for a in partition.assignment]
    return run_costs(stats, geometry, selection_flops(plan.partitioner, keep, sizes, geometry))


@dataclass(frozen=True)
class NominalRun:
    """What a schedule runs on one sample, from token counts alone (no weights): the cost columns
    :func:`run_costs` reports after the fact, for ``sweep --dry-run`` and ``--match``."""

    visual_tokens_input: float
    visual_tokens_per_layer: float
    prefill_flops: float  # decoder, field's accounting (no scoring)
    selection_flops: float = 0.0  # the partitioner's selection, when one was given

    @property
    def flops(self) -> float:
        """Decoder plus the partitioner's selection: what ``prefill_gflops`` reports, bar the in-LLM
        probes and ranker projections (a small share, known only once the engine ran)."""
        return self.prefill_flops + self.selection_flops


def nominal_run(schedule: Schedule, geometry: ModelGeometry, group_sizes: Mapping[str, int], *, prefix: int,
                suffix: int, question: int | None = None, share_prefix: bool = True) -> NominalRun:
    """Visual tokens and decoder FLOPs of one sample under ``schedule``, walking its events' effect on
    token counts (:meth:`~vtsched.core.events.Event.count`).

    Each stream carries the ``prefix`` text tokens before the image, its visual groups (sizes from
    ``group_sizes``) and the ``suffix`` tokens after it (``question`` of them the question; default
    all). While streams run in parallel the prefix runs once and each attends to it (the engine's
    ``share_prefix``). Same accounting as :func:`prefill_flops` and :meth:`RunStats.visual_per_layer`.
    """
    from vtsched.core.events.base import TokenCounts  # the events import the engine's side lazily too

    text = {"question": suffix if question is None else question, "post_image": suffix, "last": 1}
    tokens = TokenCounts({s.name: {g: group_sizes.get(g, 0) for g in s.groups} for s in schedule.streams}, text,
                         group_sizes=group_sizes)
    shared_until = 0
    if share_prefix:
        shared_until = next((k for k in range(schedule.num_layers + 1) if len(schedule.layout_at(k)) == 1),
                            schedule.num_layers)
    flops, visual, entering = 0.0, 0.0, 0.0
    for layer in range(schedule.num_layers):
        for event in schedule.events_at(layer):
            event.count(tokens)
        in_layer = 0
        for stream, groups in tokens.visual.items():
            seen = sum(groups.values())
            in_layer += seen
            own = seen + suffix + tokens.copies.get(stream, 0)
            if layer < shared_until:
                flops += float(layer_flops(own, own + prefix, geometry))
            else:
                flops += float(layer_flops(prefix + own, prefix + own, geometry))
        if layer < shared_until:
            flops += float(layer_flops(prefix, prefix, geometry))
        visual += in_layer
        if layer == 0:
            entering = float(in_layer)
    return NominalRun(entering, visual / max(1, schedule.num_layers), flops)


def nominal_group_sizes(groups: Sequence[str], keep: int | None, num_visual: int) -> dict[str, int]:
    """Nominal group sizes of a partition: the subject ``keep`` (all ``num_visual`` tokens for one group or
    no budget), the rest split evenly over the other groups (a plugin's partitioner may split otherwise)."""
    if keep is None or len(groups) == 1:
        return {groups[0]: num_visual} if groups else {}
    rest = num_visual - keep
    others = groups[1:]
    sizes = {groups[0]: keep}
    for i, g in enumerate(others):
        sizes[g] = rest // len(others) + (1 if i < rest % len(others) else 0)
    return sizes
