"""The segment-anything plugin: a tiny SAM saved in Meta's checkpoint layout loads back through the
partitioner; prompts come from the model's token scores; masks are cached; bad checkpoints are one
line; registering a variant is idempotent.

Skipped without the plugin (the README's test command installs it: -e plugins/vtsched-segment-anything).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("segment_anything", reason="the segment-anything plugin is not installed")
sam_plugin = pytest.importorskip("vtsched_segment_anything", reason="the segment-anything plugin is not installed")

from vtsched.core import Budget, InputError, Scheduler  # noqa: E402
from vtsched.core.cli import main  # noqa: E402
from vtsched.core.demo.synthetic import generate  # noqa: E402
from vtsched.core.pixels import TokenBoxes, grid_boxes  # noqa: E402
from vtsched.core.registry import build_registry, make_plugin_manager  # noqa: E402
from vtsched.core.testing import PartitionerConformance, TinyShape, tiny_llava  # noqa: E402
from vtsched.core.tokens import PromptBatch, Role, Sample  # noqa: E402
from vtsched_segment_anything import SamPartitioner, clear_caches, load_sam  # noqa: E402
from vtsched_segment_anything.checkpoint import detect_variant, variants  # noqa: E402
from vtsched_segment_anything.partitioner import MASKS, _choose  # noqa: E402
from vtsched_segment_anything.testing import (  # noqa: E402
    TINY, TINY_VARIANT, build_tiny_sam, register_tiny, save_tiny_checkpoint,
)


IMAGES = [s.image for s in generate(5, 3, types=("subject_colour",))]


@lru_cache(maxsize=1)
def tiny_checkpoint() -> Path:
    """A tiny SAM with random weights, saved once per session as Meta lays out its .pth files."""
    return save_tiny_checkpoint(Path(tempfile.mkdtemp(prefix="vtsched-sam-")) / "sam_tiny.pth")


@pytest.fixture(autouse=True)
def _tiny_variant():
    register_tiny()  # tests that build the registry anew still find the tiny variant


def _sample(i: int, rows: int = 8, cols: int = 8, scores: torch.Tensor | None = None, **extra) -> Sample:
    n = rows * cols
    image = IMAGES[i % len(IMAGES)]
    roles = torch.tensor([Role.PREFIX] + [Role.VISUAL] * n + [Role.QUESTION], dtype=torch.long)
    cls = scores if scores is not None else torch.rand(n, generator=torch.Generator().manual_seed(i))
    return Sample(torch.full((n + 2,), 4), roles, torch.zeros(n, 2), cls, (rows, cols), image,
                  pixel_boxes=TokenBoxes(grid_boxes(image.size, rows, cols), image.size), **extra)


class _WithPixelBoxes:
    """Conformance batches on procedural images, with the pixel boxes an identity-geometry adapter gives."""

    def make_partitioner(self):
        return SamPartitioner(checkpoint=str(tiny_checkpoint()), **dict(self.partitioner_params))

    def prompt_batches(self, *, distinct_visual: bool = False):
        from vtsched.core.testing import prompt_batches

        return prompt_batches(min_size=1, max_size=3, distinct_visual=distinct_visual, images=IMAGES)


class TestSamConformance(_WithPixelBoxes, PartitionerConformance):
    partitioner_class = SamPartitioner
    examples = 8
    model_examples = 3


class TestSamAutoThreeGroupsConformance(_WithPixelBoxes, PartitionerConformance):
    partitioner_class = SamPartitioner
    partitioner_params = {"prompt": "auto", "points_per_side": 3, "pred_iou_thresh": 0.0,
                          "stability_score_thresh": 0.0, "groups": 3}
    examples = 4
    model_examples = 2


def test_the_tiny_checkpoint_is_metas_layout_and_loads_back_exactly():
    path = tiny_checkpoint()
    state = torch.load(path, weights_only=True)
    assert {k.split(".")[0] for k in state} == {"image_encoder", "prompt_encoder", "mask_decoder"}
    assert "image_encoder.pos_embed" in state and "mask_decoder.iou_prediction_head.layers.0.weight" in state
    model = load_sam(path)  # variant auto: detected from the shapes
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    assert not any(p.requires_grad for p in model.parameters())
    assert detect_variant(state, variants()) == (32, 2, TINY)


def test_registering_a_variant_again_is_a_no_op_and_another_under_its_name_is_refused():
    assert register_tiny() == register_tiny() == TINY_VARIANT
    with pytest.raises(ValueError, match="'tiny' is already registered as tiny"):
        sam_plugin.register_variant(TINY, 48, 3, build_tiny_sam)
    with pytest.raises(ValueError, match="built-in SAM variant name"):
        sam_plugin.register_variant("vit_b", 32, 2, build_tiny_sam)


def _fake_meta_state(embed_dim: int, depth: int) -> dict[str, torch.Tensor]:
    """Only the shapes detection reads (and one key per part): enough to be recognised, not to load."""
    state = {"image_encoder.patch_embed.proj.weight": torch.zeros(embed_dim, 3, 1, 1),
             "prompt_encoder.no_mask_embed.weight": torch.zeros(1), "mask_decoder.iou_token.weight": torch.zeros(1)}
    state.update({f"image_encoder.blocks.{i}.norm1.weight": torch.zeros(1) for i in range(depth)})
    return state


@pytest.mark.parametrize("name,embed_dim,depth", [("vit_h", 1280, 32), ("vit_l", 1024, 24), ("vit_b", 768, 12)])
def test_metas_variants_are_read_from_the_shapes_and_a_different_named_one_is_refused(tmp_path, name, embed_dim, depth):
    state = _fake_meta_state(embed_dim, depth)
    assert detect_variant(state, variants())[2] == name
    torch.save(state, tmp_path / "sam.pth")
    other = "vit_b" if name != "vit_b" else "vit_h"
    message = _one_line(lambda: load_sam(tmp_path / "sam.pth", other))
    assert f"is a {name} (image encoder {embed_dim} wide, {depth} blocks) checkpoint, not {other}" in message
    assert variants()["vit_b"].build.__name__ == "build_sam_vit_b"  # segment-anything's own registry


def _one_line(call) -> str:
    with pytest.raises(InputError) as info:
        call()
    message = str(info.value)
    assert message and "\n" not in message, message
    return message


def test_bad_checkpoints_are_one_line_errors(tmp_path):
    assert "not found" in _one_line(lambda: SamPartitioner(checkpoint=str(tmp_path / "missing.pth")))
    IMAGES[0].save(tmp_path / "photo.png")
    assert "not a PyTorch file" in _one_line(lambda: load_sam(tmp_path / "photo.png"))
    torch.save({"weight": torch.zeros(2)}, tmp_path / "other.pth")
    assert "not a SAM checkpoint: it has no image_encoder.patch_embed.proj.weight" in _one_line(
        lambda: load_sam(tmp_path / "other.pth"))
    torch.save({"image_encoder.patch_embed.proj.weight": argparse.Namespace()}, tmp_path / "objects.pth")
    assert "refuses" in _one_line(lambda: load_sam(tmp_path / "objects.pth"))
    state = _fake_meta_state(40, 5)  # a shape no variant has (plugins register their own, e.g. demo-lisa: 48 x 3)
    torch.save(state, tmp_path / "odd.pth")
    assert "40 wide with 5 blocks is no known variant" in _one_line(lambda: load_sam(tmp_path / "odd.pth"))
    state = torch.load(tiny_checkpoint(), weights_only=True)
    torch.save({k: v for k, v in state.items() if not k.startswith("mask_decoder.")}, tmp_path / "half.pth")
    assert "no mask_decoder.* weights" in _one_line(lambda: load_sam(tmp_path / "half.pth"))
    state["mask_decoder.iou_token.weight"] = torch.zeros(1, 5)
    torch.save(state, tmp_path / "bent.pth")
    assert "does not fit SAM tiny" in _one_line(lambda: load_sam(tmp_path / "bent.pth"))
    assert "unknown SAM variant 'vit_x'" in _one_line(lambda: load_sam(tiny_checkpoint(), "vit_x"))
    assert "prompt='points'" in _one_line(lambda: SamPartitioner(prompt="points"))
    batch = PromptBatch([_sample(0)])
    assert "no checkpoint" in _one_line(lambda: SamPartitioner().partition(batch, Budget(count=3)))
    no_boxes = PromptBatch([dataclasses.replace(_sample(0), pixel_boxes=None)])
    assert "no pixel boxes" in _one_line(
        lambda: SamPartitioner(checkpoint=str(tiny_checkpoint())).partition(no_boxes, Budget(count=3)))


def test_the_checkpoint_may_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("VTSCHED_SAM_CHECKPOINT", str(tiny_checkpoint()))
    partition = SamPartitioner().partition(PromptBatch([_sample(0)]), Budget(count=5))
    assert partition.sizes()[0, 0] == 5


def test_cls_peak_prompts_at_the_top_tokens_and_box_spans_the_top_r():
    scores = torch.zeros(64)
    scores[[9, 50, 22]] = torch.tensor([3.0, 2.0, 1.0])
    boxes = _sample(0, scores=scores).pixel_boxes  # 8x8 cells of 14 px over 112 px
    assert SamPartitioner(points=2)._prompt(boxes, scores, 3) == ((21.0, 21.0), (35.0, 91.0))
    assert SamPartitioner(prompt="box")._prompt(boxes, scores, 3) == ((14.0, 14.0, 98.0, 98.0),)
    assert SamPartitioner()._prompt(boxes, None, 3) == ((56.0, 56.0),)  # no score: the image centre
    assert SamPartitioner(prompt="box")._prompt(boxes, None, 3) == ((28.0, 28.0, 84.0, 84.0),)


def test_without_cls_the_adapters_own_score_prompts(recwarn):
    """Qwen-style samples: no [CLS], the adapter's own score (``extras["attention_scores"]``) picks the prompt."""
    part = SamPartitioner(checkpoint=str(tiny_checkpoint()))
    score = torch.arange(64.0)
    base = _sample(1)
    as_cls = dataclasses.replace(base, cls_scores=score)
    attention = dataclasses.replace(base, cls_scores=None, extras={"attention_scores": score})  # the Qwen adapter's
    b = part.partition(PromptBatch([as_cls]), Budget(count=6))
    c = part.partition(PromptBatch([attention]), Budget(count=6))
    assert torch.equal(c.assignment[0], b.assignment[0])
    bare = dataclasses.replace(base, cls_scores=None)
    with pytest.warns(UserWarning, match="prompting at the image centre"):
        part.partition(PromptBatch([bare]), Budget(count=6))


