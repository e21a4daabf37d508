"""The bad-input catalogue: what a new user may type, and what every command answers.

One row per input: the command line, the exit status, a phrase of the answer, and whether the
answer must come before any weights load. A refusal is one line (``vtsched: error: ...``), exit 2,
no traceback; an accepted input with something to say says it in a ``note:``. "Before the weights"
is checked at the seam where weights are made: transformers' ``from_pretrained`` of the model and
the random-model builder raise here, so a check that comes too late fails its row.

Add a row with every new command or option. Rows run in this process through ``main(argv)``; a few
run as a real ``vtsched`` process for the exit status end to end.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vtsched.core.cli import main
from vtsched.core.demo import demo_model_path, random_image

VENV_BIN = Path(sys.executable).parent
LONG_QUESTION = " ".join(["word"] * 5000)  # the demo model reads 4,096 positions
NO_CUDA = not torch.cuda.is_available()


class WeightsLoaded(BaseException):
    """Raised where weights would load (a BaseException, so no handler on the way swallows it)."""


@pytest.fixture(scope="module")
def place(tmp_path_factory):
    """A folder of inputs: images, a regular file where folders go, broken checkpoints and schedules."""
    from transformers import LlamaConfig

    root = tmp_path_factory.mktemp("catalogue")
    random_image(5, 64, 48).save(root / "image.png")
    Image.new("RGB", (1, 1), (200, 10, 10)).save(root / "one-pixel.png")
    Image.fromarray(np.arange(64 * 48, dtype=np.uint16).reshape(48, 64) * 20).save(root / "depth16.png")
    (root / "notes.png").write_text("not a picture")
    (root / "afile").write_text("a regular file")
    (root / "emptydir").mkdir()
    (root / "ckpt").mkdir()  # the README's layout, for a relative typo: ckpt/nosuch
    LlamaConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32).save_pretrained(
        root / "llama")
    (root / "noproc").mkdir()
    shutil.copy(Path(demo_model_path()) / "config.json", root / "noproc" / "config.json")
    (root / "sched99.json").write_text(json.dumps({"vtsched_schedule": 99, "num_layers": 6}))
    (root / "notjson.json").write_text("{ not json")
    (root / "sweep.toml").write_text('[sweep]\nresults = "r.jsonl"\nmodels = ["demo"]\ndatasets = ["synthetic:3:1"]\n'
                                     'budgets = [4]\n[[policy]]\nname = "full"\n')
    matched = '[sweep]\nresults = "m.jsonl"\nmodels = ["demo"]\ndatasets = ["synthetic:3:1"]\nbudgets = [7]\n'
    (root / "sweep-match-typo.toml").write_text(matched + 'match = "tokens"\n[[policy]]\nname = "prune"\n')
    (root / "sweep-match-unreachable.toml").write_text(
        matched + 'match = "avg-tokens"\n[[policy]]\nname = "parvts"\nparams = { drop_layer = 2 }\n')
    (root / "calib.jsonl").write_text(json.dumps({"image": "image.png", "question": "what?"}) + "\n")
    _videos(root)
    return root


def _videos(root: Path) -> None:
    """clip.mkv (4 frames at 4 fps, written with PyAV) and empty.avi (a video stream with no frame)."""
    import av

    from vtsched.core.testing.videos import moving_square, write_video

    (root / "clip.mkv").write_bytes(write_video(moving_square(0, 4, 32, 32), 4.0).getvalue())
    with av.open(str(root / "empty.avi"), "w") as container:
        stream = container.add_stream("ffv1", rate=4)
        stream.width, stream.height, stream.pix_fmt = 16, 16, "bgr0"
        container.start_encoding()


@pytest.fixture
def no_weights(monkeypatch):
    """Make loading or building a model's weights fail loudly."""
    from transformers import AutoModelForImageTextToText

    import vtsched.core.shapes as shapes  # where Scheduler.random builds random shapes
    import vtsched.core.demo.training as training

    def refuse(*args, **kwargs):
        raise WeightsLoaded("weights were loaded before the request was refused")

    monkeypatch.setattr(AutoModelForImageTextToText, "from_pretrained", refuse)
    monkeypatch.setattr(shapes, "build_random_llava", refuse)
    monkeypatch.setattr(training, "build_random_llava", refuse)


