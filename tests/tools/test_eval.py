"""vtsched eval: metrics on a constructed case, and the command end to end on a tiny model."""

from __future__ import annotations

import json

import pytest

from vtsched.core.cli import main
from vtsched.core.tools.evaluate import EvalItem, Prediction, evaluate, load_items, normalise, summarise
from vtsched.core.tools.bench import Case
from vtsched.core.testing import TinyShape, tiny_llava

from tests.helpers import scheduler


@pytest.mark.parametrize("text,expected", [("Red.", "red"), ("  the  RED  ", "red"), ("top-left!", "top-left"),
                                           ("A circle", "circle")])
def test_normalised_exact_match(text, expected):
    assert normalise(text) == expected


def _p(case, tag, qtype, correct, agree, kl, visual=10.0, gflops=1.0):
    return Prediction(case, "x", tag, qtype, "a", "b", correct, agree, kl, visual, gflops)


def test_summary_splits_by_tag_and_type_on_a_constructed_case():
    preds = [
        _p("full", "subject", "colour", True, True, 0.0),
        _p("full", "non-subject", "mark", True, True, 0.0),
        _p("full", "non-subject", "mark", False, True, 0.0),
        _p("prune@7", "subject", "colour", True, True, 0.1, visual=7.0),
        _p("prune@7", "non-subject", "mark", False, False, 0.5, visual=7.0),
        _p("prune@7", "non-subject", "mark", False, True, 0.3, visual=7.0),
    ]
    rows = {(r["case"], r["split"]): r for r in summarise(preds, ["full", "prune@7"])}
    assert rows[("full", "all")]["accuracy"] == pytest.approx(2 / 3)
    assert rows[("full", "tag=non-subject")]["accuracy"] == pytest.approx(1 / 2)
    assert rows[("prune@7", "all")]["accuracy"] == pytest.approx(1 / 3)
    assert rows[("prune@7", "tag=non-subject")]["accuracy"] == 0.0
    assert rows[("prune@7", "type=mark")]["agreement"] == pytest.approx(1 / 2)
    assert rows[("prune@7", "all")]["kl"] == pytest.approx(0.3)
    assert rows[("prune@7", "all")]["visual_tokens_per_layer"] == 7.0
    assert [r["split"] for r in summarise(preds, ["full"])] == ["all", "tag=non-subject", "tag=subject",
                                                                "type=colour", "type=mark"]


def test_full_agrees_with_itself_and_metrics_are_consistent():
    s = scheduler(*tiny_llava(TinyShape(layers=2, image_size=42)))
    items = load_items("synthetic:4:2")
    report = evaluate(s, items, [Case("prune", "3"), Case("parvts", "3", (("drop_layer", "1"),))],
                      batch_size=5, max_new_tokens=2, progress=False)
    full = [p for p in report.predictions if p.case == "full"]
    assert len(full) == len(items) and all(p.agrees_with_full and p.kl_to_full == 0.0 for p in full)
    prune = [p for p in report.predictions if p.case == "prune@3"]
    assert all(p.visual_tokens_per_layer == 3.0 for p in prune)
    assert all(p.correct == (normalise(p.prediction) == normalise(p.answer)) for p in report.predictions)


def test_eval_command_on_a_jsonl_dataset(tmp_path, capsys):
    from vtsched.core.demo.synthetic import export, generate

    model, processor = tiny_llava(TinyShape(layers=2, image_size=42))
    ckpt = tmp_path / "ckpt"
    model.save_pretrained(ckpt)
    processor.save_pretrained(ckpt)
    export(generate(9, 2), tmp_path / "data")
    out = tmp_path / "out"
    assert main(["eval", "--model", str(ckpt), "--data", str(tmp_path / "data"), "--policies", "prune", "vtw",
                 "--budgets", "3", "--max-new-tokens", "2", "--out", str(out), "--no-progress", "--no-plugins"]) == 0
    text = capsys.readouterr().out
    assert "tag=non-subject" in text and "type=mark_corner" in text
    data = json.loads((out / "results.json").read_text())
    assert {r["case"] for r in data["rows"]} == {"full", "prune@3", "vtw"}
    assert len(data["predictions"]) == 3 * 14
    assert (out / "results.csv").exists()


def test_eval_refuses_bad_data(tmp_path):
    assert main(["eval", "--data", str(tmp_path / "nothing.jsonl"), "--no-plugins"]) == 2
    assert main(["eval", "--data", "synthetic:x", "--no-plugins"]) == 2
    (tmp_path / "bad.jsonl").write_text('{"question": "q"}\n')
    assert main(["eval", "--data", str(tmp_path / "bad.jsonl"), "--no-plugins"]) == 2
    item = EvalItem("a", "b", "c", "d")  # an item that names no tag or type is counted under "all" in each split
    assert (item.tag, item.type) == ("all", "all")
