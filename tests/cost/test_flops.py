"""FLOPs of what ran, checked against torch's flop counter and the paper's arithmetic."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from vtsched.core import PromptBatch, Role, Sample
from vtsched.core.cli import main
from vtsched.core.cost import executed_prefill_flops, nominal_parallel_flops, prefill_flops, scoring_flops
from vtsched.core.demo.shapes import llava_config
from vtsched.core.adapters import LlavaAdapter
from vtsched.core.testing import TinyShape, random_image, tiny_llava

from tests.helpers import plan, scheduler


@pytest.mark.parametrize("policy,params", [
    ("full", {}), ("prune", {}), ("parvts", {"drop_layer": 1}), ("parvts", {"drop_layer": 2, "fusion": "size"}),
    ("fastv", {"drop_layer": 1}), ("subject-first", {"insert_layer": 1}),
    ("parvts", {"drop_layer": 1, "merge": "carry"}), ("parvts", {"drop_layer": 2, "merge": "both", "fusion": "size"}),
])
def test_executed_flops_match_torch_flop_counter(policy, params):
    """Counted on the executed model (eager attention, so every matmul is visible to the counter)."""
    s = scheduler(*tiny_llava(TinyShape(layers=3, heads=4, kv_heads=2, image_size=42), torch.float32, "eager"))
    batch = s.prepare([random_image(3, 50, 40)], ["what colour is the small mark in the corner?"])
    pl = plan(s, batch, policy, 3, **params)
    with FlopCounterMode(display=False) as counter:
        out = s.engine.prefill(batch, pl.schedule, pl.partition, use_cache=False)
    g = s.adapter.geometry
    lm_head = 2 * g.hidden_size * g.vocab_size
    expected = executed_prefill_flops(out.stats, g) + scoring_flops(out.stats, g) + lm_head
    assert counter.get_total_flops() == pytest.approx(float(expected[0]), rel=1e-9)


def _paper_prompt(system: int = 35, visual: int = 576, question: int = 60, dim: int = 16) -> PromptBatch:
    """A prompt with METHOD.md's token geometry: 35 system, 576 visual, 60 question tokens."""
    roles = torch.tensor([Role.PREFIX] * system + [Role.VISUAL] * visual + [Role.QUESTION] * question)
    ids = torch.where(roles == Role.VISUAL, 4, 7 + torch.arange(len(roles)) % 50)
    scores = torch.linspace(0, 1, visual)
    return PromptBatch([Sample(ids, roles, torch.randn(visual, dim), scores, (24, 24))])


@pytest.mark.parametrize("share_prefix", [False, True])
def test_parvts_flops_reduction_at_llava_7b_shape_is_the_papers_arithmetic(share_prefix):
    """Token counts come from the engine running a 32-layer model with LLaVA-1.5's geometry;
    the FLOPs use LLaVA-1.5-7B's width. METHOD.md: 74.1 / 71.3 / 68.5 / 65.6 % at K = 1..4."""
    seven_b = LlavaAdapter.geometry_from_config(llava_config("llava-1.5-7b"))
    s = scheduler(*tiny_llava(TinyShape(layers=32, heads=2, kv_heads=2, head_dim=8, image_size=28)),
                  share_prefix=share_prefix)
    batch = _paper_prompt(dim=16)
    full = s.engine.prefill(batch, *_plan(s, batch, "full", None, {}), use_cache=False)
    full_flops = float(prefill_flops(full.stats, seven_b)[0])
    reductions = []
    for k in (1, 2, 3, 4):
        out = s.engine.prefill(batch, *_plan(s, batch, "parvts", 64, {"drop_layer": k}), use_cache=False)
        reductions.append(100 * (1 - float(prefill_flops(out.stats, seven_b)[0]) / full_flops))
        nominal = nominal_parallel_flops(seven_b, system=35, question=60, keep=64, drop_layer=k,
                                         share_prefix=share_prefix)
        assert float(prefill_flops(out.stats, seven_b)[0]) == pytest.approx(nominal, rel=1e-12)
    if not share_prefix:
        assert [round(r, 1) for r in reductions] == [74.1, 71.3, 68.5, 65.6]
    else:  # computing the shared system prompt once saves a little more
        assert all(r > p for r, p in zip(reductions, [74.1, 71.3, 68.5, 65.6]))


def _plan(s, batch, policy, keep, params):
    from vtsched.core import Budget

    p = s.make_policy(policy, params)
    pl = s.plan(batch, p, None, Budget(count=keep) if keep is not None else None)
    geometry = dataclasses.replace(s.adapter.geometry)
    assert geometry.num_layers == 32
    return pl.schedule, pl.partition


def test_bench_prints_ratios_and_writes_json_csv_plot(tmp_path, capsys):
    out = tmp_path / "bench"
    assert main(["bench", "--shape", "demo", "--policies", "prune", "parvts:drop_layer=1", "fastv:drop_layer=1",
                 "vtw", "--budgets", "16", "7", "--repeats", "2", "--warmup", "0", "--decode-tokens", "2",
                 "--question-words", "6", "--out", str(out), "--no-progress", "--no-plugins"]) == 0
    text = capsys.readouterr().out
    assert "shape demo" in text and "x full" in text and "vision tower" in text
    data = json.loads((out / "results.json").read_text())
    rows = {r["case"]: r for r in data["rows"]}
    assert set(rows) == {"full", "prune@16", "prune@7", "parvts(drop_layer=1)@16", "parvts(drop_layer=1)@7",
                         "fastv(drop_layer=1)@16", "fastv(drop_layer=1)@7", "vtw"}
    assert rows["full"]["time_ratio_to_full"] == 1.0 and rows["full"]["flops_ratio_to_full"] == 1.0
    assert rows["prune@7"]["flops_ratio_to_full"] < rows["prune@16"]["flops_ratio_to_full"] < 1.0
    assert rows["prune@7"]["visual_tokens_per_layer"] == 7.0
    assert (out / "results.csv").read_text().startswith("case,policy,budget")
    assert (out / "plot.png").read_bytes()[:4] == b"\x89PNG"


def test_bench_refuses_unknown_policies_before_running(tmp_path, capsys):
    assert main(["bench", "--shape", "demo", "--policies", "warp-drive", "--out", str(tmp_path / "b"),
                 "--no-plugins"]) == 2
    assert "unknown policy 'warp-drive'" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()
    assert main(["bench", "--shape", "demo", "--policies", "parvts:drop_layer", "--out", str(tmp_path / "b"),
                 "--no-plugins"]) == 2  # a parameter without a value: one line, not a traceback
    assert "expected NAME:PARAM=VALUE" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_main_commands_need_no_dev_extras(tmp_path):
    """The README's main job installs without [dev]: nothing it runs may import hypothesis or pytest."""
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['hypothesis'] = None; sys.modules['pytest'] = None\n"
        "from vtsched.core.cli import main\n"
        f"sys.exit(main(['bench', '--shape', 'tiny', '--policies', 'prune', 'parvts:drop_layer=1', '--budgets', '2',"
        f" '--repeats', '1', '--warmup', '0', '--decode-tokens', '1', '--no-progress', '--out', r'{tmp_path}']))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "results.json").exists()
