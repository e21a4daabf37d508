"""vtsched sweep: config errors, the results file, resume and retry, and the same rows from every executor.

One small sweep on the shipped demo model (7 samples, four cells and one the planner refuses) runs
in this process first; 2 local worker processes, torchrun with 2 gloo ranks and submitit's local
executor must then write the same predictions for the same cell hashes.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from vtsched.core.cli import main
from vtsched.core.errors import InputError
from vtsched.core.tools.sweep import run_sweep
from vtsched.core.tools.sweep.config import expand_params, load_config, parse_config
from vtsched.core.tools.sweep.plan import estimate_prefill_flops, shard_cells
from vtsched.core.tools.sweep.report import pareto_front, seed_means, seed_table, summary_rows
from vtsched.core.tools.sweep.results import FORMAT, ResultsFile, SweepLock, append_row, read_rows

from tests.helpers import registry

CONFIG = """\
[sweep]
results = "ablation-results.jsonl"
models = ["demo"]
datasets = ["synthetic:3:1"]
budgets = [4]
seeds = [0]

[eval]
max_new_tokens = 3
batch_size = 8

[[policy]]
name = "full"

[[policy]]
name = "prune"

[[policy]]
name = "parvts"
params = { fusion = "size" }
grid = { drop_layer = [1, 2, 99] }
"""
VENV_BIN = Path(sys.executable).parent


def write_config(folder: Path, text: str = CONFIG, name: str = "ablation.toml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text)
    return path


def rows_by_hash(path: Path) -> dict[str, dict]:
    rows, _ = read_rows(path)
    return {r["hash"]: r for r in rows}


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


# -- config errors: one line each, nothing written --------------------------------------------------
@pytest.mark.parametrize("text,expected", [
    (CONFIG.replace("budgets = [4]", "budget = [4]"), "unknown key 'budget' in [sweep]; did you mean 'budgets'?"),
    (CONFIG.replace("[eval]", "[evaluation]"), "unknown key 'evaluation' in the config (top level); did you mean 'eval'?"),
    (CONFIG.replace('name = "prune"', 'name = "prnue"'), "unknown policy 'prnue'; did you mean 'prune'?"),
    (CONFIG.replace("drop_layer = [1, 2, 99]", "drop_layr = [1, 2]"),
     "parvts has no parameter 'drop_layr'; did you mean 'drop_layer'?"),
    (CONFIG.replace("budgets = [4]", "budgets = []"), "the grid expands to zero cells: [sweep] budgets is an empty list"),
    (CONFIG.replace("drop_layer = [1, 2, 99]", "drop_layer = []"), "the grid expands to zero cells"),
    (CONFIG + 'zip = { alpha = [0.5], fuse_tokens = ["question", "post_image"] }\n', "zip lists must have equal lengths"),
    ("[sweep]\n", "the config names no policy"),
    ("[sweep\n", "not valid TOML"),
])
def test_config_errors_are_one_line(tmp_path, capsys, text, expected):
    config = write_config(tmp_path, text)
    assert main(["sweep", str(config), "--no-plugins", "--dry-run"]) == 2
    line = error_line(capsys)
    assert line.startswith("vtsched: error: ablation.toml: ") and expected in line, line
    assert not list(tmp_path.glob("*.jsonl"))


def test_grid_and_zip_expand():
    assert expand_params({"a": 1}, {"b": [1, 2]}, [{"c": 0}, {"c": 1}]) == [
        {"a": 1, "b": 1, "c": 0}, {"a": 1, "b": 1, "c": 1}, {"a": 1, "b": 2, "c": 0}, {"a": 1, "b": 2, "c": 1}]
    config = parse_config({"policy": [{"name": "parvts", "zip": {"fusion": ["fixed", "size"], "alpha": [0.7, 0.5]},
                                       "grid": {"drop_layer": [1, 2]}}]})
    assert len(config.policies[0].variants()) == 4
    with pytest.raises(InputError, match="did you mean 'policy'"):
        parse_config({"polcy": []})


def test_cells_resolve_dedupe_and_hash(tmp_path):
    config = load_config(write_config(tmp_path, CONFIG.replace("budgets = [4]", "budgets = [4, 4, 7]")
                                      + '\n[[policy]]\nname = "vtw"\n'))
    from vtsched.core.tools.sweep.plan import resolve_cells

    cells = resolve_cells(config, registry())
    labels = [c.label for c in cells]
    assert labels.count("full") == 1 and labels.count("vtw") == 1  # no budget: one cell each
    assert "prune@4" in labels and "prune@7" in labels and len({c.hash for c in cells}) == len(cells)
    refused = [c for c in cells if c.error]
    assert refused and all("drop_layer 99" in c.error for c in refused)
    again = resolve_cells(config, registry())
    assert [c.hash for c in again] == [c.hash for c in cells]  # stable
    assert cells[0].spec["params"] == {} and cells[2].spec["partitioner"] == "cls"
    parvts = next(c for c in cells if c.spec["policy"] == "parvts")
    assert {"drop_layer", "fusion", "alpha", "fuse_tokens"} <= set(parvts.spec["params"])  # defaults included
    shards = shard_cells(cells, 2)
    assert sorted(c.hash for s in shards for c in s) == sorted(c.hash for c in cells)


def test_pareto_front():
    points = [(1.0, 0.5), (2.0, 0.4), (2.0, 0.7), (3.0, 0.7), (4.0, 0.9)]
    assert pareto_front(points) == [0, 2, 4]


# -- the results file ------------------------------------------------------------------------------
def _append_many(path: str, worker: int) -> None:
    for i in range(40):
        append_row(path, {"format": FORMAT, "hash": f"{worker}-{i}", "status": "ok", "payload": "x" * (1000 + i)})


def _result(label, seed, accuracy, splits, policy="prune", gflops=1.0):
    spec = {"model": "demo", "dataset": f"synthetic:{seed}:40", "seed": seed, "policy": policy, "budget": "7"}
    return {"spec": spec, "label": f"{label}#s{seed}", "status": "ok", "n": 10, "accuracy": accuracy,
            "by_split": splits, "prefill_gflops": gflops, "visual_tokens_per_layer": 7.0, "prefill_ms": 2.0}


def test_cells_over_seeds_average_into_one_row_with_their_spread():
    rows = summary_rows([
        _result("prune@7", 1, 0.5, {"tag=subject": 1.0, "tag=non-subject": 0.2}),
        _result("prune@7", 2, 0.7, {"tag=subject": 0.8, "tag=non-subject": 0.6}),
        _result("prune@7", 3, 0.6, {"tag=subject": 0.9}, gflops=4.0),
        _result("parvts@7", 1, 0.9, {"tag=subject": 0.9}, policy="parvts"),
    ])
    means = {r["label"]: r for r in seed_means(rows)}
    prune = means["prune@7"]
    assert prune["dataset"] == "synthetic:{seed}:40" and prune["seeds"] == 3 and prune["n"] == 30
    assert prune["accuracy"] == pytest.approx(0.6) and (prune["accuracy_min"], prune["accuracy_max"]) == (0.5, 0.7)
    assert prune["by_split"]["tag=non-subject"] == pytest.approx(0.4)  # mean over the seeds that have the split
    assert prune["prefill_gflops"] == pytest.approx(2.0) and means["parvts@7"]["seeds"] == 1
    assert "prune@7" in seed_table(list(means.values())) and "50.0-70.0" in seed_table(list(means.values()))
    assert seed_means(rows[3:]) == []  # one seed: nothing to average


def test_concurrent_appends_never_interleave(tmp_path):
    path = str(tmp_path / "results.jsonl")
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_append_many, args=(path, w)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    rows, _ = read_rows(path)
    assert len(rows) == 160 and len({r["hash"] for r in rows}) == 160


def test_a_torn_last_line_is_dropped_and_ok_rows_are_never_duplicated(tmp_path):
    path = tmp_path / "results.jsonl"
    append_row(path, {"format": FORMAT, "hash": "a", "status": "ok"})
    with path.open("a") as handle:
        handle.write('{"format": 1, "hash": "b", "sta')  # a crash mid-write
    assert [r["hash"] for r in read_rows(path)[0]] == ["a"]
    assert append_row(path, {"format": FORMAT, "hash": "c", "status": "ok"})
    assert not append_row(path, {"format": FORMAT, "hash": "a", "status": "ok"})
    assert [r["hash"] for r in ResultsFile.read(path)] == ["a", "c"]


def test_incompatible_results_file_is_refused(tmp_path, capsys):
    config = write_config(tmp_path)
    (tmp_path / "ablation-results.jsonl").write_text(json.dumps({"format": 0, "vtsched": "0.0.1", "hash": "x"}) + "\n")
    assert main(["sweep", str(config), "--no-plugins", "--no-progress"]) == 2
    line = error_line(capsys)
    assert "written by vtsched 0.0.1 (row format 0; this vtsched writes format 1)" in line, line
    (tmp_path / "other.jsonl").write_text("not json\n")
    assert main(["sweep", str(config), "--no-plugins", "--results", str(tmp_path / "other.jsonl")]) == 2
    assert "not a sweep result row" in error_line(capsys)


def test_a_second_sweep_on_the_same_results_is_refused(tmp_path, capsys):
    config = write_config(tmp_path)
    results = tmp_path / "ablation-results.jsonl"
    with SweepLock(results):
        assert main(["sweep", str(config), "--no-plugins", "--no-progress"]) == 2
        line = error_line(capsys)
        assert f"another sweep (pid {os.getpid()}" in line and "is writing ablation-results.jsonl" in line, line
    assert not results.exists() or not read_rows(results)[0]


def test_a_killed_sweep_leaves_no_stale_lock(tmp_path):
    results = tmp_path / "r.jsonl"
    code = (f"from vtsched.core.tools.sweep.results import SweepLock; SweepLock({str(results)!r}).acquire(); "
            "print('held', flush=True); import time; time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    with pytest.raises(InputError, match="another sweep"):
        SweepLock(results).acquire()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    SweepLock(results).acquire().release()


# -- a sweep on the demo model, then the same cells on every executor -------------------------------
@pytest.fixture(scope="module")
def inline_sweep(tmp_path_factory):
    """The sweep in this process: four cells run, one refused by the planner and recorded as failed."""
    folder = tmp_path_factory.mktemp("sweep")
    config = write_config(folder)
    import vtsched.core.app.models as models

    loads = []
    original = models.load_scheduler
    models.load_scheduler = lambda *a, **k: loads.append(a[0]) or original(*a, **k)
    try:
        outcome = run_sweep(config, no_plugins=True, progress=False)
    finally:
        models.load_scheduler = original
    return folder, config, outcome, loads


def test_inline_sweep_runs_records_and_reports(inline_sweep):
    folder, config, outcome, loads = inline_sweep
    assert len(loads) == 1  # the model loads once for all cells
    rows = rows_by_hash(folder / "ablation-results.jsonl")
    assert len(rows) == len(outcome.cells) == 5
    ok = {r["label"]: r for r in rows.values() if r["status"] == "ok"}
    assert set(ok) == {"full", "prune@4", "parvts(drop_layer=1,fusion=size)@4", "parvts(drop_layer=2,fusion=size)@4"}
    failed = [r for r in rows.values() if r["status"] == "failed"]
    assert len(failed) == 1 and failed[0]["error"] == "parvts: drop_layer 99 outside 0..6"
    for r in ok.values():
        assert r["n"] == 7 and len(r["predictions"]) == 7
        assert r["prefill_gflops"] == pytest.approx(r["est_gflops"], rel=1e-9)  # the dry-run estimate is exact here
    assert ok["prune@4"]["visual_tokens_per_layer"] == 4.0
    summary = {r["label"]: r for r in outcome.rows}
    assert summary["full"]["agreement_with_full"] == 1.0
    names = {p.name for p in outcome.files}
    assert {"summary.csv", "plots.png", "summary.txt"} <= names
    assert "parvts(drop_layer=1,fusion=size)@4" in outcome.table()


def test_sweep_rows_equal_vtsched_eval(inline_sweep):
    """A cell answers exactly as `vtsched eval` answers the same case."""
    from vtsched.core.tools.bench import Case
    from vtsched.core.tools.evaluate import evaluate, load_items
    from vtsched.core.app import load_scheduler

    folder, _, _, _ = inline_sweep
    rows = {r["label"]: r for r in rows_by_hash(folder / "ablation-results.jsonl").values()}
    report = evaluate(load_scheduler(None, registry()), load_items("synthetic:3:1"),
                      [Case("parvts", "4", (("drop_layer", "1"), ("fusion", "size")))], batch_size=8,
                      max_new_tokens=3, progress=False)
    by_case = {r["case"]: r for r in report.rows() if r["split"] == "all"}
    assert rows["parvts(drop_layer=1,fusion=size)@4"]["accuracy"] == by_case["parvts(drop_layer=1,fusion=size)@4"]["accuracy"]
    assert rows["full"]["accuracy"] == by_case["full"]["accuracy"]
    predictions = [p.prediction for p in report.predictions if p.case == "parvts(drop_layer=1,fusion=size)@4"]
    assert [p for _, p, _ in rows["parvts(drop_layer=1,fusion=size)@4"]["predictions"]] == predictions


def test_resume_skips_finished_cells_and_dry_run_shows_them(inline_sweep, capsys):
    folder, config, _, _ = inline_sweep
    before = (folder / "ablation-results.jsonl").read_text()
    assert main(["sweep", str(config), "--no-plugins", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "5 cells, 5 already in ablation-results.jsonl, 0 to run" in out
    assert (folder / "ablation-results.jsonl").read_text() == before
    assert main(["sweep", str(config), "--no-plugins", "--dry-run"]) == 0
    listing = capsys.readouterr().out
    assert listing.count(" done") == 4 and "failed: parvts: drop_layer 99 outside 0..6" in listing


def test_retry_failed_reruns_a_failed_cell(tmp_path, capsys):
    from vtsched.core.demo.synthetic import export, generate

    export(generate(5, 1), tmp_path / "data")
    image = next((tmp_path / "data" / "images").glob("*.png"))
    hidden = image.with_suffix(".bak")
    image.rename(hidden)
    config = write_config(tmp_path, '[sweep]\nresults = "ablation-results.jsonl"\n'
                          f'datasets = ["{tmp_path / "data"}"]\nbudgets = [4]\n'
                          '[eval]\nmax_new_tokens = 2\n[[policy]]\nname = "prune"\n')
    assert main(["sweep", str(config), "--no-plugins", "--no-progress"]) == 0
    rows = list(rows_by_hash(tmp_path / "ablation-results.jsonl").values())
    assert rows[0]["status"] == "failed" and rows[0]["error"].startswith("image not found: ")
    assert main(["sweep", str(config), "--no-plugins", "--no-progress"]) == 0  # failed cells stay failed
    assert len(read_rows(tmp_path / "ablation-results.jsonl")[0]) == 1
    hidden.rename(image)
    capsys.readouterr()
    assert main(["sweep", str(config), "--no-plugins", "--no-progress", "--retry-failed"]) == 0
    assert "1 to run" in capsys.readouterr().out
    latest = ResultsFile.read(tmp_path / "ablation-results.jsonl").latest()
    assert [r["status"] for r in latest.values()] == ["ok"]


def _same_rows(reference: Path, other: Path, ranks: int = 1) -> None:
    mine, theirs = rows_by_hash(reference), rows_by_hash(other)
    assert set(theirs) == set(mine)
    for h, row in mine.items():
        assert theirs[h]["status"] == row["status"]
        if row["status"] == "ok":
            assert theirs[h]["predictions"] == row["predictions"], row["label"]
            assert theirs[h]["accuracy"] == row["accuracy"]
            assert theirs[h]["prefill_gflops"] == pytest.approx(row["prefill_gflops"])
            assert theirs[h]["ranks"] == ranks


def _run(command: list[str], cwd: Path, timeout: int = 240) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    assert done.returncode == 0, f"{' '.join(command)}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def test_two_local_worker_processes_write_the_same_rows(inline_sweep, tmp_path):
    folder, config, _, _ = inline_sweep
    results = tmp_path / "w2.jsonl"
    done = _run([str(VENV_BIN / "vtsched"), "sweep", str(config), "--workers", "2", "--results", str(results),
                 "--no-plugins", "--no-progress"], tmp_path)
    assert "to run on local: 2 worker processes" in done.stdout
    _same_rows(folder / "ablation-results.jsonl", results)
    assert len({r["pid"] for r in rows_by_hash(results).values()}) == 2


@pytest.mark.skipif(shutil.which("torchrun", path=str(VENV_BIN)) is None, reason="torchrun not installed")
def test_torchrun_two_gloo_ranks_equal_a_single_process(inline_sweep, tmp_path):
    folder, config, _, _ = inline_sweep
    results = tmp_path / "ddp.jsonl"
    done = _run([str(VENV_BIN / "torchrun"), "--nproc-per-node", "2", "--master-port", "29517", "-m", "vtsched.core.cli",
                 "sweep", str(config), "--results", str(results), "--no-plugins", "--no-progress"], tmp_path)
    assert "to run on 2 data-parallel ranks" in done.stdout
    _same_rows(folder / "ablation-results.jsonl", results, ranks=2)


def test_submitit_local_executor_writes_the_same_rows(inline_sweep, tmp_path):
    pytest.importorskip("submitit")
    folder, config, _, _ = inline_sweep
    results = tmp_path / "slurm.jsonl"
    done = _run([str(VENV_BIN / "vtsched"), "sweep", str(config), "--executor", "submitit", "--cluster", "local",
                 "--workers", "2", "--results", str(results), "--no-plugins", "--no-progress"], tmp_path)
    assert "to run on submitit" in done.stdout
    _same_rows(folder / "ablation-results.jsonl", results)


def test_estimate_counts_a_shared_prefix_once():
    from vtsched.core.cost import layer_flops
    from vtsched.core.demo import llava_config
    from vtsched.core.planner import Planner

    geometry = registry().adapter_for_config(llava_config("demo")).geometry_from_config(llava_config("demo"))
    planner = Planner(registry(), geometry)
    full = planner.check(planner.policy("full"), None).schedule
    n = 5 + geometry.num_visual + 9
    assert estimate_prefill_flops(full, geometry, {"subject": geometry.num_visual}, prefix=5, suffix=9) == pytest.approx(
        geometry.num_layers * float(layer_flops(n, n, geometry)))


def test_sweep_help_lists_the_options():
    import argparse

    from vtsched.core.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    text = sub.choices["sweep"].format_help()
    for option in ("--dry-run", "--retry-failed", "--workers", "--executor", "--devices"):
        assert option in text


def test_text_lengths_split_each_familys_prompt_at_its_own_image_marker():
    """Qwen's template marks the image with <|image_pad|>, not <image>: estimates must not crash on it."""
    from vtsched.core.adapters import LlavaAdapter
    from vtsched.core.adapters.qwen2_vl import Qwen2VLAdapter
    from vtsched.core.tools.sweep.plan import _ModelInfo, _text_lengths

    for adapter in (LlavaAdapter, Qwen2VLAdapter):
        counts = _text_lengths(_ModelInfo("/no/tokenizer/here", "-", None, None, adapter), "synthetic:1:1", None)
        assert sum(counts.values()) == 7 and all(prefix > 0 and suffix > 0 for prefix, suffix in counts)