RUN = ["run", "--image", "image.png", "--question", "What colour is the corner?", "--max-new-tokens", "1"]
NP = "--no-plugins"

# (id, argv, exit status, phrase, before weights): rows marked True must answer before any weights load.
REFUSED = [
    # run: the image and the question
    ("run-missing-image", ["run", "--image", "nope.png", "--question", "q?"], 2, "image not found", True),
    ("run-text-as-image", ["run", "--image", "notes.png", "--question", "q?"], 2, "not an image file", True),
    ("run-folder-as-image", ["run", "--image", "emptydir", "--question", "q?"], 2, "image path is a folder", True),
    ("run-empty-question", ["run", "--image", "image.png", "--question", "  "], 2, "question is empty", True),
    ("run-prompt-too-long", ["run", "--image", "image.png", "--question", LONG_QUESTION], 2,
     "the model reads 4,096 positions", True),
    ("run-missing-argument", ["run", "--question", "q?"], 2, "the following arguments are required: --image", True),
    # run --video (issue 26)
    ("run-video-unreadable", ["run", "--video", "notes.png", "--question", "q?"], 2, "cannot read notes.png", True),
    ("run-video-missing", ["run", "--video", "nope.mp4", "--question", "q?"], 2, "cannot read nope.mp4", True),
    ("run-video-no-frames", ["run", "--video", "empty.avi", "--question", "q?"], 2, "empty.avi has no frames", True),
    ("run-video-too-many-frames", ["run", "--video", "clip.mkv", "--frames", "9", "--question", "q?"], 2,
     "9 frames asked for; the video has only 4", True),
    ("run-video-fps-too-high", ["run", "--video", "clip.mkv", "--fps", "30", "--question", "q?"], 2,
     "30.0 frames per second asks for 30 frames; the video has 4", True),
    ("run-video-on-an-image-family", ["run", "--video", "clip.mkv", "--question", "q?"], 2,
     "--video: the llava family takes still images only", True),
    ("run-video-and-image", ["run", "--video", "clip.mkv", "--image", "image.png", "--question", "q?"], 2,
     "argument --image: not allowed with argument --video", True),
    ("run-frames-and-fps", ["run", "--video", "clip.mkv", "--frames", "2", "--fps", "1", "--question", "q?"], 2,
     "argument --fps: not allowed with argument --frames", True),
    ("run-frames-without-video", [*RUN, "--frames", "4"], 2, "--frames and --fps sample a video: give --video FILE",
     True),
    # run: policy, parameters, fusion rule, partitioner, budget
    ("run-unknown-policy", [*RUN, "--policy", "nope"], 2, "unknown policy 'nope'", True),
    ("run-unknown-parameter", [*RUN, "-p", "speed=11"], 2, "parvts has no parameter 'speed'", True),
    ("run-param-not-int", [*RUN, "-p", "drop_layer=two"], 2, "drop_layer='two' is not a whole number", True),
    ("run-param-no-equals", [*RUN, "-p", "drop_layer"], 2, "expected NAME=VALUE", True),
    ("run-layer-out-of-range", [*RUN, "-p", "drop_layer=9"], 2, "drop_layer 9 outside 0..6", True),
    ("run-unknown-fusion", [*RUN, "-p", "fusion=nosuch"], 2, "unknown fusion rule 'nosuch'; known: attention, fixed, size",
     True),
    ("run-fusion-alpha-range", [*RUN, "-p", "fusion=fixed", "-p", "alpha=1.5"], 2, "alpha 1.5 outside [0, 1]", True),
    ("run-fuse-tokens-choice", [*RUN, "-p", "fuse_tokens=all"], 2, "is not one of 'question', 'post_image', 'last'",
     True),
    ("run-unknown-partitioner", [*RUN, "--partitioner", "nosuch"], 2, "unknown partitioner 'nosuch'", True),
    ("run-budget-not-a-number", [*RUN, "--budget", "abc"], 2, "is not a token count", True),
    ("run-budget-too-large", [*RUN, "--budget", "999"], 2, "exceeds the 64 visual tokens", True),
    ("run-unknown-adapter-option", [*RUN, "--adapter-param", "nosuch=1"], 2, "adapter 'llava' has no option nosuch",
     True),
    # run: model, device, dtype, numbers, output
    ("run-device-junk", [*RUN, "--device", "junk"], 2, "--device 'junk' is not a device", True),
    ("run-dtype-choice", [*RUN, "--dtype", "int8"], 2, "argument --dtype: invalid choice", True),
    ("run-max-new-tokens-0", [*RUN, "--max-new-tokens", "0"], 2, "--max-new-tokens: 0 is below the minimum, 1", True),
    ("run-top-p-0", [*RUN, "--top-p", "0"], 2, "--top-p: 0 is outside (0, 1]", True),
    ("run-json-under-a-file", [*RUN, "--json", "afile/result.json"], 2, "afile is a file, so nothing can be written",
     True),
    ("run-json-is-a-folder", [*RUN, "--json", "emptydir"], 2, "is a folder; give a file name", True),
    ("run-model-missing-abs", [*RUN, "--model", "{root}/no/such"], 2, "no such model folder", True),
    ("run-model-relative-typo", [*RUN, "--model", "ckpt/nosuch"], 2, "no such model folder", True),
    ("run-model-empty-folder", [*RUN, "--model", "emptydir"], 2, "has no config.json", True),
    ("run-model-is-a-file", [*RUN, "--model", "afile"], 2, "model path is a file", True),
    ("run-model-no-processor", [*RUN, "--model", "noproc"], 2, "has no tokenizer files", True),
    ("run-model-not-a-vlm", [*RUN, "--model", "llama"], 2, "is a 'llama' model, which no adapter reads", True),
    # run: saved schedules
    ("run-schedule-missing", [*RUN, "--schedule", "nope.json"], 2, "schedule file not found", True),
    ("run-schedule-not-json", [*RUN, "--schedule", "notjson.json"], 2, "is not JSON", True),
    ("run-schedule-format-99", [*RUN, "--schedule", "sched99.json"], 2, "has schedule format 99; this vtsched reads format 1",
     True),
    # explain
    ("explain-unknown-fusion", ["explain", "-p", "fusion=nosuch"], 2, "unknown fusion rule 'nosuch'", True),
    ("explain-fusion-alpha-range", ["explain", "-p", "fusion=fixed", "-p", "alpha=1.5"], 2, "alpha 1.5 outside [0, 1]",
     True),
    ("explain-unknown-shape", ["explain", "--shape", "nosuch"], 2, "unknown shape 'nosuch'", True),
    ("explain-json-under-a-file", ["explain", "--json", "afile/s.json"], 2, "afile is a file", True),
    ("explain-model-missing", ["explain", "--model", "{root}/no/such"], 2, "no such model folder", True),
    # eval
    ("eval-limit-0", ["eval", "--limit", "0"], 2, "--limit: 0 is below the minimum, 1", True),
    ("eval-limit-negative", ["eval", "--limit", "-1"], 2, "--limit: -1 is below the minimum, 1", True),
    ("eval-batch-size-0", ["eval", "--batch-size", "0"], 2, "--batch-size: 0 is below the minimum", True),
    ("eval-out-under-a-file", ["eval", "--data", "synthetic:1:1", "--out", "afile/eval"], 2, "afile is a file", True),
    ("eval-out-is-a-file", ["eval", "--data", "synthetic:1:1", "--out", "afile"], 2, "is a file, not a folder", True),
    ("eval-bad-synthetic", ["eval", "--data", "synthetic:x"], 2, "synthetic data is 'synthetic:SEED:IMAGES'", True),
    ("eval-missing-data", ["eval", "--data", "nope.jsonl"], 2, "dataset file not found", True),
    ("eval-unknown-policy", ["eval", "--data", "synthetic:1:1", "--policies", "nosuch"], 2, "unknown policy 'nosuch'",
     True),
    ("eval-unknown-fusion", ["eval", "--data", "synthetic:1:1", "--policies", "parvts:fusion=nosuch"], 2,
     "unknown fusion rule 'nosuch'", True),
    ("eval-bad-budget", ["eval", "--data", "synthetic:1:1", "--budgets", "abc"], 2, "is not a token count", True),
    ("eval-device-junk", ["eval", "--device", "junk"], 2, "is not a device", True),
    ("eval-hard-subset-unknown-case", ["eval", "--data", "synthetic:1:1", "--policies", "prune", "--budgets", "7",
                                       "--hard-subset", "prune@8"], 2, "--hard-subset: no case 'prune@8' in this eval", True),
    ("eval-paired-against-unknown-case", ["eval", "--data", "synthetic:1:1", "--paired-against", "nosuch"], 2,
     "--paired-against: no case 'nosuch' in this eval", True),
    # search-k
    ("search-k-threshold-negative", ["search-k", "--synthetic", "1", "--threshold", "-1"], 2,
     "--threshold: -1 is below the minimum, 0", True),
    ("search-k-no-data", ["search-k"], 2, "no calibration data", True),
    ("search-k-unknown-policy", ["search-k", "--synthetic", "1", "--policy", "nosuch"], 2, "unknown policy 'nosuch'",
     True),
    ("search-k-no-layer-param", ["search-k", "--synthetic", "1", "--layer-param", "nosuch"], 2,
     "has no layer parameter 'nosuch'", True),
    ("search-k-bad-budget", ["search-k", "--synthetic", "1", "--budgets", "abc"], 2, "is not a token count", True),
    ("search-k-alpha-range", ["search-k", "--synthetic", "1", "--alphas", "1.5"], 2, "--alphas: 1.5 is outside [0, 1]",
     True),
    ("search-k-out-under-a-file", ["search-k", "--synthetic", "1", "--out", "afile/k.json"], 2, "afile is a file", True),
    ("search-k-missing-data", ["search-k", "--data", "nope.jsonl"], 2, "calibration file not found", True),
    # bench
    ("bench-repeats-0", ["bench", "--repeats", "0"], 2, "--repeats: 0 is below the minimum, 1", True),
    ("bench-unknown-shape", ["bench", "--shape", "nosuch"], 2, "unknown shape 'nosuch'", True),
    ("bench-out-is-a-file", ["bench", "--shape", "tiny", "--out", "afile"], 2, "is a file, not a folder", True),
    ("bench-unknown-policy", ["bench", "--shape", "tiny", "--policies", "nosuch"], 2, "unknown policy 'nosuch'", True),
    ("bench-budget-too-large", ["bench", "--shape", "tiny", "--policies", "prune", "--budgets", "999"], 2,
     "exceeds the 4 visual tokens", True),
    ("bench-device-junk", ["bench", "--device", "junk"], 2, "is not a device", True),
    # --match (issue 21 item 3): a target no budget of a method meets names the method and the nearest value
    ("bench-match-unreachable", ["bench", "--shape", "tiny", "--policies", "parvts:drop_layer=1", "--budgets", "1",
                                 "--match", "avg-tokens"], 2,
     "parvts(drop_layer=1)@1 cannot meet the target 1 of budget 1; the nearest it achieves is 2.5 (its budget 1)", True),
    ("bench-match-input-tokens-fastv", ["bench", "--shape", "tiny", "--policies", "fastv:drop_layer=1", "--budgets",
                                        "2", "--match", "input-tokens"], 2,
     "fastv(drop_layer=1)@2 cannot meet the target 2 of budget 2; the nearest it achieves is 4", True),
    ("bench-match-choice", ["bench", "--match", "tokens"], 2, "argument --match: invalid choice: 'tokens'", True),
    ("bench-partitioner-on-a-policy-without-one", ["bench", "--shape", "tiny", "--policies", "fastv+divprune"], 2,
     "policy 'fastv' takes no partitioner", True),
    ("eval-match-unreachable", ["eval", "--data", "synthetic:1:1", "--policies", "parvts:drop_layer=2", "--budgets",
                                "7", "--match", "avg-tokens"], 2,
     "parvts(drop_layer=2)@7 cannot meet the target 7 of budget 7; the nearest it achieves is 22 (its budget 1)", True),
    ("sweep-match-typo", ["sweep", "sweep-match-typo.toml"], 2, "[sweep] match must be one of 'avg-tokens'", True),
    ("sweep-match-unreachable", ["sweep", "sweep-match-unreachable.toml"], 2,
     "[sweep] match = 'avg-tokens': parvts@7 [cls] cannot meet the target 7 of budget 7; the nearest it achieves is 22",
     True),
    # train-demo
    ("train-demo-scale-negative", ["train-demo", "--scale", "-1"], 2, "--scale: -1 is outside (0, 100]", True),
    ("train-demo-scale-0", ["train-demo", "--scale", "0"], 2, "--scale: 0 is outside (0, 100]", True),
    ("train-demo-out-is-a-file", ["train-demo", "--out", "afile"], 2, "is a file, not a folder", True),
    ("train-demo-device-junk", ["train-demo", "--device", "junk"], 2, "is not a device", True),
    # sweep
    ("sweep-workers-0", ["sweep", "sweep.toml", "--workers", "0"], 2, "--workers: 0 is below the minimum, 1", True),
    ("sweep-results-under-a-file", ["sweep", "sweep.toml", "--results", "afile/r.jsonl"], 2, "afile is a file", True),
    ("sweep-out-is-a-file", ["sweep", "sweep.toml", "--out", "afile"], 2, "is a file, not a folder", True),
    ("sweep-devices-junk", ["sweep", "sweep.toml", "--devices", "junk"], 2, "--devices 'junk' is not a device", True),
    ("sweep-missing-config", ["sweep", "nope.toml"], 2, "nope.toml", True),
    # the command line itself
    ("unknown-command", ["frobnicate"], 2, "invalid choice: 'frobnicate'", True),
]
CUDA_ROWS = [
    ("run-device-cuda", [*RUN, "--device", "cuda"], 2, "--device cuda: no CUDA GPU is visible", True),
    ("eval-device-cuda", ["eval", "--device", "cuda"], 2, "no CUDA GPU is visible", True),
    ("search-k-device-cuda", ["search-k", "--synthetic", "1", "--device", "cuda"], 2, "no CUDA GPU is visible", True),
    ("bench-device-cuda", ["bench", "--device", "cuda"], 2, "no CUDA GPU is visible", True),
    ("train-demo-device-cuda", ["train-demo", "--device", "cuda"], 2, "no CUDA GPU is visible", True),
    ("sweep-device-cuda", ["sweep", "sweep.toml", "--device", "cuda"], 2, "no CUDA GPU is visible", True),
]
# Accepted inputs that deserve a note; these run the shipped demo model.
ACCEPTED = [
    ("run-one-pixel-image", ["run", "--image", "one-pixel.png", "--question", "What colour?", "--policy", "full",
                             "--max-new-tokens", "1"], 0, "note: image 1 is 1x1 pixels, smaller than one 14x14 patch",
     False),
    ("run-budget-0", [*RUN, "--policy", "prune", "--budget", "0"], 0, "note: budget 0 keeps no visual tokens", False),
    ("run-16-bit-image", ["run", "--image", "depth16.png", "--question", "What colour?", "--policy", "full",
                          "--max-new-tokens", "1"], 0, "ran: policy full", False),
    ("explain-shape-demo", ["explain", "--shape", "demo"], 0, "the shipped demo model (6 layers", True),
    ("explain-budget-0", ["explain", "--budget", "0"], 0, "note: budget 0 keeps no visual tokens", True),
]