def test_auto_rules_choose_by_their_definition():
    boxes = TokenBoxes(grid_boxes((8, 8), 2, 2), (8, 8))
    masks = np.zeros((3, 8, 8), dtype=bool)
    masks[0, :3, :3] = True  # top-left corner, small, off-centre
    masks[1, 2:6, 2:6] = True  # central
    masks[2, :, 5:] = True  # a right band: the largest, centroid at x=6.5 (outside the central half)
    ious = np.array([0.9, 0.5, 0.7], dtype=np.float32)
    assert _choose(masks, ious, "iou", None, boxes) == 0
    assert _choose(masks, ious, "central", None, boxes) == 1
    assert _choose(masks, ious, "cls-mass", torch.tensor([5.0, 0.0, 0.0, 0.0]), boxes) == 0
    assert _choose(masks, ious, "cls-mass", torch.tensor([0.0, 1.0, 0.0, 1.0]), boxes) == 2
    assert _choose(masks[:0], ious[:0], "iou", None, boxes) is None


def test_masks_are_cached_by_image_content_in_memory_and_on_disk(tmp_path):
    clear_caches()
    batch, budget = PromptBatch([_sample(0), _sample(1)]), Budget(count=7)
    first = SamPartitioner(checkpoint=str(tiny_checkpoint()), cache_dir=str(tmp_path))
    a = first.partition(batch, budget)
    spent = first.spent_flops()
    assert spent > 0
    hits = MASKS.hits
    b = first.partition(batch, budget)
    assert first.spent_flops() == spent and MASKS.hits == hits + 2  # nothing recomputed
    assert len(list(tmp_path.glob("*.npz"))) == 2
    from vtsched.core.io import umask_mode

    assert all(p.stat().st_mode & 0o777 == umask_mode() for p in tmp_path.glob("*.npz"))  # shared like results
    clear_caches()  # a new process: only the disk cache is left
    fresh = SamPartitioner(checkpoint=str(tiny_checkpoint()), cache_dir=str(tmp_path))
    c = fresh.partition(batch, budget)
    assert fresh.spent_flops() == 0
    assert all(torch.equal(x, y) and torch.equal(x, z) for x, y, z in zip(a.assignment, b.assignment, c.assignment))


