"""What a budget counts, per policy and per results row; and the statistics
of ``vtsched eval`` (Wilson intervals, McNemar against a reference case, a hard subset), checked
against independent computations on small synthetic outcomes and end to end on the demo model."""

from __future__ import annotations

import json
import math
from pathlib import Path
from statistics import NormalDist

import pytest

from vtsched.core.cli import main
from vtsched.core.policy import BUDGET_COUNTS, budget_counts_of
from vtsched.core.registry import build_registry
from vtsched.core.tools.evaluate import EvalReport, Prediction
from vtsched.core.tools.significance import EXACT_BELOW, mcnemar, wilson

Z = NormalDist().inv_cdf(0.975)
DEMO_IMAGE = Path(__file__).resolve().parents[2] / "docs" / "images" / "demo-shapes.png"

# what each built-in policy's budget counts (issue 21 item 2)
EXPECTED_COUNTS = {
    "full": "none", "vtw": "none", "prune": "input", "parvts": "input", "subject-first": "input",
    "non-subject-first": "input", "visionzip": "input", "fastv": "after_drop", "dart": "after_drop",
    "pdrop": "average_per_layer",
}


# --- intervals and tests against independent computations ---------------------------------------------------


def _wilson_by_roots(k: int, n: int) -> tuple[float, float]:
    """The Wilson bounds as the roots in p of (k/n - p)^2 = z^2 p (1 - p) / n."""
    q = k / n
    a, b, c = 1 + Z * Z / n, -(2 * q + Z * Z / n), q * q
    root = math.sqrt(b * b - 4 * a * c)
    return (-b - root) / (2 * a), (-b + root) / (2 * a)


@pytest.mark.parametrize("k,n", [(0, 10), (5, 10), (10, 10), (1, 2), (37, 40), (3, 7), (120, 200)])
def test_wilson_interval_is_the_score_interval(k, n):
    low, high = wilson(k, n)
    ref_low, ref_high = _wilson_by_roots(k, n)
    assert low == pytest.approx(max(0.0, ref_low), abs=1e-12)
    assert high == pytest.approx(min(1.0, ref_high), abs=1e-12)
    assert 0.0 <= low <= k / n <= high <= 1.0


def test_wilson_interval_matches_published_values():
    # Newcombe (1998), Table I: 81/263 -> 0.2553 to 0.3662; 0/10 -> 0 to 0.2775
    assert wilson(81, 263) == pytest.approx((0.2553, 0.3662), abs=5e-5)
    assert wilson(0, 10) == pytest.approx((0.0, 0.2775), abs=5e-5)


def _exact_two_sided(b: int, c: int) -> float:
    """Sum of the Binomial(b + c, 1/2) outcomes no more likely than the one observed."""
    n = b + c
    observed = math.comb(n, b)
    return min(1.0, sum(math.comb(n, i) for i in range(n + 1) if math.comb(n, i) <= observed) / 2**n)


@pytest.mark.parametrize("b,c", [(0, 0), (0, 1), (1, 6), (6, 1), (3, 3), (0, 10), (4, 12), (12, 12)])
def test_mcnemar_exact_for_small_counts(b, c):
    p, method = mcnemar(b, c)
    assert method == "exact"
    assert p == pytest.approx(_exact_two_sided(b, c), abs=1e-12)


def test_mcnemar_exact_known_value():
    assert mcnemar(1, 6)[0] == pytest.approx(2 * (1 + 7) / 128)  # 0.125


@pytest.mark.parametrize("b,c", [(10, 25), (30, 10), (20, 20), (5, 40)])
def test_mcnemar_chi_square_with_continuity_correction_for_large_counts(b, c):
    assert b + c >= EXACT_BELOW
    p, method = mcnemar(b, c)
    statistic = (abs(b - c) - 1) ** 2 / (b + c)
    assert method == "chi2"
    assert p == pytest.approx(2 * (1 - NormalDist().cdf(math.sqrt(statistic))), abs=1e-12)


# --- rows of a report built from synthetic outcomes -----------------------------------------------------------


def _report(outcomes: dict[str, list[bool]], tags: list[str], **options) -> EvalReport:
    report = EvalReport(list(outcomes), **options)
    for case, correct in outcomes.items():
        for i, (ok, tag) in enumerate(zip(correct, tags)):
            report.predictions.append(Prediction(case, f"item{i}", tag, "all", "a", "a" if ok else "b", ok, ok, 0.0,
                                                 7.0, 1.0, budget_counts="input", visual_tokens_input=7.0))
    return report