def _cli(argv: list[str], root: Path, capsys) -> tuple[int, str, str]:
    argv = [a.replace("{root}", str(root)) for a in argv]
    try:
        code = main(argv)
    except SystemExit as exc:  # the parser's refusals
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _rows():
    rows = REFUSED + ACCEPTED + (CUDA_ROWS if NO_CUDA else [])
    return [pytest.param(argv, code, phrase, before, id=name) for name, argv, code, phrase, before in rows]


def test_catalogue_ids_are_unique():
    names = [r[0] for r in REFUSED + ACCEPTED + CUDA_ROWS]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("argv,code,phrase,before", _rows())
def test_catalogue(argv, code, phrase, before, place, monkeypatch, request, capsys):
    monkeypatch.chdir(place)
    if before:
        request.getfixturevalue("no_weights")
    argv = argv if argv[0] in ("frobnicate",) else [*argv, NP]
    got, out, err = _cli(argv, place, capsys)
    assert "Traceback" not in out + err
    if code == 2:
        lines = err.strip().splitlines()
        assert got == 2 and len(lines) == 1 and lines[0].startswith("vtsched: error: "), err
        assert phrase in lines[0], lines[0]
    else:
        assert got == code, err
        assert phrase in out + err, out + err
    assert not (place / "vtsched-out").exists()  # nothing refused leaves folders behind; notes-only runs write none


