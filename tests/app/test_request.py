"""The application layer: a request is read from the user's words once, at its edge, and travels typed;
the saved schedule's budget fallback, the -p routing and the cost of a run each live in one place."""

from __future__ import annotations

import pytest

from vtsched.core.app import (
    DEFAULT_BUDGET, Request, answer_timed, budget_for, check_request, cost_row, parse_budget, planner_for_model,
    registry, with_run_meta,
)
from vtsched.core.budget import Budget
from vtsched.core.cost import plan_costs
from vtsched.core.errors import BudgetError, VtschedError
from vtsched.core.testing import TinyShape, tiny_llava
from vtsched.core.tools.bench import Case, expand_cases

from tests.helpers import scheduler


@pytest.fixture(scope="module")
def planner():
    return planner_for_model(None, registry(no_plugins=True))  # the demo model's config: no weights


def test_the_words_are_read_once_into_a_budget_that_keeps_its_spelling():
    request = Request.from_words("prune", params={"a": "1"}, budget="11%", partitioner="")
    assert request.budget == Budget(ratio=0.11) and request.budget.text == "11%" and str(request.budget) == "0.11"
    assert request.params == (("a", "1"),) and request.partitioner is None
    assert Request.from_words("prune", budget="").budget is None and parse_budget(None) is None
    assert Budget.parse("11%") == Budget.parse("0.11") and hash(Budget.parse("11%")) == hash(Budget(ratio=0.11))
    assert Budget(count=7).text == "7"
    with pytest.raises(BudgetError, match="is not a token count"):
        Request.from_words("prune", budget="lots")


def test_a_bench_case_reads_each_budget_once(planner, monkeypatch):
    """``--budgets 7 11%`` over two policies: two reads, however many cases and checks use them."""
    reads = []
    real = Budget.parse.__func__
    monkeypatch.setattr(Budget, "parse", classmethod(lambda cls, text: reads.append(text) or real(cls, text)))
    cases = expand_cases(planner, ["prune", "parvts:drop_layer=1"], ["7", "11%"], keep_full=True)
    assert reads == ["7", "11%"]
    assert [c.label for c in cases] == ["full", "prune@7", "prune@11%", "parvts(drop_layer=1)@7",
                                        "parvts(drop_layer=1)@11%"]
    assert all(isinstance(c.budget, Budget) for c in cases[1:])
    assert Case("prune", "7") == Case("prune", Budget(count=7))  # a case written in Python gives the words


def test_the_budget_a_request_runs_at(planner, tmp_path):
    """Given, else the saved schedule's own, else the default: one rule for run, explain and the plugins."""
    prune = planner.policy("prune")
    assert budget_for(prune, Budget(count=5)) == Budget(count=5)
    assert budget_for(prune, None) == Budget.parse(DEFAULT_BUDGET)
    assert budget_for(prune, None, None) is None
    checked = check_request(planner, Request.from_words("parvts", params={"drop_layer": "1"}, budget="9"))
    path = tmp_path / "saved.json"
    path.write_text(with_run_meta(checked.check.schedule, checked.budget, checked.partitioner).to_json())
    saved = check_request(planner, Request.from_words(f"schedule:{path}"))
    assert saved.budget == Budget(count=9) and saved.partitioner == checked.partitioner
    assert check_request(planner, Request.from_words(f"schedule:{path}", budget="4")).budget == Budget(count=4)


def test_check_request_routes_parameters_and_refuses_before_weights(planner):
    checked = check_request(planner, Request.from_words("prune", params={"seed": "3"}, partitioner="random",
                                                        budget="4"))
    assert checked.partitioner == "random" and checked.partitioner_params == {"seed": "3"}
    assert checked.make_partitioner(planner).seed == 3
    with pytest.raises(VtschedError, match="no parameter"):
        check_request(planner, Request.from_words("prune", params={"nosuch": "1"}, budget="4"))
    with pytest.raises(BudgetError, match="exceeds"):
        check_request(planner, Request.from_words("prune", budget="100000"))


def test_a_run_carries_its_cost_columns_computed_once():
    s = scheduler(*tiny_llava(TinyShape(layers=2, image_size=42)))
    from vtsched.core.demo import random_image

    batch = s.prepare([random_image(0, 42, 42)], ["what colour?"])
    checked = check_request(s.planner, Request.from_words("parvts", params={"drop_layer": "1"}, budget="3"))
    result, seconds = answer_timed(s, batch, checked.policy, checked.make_partitioner(s.planner), checked.budget)
    assert seconds > 0
    again = plan_costs(result.plan, result.generated.prefill.stats, s.adapter.geometry)
    assert result.costs.row() == again.row()
    row = cost_row(s, checked.policy, result.costs, 0, 1.5)
    assert list(row) == ["budget_counts", "visual_tokens_input", "visual_tokens_per_layer", "prefill_gflops",
                         "scoring_gflops", "prefill_ms"]
    assert row["budget_counts"] == "input" and row["prefill_ms"] == 1.5


def test_the_python_api_edge_runs_a_request_as_scheduler_run_does():
    from vtsched.core.app import run
    from vtsched.core.demo import random_image

    s = scheduler(*tiny_llava(TinyShape(layers=2, image_size=42)))
    images, questions = [random_image(1, 42, 42)], ["where is the mark?"]
    ours, _ = run(s, Request.from_words("prune", budget="40%"), images, questions)
    theirs = s.run(images, questions, "prune", budget="40%")
    assert ours.texts == theirs.texts and ours.plan.schedule == theirs.plan.schedule
    assert ours.costs.row() == theirs.costs.row()
