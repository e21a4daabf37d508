"""One definition of "average visual tokens per layer", costs that include each
method's scoring, and comparing methods at equal cost (``--match``).

The solver is held to brute force over every integer budget; the nominal costs the solver uses are held
to what the engine executed; the CLI's matched rows are held to their targets; and a target no budget
can meet is one line, exit 2, nothing written.
"""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from tests.helpers import scheduler
from vtsched.core.budget import Budget
from vtsched.core.cli import main
from vtsched.core.cost import nominal_group_sizes, plan_costs, prefill_flops
from vtsched.core.demo import random_image
from vtsched.core.testing.strategies import TinyShape, tiny_llava
from vtsched.core.tools.matching import Matcher, SampleText, closest_budget, sample_text, solve_budget


# --- the solver against brute force ----------------------------------------------------------------------------


@st.composite
def monotone_costs(draw):
    """Non-decreasing costs of budgets ``low..low+n-1`` (plateaus and jumps included) and a target near them."""
    steps = draw(st.lists(st.sampled_from([0.0, 0.5, 1.0, 2.0, 3.25, 10.0]), min_size=1, max_size=40))
    start = draw(st.sampled_from([0.0, 1.0, 7.5]))
    costs, value = [], start
    for step in steps:
        value += step
        costs.append(value)
    target = draw(st.one_of(st.sampled_from(costs), st.floats(start - 5, value + 5, allow_nan=False),
                            st.sampled_from([(a + b) / 2 for a, b in zip(costs, costs[1:])] or costs)))
    return costs, target, draw(st.integers(0, 3))


@given(monotone_costs())
def test_bisection_picks_the_closest_budget_with_the_stated_tie_rule(case):
    """Over all integer budgets: closest to the target, then the lower cost (a tie never goes above the
    target), then the smallest budget; as brute force finds it."""
    costs, target, low = case
    calls: list[int] = []

    def cost(b: int) -> float:
        calls.append(b)
        return costs[b - low]

    chosen = solve_budget(cost, target, low, low + len(costs) - 1)
    assert chosen == closest_budget(costs, target, low)
    assert len(calls) <= 4 * (len(costs).bit_length() + 2)  # bisection, not a scan


def test_a_tie_between_a_budget_below_and_one_above_goes_below():
    assert solve_budget(lambda b: [0.0, 10.0, 20.0][b], 15.0, 0, 2) == 1
    assert closest_budget([0.0, 10.0, 20.0], 15.0) == 1
    assert solve_budget(lambda b: [0.0, 10.0, 10.0, 20.0][b], 12.0, 0, 3) == 1  # a plateau: its smallest budget


def test_a_solver_that_scans_from_the_top_is_told_apart():
    """The brute-force reference must reject a plausible wrong rule (the largest budget on a plateau)."""
    costs = [0.0, 5.0, 5.0, 5.0, 9.0]
    wrong = max(i for i, c in enumerate(costs) if abs(c - 5.0) == min(abs(x - 5.0) for x in costs))
    assert closest_budget(costs, 5.0) == 1 != wrong


# --- nominal costs against the engine --------------------------------------------------------------------------

SHAPE = TinyShape(layers=4, image_size=42)  # 9 visual tokens, 4 layers
CASES = [
    ("prune", {}, None, 4),
    ("parvts", {"drop_layer": 2, "fusion": "size"}, None, 3),
    ("fastv", {"drop_layer": 1}, None, 3),
    ("pdrop", {"layers": (1, 2, 3)}, None, 4),
    ("subject-first", {"insert_layer": 2}, None, 3),
    ("vtw", {"drop_layer": 2}, None, None),
    ("prune", {}, "divprune", 4),
    ("prune", {}, "vispruner", 4),
    ("prune", {}, "cdpruner", 4),
]


@pytest.fixture(scope="module")
def tiny():
    model, processor = tiny_llava(SHAPE, torch.float64)
    s = scheduler(model, processor)
    batch = s.prepare([random_image(3, 42, 42)], ["what colour is the square in the corner?"])
    return s, batch


