"""Every reproduced method against a small reference written from its published algorithm.

Each reference follows the method's paper and official code (FastV: pkunlp-icler/FastV, VTW,
PyramidDrop: Cooperx521/PyramidDrop, VisionZip: dvlab-research/VisionZip, DART: ZichenWen1/DART,
SparseVLM: Gumpest/SparseVLMs),
not vtsched's code: it
runs transformers' own decoder layers one at a time on a physically shortened sequence, ranks as
the official code does and drops tokens by hand. Each is compared with vtsched on a tiny random
LLaVA in float64, and each has a control that changes one published detail and must not match, so
a reference that compares nothing is caught. A reproduced method without a test here is not done.
"""

from __future__ import annotations

import importlib
import math
from pathlib import Path

import pytest
import torch
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb, repeat_kv

from vtsched.core import GenerationConfig, Role, generate
from vtsched.core.budget import Budget
from vtsched.core.testing import TinyShape, random_image, tiny_llava
from vtsched.core.testing.models import decoder_slice, layer_embeds, one_sequence

from tests.helpers import plan, scheduler

ATOL = 1e-6  # float64 models
SHAPE = TinyShape(layers=4, heads=2, kv_heads=1, image_size=112, seed=3)  # 64 visual tokens, GQA
QUESTION = "what colour is the shape in the corner?"


@pytest.fixture(scope="module")
def tiny():
    model, processor = tiny_llava(SHAPE)
    s = scheduler(model, processor)
    batch = s.prepare([random_image(5, 112, 112)], [QUESTION])
    return model, s, batch


# -- the reference: transformers' layers one at a time on the tokens still present -----------------

