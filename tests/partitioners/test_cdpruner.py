"""``cdpruner`` against CDPruner's published algorithm: the fast greedy MAP equals an explicit log-determinant
greedy (written here from the DPP's definition, not from vtsched's code), the relevance is the official
formula (CLIP text tower, negated cosine, min-max) on a tiny random CLIP saved in the real layout; plus the
partitioner kit, every family and the one-line refusals."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from vtsched.core import GenerationConfig
from vtsched.core.budget import Budget
from vtsched.core.errors import BudgetError, InputError
from vtsched.core.testing import PartitionerConformance, random_image
from vtsched.core.tokens import PromptBatch, Role
from vtsched.partitioners.cdpruner import CDPruner, conditional_kernel, fast_greedy_map

from tests.families.test_families import FAMILIES, IMAGES, QUESTIONS


def log_det_greedy(kernel: torch.Tensor, count: int) -> list[int]:
    """At each step add the token that maximises ``log det`` of the kernel's submatrix (lower index on ties)."""
    chosen: list[int] = []
    for _ in range(count):
        best, pick = -float("inf"), None
        for j in range(kernel.shape[0]):
            if j in chosen:
                continue
            sign, value = torch.linalg.slogdet(kernel[chosen + [j]][:, chosen + [j]])
            score = float(value) if sign > 0 else -float("inf")
            if pick is None or score > best + 1e-9:
                best, pick = score, j
        chosen.append(pick)
    return chosen


def official_relevance(image: torch.Tensor, text: torch.Tensor, negate: bool) -> torch.Tensor:
    """Mean over text segments of the (negated) cosine, then ``(q - min + 1e-6) / (max - min)``."""
    cos = torch.nn.functional.normalize(image.double(), dim=-1) @ torch.nn.functional.normalize(text.double(), dim=-1).T
    q = (-cos if negate else cos).mean(-1)
    return (q - q.min() + 1e-6) / (q.max() - q.min())


def _full_rank(seed: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, n + 2, generator=gen, dtype=torch.float64), torch.rand(n, generator=gen, dtype=torch.float64) + 0.05


@given(seed=st.integers(0, 2**16), n=st.integers(1, 8), data=st.data())
def test_the_fast_greedy_map_is_the_log_det_greedy(seed, n, data):
    count = data.draw(st.integers(0, n), label="count")
    features, relevance = _full_rank(seed, n)
    kernel = conditional_kernel(features, relevance)
    assert fast_greedy_map(kernel, count).tolist() == log_det_greedy(kernel, count)


def test_the_reference_rejects_a_kernel_without_relevance():
    """Control: the same greedy on the similarity alone (no instruction relevance) keeps other tokens."""
    differ = 0
    for seed in range(20):
        features, relevance = _full_rank(seed, 8)
        plain = fast_greedy_map(conditional_kernel(features, torch.ones(8, dtype=torch.float64)), 3).tolist()
        differ += plain != log_det_greedy(conditional_kernel(features, relevance), 3)
    assert differ >= 10, differ


def test_once_the_rank_is_used_up_the_rest_come_in_index_order():
    features = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, 0.0], [0.0, 3.0]], dtype=torch.float64)
    chosen = fast_greedy_map(conditional_kernel(features, torch.ones(5)), 5).tolist()
    assert sorted(chosen[:2]) == [0, 1] and chosen[2:] == [2, 3, 4]


# -- the kit -----------------------------------------------------------------------------------------

def _with_question(batch: PromptBatch) -> PromptBatch:
    """Synthetic batches carry no question embeddings: give each sample two, in the features' width."""
    samples = []
    for sample in batch.samples:
        question = sample.visual_features[:1].flip(-1).repeat(2, 1) + 0.5
        samples.append(dataclasses.replace(sample, extras={**sample.extras, "question_embeddings": question}))
    return PromptBatch(samples)


class TestCDPrunerPartitioner(PartitionerConformance):
    partitioner_class = CDPruner

    def prompt_batches(self, *, distinct_visual=False):
        return super().prompt_batches(distinct_visual=distinct_visual).map(_with_question)


# -- every family, without a CLIP: the LLM's question embeddings -----------------------------------------

@pytest.mark.parametrize("name", list(FAMILIES))
def test_prune_with_cdpruner_on_every_family(name):
    from vtsched.partitioners.cls import tile_quotas

    from tests.helpers import scheduler

    s = scheduler(*FAMILIES[name]())
    batch = s.prepare(IMAGES, QUESTIONS)
    budget = Budget(ratio=0.5)
    partition = s.make_partitioner("cdpruner").partition(batch, budget)
    embed = s.adapter.model.get_input_embeddings()
    for b, sample in enumerate(batch.samples):
        keep = budget.resolve(sample.num_visual)
        question = embed(sample.input_ids[sample.roles == Role.QUESTION]).detach()
        split = tile_quotas(sample, keep)
        first = split[0][:keep] if split is not None else torch.arange(0)
        image = torch.tensor([t for t in range(sample.num_visual) if t not in set(split[0].tolist())]) \
            if split is not None else torch.arange(sample.num_visual)
        relevance = official_relevance(sample.visual_features[image].detach(), question.mean(0, keepdim=True), False)
        chosen = fast_greedy_map(conditional_kernel(sample.visual_features[image], relevance), keep - first.numel())
        assert sorted(partition.members(b, "subject").tolist()) == sorted(first.tolist() + image[chosen].tolist())
    result = s.run(IMAGES, QUESTIONS, "prune", partitioner="cdpruner", budget="50%",
                   generation=GenerationConfig(max_new_tokens=2))
    assert result.visual_per_layer_survivor.tolist() == [budget.resolve(n) for n in batch.num_visual]


