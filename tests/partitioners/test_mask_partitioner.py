"""The mask partitioner: masks found by image content from every kind of source, mapped through the
adapter's pixel boxes by core/pixels' rule; bad mask files are one line; three groups run in parvts."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from vtsched.core import Budget, InputError
from vtsched.core.cli import main
from vtsched.core.demo.synthetic import export, generate
from vtsched.core.partition import top_k_partition
from vtsched.core.pixels import TokenBoxes, grid_boxes, mask_coverage, partition_from_masks, select_by_coverage
from vtsched.core.testing import PartitionerConformance, TinyShape, prompt_batches, tiny_llava
from vtsched.core.tokens import PromptBatch, Role, Sample
from vtsched.partitioners.mask import MaskPartitioner

from tests.helpers import registry, scheduler

pytestmark = pytest.mark.filterwarnings("ignore:mask. sample .* has no mask")

SEED, IMAGES = 3, 4
PROCEDURAL = list(generate(SEED, IMAGES, types=("subject_colour",)))


def _with_procedural_images(batch: PromptBatch, picks: list[int]) -> PromptBatch:
    """The batch's samples on procedural images, with the pixel boxes an identity-geometry adapter gives."""
    samples = []
    for sample, pick in zip(batch.samples, picks):
        image = PROCEDURAL[pick].image
        rows, cols = sample.grid
        boxes = TokenBoxes(grid_boxes(image.size, rows, cols), image.size)
        samples.append(dataclasses.replace(sample, image=image, pixel_boxes=boxes))
    return PromptBatch(samples)


def procedural_batches(**kwargs):
    return prompt_batches(**kwargs, images=[p.image for p in PROCEDURAL])


class TestMaskPartitioner(PartitionerConformance):
    """Procedural images find their true masks; the random images of adapter-prepared batches have none
    and fall back to the score partition (``missing=scores``)."""

    partitioner_class = MaskPartitioner
    partitioner_params = {"masks": f"synthetic:{SEED}:{IMAGES}", "missing": "scores"}

    def prompt_batches(self, *, distinct_visual: bool = False):
        return procedural_batches(min_size=1, max_size=3, distinct_visual=distinct_visual)


class TestMaskPartitionerThreeGroups(TestMaskPartitioner):
    partitioner_params = {"masks": f"synthetic:{SEED}:{IMAGES}", "missing": "scores", "objects": "mark_mask"}
    examples = 10


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    return export(generate(SEED, IMAGES), tmp_path_factory.mktemp("procedural")).parent


def _sample(i: int, rows: int = 8, cols: int = 8) -> Sample:
    """A sample on procedural image ``i`` with an ``rows x cols`` grid over it and random [CLS] scores."""
    n = rows * cols
    image = PROCEDURAL[i % IMAGES].image
    roles = torch.tensor([Role.PREFIX] + [Role.VISUAL] * n + [Role.QUESTION], dtype=torch.long)
    return Sample(torch.full((n + 2,), 4), roles, torch.zeros(n, 2),
                  torch.rand(n, generator=torch.Generator().manual_seed(i)), (rows, cols), image,
                  pixel_boxes=TokenBoxes(grid_boxes(image.size, rows, cols), image.size))


def _batch() -> PromptBatch:
    return PromptBatch([_sample(i) for i in range(IMAGES)])


def test_every_source_finds_the_same_true_masks(exported):
    batch = _batch()
    budget = Budget(count=7)
    sources = [f"synthetic:{SEED}:{IMAGES}", str(exported), str(exported / "data.jsonl"), str(exported / "masks")]
    partitions = [MaskPartitioner(masks=m).partition(batch, budget) for m in sources]
    for p in partitions[1:]:
        assert all(torch.equal(a, b) for a, b in zip(p.assignment, partitions[0].assignment))
    for b, sample in enumerate(batch.samples):  # the oracle: the rule applied to the true mask
        truth = torch.from_numpy(PROCEDURAL[b].subject_mask)
        expected = select_by_coverage(mask_coverage(truth, sample.pixel_boxes), sample.cls_scores, 7)
        assert partitions[0].members(b, "subject").tolist() == expected.tolist()
    single = MaskPartitioner(masks=str(exported / "masks" / f"s{SEED}-0.png")).partition(batch.select([0]), budget)
    assert torch.equal(single.assignment[0], partitions[0].assignment[0])


