"""The LISA plugin: a tiny random LISA saved in the published key layout loads and segments; the
[SEG] state under prune and parvts equals a by-hand run of the shortened / fused sequences, and a
generated answer's [SEG] is read from the one prefill that ran; gIoU and cIoU follow LISA's
conventions; the ``lisa`` partitioner conforms; bad inputs are one line.

Skipped without the plugins (``pip install -e plugins/vtsched-segment-anything -e plugins/vtsched-lisa``).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("segment_anything", reason="the segment-anything plugin is not installed")
pytest.importorskip("vtsched_segment_anything", reason="the segment-anything plugin is not installed")
lisa = pytest.importorskip("vtsched_lisa", reason="the LISA plugin is not installed")

from vtsched.core import InputError  # noqa: E402
from vtsched.core.cli import main  # noqa: E402
from vtsched.core.demo.synthetic import generate  # noqa: E402
from vtsched.core.generation import GenerationConfig  # noqa: E402
from vtsched.core.testing import PartitionerConformance  # noqa: E402
from vtsched_lisa import LisaPartitioner, LisaSegmenter, giou_ciou, intersection_union, load_lisa  # noqa: E402
from vtsched_lisa import commands  # noqa: E402
from vtsched_lisa.checkpoint import KEY_MAP, published_state_dict, read_weights  # noqa: E402
from vtsched_lisa.data import load_seg_items, reasonseg_mask  # noqa: E402
from vtsched_lisa.partitioner import LisaPartition, clear_caches, load_segmenter  # noqa: E402
from vtsched_lisa.segment import lisa_scheduler  # noqa: E402
from vtsched_lisa.testing import TINY_LAYERS, save_tiny_lisa  # noqa: E402
from vtsched.core.testing.models import fused_positions, joined_states, stream_positions  # noqa: E402

IMAGES = [s.image for s in generate(7, 3, types=("subject_colour",))]
QUESTION = "Segment the big shape. Please output segmentation mask."


@lru_cache(maxsize=1)
def tiny_lisa() -> Path:
    """A tiny random LISA in the published layout, saved once per session."""
    return save_tiny_lisa(Path(tempfile.mkdtemp(prefix="vtsched-lisa-")) / "lisa")


@lru_cache(maxsize=1)
def segmenter() -> LisaSegmenter:
    return LisaSegmenter(lisa_scheduler(str(tiny_lisa())))


def _variant(tmp_path: Path, **kwargs) -> Path:
    return save_tiny_lisa(tmp_path / "lisa", **kwargs)


# -- loading by the key map -----------------------------------------------------------------------
def test_published_layout_loads_and_round_trips():
    published = read_weights(tiny_lisa())
    assert any(k.startswith("model.layers.0.") for k in published)
    assert "model.mm_projector.weight" in published and "model.text_hidden_fcs.0.2.weight" in published
    assert any(k.startswith("model.visual_model.image_encoder.") for k in published)
    assert not any("vision_tower" in k for k in published)
    model, processor = load_lisa(tiny_lisa())
    again = published_state_dict(model)
    assert set(again) == set(published)
    for key, value in published.items():
        assert torch.equal(again[key], value), key
    assert isinstance(model.model.multi_modal_projector, torch.nn.Linear)
    assert processor.tokenizer.convert_ids_to_tokens(model.config.seg_token_id) == "[SEG]"
    assert KEY_MAP[0][0] == "model.embed_tokens."


def test_checkpoint_without_sam_is_one_line(tmp_path):
    with pytest.raises(InputError, match=r"has no SAM weights \(model\.visual_model\.\*\)"):
        load_lisa(_variant(tmp_path, sam=False))


def test_tokenizer_without_seg_is_one_line(tmp_path):
    with pytest.raises(InputError, match=r"tokenizer has no \[SEG\] token"):
        load_lisa(_variant(tmp_path, seg_token=False))


def test_unknown_and_missing_keys_are_named(tmp_path):
    folder = tmp_path / "lisa"
    shutil.copytree(tiny_lisa(), folder)
    state = torch.load(folder / "pytorch_model.bin", weights_only=True)
    torch.save({**state, "model.extra_head.weight": torch.zeros(1)}, folder / "pytorch_model.bin")
    with pytest.raises(InputError, match=r"unknown keys for a LISA checkpoint: model\.extra_head\.weight"):
        load_lisa(folder)
    del state["model.text_hidden_fcs.0.0.bias"]
    torch.save(state, folder / "pytorch_model.bin")
    with pytest.raises(InputError, match=r"missing keys .*model\.text_hidden_fcs\.0\.0\.bias"):
        load_lisa(folder)


def test_missing_clip_is_one_line(tmp_path):
    folder = tmp_path / "lisa"
    shutil.copytree(tiny_lisa(), folder)
    shutil.rmtree(folder / "clip")
    with pytest.raises(InputError, match="omit the CLIP tower; pass --clip"):
        load_lisa(folder)
    model, _ = load_lisa(folder, clip=str(tiny_lisa() / "clip"))
    assert model.config.sam_variant == "tiny"


# -- [SEG] from the surviving stream equals a by-hand run -----------------------------------------
def _reference_seg(seg: LisaSegmenter, sample, subject: torch.Tensor, drop_layer: int | None, alpha: float):
    """The normed last-layer [SEG] state of the shortened (prune) or fused (parvts) sequence, by hand
    (the streams run apart through the model's own decoder and joined: ``models.joined_states``)."""
    model = seg.model
    others = torch.tensor([i for i in range(sample.num_visual) if i not in set(subject.tolist())], dtype=torch.long)
    keeps = [stream_positions(sample, subject), stream_positions(sample, others)]
    seg_at = int(torch.nonzero(sample.input_ids == model.config.seg_token_id)[0])
    if drop_layer is None:
        positions, states = joined_states(model, model.model.language_model, sample, keeps[:1], TINY_LAYERS)
    else:
        positions, states = joined_states(model, model.model.language_model, sample, keeps, drop_layer,
                                          averaged=fused_positions(sample, "post_image"), alpha=alpha)
    return states[positions.index(seg_at)], seg_at


@pytest.mark.parametrize("policy, params", [
    ("prune", {}),
    ("parvts", {"drop_layer": "2", "fusion": "fixed", "alpha": "0.7", "fuse_tokens": "post_image"}),
])
def test_seg_state_equals_the_by_hand_sequence(policy, params):
    seg = segmenter()
    result = seg.segment([IMAGES[0]], [QUESTION], policy, budget=5, policy_params=params)[0]
    batch = seg.scheduler.adapter.prepare([IMAGES[0]], [QUESTION], reply="[SEG].")
    subject = result.plan.partition.members(0, result.plan.partition.groups[0])
    assert len(subject) == 5
    expected, seg_at = _reference_seg(seg, batch.samples[0], subject,
                                      int(params["drop_layer"]) if params else None, float(params.get("alpha", 1)))
    assert result.seg_position == seg_at
    torch.testing.assert_close(result.seg_state, expected.float(), atol=1e-5, rtol=1e-4)
    full = seg.segment([IMAGES[0]], [QUESTION], "full")[0]
    assert not torch.allclose(full.seg_state, result.seg_state, atol=1e-5)  # the schedule did change [SEG]
    assert result.mask.shape == (IMAGES[0].size[1], IMAGES[0].size[0])


def test_a_generated_seg_is_read_from_the_one_prefill_that_ran(monkeypatch):
    """--generate: the [SEG] state comes from the states generation computed (one prefill, no second
    pass over the prompt) and equals the no-cache reference, a prefill with the answer as tail."""
    scheduler = lisa_scheduler(str(tiny_lisa()))
    model = scheduler.adapter.model
    seg_id = model.config.seg_token_id
    bias = torch.zeros(model.lm_head.out_features)
    bias[seg_id] = 1e4  # [SEG] the likeliest token whatever the state, so the answer has one to read
    model.lm_head.bias = torch.nn.Parameter(bias, requires_grad=False)
    seg = LisaSegmenter(scheduler)
    calls = []
    prefill = scheduler.engine.prefill
    monkeypatch.setattr(scheduler.engine, "prefill", lambda *a, **k: calls.append(k) or prefill(*a, **k))
    result = seg.segment([IMAGES[0]], [QUESTION], "prune", budget=4, generation=GenerationConfig(max_new_tokens=3))[0]
    assert len(calls) == 1
    assert result.answer is not None and "[SEG]" in result.answer and result.warning is None

    batch = scheduler.adapter.prepare([IMAGES[0]], [QUESTION], reply="")
    assert result.seg_position == batch.samples[0].length  # the first generated token
    plan = result.plan
    reference = prefill(batch, plan.schedule, plan.partition, use_cache=False, return_hidden=True,
                        tail=[torch.tensor([seg_id], dtype=torch.long)])
    slot = int(reference.slots(0, torch.tensor([result.seg_position]))[0])
    expected = scheduler.engine.parts.norm(reference.hidden[0, slot][None])[0]
    torch.testing.assert_close(result.seg_state, expected.float(), atol=1e-5, rtol=1e-4)


def test_loading_a_lisa_registers_no_sam_variant():
    """The loader is handed the SAM variants it knows; loading changes no process-wide table."""
    from vtsched_segment_anything.checkpoint import variants

    before = set(variants())
    model, _ = load_lisa(tiny_lisa())
    assert model.config.sam_variant == "tiny"
    assert set(variants()) == before and "demo-lisa" not in before


def test_sam_embedding_is_computed_once_per_image():
    seg = segmenter()
    seg.segment([IMAGES[1]], [QUESTION], "full")
    again = seg.segment([IMAGES[1]], [QUESTION], "prune", budget=3)[0]
    assert again.sam_encoder_cached and again.sam_encoder_s == 0.0
    assert "SAM encoder cached" in again.summary() and "LLM prefill" in again.summary()


def test_an_answer_without_seg_gives_an_empty_mask_and_a_warning():
    seg = segmenter()
    result = seg.segment([IMAGES[2]], [QUESTION], "prune", budget=4,
                         generation=GenerationConfig(max_new_tokens=3))[0]
    assert result.answer is not None
    assert result.seg_state is None and result.mask.sum() == 0
    assert "no [SEG]" in result.warning


# -- metrics ----------------------------------------------------------------------------------------
def test_giou_ciou_on_constructed_cases():
    empty = np.zeros((4, 4), dtype=bool)
    half = empty.copy()
    half[:2] = True
    quarter = empty.copy()
    quarter[:1] = True
    assert intersection_union(empty, empty) == (0, 0)
    assert intersection_union(half, quarter) == (4, 8)
    ignore = empty.copy()
    ignore[1] = True
    assert intersection_union(half, quarter, ignore) == (4, 4)
    giou, ciou = giou_ciou([(0, 0), (4, 8)])  # empty/empty counts as IoU 1 for gIoU, nothing for cIoU
    assert giou == pytest.approx((1.0 + 0.5) / 2, abs=1e-5)
    assert ciou == pytest.approx(0.5)
    assert giou_ciou([(0, 8)]) == (0.0, 0.0)
    assert np.isnan(giou_ciou([])[0])


def test_reasonseg_polygons_largest_first_with_ignore():
    record = {"shapes": [{"label": "target", "points": [[0, 0], [8, 0], [8, 8], [0, 8]]},
                         {"label": "ignore", "points": [[2, 2], [4, 2], [4, 4], [2, 4]]},
                         {"label": "flag", "points": [[0, 0], [1, 0], [1, 1]]}]}
    target, ignore = reasonseg_mask(record, (10, 10))
    assert ignore[3, 3] and not target[3, 3]  # the smaller ignore polygon is drawn over the target
    assert target[6, 6] and not target[9, 9]


def test_eval_scores_a_segmentation_jsonl_and_a_reasonseg_folder(tmp_path, capsys):
    from PIL import Image

    image = IMAGES[0]
    image.save(tmp_path / "a.png")
    truth = generate(7, 1, types=("subject_colour",))
    Image.fromarray(next(truth).subject_mask.astype(np.uint8) * 255).save(tmp_path / "a-mask.png")
    (tmp_path / "data.jsonl").write_text(json.dumps({"image": "a.png", "mask": "a-mask.png", "question": QUESTION,
                                                     "tag": "subject"}) + "\n")
    reason = tmp_path / "reason"
    reason.mkdir()
    image.convert("RGB").save(reason / "r1.jpg")
    (reason / "r1.json").write_text(json.dumps({"text": ["the big shape"], "is_sentence": False, "shapes": [
        {"label": "target", "points": [[10, 10], [60, 10], [60, 60], [10, 60]]}]}))
    items = load_seg_items(str(reason))
    assert items[0].question == "What is the big shape in this image? Please output segmentation mask."
    out = tmp_path / "eval"
    code = main(["eval", "--model", str(tiny_lisa()), "--data", str(tmp_path / "data.jsonl"), "--policies", "prune",
                 "--budgets", "4", "--out", str(out), "--no-progress"])
    assert code == 0
    report = json.loads((out / "results.json").read_text())
    rows = report["rows"]
    assert report["evaluator"] == "segmentation"
    assert [r["case"] for r in rows] == ["full", "prune@4"]
    assert all(0.0 <= r["giou"] <= 1.0 and "giou[subject]" in r for r in rows)
    assert rows[1]["visual_tokens_per_layer"] == 4.0
    assert main(["eval", "--model", str(tiny_lisa()), "--data", f"segmentation:{reason}", "--policies", "prune",
                 "--budgets", "4", "--out", str(tmp_path / "reason-out"), "--no-progress"]) == 0
    assert "SAM enc ms" in capsys.readouterr().out
    reason_rows = json.loads((tmp_path / "reason-out" / "results.json").read_text())["rows"]
    assert [r["n"] for r in reason_rows] == [1, 1]


def test_segment_eval_is_no_longer_a_command(capsys):
    """One entry point for segmentation evaluation: ``vtsched eval --data segmentation:...``."""
    with pytest.raises(SystemExit) as exited:
        main(["segment-eval", "--data", "segmentation:synthetic:1:1"])
    assert exited.value.code == 2
    assert "invalid choice: 'segment-eval'" in capsys.readouterr().err


# -- the command ------------------------------------------------------------------------------------
def test_vtsched_segment_writes_mask_and_overlay(tmp_path, capsys):
    image = tmp_path / "img.png"
    IMAGES[0].save(image)
    out = tmp_path / "out"
    code = main(["segment", "--model", str(tiny_lisa()), "--image", str(image), "--question", QUESTION,
                 "--policy", "parvts", "--budget", "4", "-p", "drop_layer=2", "-p", "fuse_tokens=post_image",
                 "--out", str(out), "--json", str(tmp_path / "r.json")])
    assert code == 0
    text = capsys.readouterr().out
    assert "LLM prefill" in text and "SAM encoder" in text and "mask decoder" in text
    from PIL import Image

    for name in ("mask.png", "overlay.png"):
        with Image.open(out / name) as image:
            assert image.size == IMAGES[0].size
    record = json.loads((tmp_path / "r.json").read_text())
    assert record["visual_tokens_per_layer"] == 4.0 and record["seg_position"] is not None


def test_vtsched_segment_without_model_or_demo_says_so(tmp_path, capsys, monkeypatch):
    """Without --model the demo LISA answers (test_lisa_demo.py); were it missing, one line says so."""
    monkeypatch.setattr(commands, "demo_lisa_path", lambda: None)
    image = tmp_path / "img.png"
    IMAGES[0].save(image)
    assert main(["segment", "--image", str(image), "--question", QUESTION]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no demo LISA" in err[0]


def test_vtsched_segment_refuses_a_bad_output_before_loading_a_model(tmp_path, capsys, monkeypatch):
    """The request check answers first: an --out under a regular file is one line, no weights read."""
    from vtsched_lisa import segment

    def refuse(*args, **kwargs):
        raise AssertionError("the LISA was loaded before the request was refused")

    monkeypatch.setattr(segment, "lisa_scheduler", refuse)
    monkeypatch.chdir(tmp_path)
    IMAGES[0].save(tmp_path / "image.png")
    (tmp_path / "afile").write_text("a regular file")
    assert main(["segment", "--image", "image.png", "--question", "the shape?", "--out", "afile/seg"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "afile is a file" in err, err


def test_vtsched_segment_bad_checkpoint_is_one_line(tmp_path, capsys):
    image = tmp_path / "img.png"
    IMAGES[0].save(image)
    folder = _variant(tmp_path, sam=False)
    assert main(["segment", "--model", str(folder), "--image", str(image), "--question", QUESTION]) == 2
    assert "no SAM weights" in capsys.readouterr().err


# -- the lisa partitioner ---------------------------------------------------------------------------
def test_lisa_partitioner_runs_with_a_llava_and_records_its_prompt(tmp_path, capsys):
    from vtsched.core.testing import TinyShape, bound_scheduler, tiny_llava

    clear_caches()
    model, processor = tiny_llava(TinyShape())
    s = bound_scheduler(model, processor)
    batch = s.prepare([IMAGES[0]], ["What colour is the big shape?"])
    part = LisaPartitioner(model=str(tiny_lisa()))
    from vtsched.core.budget import Budget

    partition = part.partition(batch, Budget(count=3))
    assert isinstance(partition, LisaPartition)
    assert partition.prompts == ("What colour is the big shape? Please output segmentation mask.",)
    assert len(partition.members(0, partition.groups[0])) == 3
    spent = part.spent_flops()  # a whole LISA pass: more than its LLM prefill alone
    segmenter = load_segmenter(str(tiny_lisa()))
    prefill = segmenter.segment([IMAGES[0]], [partition.prompts[0]], "full")[0].flops
    assert spent > prefill > 0
    part.partition(batch, Budget(count=3))
    assert part.spent_flops() == spent  # the mask came from the cache: nothing ran
    image = tmp_path / "img.png"
    IMAGES[0].save(image)
    assert main(["run", "--image", str(image), "--question", "What colour is the big shape?", "--policy", "prune",
                 "--budget", "7", "--partitioner", "lisa", "-p", f"model={tiny_lisa()}"]) == 0
    assert "partitioner lisa" in capsys.readouterr().out


def test_lisa_partitioner_without_a_question_is_one_line():
    batch = segmenter().scheduler.adapter.prepare([IMAGES[0]], [QUESTION])
    batch.samples[0].extras.pop("question")
    from vtsched.core.budget import Budget

    with pytest.raises(InputError, match="carries no question"):
        LisaPartitioner(model=str(tiny_lisa())).partition(batch, Budget(count=2))


class TestLisaConformance(PartitionerConformance):
    partitioner_class = LisaPartitioner
    partitioner_params = {"question": "What is the big shape?"}

    def make_partitioner(self):
        return LisaPartitioner(model=str(tiny_lisa()), **dict(self.partitioner_params))

    def prompt_batches(self, *, distinct_visual: bool = False):
        from vtsched.core.testing import prompt_batches

        return prompt_batches(min_size=1, max_size=3, distinct_visual=distinct_visual, images=IMAGES)