@pytest.mark.parametrize("name,params,partitioner,budget", CASES)
def test_nominal_costs_equal_what_the_engine_ran(tiny, name, params, partitioner, budget):
    """What ``--match`` solves on (token counts walked through the events) is what the run reports."""
    s, batch = tiny
    policy = s.make_policy(name, params)
    part = s.make_partitioner(partitioner) if partitioner else None
    plan = s.plan(batch, policy, part, Budget(count=budget) if budget is not None else None)
    ran = s.engine.prefill(batch, plan.schedule, plan.partition, use_cache=False)
    executed = plan_costs(plan, ran.stats, s.adapter.geometry)
    nominal = Matcher(s.planner, "avg-tokens").nominal(policy, part, budget, sample_text(batch.samples[0]))
    assert nominal.visual_tokens_input == pytest.approx(float(executed.visual_tokens_input[0]))
    assert nominal.visual_tokens_per_layer == pytest.approx(float(executed.visual_tokens_per_layer[0]))
    assert nominal.prefill_flops == pytest.approx(float(prefill_flops(ran.stats, s.adapter.geometry)[0]))
    scoring = float(executed.scoring_flops[0])
    assert scoring >= nominal.selection_flops
    if partitioner in ("divprune", "cdpruner", "vispruner"):  # a diversity method's matrices are counted
        assert nominal.selection_flops > 0
        assert float(executed.prefill_flops[0]) == pytest.approx(nominal.prefill_flops + scoring)


def test_parallel_streams_count_in_the_average_as_a_single_stream_would(tiny):
    """``parvts`` at K with R of N runs every token through its first K layers (in two
    streams), so its average per layer is (K*N + (L-K)*R)/L, as fastv's keeping R after K is."""
    s, batch = tiny
    n, layers = batch.samples[0].num_visual, s.adapter.geometry.num_layers
    rows = {}
    for name in ("parvts", "fastv"):
        plan = s.plan(batch, s.make_policy(name, {"drop_layer": 2}), None, Budget(count=3))
        ran = s.engine.prefill(batch, plan.schedule, plan.partition, use_cache=False)
        rows[name] = plan_costs(plan, ran.stats, s.adapter.geometry).row()
    expected = (2 * n + (layers - 2) * 3) / layers
    assert rows["parvts"]["visual_tokens_per_layer"] == pytest.approx(expected)
    assert rows["fastv"]["visual_tokens_per_layer"] == pytest.approx(expected)
    assert rows["parvts"]["visual_tokens_input"] == rows["fastv"]["visual_tokens_input"] == n


def test_a_vispruner_selection_counts_its_rounds():
    """Its similarity blocks, round by round, as the official loop computes them (a closed form checked on
    one small case by hand: 10 candidates keeping 1: rounds of 10 and 2 tokens)."""
    from vtsched.partitioners.vispruner import VisPruner, removal_rounds

    assert removal_rounds(10, 1) == [10, 2]
    geometry = tiny_llava_geometry()
    width = geometry.vision_hidden_size
    assert VisPruner(important_ratio=0.0).selection_flops(10, 1, geometry) == 2 * (5 * 5 + 1 * 1) * width


def tiny_llava_geometry():
    model, processor = tiny_llava(SHAPE, torch.float64)
    return scheduler(model, processor).adapter.geometry


# --- matching: every row meets its target ------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["avg-tokens", "flops"])
def test_matched_rows_meet_the_target_of_prune(tiny, kind):
    s, batch = tiny
    matcher = Matcher(s.planner, kind)
    text = sample_text(batch.samples[0])
    target = matcher.target(Budget(count=5), text)
    policies = [("prune", {}), ("fastv", {"drop_layer": 1}), ("pdrop", {"layers": (1, 2, 3)})]
    if kind == "avg-tokens":  # on this tiny prompt two streams' text costs more than prune's FLOPs at any budget
        policies.append(("parvts", {"drop_layer": 1, "fusion": "size"}))
    for name, params in policies:
        policy = s.make_policy(name, params)
        solved = matcher.solve(policy, None, Budget(count=5), text, name)
        assert solved is not None
        plan = s.plan(batch, policy, None, Budget(count=solved))
        ran = s.engine.prefill(batch, plan.schedule, plan.partition, use_cache=False)
        row = plan_costs(plan, ran.stats, s.adapter.geometry).row()
        achieved = row["visual_tokens_per_layer"] if kind == "avg-tokens" else row["prefill_gflops"]
        def gap(b: int, policy=policy) -> float:
            return abs(matcher.measure(matcher.nominal(policy, None, b, text)) - target)

        neighbours = [b for b in (solved - 1, solved + 1) if 1 <= b <= text.num_visual]
        assert all(gap(solved) <= gap(b) for b in neighbours)  # no neighbouring budget is closer
        if name == "prune":
            assert solved == 5 and achieved == pytest.approx(target, rel=1e-9)
        else:
            assert achieved == pytest.approx(target, rel=0.35)  # within one budget step on 9 tokens


