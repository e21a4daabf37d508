"""``downsample`` against average pooling of the token grid (torch's own ``avg_pool2d``, where the budget
is a regular sub-grid) and a brute-force plain-Python reference of its blocks for every budget; plus the
partitioner kit, every family and the one-line refusals."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from vtsched.core import GenerationConfig
from vtsched.core.budget import Budget
from vtsched.core.errors import BudgetError, InputError
from vtsched.core.testing import PartitionerConformance, random_image
from vtsched.core.tokens import PromptBatch, Role, Sample
from vtsched.partitioners.downsample import Downsample

from tests.families.test_families import FAMILIES, IMAGES, QUESTIONS


def _batch(rows: int, cols: int, seed: int = 0, width: int = 3) -> PromptBatch:
    n = rows * cols
    roles = torch.tensor([Role.PREFIX] + [Role.VISUAL] * n + [Role.QUESTION], dtype=torch.long)
    features = torch.randn(n, width, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return PromptBatch([Sample(torch.zeros(n + 2, dtype=torch.long), roles, features, grid=(rows, cols))])


def kept_and_merged(partition, b: int = 0) -> dict[int, list[float]]:
    """Kept token -> the features it enters the LLM with (merged where the partition replaced them)."""
    merged = {}
    if partition.features is not None and partition.features[b] is not None:
        index, values = partition.features[b]
        merged = dict(zip(index.tolist(), values.tolist()))
    return {t: merged.get(t) for t in partition.members(b, "subject").tolist()}


# -- the brute-force reference: every token's block found by scanning the cut points ----------------

def reference_blocks(rows: int, cols: int, count: int) -> list[list[tuple[int, int]]]:
    """The blocks, each a list of ``(row, col)``, by the documented cut: row bands by scanning, then per
    band its share of ``count`` and its column blocks by scanning."""
    if count == 0:
        return []
    bands = min(max(int(round(math.sqrt(count * rows / cols))), -(-count // cols), 1), rows, count)
    row_cuts = [i * rows // bands for i in range(bands + 1)]
    blocks = []
    for i in range(bands):
        share = (i + 1) * count // bands - i * count // bands
        col_cuts = [j * cols // share for j in range(share + 1)]
        for j in range(share):
            blocks.append([(r, c) for r in range(rows) for c in range(cols)
                           if row_cuts[i] <= r < row_cuts[i + 1] and col_cuts[j] <= c < col_cuts[j + 1]])
    return blocks


@given(rows=st.integers(1, 7), cols=st.integers(1, 7), seed=st.integers(0, 99), data=st.data())
def test_every_budget_is_pooled_into_exactly_that_many_balanced_blocks(rows, cols, seed, data):
    count = data.draw(st.integers(0, rows * cols), label="count")
    blocks = reference_blocks(rows, cols, count)
    # the reference is a disjoint cover of exactly `count` non-empty blocks, as even as the cut allows
    assert len(blocks) == count and all(blocks)
    cells = [cell for block in blocks for cell in block]
    assert count == 0 or sorted(cells) == [(r, c) for r in range(rows) for c in range(cols)]
    heights = {max(r for r, _ in b) - min(r for r, _ in b) + 1 for b in blocks}
    assert not heights or max(heights) - min(heights) <= 1
    batch = _batch(rows, cols, seed)
    features = batch.samples[0].visual_features.tolist()
    partition = Downsample().partition(batch, Budget(count=count))
    got = kept_and_merged(partition)
    want = {}
    for block in blocks:  # kept: the block's centre token; its features: the block's mean (plain Python)
        rs, cs = sorted({r for r, _ in block}), sorted({c for _, c in block})
        centre = rs[(len(rs) - 1) // 2] * cols + cs[(len(cs) - 1) // 2]
        members = [features[r * cols + c] for r, c in block]
        want[centre] = [sum(col) / len(members) for col in zip(*members)] if len(members) > 1 else None
    assert set(got) == set(want)
    for token, mean in want.items():
        if mean is None:
            assert got[token] is None
        else:
            assert got[token] == pytest.approx(mean, abs=1e-12)


@pytest.mark.parametrize("rows, cols, count, kernel", [(6, 6, 9, (2, 2)), (6, 6, 4, (3, 3)), (4, 6, 6, (2, 2)),
                                                       (24, 24, 144, (2, 2)), (6, 4, 24, (1, 1))])
def test_a_regular_budget_is_average_pooling(rows, cols, count, kernel):
    """Budgets that are a sub-grid of the same aspect: the kept features are ``avg_pool2d`` of the grid,
    one per kernel, in raster order."""
    batch = _batch(rows, cols, width=4)
    grid = batch.samples[0].visual_features.T.reshape(1, 4, rows, cols)
    pooled = torch.nn.functional.avg_pool2d(grid, kernel).flatten(2)[0].T  # (count, 4) raster order
    partition = Downsample().partition(batch, Budget(count=count))
    got = kept_and_merged(partition)
    kept = sorted(got)
    assert len(kept) == count
    features = batch.samples[0].visual_features
    entering = torch.stack([torch.tensor(got[t]) if got[t] is not None else features[t] for t in kept])
    assert torch.allclose(entering.double(), pooled, atol=1e-12)


def test_the_reference_rejects_strided_subsampling():
    """Control: keeping each block's centre token with its own features (subsampling, no averaging) is not
    the pooled grid."""
    batch = _batch(6, 6, width=4)
    grid = batch.samples[0].visual_features.T.reshape(1, 4, 6, 6)
    pooled = torch.nn.functional.avg_pool2d(grid, (2, 2)).flatten(2)[0].T
    kept = sorted(kept_and_merged(Downsample().partition(batch, Budget(count=9))))
    assert not torch.allclose(batch.samples[0].visual_features[kept], pooled, atol=1e-3)


# -- the kit -----------------------------------------------------------------------------------------

class TestDownsamplePartitioner(PartitionerConformance):
    partitioner_class = Downsample


# -- every family --------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(FAMILIES))
def test_prune_with_downsample_pools_every_family(name):
    """LLaVA-1.5 and Qwen: the sample's grid (Qwen: merged tokens); LLaVA-NeXT: each tile's grid."""
    from vtsched.partitioners.cls import tile_quotas

    from tests.helpers import scheduler

    s = scheduler(*FAMILIES[name]())
    batch = s.prepare(IMAGES, QUESTIONS)
    budget = Budget(ratio=0.5)
    partition = s.make_partitioner("downsample").partition(batch, budget)
    for b, sample in enumerate(batch.samples):
        keep = budget.resolve(sample.num_visual)
        subject = set(partition.members(b, "subject").tolist())
        assert len(subject) == keep
        split = tile_quotas(sample, keep)
        parts = [(torch.arange(sample.num_visual), keep)] if split is None else split[1]
        if split is not None:
            assert set(split[0][:keep].tolist()) <= subject  # newline tokens kept first, never pooled
        for members, count in parts:  # each grid keeps its share, as the reference cuts it
            assert len(subject & set(members.tolist())) == count
    result = s.run(IMAGES, QUESTIONS, "prune", partitioner="downsample", budget="50%",
                   generation=GenerationConfig(max_new_tokens=2))
    assert result.visual_per_layer_survivor.tolist() == [budget.resolve(n) for n in batch.num_visual]


def test_qwen_pools_the_merged_token_grid():
    from tests.helpers import scheduler

    s = scheduler(*FAMILIES["qwen2_vl"]())
    sample = s.prepare(IMAGES[:1], QUESTIONS[:1]).samples[0]
    rows, cols = sample.grid
    partition = s.make_partitioner("downsample").partition(PromptBatch([sample]), Budget(count=2))
    blocks = reference_blocks(rows, cols, 2)
    index, values = partition.features[0]
    for block, token in zip(blocks, index.tolist()):
        members = [r * cols + c for r, c in block]
        assert torch.allclose(values[index.tolist().index(token)].double(),
                              sample.visual_features[members].double().mean(0), atol=1e-6)
    assert sorted(index.tolist()) == sorted(partition.members(0, 'subject').tolist())


# -- bad input -----------------------------------------------------------------------------------------

def test_bad_input_is_one_line():
    with pytest.raises(BudgetError, match="exceeds the 6 visual tokens") as exc:
        Downsample().partition(_batch(2, 3), Budget(count=7))
    assert "\n" not in str(exc.value)
    sample = _batch(2, 3).samples[0]
    sample.grid = None
    with pytest.raises(InputError, match="patch grid") as exc:
        Downsample().partition(PromptBatch([sample]), Budget(count=3))
    assert "\n" not in str(exc.value)


def test_the_per_tile_split_of_llava_next_pools_each_tile():
    from vtsched.core.testing.families import TinyNextShape, tiny_llava_next
    from vtsched.partitioners.cls import tile_quotas

    from tests.helpers import scheduler

    s = scheduler(*tiny_llava_next(TinyNextShape(tile_patches=3)))
    sample = s.prepare([random_image(5, 84, 60)], ["what colour?"]).samples[0]
    provenance = sample.extras["provenance"]
    keep = int((provenance[:, 0] < 0).sum()) + 7
    partition = s.make_partitioner("downsample").partition(PromptBatch([sample]), Budget(count=keep))
    subject = set(partition.members(0, "subject").tolist())
    merged = dict(zip(partition.features[0][0].tolist(), partition.features[0][1]))
    untiled, quotas = tile_quotas(sample, keep)
    assert set(untiled.tolist()) <= subject and not set(untiled.tolist()) & set(merged)
    for members, count in quotas:
        rows = sorted(set(provenance[members, 1].tolist()))
        cols = sorted(set(provenance[members, 2].tolist()))
        at = {(int(provenance[t, 1]), int(provenance[t, 2])): int(t) for t in members}
        for block in reference_blocks(len(rows), len(cols), count):
            tokens = [at[(rows[r], cols[c])] for r, c in block]
            kept = [t for t in tokens if t in subject]
            assert len(kept) == 1  # one token per block, carrying the block's mean
            if len(tokens) > 1:
                assert torch.allclose(merged[kept[0]].double(), sample.visual_features[tokens].double().mean(0),
                                      atol=1e-6)
