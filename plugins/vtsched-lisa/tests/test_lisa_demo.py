"""The demo LISA and segmentation inside ``vtsched eval``.

The demo LISA (``vtsched_lisa/demo``) ships only what it adds to the demo LLaVA and loads through
the ordinary LISA loader; under ``full`` its masks match the true ones on generated scenes it never
saw; ``vtsched segment`` uses it without ``--model``; ``vtsched eval`` scores segmentation data
(``segmentation:SPEC``, or a JSONL of image and mask paths recognised by its layout) on it and on
a tiny saved LISA, with the LLM prefill and SAM times apart. No training here: the training
command is exercised for a few steps only.

Skipped without the plugins (``pip install -e plugins/vtsched-segment-anything -e plugins/vtsched-lisa``).
"""

from __future__ import annotations

import json
import tempfile
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("segment_anything", reason="the segment-anything plugin is not installed")
pytest.importorskip("vtsched_segment_anything", reason="the segment-anything plugin is not installed")
lisa = pytest.importorskip("vtsched_lisa", reason="the LISA plugin is not installed")

from vtsched.core import InputError  # noqa: E402
from vtsched.core.cli import main  # noqa: E402
from vtsched.core.demo.synthetic import generate  # noqa: E402
from vtsched_lisa import LisaSegmenter, demo_lisa_path, giou_ciou, intersection_union, load_lisa  # noqa: E402
from vtsched_lisa.checkpoint import read_weights  # noqa: E402
from vtsched_lisa.data import SYNTHETIC_QUESTIONS, load_seg_items  # noqa: E402
from vtsched_lisa.demo_lisa import SHIPPED_LAYER_KEYS, SHIPPED_PREFIXES  # noqa: E402
from vtsched_lisa.evaluator import looks_like_segmentation  # noqa: E402
from vtsched_lisa.segment import lisa_scheduler  # noqa: E402
from vtsched_lisa.testing import save_tiny_lisa  # noqa: E402

DEMO = demo_lisa_path()
needs_demo = pytest.mark.skipif(DEMO is None, reason="no demo LISA shipped (vtsched train-demo-lisa)")


@lru_cache(maxsize=1)
def tiny_lisa() -> Path:
    return save_tiny_lisa(Path(tempfile.mkdtemp(prefix="vtsched-lisa-demo-")) / "lisa")


@lru_cache(maxsize=1)
def demo_segmenter() -> LisaSegmenter:
    return LisaSegmenter(lisa_scheduler(str(DEMO)))


