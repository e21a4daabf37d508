"""``downsample``: the cheap reference of VTC-Bench (Liao et al., 2025): the image at a lower resolution.

VTC-Bench compares token-compression methods with plain downsampling: fixed-resolution models
(LLaVA-1.5) see the image at a lower resolution, so fewer patches; dynamic-resolution models
(Qwen2-VL/2.5-VL) get the image resized until its token count meets the budget. As a partitioner
this becomes pooling on the token grid: the grid is cut into exactly R rectangular blocks, each
block is one subject token (the token at the block's centre, keeping that token's position id)
whose features are replaced by the mean of the block's features (merged features through
``Partition.features``, as ``visionzip`` hands its merges over). Every other token is non-subject.

How R blocks are cut from an ``H x W`` grid (exact for every R from 0 to H*W, and deterministic):
``h = round(sqrt(R * H / W))`` row bands (the aspect kept; at least ``ceil(R / W)``, at most
``min(H, R)``), cut at rows ``floor(i * H / h)``; band ``i`` gets ``floor((i+1) * R / h) - floor(i * R / h)``
blocks (so the bands with one block more are spread evenly), cut at columns ``floor(j * W / w_i)``.
When R is ``h * w`` with H and W multiples of h and w, this is average pooling with ``(H/h) x (W/w)``
kernels, a regular sub-grid (576 tokens at R = 144: 2 x 2 blocks); other budgets top up by giving some
row bands one block more, never by adding unpooled tokens.

What is exact and what is approximated:

- exact: the count (R), the blocks (a disjoint cover of the grid), the means (float64, over the
  features as they enter the LLM) and the positions (the centre token's original position id; Qwen:
  its M-RoPE ids, which sit on the merged grid);
- approximated: a truly downsampled image goes through the vision tower again at the lower
  resolution (and, on Qwen, gets new M-RoPE ids on its smaller grid); here the tower saw the full
  image and the average is taken after the projector (LLaVA's projector is an MLP, so this is not the
  projection of the averaged tower states either). Averaged tokens keep a full-resolution neighbour's
  position, not a position on the small grid.

Per family: LLaVA-1.5: the ``side x side`` patch grid (``Sample.grid``). Qwen2-VL/2.5-VL: the merged
tokens' grid (``Sample.grid``, 28-px units). LLaVA-NeXT: per tile (each tile's own grid, read from
``extras["provenance"]``; the unpadded tiles are smaller rectangles), R split as ``cls`` splits it
per tile (:func:`~vtsched.partitioners.cls.tile_quotas`: newline tokens kept first and counted, the
rest in proportion to the tiles' tokens); newline tokens are never pooled.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from vtsched.core.budget import Budget
from vtsched.core.errors import InputError
from vtsched.core.partition import NON_SUBJECT, SUBJECT, Partition
from vtsched.core.policy import Partitioner
from vtsched.core.tokens import PromptBatch, Sample
from vtsched.partitioners.cls import tile_quotas

__all__ = ["Downsample", "pool_blocks"]


def pool_blocks(rows: int, cols: int, count: int) -> list[tuple[int, int, int, int]]:
    """``count`` rectangular blocks ``(row0, row1, col0, col1)`` (ends exclusive) covering a ``rows x cols``
    grid, in raster order of the blocks (see the module docstring for the cut)."""
    if not 0 <= count <= rows * cols:
        raise InputError(f"downsample: {count} tokens asked of a {rows}x{cols} grid")
    if count == 0:
        return []
    bands = int(round(math.sqrt(count * rows / cols)))
    bands = min(max(bands, -(-count // cols), 1), rows, count)
    blocks: list[tuple[int, int, int, int]] = []
    for i in range(bands):
        r0, r1 = i * rows // bands, (i + 1) * rows // bands
        width = (i + 1) * count // bands - i * count // bands
        blocks.extend((r0, r1, j * cols // width, (j + 1) * cols // width) for j in range(width))
    return blocks


@dataclass(frozen=True)
class Downsample(Partitioner):
    """The token grid average-pooled into the budget's number of blocks, one kept token per block."""

    name: ClassVar[str] = "downsample"

    def partition(self, batch: PromptBatch, budget: Budget) -> Partition:
        assignment: list[torch.Tensor] = []
        overrides: list[tuple[torch.Tensor, torch.Tensor] | None] = []
        for b, sample in enumerate(batch.samples):
            keep = budget.resolve(sample.num_visual)
            ids = torch.ones(sample.num_visual, dtype=torch.long)
            features = sample.visual_features.detach()
            targets, means = [], []
            for grid, count in _grids(b, sample, keep):  # grid: (rows, cols) token indices, -1 where none
                for r0, r1, c0, c1 in pool_blocks(grid.shape[0], grid.shape[1], count):
                    block = grid[r0:r1, c0:c1].flatten()
                    centre = int(grid[(r0 + r1 - 1) // 2, (c0 + c1 - 1) // 2])
                    ids[centre] = 0
                    if block.numel() > 1:
                        targets.append(centre)
                        means.append(features[block].double().mean(0))
            assignment.append(ids)
            if targets:
                overrides.append((torch.tensor(targets, dtype=torch.long),
                                  torch.stack(means).to(features.dtype)))
            else:
                overrides.append(None)
        return Partition((SUBJECT, NON_SUBJECT), tuple(assignment), None, tuple(overrides))


def _grids(b: int, sample: Sample, keep: int) -> list[tuple[torch.Tensor, int]]:
    """``(grid of token indices, tokens to keep from it)`` per grid that pools on its own; a newline
    token (LLaVA-NeXT) is a ``1 x 1`` grid kept whole."""
    split = tile_quotas(sample, keep)
    if split is None:
        if sample.grid is None or sample.grid[0] * sample.grid[1] != sample.num_visual:
            raise InputError(f"sample {b}: downsample needs the visual tokens as a patch grid; this adapter gives "
                             "none (a [CLS] token among them, or no grid)")
        return [(torch.arange(sample.num_visual).view(*sample.grid), keep)]
    untiled, quotas = split
    provenance = sample.extras["provenance"]
    grids = [(untiled[i].view(1, 1), 1) for i in range(min(keep, untiled.numel()))]
    for members, count in quotas:
        rows, cols = provenance[members, 1], provenance[members, 2]
        row_ids, col_ids = torch.unique(rows), torch.unique(cols)
        grid = torch.full((row_ids.numel(), col_ids.numel()), -1, dtype=torch.long)
        grid[torch.searchsorted(row_ids, rows), torch.searchsorted(col_ids, cols)] = members
        if bool((grid < 0).any()):
            raise InputError(f"sample {b}: a tile's tokens do not form a rectangle; downsample cannot pool it")
        grids.append((grid, count))
    return grids