def test_rows_carry_interval_paired_test_and_hard_subset():
    full = [True, True, True, True, False, False, True, True, True, False]
    prune = [True, False, False, True, False, True, False, True, False, False]
    other = [True, True, False, True, True, True, True, False, True, False]
    tags = ["s", "s", "n", "n", "s", "n", "s", "n", "s", "n"]
    report = _report({"full": full, "prune@7": prune, "parvts@7": other}, tags, hard_subset="prune@7")
    rows = {(r["case"], r["split"]): r for r in report.rows()}
    row = rows[("parvts@7", "all")]
    assert (row["accuracy_ci_low"], row["accuracy_ci_high"]) == pytest.approx(_wilson_by_roots(7, 10))
    b = sum(f and not o for f, o in zip(full, other))
    c = sum(o and not f for f, o in zip(full, other))
    assert (row["ref_right_case_wrong"], row["ref_wrong_case_right"]) == (b, c) == (2, 2)
    assert row["mcnemar_p"] == pytest.approx(_exact_two_sided(b, c))
    assert row["paired_against"] == "full"
    hard = [o for p, o in zip(prune, other) if not p]
    assert row["hard_n"] == len(hard) == 6
    assert row["hard_accuracy"] == pytest.approx(sum(hard) / len(hard))
    assert rows[("prune@7", "all")]["hard_accuracy"] == 0.0
    assert rows[("full", "all")]["mcnemar_p"] == 1.0
    # a split pairs the same items only
    sub = rows[("prune@7", "tag=s")]
    pairs = [(f, p) for f, p, t in zip(full, prune, tags) if t == "s"]
    assert (sub["ref_right_case_wrong"], sub["ref_wrong_case_right"]) == (
        sum(f and not p for f, p in pairs), sum(p and not f for f, p in pairs))
    assert "95% CI" in report.table() and "hard" in report.table()


def test_paired_against_another_case():
    full = [True] * 8
    prune = [True, False, False, False, True, False, False, False]
    other = [True, True, True, True, True, True, False, True]
    report = _report({"full": full, "prune@7": prune, "parvts@7": other}, ["s"] * 8, paired_against="prune@7")
    row = next(r for r in report.rows() if r["case"] == "parvts@7" and r["split"] == "all")
    assert (row["ref_right_case_wrong"], row["ref_wrong_case_right"]) == (0, 5)
    assert row["mcnemar_p"] == pytest.approx(2 / 32)


# --- what a budget counts --------------------------------------------------------------------------------------


def test_every_builtin_policy_declares_what_its_budget_counts():
    registry = build_registry()
    for name, expected in EXPECTED_COUNTS.items():
        assert budget_counts_of(registry.policy(name)) == expected, name
    for component in registry.entries("policy"):
        assert budget_counts_of(component.obj, registry) in BUDGET_COUNTS, component.name
    search = registry.policy("search")
    assert budget_counts_of(search(base="fastv"), registry) == "after_drop"
    assert budget_counts_of(search(), registry) == "input"


def test_list_and_explain_show_what_the_budget_counts(capsys):
    assert main(["list"]) == 0
    policies = capsys.readouterr().out.split("partitioners:")[0]
    lines = {line.split()[0]: line for line in policies.splitlines() if line.startswith("  ")}
    for name, expected in EXPECTED_COUNTS.items():
        assert f"budget: {expected}" in lines[name], lines[name]
    assert main(["explain", "--shape", "demo", "--policy", "pdrop", "--budget", "7"]) == 0
    assert "budget counts: average_per_layer" in capsys.readouterr().out


# --- end to end on the shipped demo model ------------------------------------------------------------------------


def test_eval_end_to_end_with_hard_subset_and_budget_meanings(tmp_path, capsys):
    out = tmp_path / "eval"
    argv = ["eval", "--data", "synthetic:1:2", "--policies", "prune", "fastv", "--budgets", "7",
            "--hard-subset", "prune@7", "--no-progress", "--out", str(out)]
    assert main(argv) == 0
    table = capsys.readouterr().out
    assert "hard: accuracy on the items 'prune@7' answers wrongly" in table
    saved = json.loads((out / "results.json").read_text())
    rows = {(r["case"], r["split"]): r for r in saved["rows"]}
    preds = {(p["case"], p["id"]): p["correct"] for p in saved["predictions"]}
    ids = [p["id"] for p in saved["predictions"] if p["case"] == "full"]
    wrong = [i for i in ids if not preds[("prune@7", i)]]
    for case in ("full", "prune@7", "fastv@7"):
        row = rows[(case, "all")]
        k = sum(preds[(case, i)] for i in ids)
        assert row["n"] == len(ids)
        assert (row["accuracy_ci_low"], row["accuracy_ci_high"]) == pytest.approx(_wilson_by_roots(k, len(ids)))
        assert row["hard_n"] == len(wrong)
        if wrong:
            assert row["hard_accuracy"] == pytest.approx(sum(preds[(case, i)] for i in wrong) / len(wrong))
        b = sum(preds[("full", i)] and not preds[(case, i)] for i in ids)
        c = sum(preds[(case, i)] and not preds[("full", i)] for i in ids)
        assert row["mcnemar_p"] == pytest.approx(_exact_two_sided(b, c))
    # the same number, three meanings: side by side with what entered the LLM and what ran per layer
    full, prune, fastv = rows[("full", "all")], rows[("prune@7", "all")], rows[("fastv@7", "all")]
    assert (full["budget_counts"], prune["budget_counts"], fastv["budget_counts"]) == ("none", "input", "after_drop")
    assert full["visual_tokens_input"] == full["visual_tokens_per_layer"] == 64.0
    assert prune["visual_tokens_input"] == prune["visual_tokens_per_layer"] == 7.0
    assert fastv["visual_tokens_input"] == 64.0 and 7.0 < fastv["visual_tokens_per_layer"] < 64.0
    assert prune["prefill_gflops"] < fastv["prefill_gflops"] < full["prefill_gflops"]
    assert "mcnemar_p" in (out / "results.csv").read_text().splitlines()[0]


