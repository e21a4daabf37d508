"""Padded token rows: the engine's unit of batched execution.

A row is one (stream, sample) sequence; ``index`` holds each slot's original position in the
sample (also its position id) and ``-1`` for padding. Rows are kept sorted by position with
padding at the end. Every change builds new tensors; nothing shared is resized in place.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["Rows", "pad_stack"]


def pad_stack(tensors: list[torch.Tensor], fill: float | int, length: int | None = None) -> torch.Tensor:
    """Stack 1-D or 2-D tensors of different lengths along a new dim 0, right-padded with ``fill``."""
    length = max([t.shape[0] for t in tensors] + [0]) if length is None else length
    ref = tensors[0]
    out = ref.new_full((len(tensors), length, *ref.shape[1:]), fill)
    for i, t in enumerate(tensors):
        out[i, : t.shape[0]] = t
    return out


@dataclass
class Rows:
    hidden: torch.Tensor  # (rows, T, hidden)
    index: torch.Tensor  # (rows, T) long, -1 = padding

    @property
    def valid(self) -> torch.Tensor:
        return self.index >= 0

    @property
    def positions(self) -> torch.Tensor:
        return self.index.clamp(min=0)

    @property
    def num_rows(self) -> int:
        return self.index.shape[0]

    @classmethod
    def from_parts(cls, hiddens: list[torch.Tensor], indices: list[torch.Tensor]) -> Rows:
        """Build rows from per-row ``(T_i, hidden)`` states and ``(T_i,)`` positions (sorted here)."""
        orders = [torch.argsort(i) for i in indices]
        hidden = pad_stack([h[o] for h, o in zip(hiddens, orders)], 0.0)
        index = pad_stack([i[o] for i, o in zip(indices, orders)], -1)
        return cls(hidden, index)

    def keep(self, keep: torch.Tensor) -> Rows:
        """Rows holding only the slots where ``keep`` (``(rows, T)`` bool) is true."""
        keep = keep & self.valid
        return Rows.from_parts(
            [self.hidden[r][keep[r]] for r in range(self.num_rows)],
            [self.index[r][keep[r]] for r in range(self.num_rows)],
        )

    def add(self, hiddens: list[torch.Tensor], indices: list[torch.Tensor]) -> Rows:
        """Rows with extra slots appended per row, re-sorted by position."""
        valid = self.valid
        return Rows.from_parts(
            [torch.cat((self.hidden[r][valid[r]], hiddens[r])) for r in range(self.num_rows)],
            [torch.cat((self.index[r][valid[r]], indices[r])) for r in range(self.num_rows)],
        )

    def merge(self, other: Rows) -> Rows:
        """These rows with ``other``'s valid slots added (same samples), re-sorted by position."""
        valid = other.valid
        return self.add([other.hidden[r][valid[r]] for r in range(other.num_rows)],
                        [other.index[r][valid[r]] for r in range(other.num_rows)])

    @classmethod
    def pack(cls, parts: list[Rows]) -> tuple[Rows, list[slice]]:
        """Concatenate several streams' rows of the same samples along the token axis.

        Returns the packed rows and each part's column block. Packing (rather than stacking
        streams as extra rows padded to the longest) costs exactly the tokens each stream has.
        """
        blocks, start = [], 0
        for p in parts:
            blocks.append(slice(start, start + p.index.shape[1]))
            start += p.index.shape[1]
        if len(parts) == 1:
            return parts[0], blocks
        return cls(torch.cat([p.hidden for p in parts], dim=1), torch.cat([p.index for p in parts], dim=1)), blocks

    def columns(self, block: slice) -> Rows:
        """The rows' columns ``block``, trailing all-padding columns dropped."""
        index = self.index[:, block]
        width = int((index >= 0).sum(1).max()) if index.numel() else 0
        return Rows(self.hidden[:, block][:, :width], index[:, :width])
