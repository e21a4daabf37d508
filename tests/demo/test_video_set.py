"""The procedural video QA set: every answer is what the frames show (read back from the pixels), the set is a
pure function of its spec, and ``vtsched eval --data video:...`` scores it on a saved tiny Qwen checkpoint
through the registered evaluator."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from vtsched.core.demo.video import (
    BACKGROUNDS,
    COLOURS,
    QUESTIONS,
    generate,
    parse_spec,
    when_of,
)
from vtsched.core.errors import InputError
from vtsched.core.tools.video_eval import VideoQAEvaluator, load_items

PROBE = (56, 5)  # (row, column): left edge, middle height; no subject path or corner reaches it


def _pixels_of(frame: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    return np.all(frame == np.array(colour, dtype=np.uint8), axis=-1)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.integers(0, 5), st.integers(3, 12))
def test_every_answer_is_what_the_frames_show(seed, index, frames):
    samples = [s for s in generate(seed, index + 1, frames=frames) if s.id.startswith(f"video{seed}-{index}-")]
    assert {s.type for s in samples} == set(QUESTIONS)
    answers = {s.type: s.answer for s in samples}
    clip = samples[0].video.frames
    assert clip.shape == (frames, 112, 112, 3) and samples[0].video.num_frames == frames

    # the subject: its colour is the largest non-background colour of every frame, and its centre moves
    subject = COLOURS[answers["subject_colour"]]
    centres = []
    for t in range(frames):
        ys, xs = np.nonzero(_pixels_of(clip[t], subject))
        assert ys.size > 300  # a big shape
        centres.append((xs.mean(), ys.mean()))
    dx, dy = centres[-1][0] - centres[0][0], centres[-1][1] - centres[0][1]
    moved = ("right" if dx > 0 else "left") if abs(dx) > abs(dy) else ("down" if dy > 0 else "up")
    assert moved == answers["subject_direction"] and max(abs(dx), abs(dy)) >= 40
    steps = [np.hypot(b[0] - a[0], b[1] - a[1]) for a, b in itertools.pairwise(centres)]
    assert min(steps) > 0  # it moves in every frame

    # the flash: the small square's colour is in exactly one frame, in the third the answer names
    flash = COLOURS[answers["flash_colour"]]
    assert flash != subject
    shown = [t for t in range(frames) if _pixels_of(clip[t], flash).sum() > 0]
    assert len(shown) == 1 and _pixels_of(clip[shown[0]], flash).sum() == 12 * 12
    assert when_of(shown[0], frames) == answers["flash_when"]

    # the background: the start colour until one frame, the end colour from it on (one change)
    probe = [tuple(int(c) for c in clip[t][PROBE]) for t in range(frames)]
    assert probe[0] == BACKGROUNDS[answers["background_start"]] and probe[-1] == BACKGROUNDS[answers["background_end"]]
    assert sum(a != b for a, b in itertools.pairwise(probe)) == 1


def test_the_set_is_a_function_of_its_spec():
    a, b = load_items("3:2:6"), load_items("3:2:6")
    assert [(i.id, i.question, i.answer) for i in a] == [(i.id, i.question, i.answer) for i in b]
    assert all(np.array_equal(x.image.frames, y.image.frames) for x, y in zip(a, b))
    assert len(a) == 2 * len(QUESTIONS) and len(load_items("3:2:6", limit=5)) == 5
    assert parse_spec("3:2") == (3, 2, 8)
    for bad in ("3", "x:2", "3:0", "3:2:2", "1:2:3:4"):
        with pytest.raises(InputError, match="video") as info:
            parse_spec(bad)
        assert "\n" not in str(info.value)


def test_the_evaluator_is_registered_through_the_hook():
    from vtsched.core.evaluators import evaluator_for
    from vtsched.core.registry import build_registry, make_plugin_manager

    registry = build_registry(make_plugin_manager(load_entrypoints=False))
    assert evaluator_for(registry, "video:1:2") == (VideoQAEvaluator, "1:2")
    assert registry.plugin_of("evaluator", "video") == "vtsched.core.tools.video_eval"


@pytest.fixture(scope="module")
def qwen_checkpoint(tmp_path_factory):
    from vtsched.core.shapes import build_random_llava

    root = tmp_path_factory.mktemp("video-eval")
    model, processor = build_random_llava("qwen2-vl-tiny")
    model.save_pretrained(root / "qwen2-vl-tiny")
    processor.save_pretrained(root / "qwen2-vl-tiny")
    return root / "qwen2-vl-tiny"


def test_vtsched_eval_scores_the_video_set_on_a_saved_checkpoint(qwen_checkpoint, tmp_path, capsys):
    from vtsched.core.cli import main

    out = tmp_path / "eval"
    code = main(["eval", "--data", "video:1:1:4", "--model", str(qwen_checkpoint), "--policies", "prune", "framefusion",
                 "--budgets", "50%", "--partitioners", "temporal", "--no-plugins", "--no-progress", "--out", str(out)])
    assert code == 0, capsys.readouterr()
    rows = json.loads((out / "results.json").read_text())["rows"]
    cases = {r["case"] for r in rows}
    assert "full" in cases and any(c.startswith("prune") and "temporal" in c for c in cases) \
        and any(c.startswith("framefusion") for c in cases), cases
    every = [r for r in rows if r["split"] == "all"]
    assert all(r["n"] == len(QUESTIONS) for r in every)
    full = next(r for r in every if r["case"] == "full")
    assert full["agreement"] == 1.0 and full["visual_tokens_input"] > next(
        r for r in every if r["case"].startswith("prune"))["visual_tokens_input"]


def test_vtsched_eval_refuses_bad_video_data_in_one_line(tmp_path, capsys):
    from vtsched.core.cli import main

    for args in (["--data", "video:1"], ["--data", "video:1:2"]):  # malformed; no --model (no demo video model)
        code = main(["eval", *args, "--policies", "prune", "--no-plugins", "--out", str(tmp_path / "x")])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and "video" in err, err


def test_a_sweep_runs_the_video_set_through_its_evaluator(qwen_checkpoint, tmp_path):
    """A sweep's dataset ``video:SEED:CLIPS:FRAMES`` is served by the registered evaluator, cell by cell."""
    from vtsched.core.tools.sweep import run_sweep
    from vtsched.core.tools.sweep.results import read_rows

    config = tmp_path / "video.toml"
    config.write_text(f"""\
[sweep]
results = "r.jsonl"
models = ["{qwen_checkpoint}"]
datasets = ["video:2:1:4"]
budgets = ["50%"]

[[policy]]
name = "full"

[[policy]]
name = "framefusion"
params = {{ drop_layer = 1, merge_layers = 1 }}
""")
    run_sweep(config, progress=False, report=False)
    rows = {r["label"]: r for r in read_rows(tmp_path / "r.jsonl")[0]}
    assert len(rows) == 2 and all(r["status"] == "ok" for r in rows.values()), [r.get("error") for r in rows.values()]
    assert {r["spec"]["evaluator"] for r in rows.values()} == {"video"}
    assert all(r["score"] == "accuracy" and r["n"] == len(QUESTIONS) for r in rows.values())