@pytest.mark.skipif(not shutil.which(str(VENV_BIN / "vtsched")), reason="the vtsched console script is not installed")
@pytest.mark.parametrize("argv,phrase", [
    (["eval", "--limit", "0"], "--limit: 0 is below the minimum, 1"),
    (["explain", "-p", "fusion=nosuch"], "unknown fusion rule 'nosuch'"),
    (["run", "--image", "image.png", "--question", "q?", "--device", "junk"], "is not a device"),
])
def test_catalogue_as_a_process(argv, phrase, place):
    """The exit status and the one line, end to end through the console script."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run([str(VENV_BIN / "vtsched"), *argv, NP], cwd=place, capture_output=True, text=True,
                          timeout=120, env=env)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and phrase in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


# -- the sweep: resume after a torn line, a damaged line named, failed cells and --strict -------------
SWEEP = ('[sweep]\nresults = "results.jsonl"\nmodels = ["demo"]\ndatasets = ["synthetic:3:1"]\nbudgets = [4]\n'
         '[eval]\nmax_new_tokens = 1\n[[policy]]\nname = "full"\n[[policy]]\nname = "parvts"\n'
         'params = { drop_layer = 99 }\n')


def test_sweep_resumes_after_a_torn_line_in_one_invocation(tmp_path, capsys):
    from vtsched.core.tools.sweep.results import read_rows

    (tmp_path / "sweep.toml").write_text(SWEEP)
    results = tmp_path / "results.jsonl"
    results.write_text('{"format": 1, "hash": "0123456789", "sta')  # a run cut off mid-write
    code, out, err = _cli(["sweep", str(tmp_path / "sweep.toml"), "--no-progress", NP], tmp_path, capsys)
    assert code == 0, err
    assert "dropped the unfinished last line of results.jsonl" in err and "Traceback" not in err
    assert "1 of 2 cells failed" in err  # the parvts cell: drop_layer 99 is past the demo model's 6 layers
    rows, end = read_rows(results)
    assert sorted(r["status"] for r in rows) == ["failed", "ok"] and end == results.stat().st_size
    report = tmp_path / "results-report"
    assert (report / "summary.txt").exists() or any(report.rglob("summary.txt")), out

    # --strict: a failed cell makes the exit status 1; nothing runs again
    code, _, err = _cli(["sweep", str(tmp_path / "sweep.toml"), "--no-progress", "--strict", NP], tmp_path, capsys)
    assert code == 1 and "1 of 2 cells failed" in err

    # a damaged line between good rows: named with its number and the fix; the good rows stay
    lines = results.read_text().splitlines(keepends=True)
    results.write_text(lines[0] + "garbage\n" + "".join(lines[1:]))
    code, _, err = _cli(["sweep", str(tmp_path / "sweep.toml"), "--no-progress", NP], tmp_path, capsys)
    assert code == 2 and err.strip().count("\n") == 0, err
    assert "line 2 is not a sweep result row" in err and "delete line 2" in err
    assert results.read_text().startswith(lines[0] + "garbage\n")  # nothing was thrown away
