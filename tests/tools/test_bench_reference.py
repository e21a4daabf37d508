"""The bench's transformers references compute what the engine computes (not a timing test).

The references time transformers' language model on the full and on the physically shortened
prompt, and its ``generate``; each must produce the engine's next-token logits (tokens) for the
case it is compared with, or the overhead ratios would compare different work.
"""

from __future__ import annotations

import json

import torch

from vtsched.core.cli import main
from vtsched.core.testing import TinyShape, random_image, tiny_llava
from vtsched.core.tools.bench import Case, run_bench

from tests.helpers import run_logits, scheduler

ATOL = 1e-9  # float64 models: the same computation, so only rounding-free agreement passes


def test_reference_cases_reproduce_the_engines_full_and_prune_logits_and_greedy_tokens():
    s = scheduler(*tiny_llava(TinyShape(layers=3, heads=4, kv_heads=2, image_size=42)))
    images = [random_image(1, 50, 40), random_image(2, 50, 40)]
    questions = ["what colour is the small mark in the corner?"] * 2
    cases = [Case("full"), Case("prune", "5"), Case("prune", "3"), Case("parvts", "3", (("drop_layer", "1"),))]
    report = run_bench(s, images, questions, cases, repeats=1, warmup=0, decode_tokens=3, progress=False)

    refs = {r["reference"]: r for r in report.reference_rows()}
    assert set(refs) == {"forward", "forward-shortened", "generate"}
    assert refs["forward"]["case"] == "full" and refs["generate"]["case"] == "full"
    assert refs["forward-shortened"]["case"] == "prune@3"  # the smallest budget
    assert refs["forward"]["agreement"] <= ATOL
    assert refs["forward-shortened"]["agreement"] <= ATOL
    assert refs["generate"]["agreement"] == 1.0
    for row in refs.values():
        assert row["transformers_ms"] > 0 and row["engine_to_transformers"] > 0

    # the check discriminates: full and prune@3 logits differ far more than the tolerance
    batch = s.prepare(images, questions)
    gap = (run_logits(s, batch, "full") - run_logits(s, batch, "prune", 3)).abs().max()
    assert float(gap) > 1e3 * ATOL

    # the KV cache is reported as prefill left it, before the timed decoding grew it
    g = s.adapter.geometry
    full_row = next(r for r in report.rows() if r["case"] == "full")
    expected = g.num_layers * 2 * g.num_kv_heads * g.head_dim * batch.samples[0].length * 8  # float64
    assert full_row["kv_cache_mb"] == expected / 2**20

    [parvts] = report.flops_predictions()
    assert parvts["case"] == "parvts(drop_layer=1)@3" and parvts["against"] == "prune@3"
    expected = parvts["time_ratio"] / parvts["flops_ratio"]
    assert parvts["time_over_flops"] == expected
    assert report.to_dict()["reference"]["rows"] == report.reference_rows()
    assert "engine/tf" in report.table() and "FLOPs prediction" in report.table()


def test_references_give_m_rope_families_their_own_rotary_ids():
    """Qwen2-VL's rotary ids are not positions: the forwards get the sample's ids; no generate reference."""
    from vtsched.core import Scheduler

    s = Scheduler.random("qwen2-vl-tiny", dtype=torch.float64)
    report = run_bench(s, [random_image(1, 56, 56)], ["what colour is the shape?"], [Case("full"), Case("prune", "3")],
                       repeats=1, warmup=0, decode_tokens=2, progress=False)
    refs = {r["reference"]: r for r in report.reference_rows()}
    assert set(refs) == {"forward", "forward-shortened"}
    assert refs["forward"]["agreement"] <= ATOL and refs["forward-shortened"]["agreement"] <= ATOL


def test_no_reference_without_prompts_of_equal_length():
    """Prompts of different lengths would need padding: the bench runs its cases and no reference."""
    s = scheduler(*tiny_llava(TinyShape(layers=2)))
    report = run_bench(s, [random_image(1), random_image(2)], ["red?", "what colour is the small object?"],
                       [Case("full"), Case("prune", "2")], repeats=1, warmup=0, decode_tokens=1, progress=False)
    assert report.references == [] and [r.case.label for r in report.results] == ["full", "prune@2"]
    assert report.to_dict()["reference"]["rows"] == []


def test_bench_cli_reports_references_in_table_and_json(tmp_path, capsys):
    out = tmp_path / "bench"
    args = ["bench", "--shape", "tiny", "--policies", "prune", "parvts:drop_layer=1", "--budgets", "2",
            "--repeats", "1", "--warmup", "0", "--decode-tokens", "2", "--question-words", "4", "--no-progress",
            "--no-plugins"]
    assert main([*args, "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "forward, full prompt" in text and "generate, per token" in text and "FLOPs prediction" in text
    data = json.loads((out / "results.json").read_text())
    assert [r["reference"] for r in data["reference"]["rows"]] == ["forward", "forward-shortened", "generate"]
    assert data["reference"]["parvts_time_over_flops"][0]["case"] == "parvts(drop_layer=1)@2"
    assert all(r["agreement"] is not None for r in data["reference"]["rows"])

    assert main([*args, "--no-reference", "--out", str(tmp_path / "plain")]) == 0
    assert json.loads((tmp_path / "plain" / "results.json").read_text())["reference"]["rows"] == []
