from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vtsched.core import Budget, BudgetError, EndStream, Fuse, InsertGroup, RemoveGroup, Schedule, ScheduleError, Stream
from vtsched.core.testing import schedules


@pytest.mark.parametrize("text,n,expected", [("64", 576, 64), ("0.111", 576, 64), ("11.1%", 576, 64),
                                             ("0", 10, 0), ("1.0", 9, 9), (5, 9, 5), (0.5, 10, 5)])
def test_budget_parse_and_resolve(text, n, expected):
    assert Budget.parse(text).resolve(n) == expected


@pytest.mark.parametrize("text", ["-3", "abc", "1.5", "200%", "", "3.5"])
def test_bad_budgets_are_refused(text):
    with pytest.raises(BudgetError):
        Budget.parse(text)


def test_budget_larger_than_image_is_refused_with_sizes():
    with pytest.raises(BudgetError, match="exceeds the 576 visual tokens"):
        Budget.parse("600").resolve(576)


@given(schedules())
def test_schedule_json_round_trip(schedule):
    again = Schedule.from_json(schedule.to_json())
    assert again == schedule
    assert again.to_dict() == schedule.to_dict()
    assert schedule.explain()  # prints


def _two_streams(events, survivor="s"):
    return Schedule(4, ("s", "n"), (Stream("s", ("s",)), Stream("n", ("n",))), survivor, tuple(events))


@pytest.mark.parametrize(
    "events,message",
    [
        ([Fuse(2, ("s", "n"), "s", "fixed"), EndStream(5, "n")], "outside 0..4"),
        ([Fuse(2, ("s", "n"), "s", "fixed")], "run to the last layer"),
        ([EndStream(1, "n"), Fuse(2, ("s", "n"), "s", "fixed")], "stream already ended"),
        ([EndStream(2, "s"), EndStream(2, "n")], "surviving stream cannot end"),
        ([EndStream(3, "n"), RemoveGroup(1, "s", "s")], "layer order"),
        ([RemoveGroup(1, "s", "x"), EndStream(1, "n")], "unknown group 'x'"),
        ([InsertGroup(1, "s", "s"), EndStream(1, "n")], "already carries"),
        ([Fuse(1, ("s", "n"), "q", "size"), EndStream(1, "n")], "not among the fused"),
        ([EndStream(1, "zz")], "no such stream"),
    ],
)
def test_invalid_schedules_are_refused_clearly(events, message):
    with pytest.raises(ScheduleError, match=message):
        _two_streams(events)


def test_survivor_must_exist_and_streams_must_be_known():
    with pytest.raises(ScheduleError, match="surviving stream 'x'"):
        Schedule(2, ("a",), (Stream("main", ("a",)),), "x")
    with pytest.raises(ScheduleError, match="unknown group"):
        Schedule(2, ("a",), (Stream("main", ("b",)),), "main")
    with pytest.raises(ScheduleError, match="at least one layer"):
        Schedule(0, ("a",), (Stream("main", ("a",)),), "main")


def test_from_json_refuses_foreign_files():
    with pytest.raises(ScheduleError, match="not a vtsched schedule"):
        Schedule.from_json('{"layers": 3}')
    with pytest.raises(ScheduleError, match="not JSON"):
        Schedule.from_json("{")
    with pytest.raises(ScheduleError, match="unknown event kind"):
        Schedule.from_dict({"vtsched_schedule": 1, "num_layers": 2, "groups": ["a"],
                            "streams": [{"name": "m", "groups": ["a"]}], "survivor": "m",
                            "events": [{"kind": "teleport", "layer": 1}]})


def test_explain_shows_the_timeline():
    text = _two_streams([Fuse(2, ("s", "n"), "s", "attention"), EndStream(2, "n")]).explain()
    assert "layers 0-1" in text and "@2" in text and "fuse question tokens of s, n -> s by attention" in text
    assert "layers 2-3    s" in text


@given(st.one_of(st.floats(0.0, 1.0), st.integers(0, 10_000)))
def test_budget_text_round_trips_exactly(value):
    """Saved schedules, calibration and sweep hashes carry budgets as text: nothing may be lost."""
    budget = Budget(count=value) if isinstance(value, int) else Budget(ratio=value)
    assert Budget.parse(str(budget)) == budget
