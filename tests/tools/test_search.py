"""Drop-layer search: the smallest K meeting the KL threshold, on a case built to have a known answer."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vtsched.core import InputError, PromptBatch
from vtsched.core.cli import main
from vtsched.core.calibration import load_calibration, next_token_kl, search_drop_layer
from vtsched.core.testing import TinyShape, random_image, tiny_llava

from tests.helpers import scheduler


def _silenced_from(model, first_silent: int):
    """A copy whose decoder layers >= first_silent add nothing to the residual stream.

    Visual tokens then cannot influence anything after ``first_silent``: withdrawing them there or
    later changes no output (KL exactly 0), withdrawing them earlier does change it.
    """
    model = copy.deepcopy(model)
    for layer in model.model.language_model.layers[first_silent:]:
        torch.nn.init.zeros_(layer.self_attn.o_proj.weight)
        torch.nn.init.zeros_(layer.mlp.down_proj.weight)
    return model


@settings(max_examples=8)
@given(st.integers(1, 4), st.integers(0, 5))
def test_search_returns_the_smallest_layer_meeting_the_threshold(first_silent, seed):
    model, processor = tiny_llava(TinyShape(layers=4, image_size=42, seed=seed % 4))
    s = scheduler(_silenced_from(model, first_silent), processor)
    images = [random_image(seed * 3 + i) for i in range(3)]
    batch = s.prepare(images, ["what colour is it?", "where is the mark?", "how many red objects?"])
    result = search_drop_layer(s, batch, "vtw", threshold=1e-9, progress=False)
    assert result.chosen["layer"] == first_silent
    curve = {row["layer"]: row["kl"] for row in result.curve}
    assert all(curve[k] <= 1e-9 for k in range(first_silent, 5))
    assert curve[first_silent - 1] > 1e-9  # so the earlier layer really failed the threshold


def test_search_is_deterministic_and_covers_alpha_and_budget():
    s = scheduler(*tiny_llava(TinyShape(layers=3, image_size=42)))
    batch = s.prepare([random_image(1), random_image(2)], ["what?", "what colour is the corner?"])
    kwargs = {"budgets": ["3", "6"], "alphas": [0.5, 1.0], "threshold": 10.0, "progress": False}
    a = search_drop_layer(s, batch, "parvts", **kwargs)
    b = search_drop_layer(s, batch, "parvts", **kwargs)
    assert a.curve == b.curve and a.chosen == b.chosen
    assert len(a.curve) == 2 * 2 * 4
    assert a.chosen["layer"] == 0 and a.chosen["budget"] == "3"  # everything passes: the cheapest wins


def test_empty_calibration_sets_are_refused(tmp_path):
    s = scheduler(*tiny_llava(TinyShape()))
    with pytest.raises(InputError, match="calibration set is empty"):
        search_drop_layer(s, PromptBatch([]), "vtw", progress=False)
    empty = tmp_path / "calib.jsonl"
    empty.write_text("\n")
    with pytest.raises(InputError, match="is empty"):
        load_calibration(empty)
    assert main(["search-k", "--data", str(empty), "--no-plugins"]) == 2
    assert main(["search-k", "--no-plugins"]) == 2


def test_kl_is_zero_for_equal_logits_and_positive_otherwise():
    logits = torch.randn(3, 11)
    assert torch.allclose(next_token_kl(logits, logits), torch.zeros(3, dtype=torch.float64))
    assert (next_token_kl(logits, logits.flip(-1)) > 0).all()


def test_search_k_cli_writes_a_schedule_that_run_accepts(tmp_path, capsys):
    model, processor = tiny_llava(TinyShape(layers=3, image_size=42), torch.float32)
    ckpt = tmp_path / "ckpt"
    _silenced_from(model, 2).save_pretrained(ckpt)
    processor.save_pretrained(ckpt)
    images = tmp_path / "images"
    images.mkdir()
    lines = []
    for i in range(2):
        random_image(i).save(images / f"{i}.png")
        lines.append(json.dumps({"image": f"images/{i}.png", "question": "what is it?"}))
    (tmp_path / "calib.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "k.json"
    assert main(["search-k", "--model", str(ckpt), "--data", str(tmp_path / "calib.jsonl"), "--policy", "vtw",
                 "--threshold", "1e-9", "--out", str(out), "--no-progress", "--no-plugins"]) == 0
    saved = json.loads(out.read_text())
    assert saved["events"][0]["layer"] == 2
    assert json.loads(out.with_suffix(".curve.json").read_text())["chosen"]["layer"] == 2
    assert main(["run", "--model", str(ckpt), "--image", str(images / "0.png"), "--question", "q?",
                 "--schedule", str(out), "--max-new-tokens", "1", "--no-plugins"]) == 0
    assert "vtw(drop_layer=2)" in capsys.readouterr().out


def test_search_policy_calibrates_its_layer():
    model, processor = tiny_llava(TinyShape(layers=4, image_size=42))
    s = scheduler(_silenced_from(model, 3), processor)
    batch = s.prepare([random_image(4), random_image(5)], ["what?", "what is in the corner?"])
    policy = s.make_policy("search", {"base": "vtw", "threshold": 1e-9})
    plan = s.plan(batch, policy, None, None)
    assert plan.policy.name == "vtw" and plan.policy.drop_layer == 3


def test_calibration_runs_the_partitioner_with_its_own_parameters():
    """A partitioner given with parameters (a seeded random one) is searched as given, not rebuilt by name."""
    from vtsched.core import Budget
    from vtsched.core.policy import Calibration
    from vtsched.core.calibration import calibrate

    s = scheduler(*tiny_llava(TinyShape(layers=2, image_size=42)))
    batch = s.prepare([random_image(6), random_image(7)], ["what?", "what is in the corner?"])
    full = s.plan(batch, s.make_policy("full"), None, None)
    full_logits = s.engine.prefill(batch, full.schedule, full.partition, use_cache=False).logits
    for seed in (11, 12):
        part = s.make_partitioner("random", {"seed": seed})
        found = calibrate(s, Calibration("parvts", threshold=1e9), batch, part, Budget.parse("3"))
        plan = s.plan(batch, s.make_policy("parvts", {"drop_layer": 1}), part, Budget.parse("3"))
        expected = next_token_kl(full_logits, s.engine.prefill(batch, plan.schedule, plan.partition,
                                                               use_cache=False).logits)
        at_one = next(r for r in found.result.curve if r["layer"] == 1)
        assert at_one["kl"] == pytest.approx(float(expected.mean()))