def test_per_tile_runs_one_dpp_per_tile_with_its_quota():
    from vtsched.core.testing.families import TinyNextShape, tiny_llava_next
    from vtsched.partitioners.cls import tile_quotas

    from tests.helpers import scheduler

    s = scheduler(*tiny_llava_next(TinyNextShape(tile_patches=3)))
    sample = s.prepare([random_image(5, 84, 84)], ["what colour?"]).samples[0]
    keep = int((sample.extras["provenance"][:, 0] < 0).sum()) + 10
    partition = s.make_partitioner("cdpruner", {"budget_mode": "per_tile"}).partition(PromptBatch([sample]),
                                                                                     Budget(count=keep))
    subject = set(partition.members(0, "subject").tolist())
    untiled, quotas = tile_quotas(sample, keep)
    assert set(untiled.tolist()) <= subject
    for members, count in quotas:
        assert len(subject & set(members.tolist())) == count


# -- with a CLIP text tower: a tiny random CLIP saved in the real layout --------------------------------

@pytest.fixture(scope="module")
def llava_and_clip(tmp_path_factory):
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    from tests.helpers import scheduler

    s = scheduler(*FAMILIES["llava"]())
    width = s.adapter.model.config.vision_config.hidden_size
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)] + ["?", "."]
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for token in letters + [c + "</w>" for c in letters]:
        vocab[token] = len(vocab)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[])
    config = CLIPConfig(
        text_config={"vocab_size": len(vocab), "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "max_position_embeddings": 16, "bos_token_id": 0, "eos_token_id": 1,
                     "pad_token_id": 1},
        vision_config={"hidden_size": width, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "image_size": 28, "patch_size": 14},
        projection_dim=8,
    )
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("clip") / "clip-tiny"
    CLIPModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return s, str(path)


def test_clip_relevance_is_the_official_formula(llava_and_clip):
    """Image side: post-LayerNorm and visual projection of the tower features; text side: the question in
    16-token segments through the text tower and its projection; relevance: negated mean cosine, min-max."""
    from transformers import CLIPModel, CLIPTokenizer

    s, path = llava_and_clip
    long_question = "what colour is the small square in the corner of this picture?"  # several 16-token segments
    batch = s.prepare(IMAGES, [long_question, QUESTIONS[1]])
    partition = CDPruner(clip_path=path).partition(batch, Budget(count=4))
    clip, tokenizer = CLIPModel.from_pretrained(path), CLIPTokenizer.from_pretrained(path)
    for b, sample in enumerate(batch.samples):
        ids = tokenizer(sample.extras["question"])["input_ids"]
        ids = ids + [0] * (-len(ids) % 16)
        mask = [[int(i < len(tokenizer(sample.extras["question"])["input_ids"])) for i in range(k, k + 16)]
                for k in range(0, len(ids), 16)]
        with torch.no_grad():
            text = clip.text_projection(clip.text_model(input_ids=torch.tensor(ids).view(-1, 16),
                                                        attention_mask=torch.tensor(mask)).pooler_output)
            image = clip.visual_projection(clip.vision_model.post_layernorm(sample.extras["vision_features"].float()))
        assert text.shape[0] == len(ids) // 16 and (b or text.shape[0] >= 3)  # the long question: several segments
        relevance = official_relevance(image, text, negate=True)
        assert torch.allclose(partition.scores[b].double(), relevance, atol=1e-5)
        kernel = conditional_kernel(sample.visual_features, relevance)
        assert sorted(partition.members(b, "subject").tolist()) == sorted(fast_greedy_map(kernel, 4).tolist())


def test_bad_input_is_one_line(llava_and_clip, tmp_path):
    from transformers import CLIPTextConfig

    s, path = llava_and_clip
    with pytest.raises(InputError, match="holds no model config") as exc:
        CDPruner(clip_path=str(tmp_path / "nowhere"))
    assert "\n" not in str(exc.value)
    CLIPTextConfig(hidden_size=8, intermediate_size=8, num_hidden_layers=1, num_attention_heads=2).save_pretrained(
        tmp_path / "text-only")
    with pytest.raises(InputError, match="not a CLIP model with a text tower") as exc:
        CDPruner(clip_path=str(tmp_path / "text-only"))
    assert "\n" not in str(exc.value)
    other = dataclasses.replace(s.prepare(IMAGES[:1], QUESTIONS[:1]).samples[0])
    other.extras = {**other.extras, "vision_features": torch.zeros(other.num_visual, 7)}  # another tower's width
    with pytest.raises(InputError, match="projects vision features of width") as exc:
        CDPruner(clip_path=path).partition(PromptBatch([other]), Budget(count=2))
    assert "\n" not in str(exc.value)
    with pytest.raises(BudgetError, match="exceeds"):
        CDPruner().partition(s.prepare(IMAGES[:1], QUESTIONS[:1]), Budget(count=10_000))
    bare = dataclasses.replace(other, extras={})
    with pytest.raises(InputError, match="question_embeddings"):
        CDPruner().partition(PromptBatch([bare]), Budget(count=2))
