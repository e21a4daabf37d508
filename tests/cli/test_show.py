"""`vtsched show`: tokens put back on the image exactly, on every family, for built-in and plugin policies.

What is checked against something independent of the code drawing it:

- the tinted pixels of every kept-token panel are exactly the pixels whose centres lie in the boxes
  (``Sample.pixel_boxes``) of the tokens that stream carried, tinted by their group's colour, and every
  other pixel is faded: recomputed here pixel by pixel from the boxes;
- which tokens a stream carried: the partition's groups for static schedules (prune, parvts, and
  ``drop-at``, a policy registered here through the plugin hook as a third party's is) and, for the
  survivor's last run, the positions the engine's own prefill returns (``Prefill.index``), so FastV's
  attention-chosen tokens are the engine's;
- the last prompt token's attention, read under SDPA, equals transformers' eager attention weights
  of the same model (LLaVA and Qwen2.5-VL's M-RoPE), in float64.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch

from vtsched.core import RemoveGroup, Schedule, Stream, hookimpl
from vtsched.core.budget import Budget
from vtsched.core.cli import main
from vtsched.core.demo import build_random_llava, demo_model_path, random_image
from vtsched.core.errors import InputError
from vtsched.core.io import load_image
from vtsched.core.policy import DEFAULT_GROUPS, Policy
from vtsched.core.registry import build_registry, make_plugin_manager
from vtsched.core.scheduler import Scheduler
from vtsched.core.testing import default_registry, processor_inputs
from vtsched.core.tools.show import FADE, GROUP_COLOURS, TINT, show

ROOT = Path(__file__).resolve().parents[2]
IMAGE = ROOT / "docs" / "images" / "demo-shapes.png"
QUESTION = "What colour is the small square in the corner?"
FAMILIES = ("tiny", "llava-next-tiny", "qwen2.5-vl-tiny")  # LLaVA-1.5, LLaVA-NeXT, Qwen2.5-VL
POLICIES = {  # name -> (params, budget)
    "prune": ({}, "0.5"),
    "parvts": ({"drop_layer": 1}, "0.5"),
    "fastv": ({"drop_layer": 1}, "0.5"),
    "drop-at": ({"drop_layer": 1}, "0.5"),  # a plugin's policy (below)
}


@dataclass(frozen=True)
class DropAt(Policy):
    """A plugin's policy: every visual token until layer K, then only the subject group."""

    name: ClassVar[str] = "drop-at"
    drop_layer: int = 1

    def schedule(self, geometry, groups=DEFAULT_GROUPS, budget=None) -> Schedule:
        events = tuple(RemoveGroup(self.drop_layer, "main", g) for g in groups[1:])
        return Schedule(geometry.num_layers, groups, (Stream("main", groups),), "main", events)


class PolicyPlugin:
    """Registers ``drop-at`` through the hook a third-party plugin implements."""

    __name__ = "test-plugin"

    @hookimpl
    def vtsched_register_policies(self, register):
        register(DropAt)


@pytest.fixture(scope="module")
def image():
    return load_image(IMAGE)


@pytest.fixture(scope="module")
def odd_image():
    """An image whose token boxes fall between pixels on every family (odd sizes, not square)."""
    return random_image(3, width=53, height=37)


@pytest.fixture(scope="module")
def schedulers():
    registry = build_registry(make_plugin_manager(load_entrypoints=False, extra=[PolicyPlugin()]))
    return {shape: Scheduler(*build_random_llava(shape), registry=registry) for shape in FAMILIES}


def expected_panel(image: np.ndarray, boxes: torch.Tensor, tokens: list[int], colours: dict[int, tuple]) -> np.ndarray:
    """The panel from first principles: pixel (x, y) is tinted iff its centre lies in a shown token's box."""
    height, width = image.shape[:2]
    cx = np.arange(width)[None, :] + 0.5
    cy = np.arange(height)[:, None] + 0.5
    out = np.rint(FADE * image.astype(float) + (1 - FADE) * 255.0)
    covered = np.zeros((height, width), dtype=int)
    for t in tokens:
        x0, y0, x1, y1 = boxes[t].tolist()
        inside = (cx >= x0) & (cx < x1) & (cy >= y0) & (cy < y1)
        covered += inside
        out[inside] = np.rint((1 - TINT) * image[inside].astype(float) + TINT * np.asarray(colours[t], dtype=float))
    assert covered.max() <= 1, "boxes of one view overlap"
    return out.astype(np.uint8)


def kept_panels(result):
    """``(stream, (start, end), view tokens, drawn array)`` per image panel of the kept figure, in drawing order."""
    fig = result.figure("kept")
    axes = iter(fig.axes)
    streams = [s for s in result.data["streams"] if any(r["stream"] == s for r in result.data["runs"])]
    runs = {(r["start"], r["end"], r["stream"]): r for r in result.data["runs"]}
    for stream in streams:
        for span in result.runs():
            for _, view in result.views:
                ax = next(axes)
                if (*span, stream) in runs:
                    yield runs[(*span, stream)], view, np.asarray(ax.images[0].get_array())


