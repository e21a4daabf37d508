"""SparseVLM's token recycling: the ``recycle`` event through the event kit, its DPC-KNN merge
against a brute-force reference written from the official ``cluster_and_merge``, ``sparsevlm`` with
recycling against a reference run on transformers' own layers, the policy kit on the four families, and
the event's JSON form."""

from __future__ import annotations

import math
from typing import ClassVar

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from vtsched.core.budget import Budget
from vtsched.core.events import BUILTIN_EVENTS, KeepTop, Recycle, TokenCounts
from vtsched.core.events.recycle import cluster_count, dpc_knn_merge, recycled_count
from vtsched.core.schedule import Schedule, Stream
from vtsched.core.testing import (
    EventConformance,
    PolicyConformance,
    TinyShape,
    random_image,
    tiny_llava,
)
from vtsched.core.testing.families import (
    tiny_llava_next,
    tiny_llava_next_shapes,
    tiny_qwen,
    tiny_qwen_shapes,
)
from vtsched.core.testing.models import decoder_slice, layer_embeds, one_sequence
from vtsched.policies import SparseVLM

from tests.helpers import scheduler
from tests.policies.test_published_references import last_token_attention


# -- the event kit ---------------------------------------------------------------------------------------
class TestRecycleEvent(EventConformance):
    event_class = Recycle


# -- DPC-KNN and the merge, against a brute-force reference ------------------------------------------------

def dpc_knn_reference(x: torch.Tensor, clusters: int, *, centres_by: str = "density x parent distance",
                      divisor: str = "count + 1e-6") -> torch.Tensor:
    """``cluster_and_merge`` (SparseVLMs ``llava/model/language_model/utils.py``) written out with loops:
    distances ``||x_i - x_j|| / sqrt(C)``; density ``exp(-mean d^2)`` over the ``clusters`` nearest (self
    included); parent distance to the nearest denser token (ties: the earlier is denser), the largest
    distance for the densest; centres the top ``density * parent``; each token to its nearest centre (first
    on ties), each centre to itself; a cluster is its members' sum over ``count + 1e-6``."""
    m, c = x.shape
    dist = [[float(torch.linalg.vector_norm(x[i] - x[j])) / math.sqrt(c) for j in range(m)] for i in range(m)]
    density = [math.exp(-sum(d * d for d in sorted(row)[:clusters]) / clusters) for row in dist]
    largest = max(max(row) for row in dist)
    parent = []
    for i in range(m):
        denser = [dist[i][j] for j in range(m) if density[j] > density[i] or (density[j] == density[i] and j < i)]
        parent.append(min(denser) if denser else largest)
    score = [density[i] * parent[i] if centres_by == "density x parent distance" else density[i] for i in range(m)]
    centres = sorted(range(m), key=lambda i: (-score[i], i))[:clusters]
    members: list[list[int]] = [[] for _ in range(clusters)]
    for i in range(m):
        nearest = centres.index(i) if i in centres else min(range(clusters), key=lambda k: (dist[centres[k]][i], k))
        members[nearest].append(i)
    merged = []
    for group in members:
        total = sum((x[i] for i in group), torch.zeros(c, dtype=x.dtype))
        merged.append(total / (len(group) + 1e-6 if divisor == "count + 1e-6" else max(len(group), 1) ** 0.5))
    return torch.stack(merged)


