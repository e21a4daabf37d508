"""The evaluator extension point: registration contract and how ``vtsched eval`` picks an evaluator."""

from __future__ import annotations

import argparse
import json

import pytest

from vtsched.core import hookimpl
from vtsched.core.errors import InputError, PluginError
from vtsched.core.evaluators import EvalOutcome, Evaluator, evaluator_for
from vtsched.core.registry import build_registry, make_plugin_manager


class Toy(Evaluator):
    """Counts items."""

    name = "toy"
    help = "counts items"

    @classmethod
    def accepts(cls, data):
        return data.endswith(".toy")

    @classmethod
    def evaluate(cls, request):
        return EvalOutcome(rows=[{"case": "full", "n": 1, "data": request.data}], table="full 1", records=[{"id": 1}])


class Other(Toy):
    """Claims the same data."""

    name = "other"


def _registry(*evaluators):
    class Plugin:
        @hookimpl
        def vtsched_register_evaluators(self, register):
            for e in evaluators:
                register(e)

    return build_registry(make_plugin_manager(load_entrypoints=False, extra=[Plugin()]))


def test_evaluator_for_prefix_layout_and_none():
    registry = _registry(Toy)
    assert evaluator_for(registry, "toy:a/b:c") == (Toy, "a/b:c")
    assert evaluator_for(registry, "x.toy") == (Toy, "x.toy")
    assert evaluator_for(registry, "synthetic:1:3") is None
    with pytest.raises(InputError, match=r"several evaluators claim it \(other \[.*\], toy \[.*\]\)"):
        evaluator_for(_registry(Toy, Other), "x.toy")


@pytest.mark.parametrize("name, message", [("synthetic", "cannot prefix --data"), ("a:b", "cannot prefix --data")])
def test_evaluator_names_that_cannot_prefix_data_are_refused(name, message):
    bad = type("Bad", (Toy,), {"name": name})
    with pytest.raises(PluginError, match=message):
        _registry(bad)


def test_abstract_evaluator_is_refused():
    class Half(Evaluator):
        name = "half"

    with pytest.raises(PluginError, match="does not implement evaluate"):
        _registry(Half)


def test_eval_writes_an_evaluators_outcome(tmp_path, capsys):
    from vtsched.core.cli.eval import _run_evaluator

    args = argparse.Namespace(model=None, policies=["prune"], budgets=["7"], partitioners=None, limit=None,
                              device="cpu", batch_size=4, no_progress=True, out=str(tmp_path), data="toy:d")
    assert _run_evaluator(args, _registry(Toy), Toy, "d") == 0
    assert "full 1" in capsys.readouterr().out
    report = json.loads((tmp_path / "results.json").read_text())
    assert report["evaluator"] == "toy" and report["rows"][0]["data"] == "d" and report["items"] == [{"id": 1}]
    assert (tmp_path / "results.csv").read_text().startswith("case,n,data")