def survivor_tokens(scheduler, image, plan) -> list[int]:
    """Visual tokens in the survivor after the last event, from the engine's own prefill (``Prefill.index``)."""
    batch = scheduler.prepare([image], [QUESTION])
    out = scheduler.engine.prefill(batch, plan.schedule, plan.partition, use_cache=False, return_hidden=True)
    visual = batch.samples[0].visual_positions.tolist()
    return sorted(visual.index(p) for p in out.index[0].tolist() if p in visual)


@pytest.mark.parametrize("shape", FAMILIES)
@pytest.mark.parametrize("policy", list(POLICIES))
def test_tinted_pixels_are_the_kept_tokens_boxes(schedulers, odd_image, shape, policy):
    image = odd_image
    scheduler = schedulers[shape]
    params, budget = POLICIES[policy]
    result = show(scheduler, image, QUESTION, policy, policy_params=params, budget=budget)
    boxes = scheduler.prepare([image], [QUESTION]).samples[0].pixel_boxes
    groups = result.data["token_group"]
    plan = scheduler.plan(scheduler.prepare([image], [QUESTION]), scheduler.make_policy(policy, params), None,
                          Budget.parse(budget))
    subject = plan.partition.members(0, plan.partition.groups[0]).tolist()
    everything = list(range(boxes.num_visual))
    k = params.get("drop_layer")
    panels = list(kept_panels(result))
    assert panels
    for record, view, drawn in panels:
        colours = {t: GROUP_COLOURS[groups[t]] for t in record["visual"]}
        expected = expected_panel(result.image, boxes.boxes, [t for t in record["visual"] if t in view], colours)
        np.testing.assert_array_equal(drawn, expected, err_msg=f"{shape} {policy} {record}")
        # which tokens: what each policy's schedule says the stream carries
        after = record["start"] >= (k or 0)
        if policy == "prune" or (policy in ("parvts", "drop-at") and after) or record["stream"] == "subject":
            assert record["visual"] == subject, record
        elif policy == "parvts":
            assert record["stream"] == "non_subject" and record["visual"] == sorted(set(everything) - set(subject))
        elif not after:
            assert record["visual"] == everything, record
    last = [r for r in result.data["runs"] if r["stream"] == result.data["survivor"]][-1]
    assert last["visual"] == survivor_tokens(scheduler, image, plan), "the tracer and the engine disagree"
    if policy == "fastv":
        assert len(last["visual"]) == Budget.parse(budget).resolve(len(everything))
    assert set(result.figures) == ({"partition", "kept", "flow", "fusion"} if policy == "parvts"
                                   else {"partition", "kept", "flow"})


def test_llava_next_draws_its_overview_and_unpadded_tiles_apart(schedulers, image):
    result = show(schedulers["llava-next-tiny"], image, QUESTION, "prune", budget="0.5")
    names = [name for name, _ in result.views]
    assert names == ["overview tile", "high-resolution tiles"]
    sample = schedulers["llava-next-tiny"].prepare([image], [QUESTION]).samples[0]
    tiles = sample.extras["provenance"][:, 0]
    assert result.views[0][1] == torch.nonzero(tiles == 0).flatten().tolist()
    assert result.views[1][1] == torch.nonzero(tiles > 0).flatten().tolist()  # newline tokens (-1) are in neither


@pytest.mark.parametrize("shape", ["tiny", "qwen2.5-vl-tiny"])
def test_attention_read_under_sdpa_is_transformers_eager_attention(image, shape):
    """The last prompt token's attention over the image, recomputed for one row under SDPA = eager weights."""
    sdpa = Scheduler(*build_random_llava(shape, dtype=torch.float64, attn_implementation="sdpa"),
                     registry=default_registry())
    eager_model, processor = build_random_llava(shape, dtype=torch.float64, attn_implementation="eager")
    layers = tuple(range(sdpa.adapter.geometry.num_layers))
    result = show(sdpa, image, QUESTION, "full", attention_layers=layers)
    inputs = processor_inputs(processor, sdpa.adapter.prompt_template, image, QUESTION)
    batch = sdpa.prepare([image], [QUESTION])
    assert inputs["input_ids"][0].tolist() == batch.samples[0].input_ids.tolist()
    with torch.inference_mode():
        attentions = eager_model(**inputs, output_attentions=True).attentions
    visual = batch.samples[0].visual_positions
    assert [a["layer"] for a in result.data["attention"]] == list(layers)
    for reading in result.data["attention"]:
        read = torch.tensor(reading["visual"], dtype=torch.float64)
        reference = attentions[reading["layer"]][0, :, -1, visual].mean(0).double()
        # probes score in float32 (attention_probs), so float32 rounding is the tolerance
        torch.testing.assert_close(read, reference, rtol=1e-5, atol=1e-8)
        other = attentions[(reading["layer"] + 1) % len(layers)][0, :, -1, visual].mean(0).double()
        assert not torch.allclose(read, other, rtol=1e-5, atol=1e-8), "the tolerance cannot tell layers apart"
    assert result.figure("attention") is not None