def test_each_mask_file_is_read_once_until_it_changes(tmp_path, monkeypatch):
    """The partitioner looks a mask up for every sample of every batch; core's mask cache decodes each
    file once (three batches of four images: four reads, not twelve) and again only once it changed."""
    import os

    from vtsched.core.pixels import MASK_CACHE

    (tmp_path / "masks").mkdir()
    (tmp_path / "images").mkdir()
    for i, sample in enumerate(PROCEDURAL):
        sample.image.save(tmp_path / "images" / f"{i}.png")
        np.save(tmp_path / "masks" / f"{i}.npy", sample.subject_mask)
    reads = []
    real_load = np.load
    monkeypatch.setattr(np, "load", lambda path, *a, **k: reads.append(str(path)) or real_load(path, *a, **k))
    MASK_CACHE.clear()
    part, batch, budget = MaskPartitioner(masks=str(tmp_path / "masks")), _batch(), Budget(count=7)
    first = [part.partition(batch, budget) for _ in range(3)][0]
    assert sorted(reads) == sorted(str(tmp_path / "masks" / f"{i}.npy") for i in range(IMAGES))
    changed = tmp_path / "masks" / "0.npy"
    np.save(changed, ~PROCEDURAL[0].subject_mask)  # the mask inverted: another subject
    stamp = os.stat(changed).st_mtime_ns + 10**9
    os.utime(changed, ns=(stamp, stamp))
    again = part.partition(batch, budget)
    assert reads[IMAGES:] == [str(changed)]
    assert not torch.equal(again.assignment[0], first.assignment[0])
    assert all(torch.equal(again.assignment[b], first.assignment[b]) for b in range(1, IMAGES))


def test_an_empty_mask_gives_the_score_partition_and_a_full_mask_ties_every_token(tmp_path):
    batch = _batch().select([0])
    sample = batch.samples[0]
    for fill, name in ((0, "empty.npy"), (1, "full.npy")):
        np.save(tmp_path / name, np.full((112, 112), fill, dtype=np.uint8))
        ours = MaskPartitioner(masks=str(tmp_path / name)).partition(batch, Budget(count=5))
        reference = top_k_partition([sample.cls_scores], [5])  # coverage all equal: the score decides
        assert torch.equal(ours.assignment[0], reference.assignment[0])


def test_a_mask_smaller_than_one_token_selects_the_token_it_touches(tmp_path):
    batch = _batch().select([0])
    mask = np.zeros((112, 112), dtype=bool)
    mask[30, 30] = True  # one pixel, inside token (row 2, col 2) of the 8x8 grid of 14-px cells
    np.save(tmp_path / "dot.npy", mask)
    subject = MaskPartitioner(masks=str(tmp_path / "dot.npy")).partition(batch, Budget(count=1)).members(0, "subject")
    assert subject.tolist() == [2 * 8 + 2]


def test_objects_make_a_third_group_of_the_tokens_the_mark_half_covers():
    batch = _batch()
    part = MaskPartitioner(masks=f"synthetic:{SEED}:{IMAGES}", objects="mark_mask")
    partition = part.partition(batch, Budget(count=7))
    assert partition.groups == ("subject", "objects", "background")
    for b, sample in enumerate(batch.samples):
        mark = mask_coverage(torch.from_numpy(PROCEDURAL[b].mark_mask), sample.pixel_boxes)
        subject = set(partition.members(b, "subject").tolist())
        objects = set(partition.members(b, "objects").tolist())
        assert objects == {i for i in range(sample.num_visual) if mark[i] >= 0.5} - subject
        assert objects  # a 12-px mark half covers at least one 14-px cell


def test_no_token_score_ranks_ties_by_index():
    batch = _batch().select([0])
    sample = dataclasses.replace(batch.samples[0], cls_scores=None)
    empty = torch.zeros(112, 112)
    with pytest.warns(UserWarning, match="no token score"):
        partition = partition_from_masks([sample], [3], [empty], None, ("subject", "non_subject"))
    assert partition.members(0, "subject").tolist() == [0, 1, 2]
    scored = dataclasses.replace(sample, extras={"attention_scores": torch.arange(64.0)})  # the Qwen adapter's own
    by_own_score = partition_from_masks([scored], [3], [empty], None, ("subject", "non_subject"))
    assert by_own_score.members(0, "subject").tolist() == [61, 62, 63]