def last_token_attention(lm, layer: int, hidden: torch.Tensor, position_ids: torch.Tensor, query: int) -> torch.Tensor:
    """``(T,)`` head-averaged softmax attention of slot ``query`` at ``layer`` over the causal prefix, from
    that layer's input norm and q/k projections on ``hidden`` (PyramidDrop's ``pdrop_rank_drop``; FastV
    reads the same row from the layer's eager attention output)."""
    block = lm.layers[layer]
    attn = block.self_attn
    x = block.input_layernorm(hidden)
    q = attn.q_proj(x).view(1, x.shape[1], -1, attn.head_dim).transpose(1, 2)
    k = attn.k_proj(x).view(1, x.shape[1], -1, attn.head_dim).transpose(1, 2)
    cos, sin = lm.rotary_emb(x, position_ids)
    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    k = repeat_kv(k, q.shape[1] // k.shape[1])
    scores = q[:, :, query] @ k[0].transpose(-1, -2) / math.sqrt(attn.head_dim)  # (1, heads, T)
    scores[..., query + 1:] = float("-inf")  # causal: slots are in prompt order
    return torch.softmax(scores, dim=-1).mean(1)[0]


class Reference:
    """A prompt run layer by layer through the model's own decoder layers, dropping tokens by hand.

    ``present``: original positions of the tokens in the sequence; ``position_ids()`` are those
    (``renumber=False``) or ``0..n-1`` (PyramidDrop renumbers after each stage).
    """

    def __init__(self, model, sample, tail=(), renumber=False):
        self.model, self.lm, self.sample, self.renumber = model, model.model.language_model, sample, renumber
        embeds = layer_embeds(model, sample)
        if tail:
            extra = self.lm.embed_tokens(torch.tensor([list(tail)]))
            embeds = torch.cat((embeds, extra.to(embeds.dtype)), dim=1)
        self.hidden = embeds
        self.present = torch.arange(embeds.shape[1])
        self.inputs: dict[int, torch.Tensor] = {}  # each layer's input, for rankers reading a layer before
        self.layer = 0

    def position_ids(self) -> torch.Tensor:
        return (torch.arange(self.present.numel()) if self.renumber else self.present)[None]

    @torch.inference_mode()
    def run_until(self, layer: int) -> None:
        while self.layer < layer:
            self.inputs[self.layer] = (self.hidden, self.position_ids())
            ids = self.position_ids()
            with decoder_slice(self.lm, [self.lm.layers[self.layer]], final_norm=False) as one:
                self.hidden = one(inputs_embeds=self.hidden, position_ids=ids,
                                  attention_mask=one_sequence(ids)).last_hidden_state
            self.layer += 1

    def visual_slots(self) -> torch.Tensor:
        return torch.nonzero(torch.isin(self.present, self.sample.visual_positions)).flatten()

    def query_slot(self) -> int:
        return int(torch.nonzero(self.present == self.sample.input_ids.numel() - 1))  # the last prompt token

    def scores(self, layer: int, entering: bool) -> torch.Tensor:
        """Attention of the last prompt token at ``layer``: on the states entering the current layer
        (``entering``: PyramidDrop) or on that layer's own input (FastV: ``layer`` is the one before)."""
        hidden, ids = (self.hidden, self.position_ids()) if entering else self.inputs[layer]
        return last_token_attention(self.lm, layer, hidden, ids, self.query_slot())

    def keep_visual(self, scores: torch.Tensor, count: int) -> None:
        """Keep the ``count`` present visual tokens that ``scores`` rank highest, and every text token."""
        visual = self.visual_slots()
        top = visual[scores[visual].topk(count).indices]
        slots = torch.sort(torch.cat((torch.nonzero(~torch.isin(self.present, self.sample.visual_positions))
                                      .flatten(), top))).values
        self.hidden, self.present = self.hidden[:, slots], self.present[slots]

    def drop_visual(self) -> None:
        self.keep_visual(torch.zeros(self.present.numel()), 0)

    @torch.inference_mode()
    def finish(self) -> tuple[set[int], torch.Tensor]:
        """Kept visual-token numbers and the ``(T, vocab)`` logits of every token present."""
        self.run_until(len(self.lm.layers))
        logits = self.model.lm_head(self.lm.norm(self.hidden))[0].float()
        visual = self.sample.visual_positions.tolist()
        return {visual.index(p) for p in self.present.tolist() if p in visual}, logits


def kept_visual(out, sample) -> set[int]:
    index = out.index[0][out.index[0] >= 0]
    visual = sample.visual_positions.tolist()
    return {visual.index(p) for p in index.tolist() if p in visual}


def differs(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Far outside the tolerance the matches hold (``ATOL``): what a control must show."""
    return float((a - b).abs().max().detach()) > 10 * ATOL


def ours(s, batch, policy, budget=None, **params):
    pl = plan(s, batch, policy, budget, **params)
    out = s.engine.prefill(batch, pl.schedule, pl.partition, use_cache=False, return_hidden=True)
    return kept_visual(out, batch.samples[0]), out.logits[0]


# -- FastV -------------------------------------------------------------------------------------------

def fastv_reference(model, sample, k: int, keep: int, *, ranked_at: str = "layer before"):
    """FastV (official ``modeling_llama.py``): before layer K, the last token's head-averaged attention
    in layer K-1 ranks the image tokens; the top R stay, every token keeps its position id."""
    ref = Reference(model, sample)
    ref.run_until(k)
    scores = ref.scores(k - 1, entering=False) if ranked_at == "layer before" else ref.scores(k, entering=True)
    ref.keep_visual(scores, keep)
    kept, logits = ref.finish()
    return kept, logits[-1]


@pytest.mark.parametrize("k, keep", [(1, 16), (2, 7), (3, 40)])
def test_fastv_equals_its_published_algorithm(tiny, k, keep):
    model, s, batch = tiny
    kept, logits = ours(s, batch, "fastv", str(keep), drop_layer=k)
    ref_kept, ref_logits = fastv_reference(model, batch.samples[0], k, keep)
    assert kept == ref_kept
    torch.testing.assert_close(logits, ref_logits, atol=ATOL, rtol=0)


def test_fastv_control_ranking_at_the_drop_layer_itself_differs(tiny):
    model, s, batch = tiny
    kept, _ = ours(s, batch, "fastv", "16", drop_layer=2)
    assert fastv_reference(model, batch.samples[0], 2, 16, ranked_at="drop layer")[0] != kept


# -- VTW ---------------------------------------------------------------------------------------------

def vtw_reference(model, sample, k: int, *, renumber: bool = False) -> torch.Tensor:
    """VTW: every visual token leaves before layer K (hidden states and KV cache); text tokens keep
    their positions."""
    ref = Reference(model, sample)
    ref.run_until(k)
    ref.drop_visual()
    ref.renumber = renumber
    return ref.finish()[1][-1]


@pytest.mark.parametrize("k", [1, 2, 3])
def test_vtw_equals_its_published_algorithm(tiny, k):
    model, s, batch = tiny
    torch.testing.assert_close(ours(s, batch, "vtw", drop_layer=k)[1], vtw_reference(model, batch.samples[0], k),
                               atol=ATOL, rtol=0)


def test_vtw_control_renumbered_positions_differ(tiny):
    model, s, batch = tiny
    logits = ours(s, batch, "vtw", drop_layer=2)[1]
    assert differs(logits, vtw_reference(model, batch.samples[0], 2, renumber=True))


# -- PyramidDrop -------------------------------------------------------------------------------------

def pyramid_drop_reference(model, sample, layer_list, ratio: float, *, tail=(), renumber: bool = True,
                           ranked_at: str = "stage layer", counts: str = "of the original"):
    """PyramidDrop (official ``modeling_llama_pdrop.py``, inference): before each stage layer k of
    ``layer_list``, layer k's own input norm and q/k projections with rotary (at the current position
    ids) on the states entering it give the last instruction token's attention, averaged over heads;
    the top ``int(N * ratio ** (s + 1))`` image tokens stay; the sequence is renumbered 0..n-1.
    ``tail``: generated tokens, at positions after the prompt's (a cached decode step's reference)."""
    ref = Reference(model, sample, tail, renumber=renumber)
    n = sample.num_visual
    for stage, k in enumerate(layer_list):
        ref.run_until(k)
        scores = ref.scores(k, entering=True) if ranked_at == "stage layer" else ref.scores(k - 1, entering=False)
        if counts == "of the original":
            keep = int(n * ratio ** (stage + 1) + 1e-9)
        else:  # the control: the ratio of the current count, rounded stage by stage
            keep = int(round(ratio * ref.visual_slots().numel()))
        ref.keep_visual(scores, keep)
    return ref.finish()


STAGES = [((1, 2, 3), 0.5), ((1, 2, 3), 0.3), ((2, 3), 0.5), ((2, 3), 0.3)]


@pytest.mark.parametrize("layers, ratio", STAGES)
def test_pdrop_equals_pyramid_drop(tiny, layers, ratio):
    model, s, batch = tiny
    kept, logits = ours(s, batch, "pdrop", layers="/".join(map(str, layers)), ratio=ratio)
    ref_kept, ref_logits = pyramid_drop_reference(model, batch.samples[0], layers, ratio)
    assert kept == ref_kept
    torch.testing.assert_close(logits, ref_logits[-1], atol=ATOL, rtol=0)


def test_pdrop_keeps_pyramid_drops_stage_counts(tiny):
    """19/5/1 of 64 at 0.3 (floor of N * 0.3 ** s), not 19/6/2 (0.3 of the current count, rounded)."""
    model, s, batch = tiny
    pl = plan(s, batch, "pdrop", None, layers="1/2/3", ratio=0.3)
    out = s.engine.prefill(batch, pl.schedule, pl.partition, use_cache=False)
    assert [int(w.visual[0]) for w in out.stats.work] == [64, 19, 5, 1]


def test_pdrop_cached_decoding_equals_pyramid_drop_with_the_generated_tokens(tiny):
    """Decoded tokens continue after the renumbered tokens of each layer (PyramidDrop shifts their
    position ids by the tokens dropped before each stage)."""
    model, s, batch = tiny
    pl = plan(s, batch, "pdrop", None, layers="1/3", ratio=0.5)
    result = generate(s.engine, batch, pl.schedule, pl.partition, GenerationConfig(max_new_tokens=3),
                      keep_logits=True)
    tokens = result.tokens[0]
    for step in range(3):
        logits = pyramid_drop_reference(model, batch.samples[0], (1, 3), 0.5, tail=tokens[:step])[1][-1]
        torch.testing.assert_close(result.step_logits[step][0], logits, atol=ATOL, rtol=0)


def test_pdrop_with_original_positions_equals_pyramid_drop_without_renumbering(tiny):
    model, s, batch = tiny
    kept, logits = ours(s, batch, "pdrop", layers="1/2/3", ratio=0.5, renumber=False)
    ref_kept, ref_logits = pyramid_drop_reference(model, batch.samples[0], (1, 2, 3), 0.5, renumber=False)
    assert kept == ref_kept
    torch.testing.assert_close(logits, ref_logits[-1], atol=ATOL, rtol=0)


@pytest.mark.parametrize("detail", [{"ranked_at": "layer before"}, {"counts": "per stage"}, {"renumber": False}])
def test_pdrop_controls_changing_one_published_detail_differ(tiny, detail):
    model, s, batch = tiny
    kept, logits = ours(s, batch, "pdrop", layers="1/2/3", ratio=0.3)
    ref_kept, ref_logits = pyramid_drop_reference(model, batch.samples[0], (1, 2, 3), 0.3, **detail)
    assert ref_kept != kept or differs(logits, ref_logits[-1])


# -- VisionZip ---------------------------------------------------------------------------------------

def visionzip_dominant_reference(model, processor, image, question, dominant: int, *, layer: int | None = None):
    """VisionZip (official ``clip_encoder.py``): the [CLS] row of the attention in the vision layer whose
    output LLaVA reads (``attentions[-2]``), summed over heads, ranks the patches; the top ``dominant``
    stay (the official code also passes [CLS] itself: see the ``visionzip`` docstring)."""
    from vtsched.core.testing.models import processor_inputs

    inputs = processor_inputs(processor, "USER: <image>\n{question} ASSISTANT:", image, question)
    tower = model.model.vision_tower
    with torch.inference_mode():
        out = tower(inputs["pixel_values"].to(torch.float64), output_attentions=True)
    attention = out.attentions[model.config.vision_feature_layer if layer is None else layer]
    cls_attention = attention[0, :, 0, 1:].sum(0)
    return set(cls_attention.topk(dominant).indices.tolist())


@pytest.mark.parametrize("budget", [16, 40])
def test_visionzip_dominant_tokens_equal_its_published_selection(budget):
    shape = TinyShape(layers=2, image_size=112, vision_layers=3, seed=1)
    eager, processor = tiny_llava(shape, torch.float64, "eager")
    s = scheduler(*tiny_llava(shape))
    image = random_image(2, 112, 112)
    batch = s.prepare([image], [QUESTION])
    pl = plan(s, batch, "visionzip", str(budget))
    targets, _ = pl.partition.features[0]
    subject = set(torch.nonzero(pl.partition.assignment[0] == 0).flatten().tolist())
    dominant = subject - set(targets.tolist())
    contextual = round(budget * 10 / 64)
    assert dominant == visionzip_dominant_reference(eager, processor, image, QUESTION, budget - contextual)
    # the control: the last vision layer's attention instead of the one LLaVA reads
    assert dominant != visionzip_dominant_reference(eager, processor, image, QUESTION, budget - contextual, layer=-1)


# -- DART --------------------------------------------------------------------------------------------

def dart_reference(model, sample, k: int, keep: int, *, key_norm: int = 1, states: str = "layer K-1's output"):
    """DART (official ``get_retained_image_token``): before layer K, with layer K-1's keys and outputs
    (normalised by the final norm), 4 image and 4 text pivots by the keys' L1 norm; per pivot (in the
    order Python iterates the set of their indices) the ``(M) // 8`` least similar image tokens by
    cosine join; the image pivots and those stay, at their positions. ``M = keep - 4``."""
    ref = Reference(model, sample)
    ref.run_until(k)
    hidden, ids = ref.inputs[k - 1]
    block = ref.lm.layers[k - 1]
    x = block.input_layernorm(hidden)
    keys = block.self_attn.k_proj(x).view(1, x.shape[1], -1, block.self_attn.head_dim).transpose(1, 2)
    cos, sin = ref.lm.rotary_emb(x, ids)
    _, keys = apply_rotary_pos_emb(keys, keys, cos, sin)
    k_states = keys.permute(0, 2, 1, 3).reshape(1, keys.shape[2], -1)[0]
    last = ref.lm.norm(ref.hidden if states == "layer K-1's output" else hidden)[0]
    start, length = int(sample.visual_positions[0]), sample.num_visual
    norms = torch.norm(k_states, p=key_norm, dim=-1)
    image_indices = (norms[start:start + length].topk(4).indices + start).tolist()
    query_indices = (norms[start + length:].topk(4).indices + start + length).tolist()
    chosen = set(image_indices + query_indices)
    valid = set(range(start, start + length))
    valid.difference_update(image_indices)
    topk = (keep - 4) // 8
    for item in list(set(chosen)):
        listed = list(valid)
        similarity = -torch.nn.functional.cosine_similarity(last[item, :], last[listed, :], dim=-1)
        picked = [listed[i] for i in similarity.topk(topk).indices.tolist()]
        chosen.update(picked)
        valid.difference_update(picked)
    chosen.difference_update(query_indices)
    text = [p for p in range(ref.present.numel()) if not start <= p < start + length]
    slots = torch.tensor(sorted(text + sorted(chosen)))
    ref.hidden, ref.present = ref.hidden[:, slots], ref.present[slots]
    kept, logits = ref.finish()
    return kept, logits[-1]


@pytest.mark.parametrize("k, keep", [(1, 12), (2, 20), (3, 28)])
def test_dart_equals_its_published_algorithm(tiny, k, keep):
    model, s, batch = tiny
    kept, logits = ours(s, batch, "dart", str(keep), drop_layer=k)
    ref_kept, ref_logits = dart_reference(model, batch.samples[0], k, keep)
    assert len(kept) == keep and kept == ref_kept
    torch.testing.assert_close(logits, ref_logits, atol=ATOL, rtol=0)


@pytest.mark.parametrize("detail", ["L2 key norm", "states entering layer K-1"])
def test_dart_controls_changing_one_published_detail_differ(tiny, detail):
    model, s, batch = tiny
    kept, _ = ours(s, batch, "dart", "20", drop_layer=2)
    options = {"L2 key norm": {"key_norm": 2}, "states entering layer K-1": {"states": "input"}}[detail]
    assert dart_reference(model, batch.samples[0], 2, 20, **options)[0] != kept


def test_dart_keeps_exactly_the_budget_between_the_official_counts(tiny):
    _, s, batch = tiny
    for keep in (3, 7, 13, 64):
        assert len(ours(s, batch, "dart", str(keep), drop_layer=2)[0]) == keep


# -- SparseVLM --------------------------------------------------------------------------------------

def sparsevlm_reference(model, sample, layers, counts, *, raters: str = "above the mean", rows: str = "raters",
                        renumber: bool = True):
    """SparseVLM (official ``LlamaDynamicvitModel.forward`` and ``attn_postprocess_topk``, inference, no
    recycling): raters are the text tokens after the image whose relevance (``softmax`` over them of the
    unscaled ``v_t @ t_t^T`` on the layer-0 embeddings, mean over the visual tokens) is above its mean;
    after each layer l of ``layers`` (its output), l's own causal softmax attention, mean over heads, of
    the raters' rows on the visual columns, mean over the raters, keeps the top ``counts[s]`` visual
    tokens in their order; the sequence is renumbered 0..n-1."""
    ref = Reference(model, sample, renumber=renumber)
    start, n = int(sample.visual_positions[0]), sample.num_visual
    embeds = layer_embeds(model, sample)[0]
    relevance = (embeds[start:start + n] @ embeds[start + n:].T).softmax(-1).mean(0)
    chosen = relevance > relevance.mean() if raters == "above the mean" else torch.ones_like(relevance, dtype=bool)
    rater_positions = (torch.nonzero(chosen).flatten() + start + n).tolist()
    for layer, count in zip(layers, counts):
        ref.run_until(layer + 1)
        hidden, ids = ref.inputs[layer]
        queries = ([int(torch.nonzero(ref.present == p)) for p in rater_positions] if rows == "raters"
                   else [ref.query_slot()])
        scores = torch.stack([last_token_attention(ref.lm, layer, hidden, ids, q) for q in queries]).mean(0)
        ref.keep_visual(scores, count)
    return ref.finish()


def test_sparsevlm_equals_its_published_algorithm(tiny):
    """At 128 of 576 retained tokens the official 303/110/36, scaled to the 64 tokens here: 34/12/4, after
    layers 0/1/2 (2/6/15 of 32 scaled to 4 layers)."""
    model, s, batch = tiny
    pl = plan(s, batch, "sparsevlm", Budget(ratio=128 / 576), recycle=False)  # recycling: test_sparsevlm_recycle.py
    out = s.engine.prefill(batch, pl.schedule, pl.partition, use_cache=False, return_hidden=True)
    assert [int(w.visual[0]) for w in out.stats.work] == [64, 34, 12, 4]
    ref_kept, ref_logits = sparsevlm_reference(model, batch.samples[0], (0, 1, 2), (34, 12, 4))
    assert kept_visual(out, batch.samples[0]) == ref_kept
    torch.testing.assert_close(out.logits[0], ref_logits[-1], atol=ATOL, rtol=0)


def test_sparsevlm_equals_its_published_algorithm_at_given_layers(tiny):
    model, s, batch = tiny
    kept, logits = ours(s, batch, "sparsevlm", Budget(ratio=192 / 576), layers="1/2", recycle=False)
    ref_kept, ref_logits = sparsevlm_reference(model, batch.samples[0], (1, 2), (33, 22))  # 300/576, 200/300
    assert kept == ref_kept
    torch.testing.assert_close(logits, ref_logits[-1], atol=ATOL, rtol=0)


@pytest.mark.parametrize("detail", [{"rows": "last token"}, {"raters": "every text token"}, {"renumber": False}])
def test_sparsevlm_controls_changing_one_published_detail_differ(tiny, detail):
    model, s, batch = tiny
    kept, logits = ours(s, batch, "sparsevlm", Budget(ratio=128 / 576), recycle=False)
    ref_kept, ref_logits = sparsevlm_reference(model, batch.samples[0], (0, 1, 2), (34, 12, 4), **detail)
    assert ref_kept != kept or differs(logits, ref_logits[-1])


@pytest.mark.parametrize("budget", [192, 128, 64])
def test_sparsevlm_keeps_the_official_counts_on_576_tokens(budget):
    """``sparse_token_list_192/128/64`` of ``score.py``, stage by stage, for LLaVA-1.5's 576 tokens."""
    from vtsched.policies.sparsevlm import OFFICIAL_COUNTS, stage_keeps

    n, counts = 576, []
    for keep in stage_keeps(Budget(count=budget)):
        n = min(n, keep) if isinstance(keep, int) else round(keep * n)
        counts.append(n)
    assert tuple(counts) == OFFICIAL_COUNTS[budget]
    assert stage_keeps(Budget(ratio=budget / 576)) == stage_keeps(Budget(count=budget))


