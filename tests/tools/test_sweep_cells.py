"""What a sweep cell runs on: each model's own partitioner, data a plugin's evaluator serves, its own results.

Each of these once failed: a Qwen model's cells ran the ``cls`` partitioner, which its
vision tower cannot serve; a ``segmentation:...`` dataset was read as question answering; every
config copied from docs/ablation.toml wrote the same results file.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import vtsched.core.registry as registry_module
from vtsched.core import hookimpl
from vtsched.core.evaluators import EvalOutcome, Evaluator
from vtsched.core.tools.sweep import load_config, run_sweep
from vtsched.core.tools.sweep.results import read_rows

ROOT = Path(__file__).resolve().parents[2]


def _config(folder: Path, text: str, name: str = "cells.toml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text)
    return path


# -- the default partitioner is each model's own -------------------------------------------------------
@pytest.fixture(scope="module")
def qwen_checkpoint(tmp_path_factory):
    from vtsched.core.shapes import get_shape

    model, processor = get_shape("qwen2-vl-tiny").build(seed=0)
    path = tmp_path_factory.mktemp("qwen") / "qwen2-vl-tiny"
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def test_a_qwen_sweep_runs_the_familys_partitioner(tmp_path, qwen_checkpoint):
    config = _config(tmp_path, f"""\
[sweep]
results = "r.jsonl"
models = ["{qwen_checkpoint}"]
datasets = ["synthetic:1:1"]
budgets = [4]

[eval]
max_new_tokens = 2

[[policy]]
name = "full"

[[policy]]
name = "prune"
""")
    outcome = run_sweep(config, no_plugins=True, progress=False, report=False)
    rows, _ = read_rows(tmp_path / "r.jsonl")
    assert [r["status"] for r in rows] == ["ok", "ok"], [r.get("error") for r in rows]
    prune = next(r for r in rows if r["spec"]["policy"] == "prune")
    assert prune["spec"]["partitioner"] == "attention"  # Qwen2-VL's own, as `vtsched run` picks it
    assert prune["label"] == "prune@4"  # the default is not spelt out in the label
    assert prune["visual_tokens_input"] == 4.0 and outcome.failed == 0


def test_without_partitioners_each_policy_keeps_its_own_on_llava(tmp_path):
    from vtsched.core.tools.sweep.plan import resolve_cells

    from tests.helpers import registry

    config = load_config(_config(tmp_path, """\
[sweep]
datasets = ["synthetic:1:1"]
budgets = [7]

[[policy]]
name = "prune"

[[policy]]
name = "visionzip"
"""))
    cells = {c.spec["policy"]: c for c in resolve_cells(config, registry(), estimate=False)}
    assert cells["prune"].spec["partitioner"] == "cls"
    assert cells["visionzip"].spec["partitioner"] == "visionzip"  # was cls: a fixed ["cls"] default
    assert [c.label for c in cells.values()] == ["prune@7", "visionzip@7"]


# -- the default results path comes from the config file's own name ---------------------------------------
def test_configs_copied_from_the_docs_keep_their_own_results(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = (ROOT / "docs" / "ablation.toml").read_text()
    first, second = (load_config(_config(tmp_path, text, name)) for name in ("ablation.toml", "mine.toml"))
    assert first.name == second.name == "ablation"  # the name, left unedited, titles the report
    assert first.results == tmp_path / "vtsched-out" / "sweep" / "ablation" / "results.jsonl"
    assert second.results == tmp_path / "vtsched-out" / "sweep" / "mine" / "results.jsonl"
    assert second.out == second.results.parent / "report"  # where README.md says the report is
    explicit = load_config(_config(tmp_path / "sub", text.replace('name = "ablation"', 'results = "x/r.jsonl"')))
    assert explicit.results == tmp_path / "sub" / "x" / "r.jsonl"
    assert explicit.out == tmp_path / "sub" / "x" / "r-report"


# -- data a plugin's evaluator serves goes through it --------------------------------------------------------
class ToySegmentation(Evaluator):
    """Scores masks (here: a number per case), as the LISA plugin's evaluator does; remembers each request."""

    name = "toyseg"
    help = "test evaluator"
    score = "giou"
    requests: list = []

    @classmethod
    def evaluate(cls, request):
        cls.requests.append(request)
        rows = [{"case": "full", "n": 3, "giou": 0.9, "ciou": 0.8, "visual_tokens_per_layer": 64.0}]
        for spec in request.policies:
            budget = request.budgets[0]
            label = f"{spec}@{budget}" + (f" [{request.partitioners[0]}]" if request.partitioners else "")
            rows.append({"case": label, "n": 3, "giou": int(budget) / 100, "ciou": 0.1,
                         "visual_tokens_per_layer": float(budget), "prefill_gflops": 0.5, "sam_ms": 1.0})
        return EvalOutcome(rows=rows, table="", model="toy default")


