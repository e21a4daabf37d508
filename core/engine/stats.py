"""What a prefill actually ran: token counts per layer and stream, for FLOPs and reports."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from vtsched.core.engine.rows import Rows
from vtsched.core.tokens import Role

__all__ = ["RunStats", "LayerWork"]


@dataclass(frozen=True)
class LayerWork:
    """Work of one stream in a run of layers ``start..end-1``, per sample.

    ``queries``: tokens computed; ``keys``: tokens attended over (shared context included);
    ``packed_keys``: key columns the attention kernel scored (streams packed in one row see each
    other's columns masked); ``visual``: visual tokens among the queries; ``carried``: copies of
    other streams' text tokens among the queries (a ``carry`` event).
    """

    start: int
    end: int
    stream: str
    queries: torch.Tensor  # (batch,)
    keys: torch.Tensor  # (batch,)
    visual: torch.Tensor  # (batch,)
    packed_keys: torch.Tensor  # (batch,)
    carried: torch.Tensor | None = None  # (batch,)

    @property
    def layers(self) -> int:
        return self.end - self.start


@dataclass
class RunStats:
    batch_size: int
    prefix: torch.Tensor | None = None  # (batch,) tokens of the shared prefix pass
    prefix_layers: int = 0  # layers the shared prefix pass ran
    work: list[LayerWork] = field(default_factory=list)
    probes: list[tuple[int, torch.Tensor, int]] = field(default_factory=list)  # (layer, queries, keys)
    fusions: list[tuple[int, tuple[str, ...], torch.Tensor]] = field(default_factory=list)  # (layer, streams, w)
    carries: list[tuple[int, tuple[str, ...], torch.Tensor]] = field(default_factory=list)  # (layer, streams, n)
    projections: list[tuple[int, torch.Tensor, int]] = field(default_factory=list)  # (layer, tokens, width)

    def add_prefix(self, tokens: torch.Tensor, layers: int) -> None:
        self.prefix = tokens.cpu()
        self.prefix_layers = layers

    def add_segment(
        self,
        start: int,
        end: int,
        names: list[str],
        rows: Rows,
        blocks: list[slice],
        context_index: torch.Tensor,
        roles: torch.Tensor,
        split: bool = False,
    ) -> None:
        """Record layers ``start..end-1`` on packed ``rows`` (``names[i]`` in column block ``blocks[i]``).

        ``context_index``: ``(batch, C)`` positions of shared context keys; ``roles``: ``(batch, T)``;
        ``split``: each stream ran its own layer call, so its kernel scored only its own keys.
        """
        valid = rows.valid
        context = (context_index >= 0).sum(1)
        packed = context + valid.sum(1)
        for name, block in zip(names, blocks):
            own = valid[:, block].sum(1)
            if split:
                packed = context + own
            self.work.append(
                LayerWork(
                    start, end, name,
                    queries=own.cpu(),
                    keys=(context + own).cpu(),
                    visual=(roles[:, block] == Role.VISUAL).sum(1).cpu(),
                    packed_keys=packed.cpu(),
                    carried=(roles[:, block] == Role.CARRIED).sum(1).cpu(),
                )
            )

    def add_fusion(self, layer: int, streams: tuple[str, ...], weights: torch.Tensor) -> None:
        """Fusion weights ``(streams, batch, tokens)`` used at ``layer`` (padding slots included)."""
        self.fusions.append((layer, streams, weights.detach().cpu()))

    def add_carry(self, layer: int, streams: tuple[str, ...], tokens: torch.Tensor) -> None:
        """``(batch,)`` copies of ``streams``' text tokens carried into the survivor at ``layer``."""
        self.carries.append((layer, streams, tokens.cpu()))

    def add_probe(self, layer: int, queries: torch.Tensor, keys: int) -> None:
        self.probes.append((layer, queries.cpu(), keys))

    def add_projection(self, layer: int, tokens: torch.Tensor, width: int) -> None:
        """A ranker projected ``tokens`` ``(batch,)`` states to ``width`` features (e.g. a layer's keys) to
        decide: scoring work beside what the layers ran."""
        self.projections.append((layer, tokens.cpu(), width))

    def visual_per_layer(self, num_layers: int, stream: str | None = None) -> torch.Tensor:
        """``(batch,)`` visual tokens per layer, averaged over layers (one stream, or all summed)."""
        total = torch.zeros(self.batch_size)
        for w in self.work:
            if stream is None or w.stream == stream:
                total += w.visual.float() * w.layers
        return total / num_layers

    def carried_per_layer(self, num_layers: int) -> torch.Tensor:
        """``(batch,)`` carried text-token copies per layer, averaged over layers: the extra tokens a
        a ``carry`` event costs, beside the visual tokens it saves."""
        total = torch.zeros(self.batch_size)
        for w in self.work:
            if w.carried is not None:
                total += w.carried.float() * w.layers
        return total / num_layers