def _scene_files(folder: Path, seed: int = 11, count: int = 1) -> Path:
    """A segmentation JSONL (image, mask, question, tag) of generated scenes: both targets per image."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, s in enumerate(generate(seed, count, types=("subject_colour",))):
        s.image.save(folder / f"{i}.png")
        for tag, mask in (("subject", s.subject_mask), ("corner", s.mark_mask)):
            Image.fromarray(mask.astype(np.uint8) * 255).save(folder / f"{i}-{tag}.png")
            lines.append(json.dumps({"image": f"{i}.png", "mask": f"{i}-{tag}.png", "tag": tag,
                                     "question": SYNTHETIC_QUESTIONS[tag]}))
    (folder / "data.jsonl").write_text("\n".join(lines) + "\n")
    return folder / "data.jsonl"


# -- the shipped demo LISA ----------------------------------------------------------------------------
@needs_demo
def test_demo_lisa_ships_only_what_it_adds_to_the_demo_llava():
    config = json.loads((DEMO / "config.json").read_text())
    assert config["base_llava"] == "vtsched:demo" and config["mm_projector_type"] == "mlp2x_gelu"
    assert (DEMO / "model.safetensors").stat().st_size <= 10 * 2**20
    keys = read_weights(DEMO)
    assert all(k.startswith(SHIPPED_PREFIXES) or k.endswith(SHIPPED_LAYER_KEYS) for k in keys)
    llm = [k for k in keys if not k.startswith("model.visual_model.")]
    assert not any(k.startswith(("model.mm_projector.", "model.norm.")) or ".mlp." in k for k in llm)
    assert (DEMO / "README.md").is_file() and json.loads((DEMO / "training.json").read_text())["history"]


@needs_demo
def test_demo_lisa_loads_through_the_lisa_loader_with_the_demo_llavas_weights():
    from safetensors import safe_open

    from vtsched.core.demo import demo_model_path

    model, processor = load_lisa(DEMO)
    with safe_open(str(Path(demo_model_path()) / "model.safetensors"), "pt") as base:
        name = next(k for k in base.keys() if k.endswith("layers.0.mlp.up_proj.weight"))  # noqa: SIM118 (safe_open: keys() only)
        assert (model.model.language_model.layers[0].mlp.up_proj.weight == base.get_tensor(name)).all()
    assert model.model.multi_modal_projector[0].weight.shape[0] == model.config.text_config.hidden_size
    assert processor.tokenizer.convert_ids_to_tokens(model.config.seg_token_id) == "[SEG]"


@needs_demo
@pytest.mark.parametrize("tag", ["subject", "corner"])
def test_demo_lisa_full_giou_is_high_on_unseen_scenes(tag):
    """Held-out scenes (seed 9; training used 2000+): the full-policy masks match the true ones."""
    segmenter = demo_segmenter()
    pairs = []
    for s in generate(9, 6, types=("subject_colour",)):
        result = segmenter.segment([s.image], [SYNTHETIC_QUESTIONS[tag]], "full")[0]
        pairs.append(intersection_union(result.mask, s.subject_mask if tag == "subject" else s.mark_mask))
    giou, _ = giou_ciou(pairs)
    assert giou >= 0.7, f"demo LISA full gIoU on the {tag} target: {giou:.3f}"


@needs_demo
def test_vtsched_segment_without_model_uses_the_demo_lisa(tmp_path, capsys):
    from PIL import Image

    scene = next(generate(12, 1, types=("subject_colour",)))
    scene.image.save(tmp_path / "img.png")
    code = main(["segment", "--image", str(tmp_path / "img.png"), "--question", SYNTHETIC_QUESTIONS["corner"],
                 "--policy", "full", "--out", str(tmp_path / "out")])
    assert code == 0
    assert "SAM encoder" in capsys.readouterr().out
    mask = np.asarray(Image.open(tmp_path / "out" / "mask.png")) > 0
    assert intersection_union(mask, scene.mark_mask)[0] > 0


@needs_demo
def test_vtsched_segment_runs_a_saved_schedule_at_its_own_budget(tmp_path, capsys):
    """As `vtsched run` does: a schedule file's recorded budget, not the default, when --budget is absent."""
    scene = next(generate(12, 1, types=("subject_colour",)))
    scene.image.save(tmp_path / "img.png")
    saved = tmp_path / "parvts.json"
    from vtsched.core.demo import demo_model_path

    assert main(["explain", "--model", str(demo_model_path()), "--policy", "parvts", "--budget", "5",
                 "--json", str(saved)]) == 0  # the demo LLaVA the demo LISA is built on: same depth and grid
    capsys.readouterr()
    assert main(["segment", "--image", str(tmp_path / "img.png"), "--question", SYNTHETIC_QUESTIONS["corner"],
                 "--policy", f"schedule:{saved}", "--out", str(tmp_path / "out")]) == 0
    assert "visual tokens/layer: 5.0 kept" in capsys.readouterr().out


# -- segmentation in vtsched eval ---------------------------------------------------------------------
@needs_demo
def test_vtsched_eval_scores_synthetic_segmentation_on_the_demo_lisa(tmp_path, capsys):
    code = main(["eval", "--data", "segmentation:synthetic:4:1", "--policies", "prune", "--budgets", "7",
                 "--out", str(tmp_path), "--no-progress"])
    assert code == 0
    out = capsys.readouterr().out
    assert "gIoU" in out and "LLM prefill ms" in out and "SAM enc ms" in out
    report = json.loads((tmp_path / "results.json").read_text())
    assert report["evaluator"] == "segmentation"
    rows = {r["case"]: r for r in report["rows"]}
    assert set(rows) == {"full", "prune@7"}
    assert rows["prune@7"]["visual_tokens_per_layer"] == 7.0 and rows["full"]["visual_tokens_per_layer"] == 64.0
    for row in rows.values():
        assert 0.0 <= row["giou[corner]"] <= 1.0 and row["sam_decoder_ms"] > 0 and row["llm_prefill_ms"] > 0
    assert rows["full"]["sam_encoder_computed"] == 1 and rows["prune@7"]["sam_encoder_computed"] == 0
    assert (tmp_path / "results.csv").read_text().startswith("case,n,giou,ciou")


def test_vtsched_eval_reads_a_segmentation_jsonl_by_its_layout_on_a_tiny_lisa(tmp_path, capsys):
    data = _scene_files(tmp_path / "data")
    assert looks_like_segmentation(str(data)) and looks_like_segmentation(str(data.parent))
    code = main(["eval", "--model", str(tiny_lisa()), "--data", str(data), "--policies", "prune",
                 "parvts:drop_layer=2,fuse_tokens=post_image", "--budgets", "4", "--out", str(tmp_path / "out"),
                 "--no-progress"])
    assert code == 0
    rows = json.loads((tmp_path / "out" / "results.json").read_text())["rows"]
    assert [r["case"] for r in rows] == ["full", "prune@4", "parvts:drop_layer=2,fuse_tokens=post_image@4"]
    assert all(r["n"] == 2 and "giou[subject]" in r and "ciou[corner]" in r for r in rows)


