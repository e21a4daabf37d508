"""``vtsched bench --video``: the video methods on clips of the tiny Qwen shapes, from the command line."""

from __future__ import annotations

import json

import pytest

from vtsched.core.cli import main


def test_bench_video_prints_and_writes_every_method_against_full(tmp_path, capsys):
    out = tmp_path / "bench"
    assert main(["bench", "--video", "--shape", "qwen2-vl-tiny", "--frames", "4", "--repeats", "1",
                 "--no-progress", "--no-plugins", "--out", str(out)]) == 0
    rows = json.loads((out / "results.json").read_text())["video"]
    methods = [r["method"] for r in rows]
    assert methods[:2] == ["transformers", "full"] and "framefusion@1" in methods and "prune/temporal" in methods
    assert {r["frames"] for r in rows} == {4} and {r["model"] for r in rows} == {"qwen2-vl-tiny"}
    pruned = next(r for r in rows if r["method"] == "prune/temporal")
    assert pruned["visual_tokens_input"] == pytest.approx(0.25 * pruned["visual_tokens"], abs=1)
    assert pruned["gflops"] < next(r for r in rows if r["method"] == "full")["gflops"]
    assert "prune/temporal" in capsys.readouterr().out and (out / "results.csv").exists()


@pytest.mark.parametrize("argv,says", [
    (["--video", "--policies", "prune"], "--policies is not supported with --video"),
    (["--video", "--budgets", "2", "3"], "one budget"),
    (["--frames", "8"], "goes with --video"),
    (["--video", "--shape", "llava-1.5-cpu", "--frames", "4", "--repeats", "1"], "takes still images only"),
])
def test_bench_video_bad_input_is_one_line_and_exit_2(argv, says, tmp_path, capsys):
    assert main(["bench", *argv, "--no-plugins", "--no-progress", "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and says in err
    assert not (tmp_path / "b" / "results.json").exists()


def test_bench_video_runs_on_a_saved_checkpoint(tmp_path):
    from vtsched.core.shapes import build_random_llava

    model, processor = build_random_llava("qwen2.5-vl-tiny")
    model.save_pretrained(tmp_path / "qwen")
    processor.save_pretrained(tmp_path / "qwen")
    out = tmp_path / "bench"
    assert main(["bench", "--video", "--model", str(tmp_path / "qwen"), "--frames", "4", "--repeats", "1",
                 "--no-progress", "--no-plugins", "--out", str(out)]) == 0
    rows = json.loads((out / "results.json").read_text())["video"]
    assert {r["model"] for r in rows} == {str(tmp_path / "qwen")} and rows[0]["method"] == "transformers"
