"""``divprune`` against DivPrune's published algorithm, written here in plain Python from the paper and
the official code (vbdi/divprune), not from vtsched's implementation; plus the partitioner kit."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from vtsched.core import GenerationConfig
from vtsched.core.budget import Budget
from vtsched.core.testing import PartitionerConformance, random_image
from vtsched.partitioners.divprune import DivPrune, cosine_distances, max_min_diverse

from tests.families.test_families import FAMILIES, IMAGES, QUESTIONS

TIE = 1e-9  # gains closer than this are ties: float rounding may order them either way


def reference_distance(a: list[float], b: list[float]) -> float:
    """1 - cos(a, b), as the official ``pairwise_cosine_similarity`` defines it."""
    dot = sum(x * y for x, y in zip(a, b))
    return 1.0 - dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def reference_gains(rows: list[list[float]], chosen: list[int]) -> list[float]:
    """What the official loop maximises at the next step, for every token.

    Step 0: per column, the second-smallest distance over all tokens, itself included (``topk(..., 2,
    largest=False).values[1]``). Later: per column, the smallest distance to a chosen token.
    Chosen tokens are excluded (-inf): the official loop never prefers them while a new token scores
    above 0.
    """
    n = len(rows)
    gains = []
    for j in range(n):
        if j in chosen:
            gains.append(-math.inf)
        elif not chosen:
            gains.append(sorted(reference_distance(rows[i], rows[j]) for i in range(n))[1] if n > 1 else 0.0)
        else:
            gains.append(min(reference_distance(rows[i], rows[j]) for i in chosen))
    return gains


def follows_the_published_greedy(rows: list[list[float]], order: list[int]) -> str | None:
    """``None`` when ``order`` is a max-min greedy sequence of ``rows``, else what went wrong."""
    for step, pick in enumerate(order):
        gains = reference_gains(rows, order[:step])
        best = max(gains)
        if gains[pick] < best - TIE:
            return f"step {step}: picked {pick} (gain {gains[pick]:.6f}), the greedy gain is {best:.6f}"
        firsts = [j for j, g in enumerate(gains) if g >= best - TIE]
        if len(firsts) == 1 and pick != firsts[0]:
            return f"step {step}: picked {pick}, the greedy pick is {firsts[0]}"
    return None


features = st.integers(1, 9).flatmap(lambda n: st.integers(2, 4).flatmap(lambda d: st.lists(
    st.lists(st.floats(-1, 1, allow_nan=False), min_size=d, max_size=d).filter(
        lambda r: math.sqrt(sum(x * x for x in r)) > 0.1), min_size=n, max_size=n)))


@given(rows=features, data=st.data())
def test_the_selection_is_the_published_greedy_max_min(rows, data):
    count = data.draw(st.integers(0, len(rows)), label="count")
    matrix = torch.tensor(rows, dtype=torch.float64)
    order, _ = max_min_diverse(cosine_distances(matrix), count)
    assert len(set(order.tolist())) == count
    assert follows_the_published_greedy(rows, order.tolist()) is None
    # the partitioner keeps exactly that set
    partition = DivPrune().partition(_batch(matrix), Budget(count=count)) if count else None
    if partition is not None:
        assert set(partition.members(0, "subject").tolist()) == set(order.tolist())


def test_the_reference_rejects_a_selection_that_changes_one_published_detail():
    """Control: the same greedy on Euclidean distance (not 1 - cos) fails the reference check."""
    failures = 0
    for seed in range(20):
        matrix = torch.randn(8, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        matrix[::2] *= 5  # lengths differ, so Euclidean and cosine neighbours differ
        euclidean, _ = max_min_diverse(torch.cdist(matrix, matrix), 4)
        failures += follows_the_published_greedy(matrix.tolist(), euclidean.tolist()) is not None
    assert failures >= 5, failures


def test_duplicates_are_taken_once_and_the_count_is_exact():
    matrix = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [2.0, 0.0]], dtype=torch.float64)
    order, gains = max_min_diverse(cosine_distances(matrix), 4)
    assert sorted(order.tolist()) == [0, 1, 2, 3]
    assert gains.shape == (4,) and bool(torch.isfinite(gains).all())


def _batch(matrix: torch.Tensor):
    """One sample whose visual features are ``matrix`` as given: the same float64 rows the direct call
    sees, so both break near-ties (duplicates, 1e-16 apart) the same way."""
    from vtsched.core.tokens import PromptBatch, Role, Sample

    n = matrix.shape[0]
    roles = torch.tensor([Role.PREFIX] + [Role.VISUAL] * n + [Role.QUESTION], dtype=torch.long)
    sample = Sample(input_ids=torch.zeros(n + 2, dtype=torch.long), roles=roles, visual_features=matrix)
    return PromptBatch([sample])


class TestDivPrunePartitioner(PartitionerConformance):
    partitioner_class = DivPrune


class TestDivPrunePerTile(PartitionerConformance):
    partitioner_class = DivPrune
    partitioner_params = {"budget_mode": "per_tile"}


@pytest.mark.parametrize("name", list(FAMILIES))
def test_prune_with_divprune_keeps_the_published_greedy_set_on_every_family(name):
    """Features as they enter the LLM (after the projector; Qwen: after the patch merger), per image."""
    from tests.helpers import scheduler

    s = scheduler(*FAMILIES[name]())
    batch = s.prepare(IMAGES, QUESTIONS)
    budget = Budget(ratio=0.5)
    partition = s.make_partitioner("divprune").partition(batch, budget)
    for b, sample in enumerate(batch.samples):
        rows = sample.visual_features.double().tolist()
        order, _ = max_min_diverse(cosine_distances(sample.visual_features), budget.resolve(sample.num_visual))
        assert follows_the_published_greedy(rows, order.tolist()) is None
        assert set(partition.members(b, "subject").tolist()) == set(order.tolist())
    result = s.run(IMAGES, QUESTIONS, "prune", partitioner="divprune", budget="50%",
                   generation=GenerationConfig(max_new_tokens=2))
    assert result.visual_per_layer_survivor.tolist() == [budget.resolve(n) for n in batch.num_visual]


def test_per_tile_budgets_split_like_cls_and_select_within_each_tile():
    from vtsched.core.testing.families import TinyNextShape, tiny_llava_next
    from vtsched.partitioners.cls import tile_quotas

    from tests.helpers import scheduler

    s = scheduler(*tiny_llava_next(TinyNextShape(tile_patches=3)))
    batch = s.prepare([random_image(5, 84, 84)], ["what colour?"])
    sample = batch.samples[0]
    tile = sample.extras["provenance"][:, 0]
    keep = int((tile < 0).sum()) + 10
    subject = s.make_partitioner("divprune", {"budget_mode": "per_tile"}).partition(
        batch, Budget(count=keep)).members(0, "subject")
    untiled, quotas = tile_quotas(sample, keep)
    assert set(untiled.tolist()) <= set(subject.tolist())
    for members, count in quotas:  # each tile: its quota, chosen by the greedy on its own tokens
        kept = sorted(set(subject.tolist()) & set(members.tolist()))
        order, _ = max_min_diverse(cosine_distances(sample.visual_features[members]), count)
        assert kept == sorted(members[order].tolist())
        assert follows_the_published_greedy(sample.visual_features[members].double().tolist(), order.tolist()) is None
