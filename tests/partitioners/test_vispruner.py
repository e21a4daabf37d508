"""``vispruner`` against VisPruner's published algorithm, written here in plain Python from the paper and the
official code (Theia-4869/VisPruner, ``encode_images`` in ``llava_arch.py``), not from vtsched's
implementation; plus the partitioner kit, every family and the one-line refusals."""

from __future__ import annotations

import dataclasses
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
from vtsched.partitioners.vispruner import VisPruner

from tests.families.test_families import FAMILIES, IMAGES, QUESTIONS


# -- the reference: the official encode_images, one image, in plain Python ---------------------------

def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b))
    na, nb = math.sqrt(sum(x * x for x in a)), math.sqrt(sum(y * y for y in b))
    return dot / (na * nb) if na and nb else 0.0


def reference_vispruner(scores: list[float], rows: list[list[float]], count: int, ratio: float,
                        halves=lambda residual: (residual[0::2], residual[1::2])) -> tuple[list[int], list[int]]:
    """``(important, diverse)`` as the official code picks them for ``count`` kept tokens.

    Important: ``int(count * ratio)`` tokens by descending attention. Diverse: the rest, in descending
    attention, loses ``r = min(8, R - diverse)`` tokens per round: the first half (``halves``; officially
    the even places) scores each token's best cosine match in the second half; the ``r`` best-matched
    go; survivors by descending score, then the second half. Equal values: lower index first.
    """
    important_count = int(count * ratio)
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    important, residual = order[:important_count], order[important_count:]
    diverse = count - important_count
    while diverse > 0:
        r = min(8, len(residual) - diverse)
        if r <= 0:
            break
        first, second = halves(residual)
        best = [max(cosine(rows[a], rows[b]) for b in second) for a in first]
        ranked = sorted(range(len(first)), key=lambda i: (-best[i], i))
        residual = [first[i] for i in ranked[r:]] + list(second)
    return important, (residual if diverse > 0 else [])


def contiguous_halves(residual):
    """Control: the first half of the list against the second, not alternating places."""
    half = (len(residual) + 1) // 2
    return residual[:half], residual[half:]


def _batch(scores: torch.Tensor, rows: torch.Tensor) -> PromptBatch:
    n = rows.shape[0]
    roles = torch.tensor([Role.PREFIX] + [Role.VISUAL] * n + [Role.QUESTION], dtype=torch.long)
    sample = Sample(input_ids=torch.zeros(n + 2, dtype=torch.long), roles=roles,
                    visual_features=torch.randn(n, 5, generator=torch.Generator().manual_seed(n), dtype=torch.float64),
                    cls_scores=scores.float(), extras={"vision_features": rows})
    return PromptBatch([sample])