def test_attention_layer_out_of_range_is_refused(schedulers, image):
    with pytest.raises(InputError, match="numbered 0..1"):
        show(schedulers["tiny"], image, QUESTION, "prune", attention_layers=(2,))


@pytest.mark.skipif(demo_model_path() is None, reason="the shipped demo model is not installed")
def test_demo_model_tints_whole_14px_cells(image):
    """On the demo model (112 px, 8x8 tokens of 14 px) a kept token tints exactly its 14x14 cell."""
    scheduler = Scheduler.from_pretrained(str(demo_model_path()), registry=default_registry())
    result = show(scheduler, image, QUESTION, "parvts", budget="7", policy_params={"drop_layer": 2})
    survivor = [r for r in result.data["runs"] if r["stream"] == "subject"]
    assert all(len(r["visual"]) == 7 for r in survivor)
    for record, _view, drawn in kept_panels(result):
        faded = np.rint(FADE * result.image.astype(float) + (1 - FADE) * 255.0).astype(np.uint8)
        tinted = (drawn != faded).any(-1)
        cells = np.zeros((8, 8), dtype=bool)
        for t in record["visual"]:
            cells[t // 8, t % 8] = True
        # only pixels whose faded and tinted values coincide could hide; the demo image has none such
        np.testing.assert_array_equal(tinted, np.kron(cells, np.ones((14, 14), dtype=bool)))
    assert result.data["answer"].strip()


def test_cli_writes_figures_sheet_and_json(tmp_path, capsys):
    def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
        capsys.readouterr()
        code = main(list(args))
        out = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, out.out, out.err)

    model = tmp_path / "ckpt"
    built, processor = build_random_llava("tiny")
    built.save_pretrained(model)
    processor.save_pretrained(model)
    done = run_cli("show", "--model", str(model), "--image", str(IMAGE), "--question", QUESTION, "--policy", "parvts",
                   "-p", "drop_layer=1", "--budget", "2", "--attention", "0-1", "--out", str(tmp_path / "figs"),
                   "--json", str(tmp_path / "show.json"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    from PIL import Image

    for name in ("partition", "kept", "flow", "fusion", "attention", "sheet"):
        with Image.open(tmp_path / "figs" / f"{name}.png") as png:
            png.load()
            assert np.asarray(png.convert("L")).std() > 0, f"{name}.png is blank"
    data = json.loads((tmp_path / "show.json").read_text())
    assert data["vtsched_show"] == 1 and data["num_layers"] == 2
    assert [r["stream"] for r in data["runs"]] == ["subject", "non_subject", "subject"]
    assert len(data["runs"][0]["visual"]) == 2 and len(data["runs"][1]["visual"]) == 2
    assert {a["layer"] for a in data["attention"]} == {0, 1}
    # bad input: one line, exit 2, nothing written
    for extra, phrase in ((["--attention", "2"], "numbered 0..1"), (["--attention", "one"], "give layers as numbers")):
        bad = run_cli("show", "--model", str(model), "--image", str(IMAGE), "--question", QUESTION,
                      "--out", str(tmp_path / "bad"), *extra, cwd=tmp_path)
        assert bad.returncode == 2 and phrase in bad.stderr and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
        assert not (tmp_path / "bad").exists()
    schedule = json.loads(run_cli("explain", "--model", str(model), "--policy", "prune", "--budget", "2", "--json",
                                  str(tmp_path / "s.json"), cwd=tmp_path).returncode == 0
                          and (tmp_path / "s.json").read_text())
    schedule["groups"] = ["subject", "objects", "background"]
    (tmp_path / "s3.json").write_text(json.dumps(schedule))
    bad = run_cli("show", "--model", str(model), "--image", str(IMAGE), "--question", QUESTION,
                  "--schedule", str(tmp_path / "s3.json"), "--out", str(tmp_path / "bad"), cwd=tmp_path)
    assert bad.returncode == 2 and "groups" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1, bad.stderr


@pytest.mark.parametrize("policy", ["dart", "sparsevlm"])
def test_policies_ranking_by_a_registered_ranker_show_too(schedulers, odd_image, policy):
    """The tracing engine keeps the scheduler's rankers (dart's and sparsevlm's come from the registry, not
    the engine's built-ins), and the tokens it draws in the survivor are the engine's own."""
    scheduler = schedulers["tiny"]  # LLaVA-1.5
    params = {"drop_layer": 1} if policy == "dart" else {}  # a drop the tiny model's layers run after
    result = show(scheduler, odd_image, QUESTION, policy, policy_params=params, budget="0.5")
    plan = scheduler.plan(scheduler.prepare([odd_image], [QUESTION]), scheduler.make_policy(policy, params), None,
                          Budget.parse("0.5"))
    last = [r for r in result.data["runs"] if r["stream"] == result.data["survivor"]][-1]
    assert last["visual"] == survivor_tokens(scheduler, odd_image, plan)