def test_vtsched_list_names_the_plugin(capsys):
    assert main(["list"]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.strip().startswith("sam "))
    assert line.rstrip().endswith("[segment-anything]")


def test_run_with_the_tiny_sam_end_to_end_on_the_demo_model(tmp_path, capsys):
    image = tmp_path / "scene.png"
    IMAGES[0].save(image)
    out = tmp_path / "run.json"
    assert main(["run", "--image", str(image), "--question", "What colour is the big shape?", "--policy", "parvts",
                 "--budget", "7", "-p", "drop_layer=2", "--partitioner", "sam", "--partitioner-param",
                 f"checkpoint={tiny_checkpoint()}", "--json", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["partitioner"].startswith("sam(") and len(record["subject_tokens"]) == 7
    assert main(["run", "--image", str(image), "--question", "What?", "--partitioner", "sam", "--partitioner-param",
                 f"checkpoint={tmp_path / 'none.pth'}"]) == 2
    assert "SAM checkpoint not found" in capsys.readouterr().err


def test_eval_reports_sams_time_and_flops_apart_from_the_llm(tmp_path):
    clear_caches()
    model, processor = tiny_llava(TinyShape(layers=2, image_size=42))
    ckpt = tmp_path / "ckpt"
    model.save_pretrained(ckpt)
    processor.save_pretrained(ckpt)
    out = tmp_path / "out"
    assert main(["eval", "--model", str(ckpt), "--data", "synthetic:5:2", "--policies", "prune", "parvts",
                 "--partitioners", f"sam:checkpoint={tiny_checkpoint()}", "--budgets", "3", "--limit", "4",
                 "--max-new-tokens", "1", "--out", str(out), "--no-progress"]) == 0
    rows = {r["case"]: r for r in json.loads((out / "results.json").read_text())["rows"] if r["split"] == "all"}
    label = f"prune@3 [sam:checkpoint={tiny_checkpoint()}]"
    assert rows[label]["partitioner_gflops"] > 0 and rows[label]["partitioner_ms"] > 0
    assert rows["full"]["partitioner_gflops"] == 0
    parvts = next(r for c, r in rows.items() if c.startswith("parvts"))
    assert parvts["partitioner_gflops"] == 0  # the same images: every mask came from the cache


def test_sam_on_a_tiny_qwen_prompts_from_its_attention_scores(recwarn):
    from vtsched.core.testing.families import TinyQwenShape, tiny_qwen

    s = Scheduler(*tiny_qwen(TinyQwenShape()), registry=build_registry(make_plugin_manager()))
    part = s.make_partitioner("sam", {"checkpoint": str(tiny_checkpoint())})
    result = s.run(IMAGES[:2], ["What colour is the big shape?"] * 2, "parvts", partitioner=part,
                   budget=Budget(count=2))
    assert all(len(result.plan.partition.members(b, "subject")) == 2 for b in range(2))
    assert not [w for w in recwarn if "no token score" in str(w.message)]  # the adapter's score was used


def test_parvts_runs_a_three_group_sam_partition_on_a_tiny_llava():
    s = Scheduler(*tiny_llava(TinyShape(layers=2, image_size=42)), registry=build_registry(make_plugin_manager()))
    part = s.make_partitioner("sam", {"checkpoint": str(tiny_checkpoint()), "prompt": "auto", "points_per_side": 3,
                                      "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "groups": 3})
    result = s.run(IMAGES[:2], ["What colour is the big shape?"] * 2, "parvts", partitioner=part,
                   budget=Budget(count=2))
    assert result.plan.schedule.groups == ("subject", "objects", "background")
    assert len(result.texts) == 2


def test_the_tiny_builder_is_segment_anythings_own_modules():
    from segment_anything.modeling import Sam

    assert isinstance(build_tiny_sam(), Sam)