def _inputs(seed: int, n: int, width: int, tied: bool, duplicates: bool) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    rows = torch.randn(n, width, generator=gen, dtype=torch.float64)
    if duplicates and n > 2:  # near-duplicates for the removal to find (exact ones tie up to rounding)
        rows[n // 2:] = rows[: n - n // 2] + 1e-3 * torch.randn(n - n // 2, width, generator=gen, dtype=torch.float64)
    scores = torch.full((n,), 1.0 / n) if tied else torch.softmax(torch.randn(n, generator=gen), 0)
    return scores.float(), rows


@given(seed=st.integers(0, 2**16), n=st.integers(1, 40), width=st.integers(2, 5), tied=st.booleans(),
       duplicates=st.booleans(), ratio=st.sampled_from([0.0, 0.25, 0.3, 0.5, 0.75, 1.0]), data=st.data())
def test_the_selection_is_the_published_vispruner(seed, n, width, tied, duplicates, ratio, data):
    count = data.draw(st.integers(0, n), label="count")
    scores, rows = _inputs(seed, n, width, tied, duplicates)
    important, diverse = reference_vispruner(scores.tolist(), rows.tolist(), count, ratio)
    assert len(important) == int(count * ratio) and len(important) + len(diverse) == count  # the published split
    assert len(set(important) | set(diverse)) == count
    subject = VisPruner(important_ratio=ratio).partition(_batch(scores, rows), Budget(count=count)).members(0, "subject")
    assert sorted(subject.tolist()) == sorted(important + diverse)


def test_the_reference_rejects_a_selection_that_changes_one_published_detail():
    """Control: pairing the first half of the list against the second (not alternating places) keeps other
    tokens, so a reference that compared nothing would be caught."""
    differ = 0
    for seed in range(20):
        scores, rows = _inputs(seed, 36, 3, tied=False, duplicates=False)
        subject = VisPruner().partition(_batch(scores, rows), Budget(count=12)).members(0, "subject").tolist()
        control = reference_vispruner(scores.tolist(), rows.tolist(), 12, 0.5, halves=contiguous_halves)
        differ += sorted(subject) != sorted(control[0] + control[1])
    assert differ >= 10, differ


def test_a_round_worked_by_hand():
    """Eight tokens in attention order 0..7, tokens 0-3 copies of one direction, 4-7 distinct; five diverse
    tokens kept (ratio 0). One round removes r = min(8, 8 - 5) = 3 of the first half [0, 2, 4, 6], whose
    best matches in [1, 3, 5, 7] score 1, 1, 0, 0: 0, 2 and then 4 (the tie at 0 goes to the earlier
    place). Left: [6] + [1, 3, 5, 7], five tokens; the two copies in the second half both stay."""
    base = torch.eye(5, dtype=torch.float64)
    rows = torch.cat((base[:1].repeat(4, 1), base[1:]))
    scores = torch.linspace(1.0, 0.5, 8)
    subject = VisPruner(important_ratio=0.0).partition(_batch(scores, rows), Budget(count=5)).members(0, "subject")
    assert sorted(subject.tolist()) == [1, 3, 5, 6, 7]
    assert sorted(sum(reference_vispruner(scores.tolist(), rows.tolist(), 5, 0.0), [])) == [1, 3, 5, 6, 7]


# -- the kit -----------------------------------------------------------------------------------------

def _with_tower_features(batch: PromptBatch) -> PromptBatch:
    """Synthetic batches carry no tower features: give each sample some, of another width than its features."""
    samples = []
    for sample in batch.samples:
        tower = torch.cat((sample.extras["patch_keys"].double(), sample.visual_features[:, :2].tanh()), dim=-1)
        samples.append(dataclasses.replace(sample, extras={**sample.extras, "vision_features": tower}))
    return PromptBatch(samples)


class TestVisPrunerPartitioner(PartitionerConformance):
    partitioner_class = VisPruner

    def prompt_batches(self, *, distinct_visual=False):
        return super().prompt_batches(distinct_visual=distinct_visual).map(_with_tower_features)


class TestVisPrunerPerTile(TestVisPrunerPartitioner):
    partitioner_params = {"budget_mode": "per_tile", "important_ratio": 0.25}


# -- every family --------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(FAMILIES))
def test_prune_with_vispruner_keeps_the_published_set_on_every_family(name):
    """Importance: [CLS] attention (Qwen: attention received); features: the tower's, before the projector."""
    from tests.helpers import scheduler

    s = scheduler(*FAMILIES[name]())
    batch = s.prepare(IMAGES, QUESTIONS)
    budget = Budget(ratio=0.5)
    partition = s.make_partitioner("vispruner").partition(batch, budget)
    for b, sample in enumerate(batch.samples):
        importance = sample.cls_scores if sample.cls_scores is not None else sample.extras["attention_scores"]
        tower = sample.extras["vision_features"]
        important, diverse = reference_vispruner(importance.tolist(), tower.double().tolist(),
                                                 budget.resolve(sample.num_visual), 0.5)
        assert sorted(partition.members(b, "subject").tolist()) == sorted(important + diverse)
    result = s.run(IMAGES, QUESTIONS, "prune", partitioner="vispruner", budget="50%",
                   generation=GenerationConfig(max_new_tokens=2))
    assert result.visual_per_layer_survivor.tolist() == [budget.resolve(n) for n in batch.num_visual]


def test_the_tower_features_are_what_the_projector_reads():
    """The adapters' ``vision_features`` are the projector's (Qwen: the merger's) input, in LLM order."""
    from tests.helpers import scheduler

    torch.set_grad_enabled(False)
    try:
        for name in ("llava_next", "qwen2_5_vl"):
            model, processor = FAMILIES[name](torch.float64)
            for sample in scheduler(model, processor).prepare(IMAGES, QUESTIONS).samples:
                tower = sample.extras["vision_features"]
                if name == "llava_next":
                    image = sample.extras["provenance"][:, 0] >= 0  # newline rows are zeros
                    projected = model.model.multi_modal_projector(tower[image])
                    assert torch.allclose(projected, sample.visual_features[image], atol=1e-12)
                    assert not tower[~image].any()
                else:
                    merger = model.model.visual.merger
                    projected = merger(tower.reshape(-1, merger.ln_q.weight.shape[0]))
                    assert torch.allclose(projected, sample.visual_features, atol=1e-12)
    finally:
        torch.set_grad_enabled(True)


def test_per_tile_budgets_split_like_cls_and_select_within_each_tile():
    from vtsched.core.testing.families import TinyNextShape, tiny_llava_next
    from vtsched.partitioners.cls import tile_quotas

    from tests.helpers import scheduler

    s = scheduler(*tiny_llava_next(TinyNextShape(tile_patches=3)))
    batch = s.prepare([random_image(5, 84, 84)], ["what colour?"])
    sample = batch.samples[0]
    tile = sample.extras["provenance"][:, 0]
    keep = int((tile < 0).sum()) + 10
    subject = set(s.make_partitioner("vispruner", {"budget_mode": "per_tile"}).partition(
        batch, Budget(count=keep)).members(0, "subject").tolist())
    untiled, quotas = tile_quotas(sample, keep)
    assert set(untiled.tolist()) <= subject
    for members, count in quotas:  # each tile: its quota, chosen by the reference on its own tokens
        important, diverse = reference_vispruner(sample.cls_scores[members].tolist(),
                                                 sample.extras["vision_features"][members].double().tolist(), count, 0.5)
        assert sorted(subject & set(members.tolist())) == sorted(members[important + diverse].tolist())


# -- bad input -----------------------------------------------------------------------------------------

def test_bad_input_is_one_line():
    scores, rows = _inputs(0, 6, 3, tied=False, duplicates=False)
    batch = _batch(scores, rows)
    with pytest.raises(BudgetError, match="exceeds the 6 visual tokens") as exc:
        VisPruner().partition(batch, Budget(count=7))
    assert "\n" not in str(exc.value)
    bare = PromptBatch([dataclasses.replace(batch.samples[0], extras={})])
    with pytest.raises(InputError, match="vision_features") as exc:
        VisPruner().partition(bare, Budget(count=3))
    assert "\n" not in str(exc.value)
    with pytest.raises(InputError, match="important_ratio"):
        VisPruner(important_ratio=1.5)
