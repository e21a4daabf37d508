"""The shipped demo model: loads offline from the package and answers held-out questions well."""

from __future__ import annotations

from vtsched.core.tools.bench import Case
from vtsched.core.demo.shapes import demo_model_path
from vtsched.core.tools.evaluate import evaluate, load_items, summarise
from vtsched.core.scheduler import Scheduler

from tests.helpers import registry


def test_demo_model_ships_loads_offline_and_beats_chance(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = demo_model_path()
    assert path is not None, "core/demo/model is missing: run `vtsched train-demo --out core/demo/model`"
    assert (path / "model.safetensors").stat().st_size <= 20 * 2**20
    s = Scheduler.from_pretrained(str(path), registry=registry())
    items = load_items("synthetic:2:12")  # held-out seed: training uses seed 1000
    report = evaluate(s, items, [Case("prune", "7")], batch_size=28, max_new_tokens=4, progress=False)
    rows = {(r["case"], r["split"]): r for r in summarise(report.predictions, ["full", "prune@7"])}
    # chance is 1/2 to 1/6 per question type; the full model answers nearly everything
    assert rows[("full", "all")]["accuracy"] >= 0.9
    assert rows[("full", "tag=non-subject")]["accuracy"] > rows[("prune@7", "tag=non-subject")]["accuracy"]


def test_train_demo_command_runs_both_phases_and_saves_a_checkpoint(tmp_path):
    from vtsched.core.cli import main

    out = tmp_path / "demo"
    assert main(["train-demo", "--out", str(out), "--scale", "0.001", "--no-progress", "--no-plugins"]) == 0
    loaded = Scheduler.from_pretrained(str(out), registry=registry())
    assert loaded.adapter.geometry.num_visual == 64 and loaded.adapter.geometry.num_layers == 6
    assert (out / "phase1" / "model.safetensors").exists() and (out / "training.json").exists()