@st.composite
def token_sets(draw):
    """``(m, d)`` float64 states (Gaussian, so no two distances tie) and a cluster count, as the event uses."""
    m, d = draw(st.integers(1, 30)), draw(st.integers(1, 6))
    seed = draw(st.integers(0, 2**31 - 1))
    x = torch.randn(m, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return x, draw(st.one_of(st.just(cluster_count(m, 10)), st.integers(1, m)))


@settings(max_examples=60, deadline=None)
@given(token_sets())
def test_dpc_knn_merge_equals_the_brute_force_reference(tokens):
    x, clusters = tokens
    torch.testing.assert_close(dpc_knn_merge(x, clusters), dpc_knn_reference(x, clusters), atol=1e-12, rtol=0)


@pytest.mark.parametrize("wrong", [{"centres_by": "density only"}, {"divisor": "sqrt(count)"}])
def test_the_merge_reference_rejects_a_wrong_variant(wrong):
    """A control: centres by density alone, or another divisor, differ from the event on some input."""
    differ = 0
    for seed in range(20):
        x = torch.randn(25, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        ours = dpc_knn_merge(x, 3)
        differ += not torch.allclose(ours, dpc_knn_reference(x, 3, **wrong), atol=1e-9, rtol=0)
    assert differ > 0


def test_the_counts_are_the_official_ones():
    """``int(n * 0.3) + 1`` of the pruned tokens, ``int(m / 10) + 1`` clusters; nothing from nothing."""
    assert [recycled_count(d, 0.3) for d in (0, 1, 2, 9, 10, 273)] == [0, 1, 1, 3, 4, 82]
    assert [cluster_count(m, 10) for m in (0, 1, 9, 10, 82)] == [0, 1, 1, 2, 9]
    tokens = TokenCounts({"main": {"subject": 576}}, {"question": 4, "post_image": 6, "last": 1})
    Recycle(3, "main", "subject", 303, "sparsevlm_raters").count(tokens)
    assert tokens.visual["main"]["subject"] == 303 + 9  # 273 pruned: 82 recycled into 9 tokens


# -- sparsevlm with recycling against a reference on transformers' own layers ------------------------------
SHAPE = TinyShape(layers=4, heads=2, kv_heads=1, image_size=112, seed=3)  # 64 visual tokens, GQA
ATOL = 1e-6


@torch.inference_mode()
def sparsevlm_recycling_reference(model, sample, layers, counts, *, recycled: str = "top"):
    """SparseVLM inference (``LlamaDynamicvitModel.forward``), batch of one, on the model's own layers run one
    at a time on the tokens present: raters as in ``sparsevlm_reference``; after layer l, the raters'
    head- and rater-averaged attention at l ranks the visual tokens present (merged ones included); the top
    ``count`` stay; of the ``d`` others, the ``int(0.3 d) + 1`` scored highest (``recycled``) are merged by
    DPC-KNN (``dpc_knn_reference``) on layer l's output and placed after the kept visual tokens; position
    ids are ``0..n-1`` after every stage. Returns the last token's logits."""
    lm = model.model.language_model
    hidden = layer_embeds(model, sample)
    labels: list[object] = list(range(hidden.shape[1]))  # each slot: its prompt position, or "merged"
    start, n = int(sample.visual_positions[0]), sample.num_visual
    embeds = hidden[0]
    relevance = (embeds[start:start + n] @ embeds[start + n:].T).softmax(-1).mean(0)
    raters = (torch.nonzero(relevance > relevance.mean()).flatten() + start + n).tolist()
    visual = set(sample.visual_positions.tolist())
    done, layer_input = 0, hidden

    def run_layer(hidden: torch.Tensor, index: int) -> torch.Tensor:
        ids = torch.arange(hidden.shape[1])[None]  # renumbered 0..n-1
        with decoder_slice(lm, [lm.layers[index]], final_norm=False) as one:
            return one(inputs_embeds=hidden, position_ids=ids, attention_mask=one_sequence(ids)).last_hidden_state

    for layer, count in zip(layers, counts):
        while done <= layer:
            layer_input, hidden, done = hidden, run_layer(hidden, done), done + 1
        ids = torch.arange(hidden.shape[1])[None]
        slots = [i for i, label in enumerate(labels) if label == "merged" or label in visual]
        scores = torch.stack([last_token_attention(lm, layer, layer_input, ids, labels.index(p)) for p in raters]).mean(0)
        ranked = sorted(slots, key=lambda i: -float(scores[i]))
        kept, gone = sorted(ranked[:count]), ranked[count:]
        m = int(len(gone) * 0.3) + 1 if gone else 0
        chosen = gone[:m] if recycled == "top" else gone[len(gone) - m:]
        merged = dpc_knn_reference(hidden[0, chosen], int(m / 10) + 1) if m else hidden[0, :0]
        before = [i for i in range(len(labels)) if i < slots[0]]
        after = [i for i in range(len(labels)) if i > slots[-1]]
        hidden = torch.cat((hidden[0, before + kept], merged, hidden[0, after]))[None]
        labels = [labels[i] for i in before + kept] + ["merged"] * merged.shape[0] + [labels[i] for i in after]
    while done < len(lm.layers):
        hidden, done = run_layer(hidden, done), done + 1
    return model.lm_head(lm.norm(hidden))[0, -1].float()


@pytest.fixture(scope="module")
def tiny():
    model, processor = tiny_llava(SHAPE)
    s = scheduler(model, processor)
    batch = s.prepare([random_image(5, 112, 112)], ["what colour is the shape in the corner?"])
    return model, s, batch


def _logits(s, batch, budget, **params):
    plan = s.plan(batch, s.make_policy("sparsevlm", params), None, budget)
    out = s.engine.prefill(batch, plan.schedule, plan.partition, use_cache=False)
    return out, plan


def test_sparsevlm_recycling_equals_its_published_algorithm(tiny):
    """128 of 576 scaled to 64 tokens: 34/12/4 kept after layers 0/1/2; 30 pruned -> 10 recycled -> 2 merged,
    then 24 -> 8 -> 1, then 9 -> 3 -> 1: 36, 13 and 5 visual tokens run after each stage."""
    model, s, batch = tiny
    out, plan = _logits(s, batch, Budget(ratio=128 / 576))
    assert all(type(e) is Recycle for e in plan.schedule.events)
    assert [int(w.visual[0]) for w in out.stats.work] == [64, 36, 13, 5]
    reference = sparsevlm_recycling_reference(model, batch.samples[0], (0, 1, 2), (34, 12, 4))
    torch.testing.assert_close(out.logits[0], reference, atol=ATOL, rtol=0)


@pytest.mark.parametrize("control", ["bottom 30% recycled", "no recycling"])
def test_sparsevlm_recycling_controls_differ(tiny, control):
    model, s, batch = tiny
    if control == "no recycling":
        out, _ = _logits(s, batch, Budget(ratio=128 / 576), recycle=False)
        reference = sparsevlm_recycling_reference(model, batch.samples[0], (0, 1, 2), (34, 12, 4))
    else:
        out, _ = _logits(s, batch, Budget(ratio=128 / 576))
        reference = sparsevlm_recycling_reference(model, batch.samples[0], (0, 1, 2), (34, 12, 4), recycled="bottom")
    assert float((out.logits[0] - reference).abs().max()) > 10 * ATOL


def test_the_dry_run_counts_the_merged_tokens_and_later_stages_rank_them(tiny):
    """What each stage keeps is a count, so the merged tokens do not raise it, and the executed visual
    tokens per layer (merged ones included) are what the events' counts say."""
    from vtsched.core.cost import prefill_flops
    from vtsched.core.tokens import Role
    from vtsched.core.tools.sweep.plan import estimate_prefill_flops

    _, s, batch = tiny
    out, plan = _logits(s, batch, Budget(ratio=128 / 576))
    roles = batch.samples[0].roles
    estimate = estimate_prefill_flops(
        plan.schedule, s.adapter.geometry, {"subject": 64}, prefix=int((roles == Role.PREFIX).sum()),
        suffix=int((torch.arange(roles.numel()) > torch.nonzero(roles == Role.VISUAL).max()).sum()),
        question=int((roles == Role.QUESTION).sum()), share_prefix=s.engine.share_prefix)
    assert estimate == pytest.approx(float(prefill_flops(out.stats, s.adapter.geometry)[0]), rel=1e-12)
    assert [e.keep for e in plan.schedule.events] == [34, 12, 4]


def test_renumbering_after_a_recycle_gives_merged_tokens_their_place():
    """A renumbering keep_top after a recycle is allowed (merged tokens are not carried copies): the
    stream's tokens, merged ones included, are numbered 0..n-1, decoding continues at n in the layers
    after it and at the prompt's next id before, and cached decoding equals recomputing."""
    from vtsched.core.generation import GenerationConfig, generate

    model, processor = tiny_llava(TinyShape(layers=3, image_size=56), torch.float64)
    s = scheduler(model, processor)
    batch = s.prepare([random_image(2, 60, 50)], ["where is the square?"])
    schedule = Schedule(3, ("subject",), (Stream("main", ("subject",)),), "main",
                        (Recycle(1, "main", "subject", 4, "last_token_attention", False, 0.5, 2),
                         KeepTop(2, "main", "subject", 5, "last_token_attention", True)))
    plan = s.plan(batch, s.make_policy("full"), None, None)
    out = s.engine.prefill(batch, schedule, plan.partition, use_cache=True, return_hidden=True)
    assert [int(w.visual[0]) for w in out.stats.work] == [16, 4 + 4, 5]  # 12 dropped: 7 recycled into 4
    index = out.index[0]
    assert 0 < int((index < 0).sum()) <= 4  # merged tokens that stayed read -1: no position in the prompt
    state = out.state
    layouts = [state.layouts[state.layer_layout[layer]].next_rotary for layer in range(3)]
    rotary = [int((state.next_rotary if r is None else r)[0]) for r in layouts]  # None: the state's own
    assert rotary == [batch.samples[0].length] * 2 + [index.numel()]  # 0..n-1 after the renumber only
    config = GenerationConfig(max_new_tokens=3)
    cached = generate(s.engine, batch, schedule, plan.partition, config, keep_logits=True)
    for step, logits in enumerate(cached.step_logits):
        tail = [torch.tensor(t[:step], dtype=torch.long) for t in cached.tokens] if step else None
        fresh = s.engine.prefill(batch, schedule, plan.partition, tail=tail, use_cache=False)
        torch.testing.assert_close(logits, fresh.logits, atol=1e-9, rtol=0)


# -- the policy kit on every family ------------------------------------------------------------------------
class TestSparseVLMRecyclingOnLlavaNext(PolicyConformance):
    policy_class = SparseVLM
    settings_overrides: ClassVar[dict[str, int]] = {"max_examples": 3}
    min_layers = 2

    def model_shapes(self):
        return tiny_llava_next_shapes(min_layers=self.min_layers, max_layers=3)

    def build_tiny_model(self, shape, *, dtype=torch.float64, attn_implementation="sdpa"):
        return tiny_llava_next(shape, dtype, attn_implementation)


class TestSparseVLMRecyclingOnQwen(PolicyConformance):
    policy_class = SparseVLM
    settings_overrides: ClassVar[dict[str, int]] = {"max_examples": 3}
    min_layers = 2

    def model_shapes(self):
        return tiny_qwen_shapes(min_layers=self.min_layers, max_layers=3)

    def build_tiny_model(self, shape, *, dtype=torch.float64, attn_implementation="sdpa"):
        return tiny_qwen(shape, dtype, attn_implementation)


# -- JSON ----------------------------------------------------------------------------------------------------
def test_a_schedule_with_a_recycle_event_round_trips_through_json():
    schedule = Schedule(4, ("subject",), (Stream("main", ("subject",)),), "main",
                        (Recycle(1, "main", "subject", (5, 7), "sparsevlm_raters", True, 0.25, 3),
                         Recycle(3, "main", "subject", 0.5)))
    text = schedule.to_json()
    assert '"kind": "recycle"' in text and '"cluster_size": 3' in text
    assert Schedule.from_json(text, {cls.kind: cls for cls in BUILTIN_EVENTS}) == schedule
    assert Schedule.from_json(text, {cls.kind: cls for cls in BUILTIN_EVENTS}).events[0].share == 0.25


@pytest.mark.parametrize(("field", "value", "message"), [
    ("share", 0.0, "share must be a ratio in \\(0, 1\\]"), ("share", 1.5, "share must be"),
    ("cluster_size", 0, "cluster_size must be a count >= 1"),
])
def test_bad_recycle_parameters_are_refused_naming_the_event(field, value, message):
    from vtsched.core.errors import ScheduleError

    with pytest.raises(ScheduleError, match=message):
        Schedule(2, ("subject",), (Stream("main", ("subject",)),), "main",
                 (Recycle(1, "main", "subject", 2, **{field: value}),))
