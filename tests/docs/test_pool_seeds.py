"""docs/diagnostics/pool_seeds.py, which makes docs/demo-model.md's two-regime tables: pooled counts,
intervals, the hard subset and the paired verdict, checked on results written by hand."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "docs" / "diagnostics" / "pool_seeds.py"


def _script():
    spec = importlib.util.spec_from_file_location("pool_seeds", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _prediction(case, item, correct, tag="subject"):
    return {"case": case, "id": item, "correct": correct, "tag": tag, "visual_tokens_per_layer": 26.0,
            "visual_tokens_input": 64.0, "prefill_gflops": 0.1, "partitioner_gflops": 0.0}


def _write(folder: Path, predictions, data=None):
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps({"data": data or folder.name, "predictions": predictions}))
    return folder


def test_two_seeds_pool_with_the_same_item_ids_kept_apart(tmp_path, capsys):
    pool_seeds = _script()
    # seed A: 5 items that parvts gets right and fastv wrong; downsample wrong on the first 2
    a = [_prediction("parvts@26", f"i{k}", True) for k in range(5)]
    a += [_prediction("fastv@26", f"i{k}", False, "non-subject") for k in range(5)]
    a += [_prediction("prune@26 [downsample]", f"i{k}", k >= 2) for k in range(5)]
    # seed B: the same ids (each seed numbers its items alike), everything right
    b = [_prediction(case, f"i{k}", True) for case in ("parvts@26", "fastv@26", "prune@26 [downsample]")
         for k in range(5)]
    rows = pool_seeds.summary(pool_seeds.pool([_write(tmp_path / "a", a), _write(tmp_path / "b", b)]))
    assert rows["parvts@26"]["n"] == 10 and rows["fastv@26"]["accuracy"] == 0.5
    assert rows["fastv@26"]["hard"] == 0.0 and rows["fastv@26"]["hard_n"] == 2  # items downsample missed
    only_parvts, only_fastv, p = pool_seeds.paired(rows["parvts@26"], rows["fastv@26"])
    assert (only_parvts, only_fastv) == (5, 0) and math.isclose(p, 2 / 2**5)  # exact two-sided binomial
    low, high = rows["fastv@26"]["interval"]
    assert 0.2 < low < 0.5 < high < 0.8  # Wilson's interval for 5 of 10 is about 0.24-0.76
    pool_seeds.main([str(tmp_path / "a"), str(tmp_path / "b"), "--against", "parvts"])
    out = capsys.readouterr().out
    assert "| fastv@26 | 10 | 50.0 (23.7-76.3) |" in out and "tie  +50.0 against fastv@26 (p=0.062" in out


def test_two_runs_on_one_seed_count_full_once(tmp_path):
    pool_seeds = _script()
    main = [_prediction("full", f"i{k}", True) for k in range(3)] + [_prediction("fastv@26", "i0", True)]
    extra = [_prediction("full", f"i{k}", True) for k in range(3)] + [_prediction("vtw", "i0", False)]
    rows = pool_seeds.summary(pool_seeds.pool([_write(tmp_path / "a", main, "synthetic:4:3"),
                                               _write(tmp_path / "b", extra, "synthetic:4:3")]))
    assert rows["full"]["n"] == 3 and rows["vtw"]["n"] == 1 and rows["fastv@26"]["n"] == 1