def test_vtsched_eval_crosses_partitioners_for_segmentation(tmp_path):
    data = _scene_files(tmp_path / "data")
    code = main(["eval", "--model", str(tiny_lisa()), "--data", f"segmentation:{data}", "--policies", "prune",
                 "--partitioners", "cls", "random:seed=1", "--budgets", "4", "--out", str(tmp_path / "out"),
                 "--no-progress"])
    assert code == 0
    rows = json.loads((tmp_path / "out" / "results.json").read_text())["rows"]
    assert [r["case"] for r in rows] == ["full", "prune@4 [cls]", "prune@4 [random:seed=1]"]


def test_qa_data_still_goes_to_core_eval(tmp_path):
    """A JSONL with answers is question answering: no evaluator claims it."""
    (tmp_path / "qa.jsonl").write_text(json.dumps({"image": "a.png", "question": "q", "answer": "a",
                                                   "mask": "m.png"}) + "\n")
    assert not looks_like_segmentation(str(tmp_path / "qa.jsonl"))
    assert not looks_like_segmentation("synthetic:1:3")


@pytest.mark.parametrize("data, message", [
    ("segmentation:/no/such/data.jsonl", "segmentation data not found"),
    ("segmentation:", "needs a dataset after the colon"),
    ("segmentation:synthetic:x:2", "expected synthetic:SEED:IMAGES"),
])
def test_bad_segmentation_data_is_one_line(tmp_path, capsys, data, message):
    code = main(["eval", "--model", str(tiny_lisa()), "--data", data, "--out", str(tmp_path), "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_the_python_evaluation_is_what_vtsched_eval_runs(tmp_path):
    """docs/lisa.md's route for a LISA loaded another way (bfloat16, CLIP elsewhere): the same rows."""
    from vtsched_lisa.evaluation import evaluate_segmentation, segmentation_cases

    data = _scene_files(tmp_path / "data")
    via_eval = tmp_path / "eval"
    assert main(["eval", "--model", str(tiny_lisa()), "--data", str(data), "--policies", "prune", "--budgets", "4",
                 "--out", str(via_eval), "--no-progress"]) == 0
    scheduler = lisa_scheduler(str(tiny_lisa()), clip=str(tiny_lisa() / "clip"))
    a = evaluate_segmentation(scheduler, load_seg_items(str(data)), segmentation_cases(scheduler, ["prune"], ["4"]))
    b = json.loads((via_eval / "results.json").read_text())["rows"]
    assert [r["case"] for r in b] == ["full", "prune@4"]
    assert [(r["case"], r["giou"], r["ciou"]) for r in a["rows"]] == [(r["case"], r["giou"], r["ciou"]) for r in b]


# -- the loader's options for LISAs built on a LLaVA-1.5 ----------------------------------------------
def test_unknown_projector_type_and_missing_base_are_one_line(tmp_path):
    folder = save_tiny_lisa(tmp_path / "lisa")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "mm_projector_type": "resampler"}))
    with pytest.raises(InputError, match="mm_projector_type 'resampler' is not one of linear, mlp2x_gelu"):
        load_lisa(folder)
    (folder / "config.json").write_text(json.dumps({**config, "base_llava": "no-such-llava"}))
    with pytest.raises(InputError, match="base_llava no-such-llava is not a LLaVA folder"):
        load_lisa(folder)
    (folder / "config.json").write_text(json.dumps({**config, "conv_type": "chatml"}))
    with pytest.raises(InputError, match="conv_type 'chatml' is not one of"):
        load_lisa(folder)


def test_train_demo_lisa_runs_a_few_steps(tmp_path, capsys):
    """The training command end to end at 2 steps (the shipped one ran the default steps)."""
    out = tmp_path / "demo"
    assert main(["train-demo-lisa", "--steps", "2", "--out", str(out), "--no-progress"]) == 0
    assert "saved to" in capsys.readouterr().out
    facts = json.loads((out / "training.json").read_text())
    assert facts["config"]["steps"] == 2 and len(facts["history"]) == 2
    model, _ = load_lisa(out)  # what it saves loads through the same loader as the shipped one
    assert model.config.sam_variant == "demo-lisa"
    items = load_seg_items("synthetic:3:1")
    assert [i.tag for i in items] == ["subject", "corner"]