def test_sparsevlm_count_budgets_are_shares_of_the_images_own_tokens():
    """7 of the demo model's 64 tokens picks the list 64 of 576 does (a count is not read on 576's scale)."""
    from vtsched.policies.sparsevlm import stage_keeps

    assert stage_keeps(Budget(count=7), 64) == stage_keeps(Budget(ratio=7 / 64))
    assert stage_keeps(Budget(count=7), 64)[0] > 0.1  # not 7/576 of the image at the first stage


# -- what each reproduced method's docstring says ------------------------------------------------------

REPRODUCED = ("fastv", "vtw", "pdrop", "visionzip", "dart", "sparsevlm")


@pytest.mark.parametrize("name", REPRODUCED)
def test_every_reproduced_method_says_what_is_reproduced_and_what_differs(name):
    doc = importlib.import_module(f"vtsched.policies.{name}").__doc__ or ""
    for section in ("Reproduced", "Differs:"):
        assert section in doc, f"policies/{name}.py: its docstring needs a {section!r} section"
    assert f"test_{name}" in Path(__file__).read_text(), f"{name}: no published-algorithm reference test"


def test_roles_used_by_the_references_are_what_the_adapter_says(tiny):
    _, _, batch = tiny
    sample = batch.samples[0]
    assert (sample.roles[sample.visual_positions] == Role.VISUAL).all()
    assert int(sample.visual_positions[-1] - sample.visual_positions[0]) + 1 == sample.num_visual  # one span