def test_input_tokens_cannot_be_matched_by_a_method_that_sends_every_token_in(tiny):
    from vtsched.core.tools.matching import MatchError

    s, batch = tiny
    text = sample_text(batch.samples[0])
    with pytest.raises(MatchError, match=r"fastv cannot meet the target 3 of budget 3; the nearest it achieves is 9"):
        Matcher(s.planner, "input-tokens").solve(s.make_policy("fastv", {"drop_layer": 1}), None, Budget(count=3),
                                                 text, "fastv")


def test_nominal_text_sizes_are_the_prompt_around_the_image(tiny):
    _, batch = tiny
    sample = batch.samples[0]
    text = sample_text(sample)
    assert text.prefix + text.num_visual + text.suffix == sample.length
    assert int(sample.visual_positions[0]) == text.prefix


def test_nominal_group_sizes_split_the_rest_evenly():
    assert nominal_group_sizes(("s", "a", "b"), 4, 11) == {"s": 4, "a": 4, "b": 3}
    assert nominal_group_sizes(("s",), 4, 11) == {"s": 11}
    assert SampleText(9, 1, 2).num_visual == 9


# --- the commands ---------------------------------------------------------------------------------------------


def test_bench_match_reports_target_and_achieved_in_every_row(tmp_path, capsys):
    out = tmp_path / "bench"
    assert main(["bench", "--shape", "tiny", "--policies", "prune", "fastv:drop_layer=1", "prune+divprune", "vtw",
                 "--budgets", "3", "--match", "avg-tokens", "--repeats", "1", "--warmup", "0", "--decode-tokens", "0",
                 "--no-reference", "--no-progress", "--out", str(out)]) == 0
    rows = {r["case"]: r for r in json.loads((out / "results.json").read_text())["rows"]}
    for label in ("prune@3", "fastv(drop_layer=1)@3", "prune@3 [divprune]"):
        row = rows[label]
        assert row["match"] == "avg-tokens" and row["match_target"] == 3.0
        assert row["match_achieved"] == row["visual_tokens_per_layer"] == pytest.approx(3.0)
        assert {"budget_counts", "visual_tokens_input", "prefill_gflops", "prefill_ms", "budget_solved"} <= set(row)
    assert rows["fastv(drop_layer=1)@3"]["budget_solved"] == 2  # (4 + 2) / 2 layers = 3
    assert rows["vtw"]["match_target"] is None and rows["vtw"]["budget_solved"] is None
    assert "target achieved" in capsys.readouterr().out.replace("  ", " ").replace("  ", " ")


