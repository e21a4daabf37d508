"""Work the engine does once per segment or step, not once per layer; the growing decode cache."""

from __future__ import annotations

import torch

from vtsched.core import GenerationConfig, generate
from vtsched.core.engine import attention, decode, probes
from vtsched.core.testing import TinyShape, random_image, tiny_llava

from tests.helpers import plan, scheduler

ATOL = 1e-6


def _counting(monkeypatch, module, name):
    calls = []
    original = getattr(module, name)

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)
    return calls


def test_probe_rows_are_selected_once_per_segment_not_per_layer(monkeypatch):
    s = scheduler(*tiny_llava(TinyShape(layers=4, image_size=42)))
    batch = s.prepare([random_image(1, 50, 40)], ["what colour is the small mark?"])
    pl = plan(s, batch, "parvts", 3, drop_layer=3, fusion="attention")
    calls = []
    original = probes.QueryRows.select.__func__

    def counted(cls, segment, sel, block):
        calls.append(segment.start)
        return original(cls, segment, sel, block)

    monkeypatch.setattr(probes.QueryRows, "select", classmethod(counted))
    out = s.engine.prefill(batch, pl.schedule, pl.partition, use_cache=False)
    assert calls == [0, 0]  # one selection per stream for the segment of layers 0..2
    assert sorted({layer for layer, _, _ in out.stats.probes}) == [0, 1, 2]  # read at each of its layers


def test_decoding_builds_one_mask_per_key_layout_per_step(monkeypatch):
    """Padded prompts need a mask; layers with the same cached positions share it."""
    s = scheduler(*tiny_llava(TinyShape(layers=4, image_size=42)))
    batch = s.prepare([random_image(1, 50, 40), random_image(2, 50, 40)], ["red?", "what colour is the mark?"])
    for policy, params, layouts in [("full", {}, 1), ("parvts", {"drop_layer": 2}, 1), ("fastv", {"drop_layer": 2}, 2)]:
        pl = plan(s, batch, policy, 3 if policy != "full" else None, **params)
        out = s.engine.prefill(batch, pl.schedule, pl.partition)
        assert len(out.state.layouts) == layouts, policy
        calls = _counting(monkeypatch, decode, "build_attention_mask")
        s.engine.extend(out.state, out.logits.argmax(-1)[:, None])
        assert len(calls) == layouts, policy
        monkeypatch.undo()


def test_one_token_after_an_unpadded_cache_needs_no_mask(monkeypatch):
    s = scheduler(*tiny_llava(TinyShape(layers=3, image_size=42)))
    batch = s.prepare([random_image(1, 50, 40)], ["what colour is the mark?"])
    pl = plan(s, batch, "prune", 3)
    calls = _counting(monkeypatch, decode, "build_attention_mask")
    cached = generate(s.engine, batch, pl.schedule, pl.partition, GenerationConfig(max_new_tokens=4), keep_logits=True)
    assert calls == []
    tail = [torch.tensor(cached.tokens[0][:3])]
    fresh = s.engine.prefill(batch, pl.schedule, pl.partition, tail=tail, use_cache=False).logits
    torch.testing.assert_close(cached.step_logits[3], fresh, atol=ATOL, rtol=0)


def test_kv_buffer_appends_like_concatenation_and_never_writes_the_prefill_tensors():
    keys, values = torch.randn(2, 3, 5, 4), torch.randn(2, 3, 5, 4)
    prefill_keys, prefill_values = keys.clone(), values.clone()
    buffer = attention.KVBuffer(keys, values, room=2)
    expected_k, expected_v = keys, values
    for n in (1, 1, 1, 3, 1):  # crosses the room twice
        k, v = torch.randn(2, 3, n, 4), torch.randn(2, 3, n, 4)
        got_k, got_v = buffer.update(k, v, 0)
        expected_k, expected_v = torch.cat((expected_k, k), dim=2), torch.cat((expected_v, v), dim=2)
        assert torch.equal(got_k, expected_k) and torch.equal(got_v, expected_v)
        assert torch.equal(buffer.keys, expected_k) and torch.equal(buffer.values, expected_v)
    assert torch.equal(keys, prefill_keys) and torch.equal(values, prefill_values)


def test_long_decoding_grows_the_cache_and_matches_recomputation():
    s = scheduler(*tiny_llava(TinyShape(layers=2, image_size=28)))
    batch = s.prepare([random_image(3, 30, 30), random_image(4, 30, 30)], ["red?", "how many marks?"])
    pl = plan(s, batch, "parvts", 2, drop_layer=1)
    out = s.engine.prefill(batch, pl.schedule, pl.partition)
    for cache in out.state.caches:
        cache.room = 3
    tokens = out.logits.argmax(-1)[:, None]
    generated = [tokens]
    for _ in range(8):
        tokens = s.engine.extend(out.state, tokens)[:, -1].argmax(-1)[:, None]
        generated.append(tokens)
    history = torch.cat(generated, dim=1)
    tail = [history[b, :-1] for b in range(2)]
    fresh = s.engine.prefill(batch, pl.schedule, pl.partition, tail=tail, use_cache=False).logits
    assert fresh.argmax(-1).tolist() == history[:, -1].tolist()
