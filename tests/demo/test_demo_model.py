"""The shipped demo model: loads offline from the package and answers held-out questions well."""

from __future__ import annotations

from vtsched.core.tools.bench import Case
from vtsched.core.demo.shapes import demo_model_path, resolve_model
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


def _accuracy(model: str, case: Case, spec: str = "synthetic:2:8") -> tuple[float, float]:
    """(full, case) accuracy of a shipped demo model on held-out items."""
    s = Scheduler.from_pretrained(str(resolve_model(model)), registry=registry())
    report = evaluate(s, load_items(spec), [case], batch_size=28, max_new_tokens=4, progress=False)
    rows = {(r["case"], r["split"]): r for r in summarise(report.predictions, ["full", case.label])}
    return rows[("full", "all")]["accuracy"], rows[(case.label, "all")]["accuracy"]


def test_phase1_demo_model_ships_by_name_and_reads_the_image_late(monkeypatch):
    """The phase-1 checkpoint (no withdrawal training) answers as well as the shipped model with every
    layer, and needs the image after layer 2: stopping the image there (VTW at K=2) costs it far more
    than the shipped model, whose second phase moved the image into the text tokens by layer 2-3."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = demo_model_path("demo-phase1")
    assert path is not None and resolve_model("demo-phase1") == str(path)
    assert (path / "model.safetensors").stat().st_size <= 20 * 2**20
    withdraw_at_2 = Case("vtw", None, (("drop_layer", 2),))
    phase1_full, phase1_vtw = _accuracy("demo-phase1", withdraw_at_2)
    shipped_full, shipped_vtw = _accuracy("demo", withdraw_at_2)
    assert phase1_full >= 0.9 and shipped_full >= 0.9
    assert shipped_vtw >= 0.9  # the shipped model barely needs the image after layer 2 ...
    assert phase1_vtw <= shipped_vtw - 0.3  # ... the phase-1 model does (40.5% against 100% on 12 images)