def test_an_unreachable_target_is_one_line_exit_2_and_nothing_written(tmp_path, capsys):
    out = tmp_path / "bench"
    code = main(["bench", "--shape", "tiny", "--policies", "parvts:drop_layer=1", "--budgets", "1", "--match",
                 "avg-tokens", "--no-progress", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "parvts(drop_layer=1)@1 cannot meet the target 1" in err and "the nearest it achieves is 2.5" in err
    assert not out.exists()


def test_eval_match_flops_with_a_hard_subset_runs_on_the_demo_model(tmp_path, capsys):
    """The issue's done-when: ``vtsched eval --match flops --hard-subset`` (downsample's case) on the demo model."""
    out = tmp_path / "eval"
    assert main(["eval", "--data", "synthetic:1:1", "--policies", "prune", "fastv:drop_layer=1", "--partitioners",
                 "downsample", "--budgets", "16", "--match", "flops", "--hard-subset", "prune@16 [downsample]",
                 "--max-new-tokens", "2", "--no-progress", "--no-plugins", "--out", str(out)]) == 0
    rows = {r["case"]: r for r in json.loads((out / "results.json").read_text())["rows"] if r["split"] == "all"}
    prune, fastv = rows["prune@16 [downsample]"], rows["fastv(drop_layer=1)@16"]
    assert prune["match"] == fastv["match"] == "flops"
    assert prune["match_target"] == pytest.approx(fastv["match_target"])  # one target: prune's FLOPs at 16 tokens
    assert prune["budget_solved"] == 16 and prune["match_achieved"] == pytest.approx(prune["match_target"], rel=1e-6)
    assert fastv["budget_solved"] < 16  # fastv runs all 64 tokens through layer 0, so it keeps fewer after
    assert fastv["match_achieved"] == fastv["prefill_gflops"]
    assert fastv["match_achieved"] == pytest.approx(fastv["match_target"], rel=0.05)
    assert rows["full"]["match_target"] is None and "hard" in capsys.readouterr().out


def test_eval_match_avg_tokens_counts_parallel_streams(tmp_path):
    out = tmp_path / "eval"
    assert main(["eval", "--data", "synthetic:1:1", "--policies", "parvts:drop_layer=1,fusion=size", "--budgets", "16",
                 "--match", "avg-tokens", "--max-new-tokens", "2", "--no-progress", "--no-plugins",
                 "--out", str(out)]) == 0
    row = next(r for r in json.loads((out / "results.json").read_text())["rows"]
               if r["case"].startswith("parvts") and r["split"] == "all")
    # 6 layers, 64 tokens: (64 + 5R)/6 is closest to 16 at R = 6 (15.67; R = 7 gives 16.5)
    assert row["budget_solved"] == 6 and row["match_achieved"] == row["visual_tokens_per_layer"] == pytest.approx(94 / 6)


SWEEP = """
[sweep]
results = "{results}"
models = ["demo"]
datasets = ["synthetic:1:1"]
budgets = [16]
{match}
[eval]
max_new_tokens = 2
[[policy]]
name = "prune"
[[policy]]
name = "fastv"
params = {{ drop_layer = 1 }}
"""


def test_sweep_match_key_solves_cells_and_leaves_unmatched_hashes_alone(tmp_path):
    from vtsched.core.registry import build_registry
    from vtsched.core.tools.sweep.config import load_config
    from vtsched.core.tools.sweep.plan import resolve_cells

    plain, matched = tmp_path / "plain.toml", tmp_path / "matched.toml"
    plain.write_text(SWEEP.format(results=tmp_path / "plain.jsonl", match=""))
    matched.write_text(SWEEP.format(results=tmp_path / "matched.jsonl", match='match = "avg-tokens"'))
    registry = build_registry()
    plain_cells = resolve_cells(load_config(plain), registry, estimate=False)
    assert all("match" not in c.spec for c in plain_cells)  # rows written before --match keep their hashes
    assert main(["sweep", str(matched), "--no-progress", "--no-plugins"]) == 0
    rows = {r["label"]: r for r in map(json.loads, (tmp_path / "matched.jsonl").read_text().splitlines())}
    fastv = next(r for label, r in rows.items() if label.startswith("fastv"))
    assert fastv["match"] == "avg-tokens" and fastv["match_target"] == 16.0
    assert fastv["budget_solved"] == 6 and fastv["match_achieved"] == fastv["visual_tokens_per_layer"] == pytest.approx(94 / 6)


def test_a_flops_target_refused_before_the_weights_says_its_figures_leave_the_text_out(capsys, tmp_path):
    """subject-first cannot come down to prune@31's FLOPs (its non-subject tokens join at layer 2); the
    refusal's figures are for the image alone, below the results' prefill_gflops, and it says so."""
    assert main(["eval", "--data", "synthetic:4:2", "--policies", "subject-first", "--budgets", "31",
                 "--match", "flops", "--no-progress", "--no-plugins", "--out", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "subject-first@31 cannot meet the target" in err
    assert "without the prompt's text" in err and not (tmp_path / "e" / "results.json").exists()