class _Plugin:
    @hookimpl
    def vtsched_register_evaluators(self, register):
        register(ToySegmentation)


@pytest.fixture
def with_toy_evaluator(monkeypatch):
    """The evaluator registered through the hook, as an installed plugin's would be (only it is loaded)."""
    monkeypatch.delenv("VTSCHED_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    monkeypatch.setattr(registry_module, "_load_entrypoints", lambda pm: pm.register(_Plugin(), name="toyseg-plugin"))
    ToySegmentation.requests = []


def test_a_sweep_cell_with_evaluator_data_goes_through_the_evaluator(tmp_path, with_toy_evaluator, capsys):
    config = _config(tmp_path, """\
[sweep]
results = "r.jsonl"
models = ["demo"]
datasets = ["toyseg:masks/val"]
budgets = [4, 16]

[[policy]]
name = "full"

[[policy]]
name = "parvts"
params = { drop_layer = 2 }

[[policy]]
name = "prune"
partitioners = [{ name = "random", params = { seed = 3 } }]
budgets = [8]
""")
    outcome = run_sweep(config, progress=False, report=True, stream=None)
    rows = {r["label"]: r for r in read_rows(tmp_path / "r.jsonl")[0]}
    assert set(rows) == {"full", "parvts(drop_layer=2)@4", "parvts(drop_layer=2)@16", "prune/random(seed=3)@8"}
    assert all(r["status"] == "ok" for r in rows.values()), [r.get("error") for r in rows.values()]
    asked = {(tuple(r.policies), tuple(r.budgets), tuple(r.partitioners or ())) for r in ToySegmentation.requests}
    assert asked == {((), ("100%",), ()), (("parvts:drop_layer=2",), ("4",), ()),
                     (("parvts:drop_layer=2",), ("16",), ()), (("prune",), ("8",), ("random:seed=3",))}
    assert {r.data for r in ToySegmentation.requests} == {"masks/val"}  # the prefix removed, as `eval` does
    assert {r.model for r in ToySegmentation.requests} == {None}  # demo: the evaluator's own default model
    parvts = rows["parvts(drop_layer=2)@16"]
    assert parvts["accuracy"] == 0.16 and parvts["score"] == "giou" and parvts["metrics"]["ciou"] == 0.1
    assert parvts["visual_tokens_per_layer"] == 16.0 and parvts["prefill_gflops"] == 0.5
    assert rows["full"]["accuracy"] == 0.9 and rows["full"]["spec"]["evaluator"] == "toyseg"
    assert "(acc: giou, from the evaluator)" in outcome.table()
    assert {p.name for p in outcome.files} >= {"summary.csv", "plots.png"}
    again = run_sweep(config, progress=False, report=False)  # resumable like any other cell
    assert again.skipped == 4 and again.ran == 0


def test_an_evaluator_that_fails_fails_its_cell_only(tmp_path, with_toy_evaluator, monkeypatch):
    def broken(request):
        raise RuntimeError("no masks here")

    monkeypatch.setattr(ToySegmentation, "evaluate", classmethod(lambda cls, request: broken(request)))
    config = _config(tmp_path, """\
[sweep]
results = "r.jsonl"
datasets = ["toyseg:x", "synthetic:1:1"]
budgets = [7]

[[policy]]
name = "prune"
""")
    run_sweep(config, progress=False, report=False)
    rows = {r["spec"]["dataset"]: r for r in read_rows(tmp_path / "r.jsonl")[0]}
    assert rows["toyseg:x"]["status"] == "failed" and rows["toyseg:x"]["error"] == "RuntimeError: no masks here"
    assert rows["synthetic:1:1"]["status"] == "ok"  # question answering in the same sweep, unaffected