@pytest.mark.parametrize("option", ["--hard-subset", "--paired-against"])
def test_eval_refuses_an_unknown_case_before_weights(option, tmp_path, capsys, monkeypatch):
    import vtsched.core.cli.eval as eval_command

    def no_weights(*args, **kwargs):
        raise AssertionError("weights loaded before the case name was checked")

    monkeypatch.setattr(eval_command, "load_scheduler", no_weights)
    code = main(["eval", "--data", "synthetic:1:1", "--policies", "prune", "--budgets", "7", option, "prune@8",
                 "--out", str(tmp_path / "e")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1
    assert "no case 'prune@8' in this eval; cases: full, prune@7" in err


def test_run_json_reports_budget_meaning_and_tokens(tmp_path):
    out = tmp_path / "run.json"
    assert main(["run", "--image", str(DEMO_IMAGE), "--question", "What colour is the small square?",
                 "--policy", "fastv", "--budget", "7", "--max-new-tokens", "1", "--json", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["budget_counts"] == "after_drop"
    assert record["visual_tokens_input"] == 64.0
    assert 7.0 < record["visual_tokens_per_layer"] < 64.0


def test_bench_rows_report_budget_meaning_beside_tokens_flops_and_time(tmp_path):
    out = tmp_path / "bench"
    assert main(["bench", "--shape", "demo", "--policies", "prune", "fastv:drop_layer=1", "--budgets", "7",
                 "--repeats", "1", "--warmup", "0", "--decode-tokens", "0", "--question-words", "6",
                 "--out", str(out), "--no-progress", "--no-plugins"]) == 0
    rows = {r["case"]: r for r in json.loads((out / "results.json").read_text())["rows"]}
    full, prune, fastv = rows["full"], rows["prune@7"], rows["fastv(drop_layer=1)@7"]
    assert (full["budget_counts"], prune["budget_counts"], fastv["budget_counts"]) == ("none", "input", "after_drop")
    assert (full["visual_tokens_input"], prune["visual_tokens_input"], fastv["visual_tokens_input"]) == (64, 7, 64)
    assert prune["visual_tokens_per_layer"] == 7.0 < fastv["visual_tokens_per_layer"] < 64.0
    assert all(r["prefill_ms"] > 0 and r["prefill_gflops"] > 0 for r in (full, prune, fastv))


def test_sweep_rows_report_budget_meaning_beside_tokens_flops_and_time(tmp_path):
    results = tmp_path / "r.jsonl"
    config = tmp_path / "s.toml"
    config.write_text(f'[sweep]\nresults = "{results.as_posix()}"\nmodels = ["demo"]\ndatasets = ["synthetic:3:1"]\n'
                      'budgets = [7]\n[[policy]]\nname = "full"\n[[policy]]\nname = "prune"\n[[policy]]\nname = "fastv"\n')
    assert main(["sweep", str(config), "--no-progress"]) == 0
    rows = {r["label"]: r for r in map(json.loads, results.read_text().splitlines())}
    assert {k: rows[k]["budget_counts"] for k in ("full", "prune@7", "fastv@7")} == {
        "full": "none", "prune@7": "input", "fastv@7": "after_drop"}
    assert (rows["prune@7"]["visual_tokens_input"], rows["fastv@7"]["visual_tokens_input"]) == (7.0, 64.0)
    assert rows["fastv@7"]["visual_tokens_per_layer"] < 64.0 and rows["fastv@7"]["prefill_ms"] > 0
    (summary,) = tmp_path.glob("*/summary.csv")
    header = summary.read_text().splitlines()[0].split(",")
    assert {"budget_counts", "visual_tokens_input", "visual_tokens_per_layer", "prefill_gflops", "prefill_ms"} <= set(header)


def test_eval_accepts_a_case_named_with_its_partitioner(monkeypatch, tmp_path):
    import vtsched.core.cli.eval as eval_command

    class Reached(BaseException):
        pass

    def reached(*args, **kwargs):
        raise Reached

    monkeypatch.setattr(eval_command, "load_scheduler", reached)
    with pytest.raises(Reached):  # the name passed the check: the command went on to load weights
        main(["eval", "--data", "synthetic:1:1", "--policies", "prune", "--budgets", "7", "--partitioners", "random",
              "--hard-subset", "prune@7 [random]", "--paired-against", "prune@7 [random]", "--out", str(tmp_path / "e")])
    assert main(["eval", "--data", "synthetic:1:1", "--policies", "prune", "--budgets", "7", "--partitioners", "random",
                 "--hard-subset", "prune@7", "--out", str(tmp_path / "e")]) == 2