def _one_line(call):
    with pytest.raises(InputError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message and message
    return message


def test_bad_mask_inputs_are_one_line_errors(tmp_path, exported):
    batch, budget = _batch().select([0]), Budget(count=3)

    def run(path):
        return _one_line(lambda: MaskPartitioner(masks=str(path)).partition(batch, budget))

    np.save(tmp_path / "small.npy", np.zeros((10, 12), dtype=bool))
    assert "12x10 pixels, the image 112x112" in run(tmp_path / "small.npy")
    Image.new("RGB", (112, 112)).save(tmp_path / "rgb.png")
    assert "RGB image" in run(tmp_path / "rgb.png")
    np.save(tmp_path / "cube.npy", np.zeros((2, 112, 112)))
    assert "2-D" in run(tmp_path / "cube.npy")
    np.save(tmp_path / "soft.npy", np.full((112, 112), 3.0))
    assert "outside [0, 1]" in run(tmp_path / "soft.npy")
    np.save(tmp_path / "words.npy", np.full((112, 112), "x"))
    assert "dtype" in run(tmp_path / "words.npy")
    (tmp_path / "fake.png").write_text("not a picture")
    assert "not a mask file" in run(tmp_path / "fake.png")
    (tmp_path / "fake.npy").write_text("not an array")
    assert "not a NPY mask file" in run(tmp_path / "fake.npy")
    (tmp_path / "notes.txt").write_text("x")
    assert "neither a mask file" in run(tmp_path / "notes.txt")
    assert "does not exist" in _one_line(lambda: MaskPartitioner(masks=str(tmp_path / "nothing.png")))
    assert "no masks given" in _one_line(lambda: MaskPartitioner().partition(batch, budget))
    other = _with_procedural_images(batch, [0])
    other.samples[0].image = generate(SEED + 1, 1).__next__().image  # an image the set has no mask for
    assert "no mask for this image" in _one_line(lambda: MaskPartitioner(masks=str(exported)).partition(other, budget))
    no_boxes = PromptBatch([dataclasses.replace(batch.samples[0], pixel_boxes=None)])
    assert "no pixel boxes" in _one_line(lambda: MaskPartitioner(masks=str(exported)).partition(no_boxes, budget))
    assert "no 'depth' mask" in _one_line(
        lambda: MaskPartitioner(masks=f"synthetic:{SEED}:{IMAGES}", field="depth").partition(batch, budget))


def test_the_llava_adapter_maps_the_true_mask_and_parvts_runs_three_groups(exported):
    """On a tiny LLaVA with the demo model's geometry (112 px, 8x8 tokens): the adapter's boxes carry
    the masks, and parvts runs one stream per group (subject, objects, background) and decodes."""
    s = scheduler(*tiny_llava(TinyShape(layers=2, image_size=112)))
    images = [PROCEDURAL[i].image for i in range(2)]
    batch = s.prepare(images, ["What colour is the big shape?"] * 2)
    part = s.make_partitioner("mask", {"masks": str(exported), "objects": "mark_mask"})
    plan = s.plan(batch, s.make_policy("parvts", {"drop_layer": 1, "fusion": "size"}), part, Budget(count=2))
    assert plan.schedule.groups == ("subject", "objects", "background")
    assert len(plan.schedule.streams) == 3
    assert all(plan.partition.sizes()[:, 1] > 0)  # the mark is a real third group here
    for b in range(2):
        truth = torch.from_numpy(PROCEDURAL[b].subject_mask)
        sample = batch.samples[b]
        expected = select_by_coverage(mask_coverage(truth, sample.pixel_boxes), sample.cls_scores, 2)
        assert plan.partition.members(b, "subject").tolist() == expected.tolist()
    result = s.run(images, ["What colour is the big shape?"] * 2, "parvts", partitioner=part, budget=Budget(count=2))
    assert len(result.texts) == 2


def test_explain_shows_the_three_streams(capsys):
    assert main(["explain", "--policy", "parvts", "--partitioner", "mask", "--partitioner-param",
                 f"masks=synthetic:{SEED}:{IMAGES}", "--partitioner-param", "objects=mark_mask", "--budget", "7",
                 "--no-plugins"]) == 0
    text = capsys.readouterr().out
    assert "groups: subject, objects, background" in text
    assert "fuse post_image tokens of subject, objects, background -> subject" in text


def test_eval_crosses_partitioners_and_reads_the_datasets_own_masks(exported, tmp_path, capsys):
    model, processor = tiny_llava(TinyShape(layers=2, image_size=42))
    ckpt = tmp_path / "ckpt"
    model.save_pretrained(ckpt)
    processor.save_pretrained(ckpt)
    out = tmp_path / "out"
    assert main(["eval", "--model", str(ckpt), "--data", str(exported), "--policies", "prune", "vtw",
                 "--partitioners", "mask", "uniform", "--budgets", "3", "--limit", "7", "--max-new-tokens", "1",
                 "--out", str(out), "--no-progress", "--no-plugins"]) == 0
    assert "part ms" in capsys.readouterr().out
    rows = json.loads((out / "results.json").read_text())["rows"]
    cases = {r["case"] for r in rows}
    assert cases == {"full", "prune@3 [mask]", "prune@3 [uniform]", "vtw"}  # vtw needs no partition: once
    assert all("partitioner_ms" in r and "partitioner_gflops" in r for r in rows)
    assert next(r for r in rows if r["case"] == "prune@3 [mask]" and r["split"] == "all")["partitioner_ms"] > 0
    assert main(["eval", "--model", str(ckpt), "--data", str(exported), "--partitioners", "mask:masks=/nothing",
                 "--no-plugins"]) == 2


@given(st.integers(1, 6), st.integers(1, 6), st.integers(0, 36), st.data())
def test_exactly_r_subject_tokens_for_any_mask_and_grid(rows, cols, keep, data):
    keep = min(keep, rows * cols)
    width, height = data.draw(st.integers(3, 40)), data.draw(st.integers(3, 40))
    cells = data.draw(st.lists(st.booleans(), min_size=width * height, max_size=width * height))
    mask = torch.tensor(cells).view(height, width)
    boxes = TokenBoxes(grid_boxes((width, height), rows, cols), (width, height))
    sample = dataclasses.replace(_sample(0, rows, cols), pixel_boxes=boxes)
    partition = partition_from_masks([sample], [keep], [mask], None, ("subject", "non_subject"))
    subject = partition.members(0, "subject")
    assert subject.numel() == keep
    coverage = mask_coverage(mask, boxes)
    rest = partition.members(0, "non_subject")
    if subject.numel() and rest.numel():
        assert coverage[subject].min() >= coverage[rest].max() - 1e-9  # nobody left out covers more


@pytest.mark.parametrize("family", ["llava-next", "qwen2-vl"])
def test_next_and_qwen_adapters_boxes_carry_the_true_mask(family):
    """The same partitioner on the other families: their adapters' pixel boxes (NeXT tiles and newlines,
    Qwen's merged 28-px units) map the mask; Qwen has no [CLS], its attention score breaks ties."""
    from vtsched.core import Scheduler
    from vtsched.core.testing.families import TinyNextShape, TinyQwenShape, tiny_llava_next, tiny_qwen

    model, processor = tiny_llava_next(TinyNextShape()) if family == "llava-next" else tiny_qwen(TinyQwenShape())
    s = Scheduler(model, processor, registry=registry())
    images = [PROCEDURAL[i].image for i in range(2)]
    batch = s.prepare(images, ["What colour is the big shape?"] * 2)
    part = s.make_partitioner("mask", {"masks": f"synthetic:{SEED}:{IMAGES}"})
    partition = part.partition(batch, Budget(count=3))
    for b, sample in enumerate(batch.samples):
        assert sample.pixel_boxes is not None
        truth = torch.from_numpy(PROCEDURAL[b].subject_mask)
        coverage = mask_coverage(truth, sample.pixel_boxes)
        assert coverage.max() > 0
        scores = sample.cls_scores if sample.cls_scores is not None else sample.extras["attention_scores"]
        assert partition.members(b, "subject").tolist() == select_by_coverage(coverage, scores, 3).tolist()
        assert not (~sample.pixel_boxes.has_pixels)[partition.members(b, "subject")].any()  # no newline token
    result = s.run(images, ["What colour is the big shape?"] * 2, "parvts", partitioner=part, budget=Budget(count=3))
    assert len(result.texts) == 2


def test_synthetic_masks_are_found_by_a_fresh_process_that_only_builds_a_registry():
    """``masks=synthetic:...`` must not depend on something else having imported the procedural set
    first (``vtsched run --partitioner mask`` imports nothing of it): a fresh interpreter builds the
    registry and asks for the scheme, as the mask partitioner does."""
    import subprocess
    import sys

    code = ("from vtsched.core.registry import build_registry, make_plugin_manager; "
            "build_registry(make_plugin_manager(load_entrypoints=False)); "
            "from vtsched.core.pixels import mask_source; print(len(mask_source('synthetic:1:2').entries))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr.strip().splitlines()[-1:]
    assert int(done.stdout.strip()) == 2
