"""Every policy on every family, from the Python API and the CLI; saved tiny checkpoints reload exactly."""

from __future__ import annotations

import pytest
import torch

from vtsched.core import Budget, GenerationConfig, Scheduler, generate
from vtsched.core.cli import main
from vtsched.core.events import KeepTop
from vtsched.core.testing import TinyShape, random_image, tiny_llava
from vtsched.core.testing.families import TinyNextShape, TinyQwenShape, tiny_llava_next, tiny_qwen

from tests.helpers import registry, scheduler

FAMILIES = {
    "llava": lambda dtype=torch.float32: tiny_llava(TinyShape(layers=4, image_size=42), dtype),
    "llava_next": lambda dtype=torch.float32: tiny_llava_next(TinyNextShape(layers=4), dtype),
    "qwen2_vl": lambda dtype=torch.float32: tiny_qwen(TinyQwenShape(version="2", layers=4), dtype),
    "qwen2_5_vl": lambda dtype=torch.float32: tiny_qwen(TinyQwenShape(version="2.5", layers=4, vision_layers=3), dtype),
}
# (policy, parameters, budget): a ratio, so images with different token counts in one batch each get their share
POLICIES = [
    ("full", {}, None),
    ("prune", {}, "50%"),
    ("parvts", {"drop_layer": 1, "fusion": "fixed", "alpha": 0.7}, "50%"),
    ("parvts", {"drop_layer": 2, "fusion": "size"}, "50%"),
    ("parvts", {"drop_layer": 1, "fusion": "attention", "fuse_tokens": "question"}, "50%"),
    ("subject-first", {"insert_layer": 2}, "50%"),
    ("non-subject-first", {"switch_layer": 2}, "50%"),
    ("fastv", {"drop_layer": 1}, "50%"),
    ("dart", {"drop_layer": 1}, "50%"),
    ("vtw", {"drop_layer": 2}, None),
    ("pdrop", {"layers": (1, 2, 3)}, "40%"),
    ("sparsevlm", {"layers": (0, 1, 2)}, "50%"),
    ("visionzip", {}, "50%"),
    ("search", {"base": "parvts", "threshold": 1.0}, "50%"),
]
IMAGES = [random_image(1, 100, 70), random_image(2, 45, 60)]
QUESTIONS = ["what colour is the small square?", "where is the big shape?"]


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request):
    model, processor = FAMILIES[request.param]()
    return request.param, scheduler(model, processor)


@pytest.mark.parametrize(("policy", "params", "budget"), POLICIES, ids=lambda v: v if isinstance(v, str) else "")
def test_every_policy_runs_on_every_family(family, policy, params, budget):
    name, s = family
    result = s.run(IMAGES, QUESTIONS, policy, budget=budget, policy_params=params,
                   generation=GenerationConfig(max_new_tokens=2))
    assert len(result.texts) == 2 and all(len(t) <= 2 for t in result.generated.tokens)
    counts = [sample.num_visual for sample in s.prepare(IMAGES, QUESTIONS).samples]
    kept = result.visual_per_layer_survivor
    if policy in ("prune", "visionzip"):  # the budget, per sample, is what ran in every layer
        assert kept.tolist() == [round(0.5 * n) for n in counts], (name, counts)
    if policy == "full":
        assert kept.tolist() == counts
    if policy == "pdrop":  # solved per sample: each one's own average is its budget (up to rounding)
        for k, n in zip(kept.tolist(), counts):
            assert abs(k - 0.4 * n) <= 1.0, (name, k, n)
    assert "visual tokens/layer" in result.summary()


def test_images_of_different_sizes_give_different_counts(family):
    name, s = family
    batch = s.prepare(IMAGES, QUESTIONS)
    if name == "llava":
        assert batch.num_visual[0] == batch.num_visual[1]  # a center crop: always the same grid
    else:
        assert batch.num_visual[0] != batch.num_visual[1]


def test_pdrop_with_a_count_budget_is_solved_per_sample(family):
    """A count budget gives each image its own stage ratio; the batch decodes like its samples alone."""
    name, s = family
    batch = s.prepare(IMAGES, QUESTIONS)
    budget = Budget(count=min(batch.num_visual) // 2)
    policy = s.make_policy("pdrop", {"layers": (1, 2, 3)})
    plan = s.plan(batch, policy, None, budget)
    keeps = [e.keep for e in plan.schedule.events if isinstance(e, KeepTop)]
    if batch.num_visual[0] != batch.num_visual[1]:
        assert all(isinstance(k, tuple) and k[0] != k[1] for k in keeps), keeps
    config = GenerationConfig(max_new_tokens=2)
    together = generate(s.engine, batch, plan.schedule, plan.partition, config, keep_logits=True)
    for b in range(len(batch)):
        one = batch.select([b])
        alone_plan = s.plan(one, policy, None, budget)
        alone = generate(s.engine, one, alone_plan.schedule, alone_plan.partition, config, keep_logits=True)
        assert alone.tokens[0] == together.tokens[b]
        torch.testing.assert_close(together.step_logits[0][b], alone.step_logits[0][0], atol=1e-4, rtol=1e-4)


@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "photo.png"
    random_image(11, 90, 64).save(path)
    return path


@pytest.mark.parametrize("name", [n for n in FAMILIES if n != "llava"])
def test_saved_checkpoint_reloads_and_runs_from_the_cli(name, tmp_path, image_file, capsys):
    model, processor = FAMILIES[name]()
    path = tmp_path / name
    model.save_pretrained(path)
    processor.save_pretrained(path)
    loaded = Scheduler.from_pretrained(str(path), registry=registry())
    assert loaded.adapter.name == name
    original = scheduler(model, processor)
    batch = original.prepare(IMAGES[:1], QUESTIONS[:1])
    for policy, params in (("full", {}), ("prune", {}), ("parvts", {"drop_layer": 1})):
        budget = None if policy == "full" else Budget(count=3)
        logits = []
        for s in (original, loaded):
            plan = s.plan(batch, s.make_policy(policy, params), None, budget)
            logits.append(s.engine.prefill(batch, plan.schedule, plan.partition, use_cache=False).logits)
        torch.testing.assert_close(logits[1], logits[0])
    code = main(["run", "--model", str(path), "--image", str(image_file), "--question", "what colour is it?",
                 "--policy", "parvts", "-p", "drop_layer=1", "--budget", "3", "--max-new-tokens", "3",
                 "--no-plugins"])
    assert code == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    default = "attention" if name.startswith("qwen") else "cls"
    assert last.startswith("ran: policy parvts(drop_layer=1") and f"partitioner {default}" in last
    assert "visual tokens/layer: 3.0 kept" in last


def test_explain_every_family_shape(capsys):
    for shape, words in (("llava-next-7b", "2928 visual tokens"), ("qwen2.5-vl-7b", "576 visual tokens"),
                         ("llava-next-cpu", "newline"), ("qwen2.5-vl-cpu", "merger")):
        assert main(["explain", "--shape", shape, "--policy", "parvts", "--budget", "64", "--no-plugins"]) == 0
        assert words in capsys.readouterr().out


def test_unsupported_model_type_names_the_supported_ones(tmp_path, capsys):
    from transformers import AutoConfig

    AutoConfig.for_model("bert", vocab_size=10, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=8).save_pretrained(tmp_path)
    assert main(["explain", "--model", str(tmp_path), "--no-plugins"]) == 2
    err = capsys.readouterr().err
    assert "qwen2_5_vl" in err and "llava_next" in err and "llava" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(("policy", "params"), [("parvts", {"drop_layer": 2}), ("parvts", {"drop_layer": 1, "fusion": "size"}),
                                                ("subject-first", {"insert_layer": 1}),
                                                ("non-subject-first", {"switch_layer": 2})])
def test_streams_split_into_one_call_each_equal_packed_streams(family, policy, params):
    """Long prompts run parallel streams one layer call each (``Engine.split_above``); the logits, the
    decoded tokens and the attention the fusion rule reads equal the packed layout's, and the kernel
    scores only each stream's own keys."""
    from vtsched.core.engine import Engine

    name, s = family
    model, processor = FAMILIES[name](torch.float64)
    packed = scheduler(model, processor)
    split = Engine(packed.adapter.decoder(), registry().fusion_rules(), split_above=0)
    batch = packed.prepare(IMAGES, QUESTIONS)
    plan = packed.plan(batch, packed.make_policy(policy, params), None, Budget.parse("40%"))
    config = GenerationConfig(max_new_tokens=3)
    a = generate(packed.engine, batch, plan.schedule, plan.partition, config, keep_logits=True)
    b = generate(split, batch, plan.schedule, plan.partition, config, keep_logits=True)
    assert a.tokens == b.tokens
    for x, y in zip(a.step_logits, b.step_logits):
        torch.testing.assert_close(y, x, atol=1e-6, rtol=0)
    parallel = [w for w in b.prefill.stats.work if w.stream != "subject" or w.end <= 1]
    assert all(torch.equal(w.packed_keys, w.keys) for w in parallel)
    assert b.prefill.stats.prefix is None  # split streams carry the text prefix themselves


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Each family's tiny model saved in its real checkpoint layout."""
    root = tmp_path_factory.mktemp("families")
    paths = {}
    for name, build in FAMILIES.items():
        model, processor = build()
        model.save_pretrained(root / name)
        processor.save_pretrained(root / name)
        paths[name] = root / name
    return paths


CLI_POLICIES = [
    ["--policy", "full"], ["--policy", "prune", "--budget", "40%"],
    ["--policy", "parvts", "-p", "drop_layer=1", "-p", "fusion=fixed", "-p", "alpha=0.7", "--budget", "40%"],
    ["--policy", "subject-first", "-p", "insert_layer=2", "--budget", "40%"],
    ["--policy", "non-subject-first", "-p", "switch_layer=2", "--budget", "40%"],
    ["--policy", "fastv", "-p", "drop_layer=1", "--budget", "40%"], ["--policy", "vtw", "-p", "drop_layer=2"],
    ["--policy", "pdrop", "-p", "layers=1/2/3", "--budget", "40%"], ["--policy", "visionzip", "--budget", "40%"],
    ["--policy", "search", "-p", "threshold=1.0", "--budget", "40%"],
]


@pytest.mark.parametrize("name", list(FAMILIES))
def test_every_policy_from_the_cli(name, checkpoints, image_file, capsys):
    for args in CLI_POLICIES:
        code = main(["run", "--model", str(checkpoints[name]), "--image", str(image_file), "--question",
                     "what colour is the small square?", *args, "--max-new-tokens", "2", "--no-plugins"])
        last = capsys.readouterr().out.strip().splitlines()[-1]
        assert code == 0 and last.startswith("ran: policy "), (name, args, last)


# the 2026 pre-LLM selections (issue 21) and the random reference, on every family
PRE_LLM = ("divprune", "cdpruner", "vispruner", "downsample", "random")


@pytest.mark.parametrize("name", PRE_LLM)
def test_every_pre_llm_partitioner_keeps_exactly_its_budget_on_every_family(family, name):
    """Each partitioner passes the kit's partition check on a batch the family's adapter prepared, and
    ``prune`` on it runs exactly the budget's tokens per sample (images of different token counts)."""
    from vtsched.core.testing import PartitionerConformance

    family_name, s = family
    batch = s.prepare(IMAGES, QUESTIONS)
    budget = Budget.parse("40%")
    partitioner = s.make_partitioner(name)
    kit = type("Kit", (PartitionerConformance,), {"partitioner_class": type(partitioner)})()
    kit.check_partition(batch, budget, partitioner.partition(batch, budget))
    result = s.run(IMAGES, QUESTIONS, "prune", partitioner=name, budget=budget,
                   generation=GenerationConfig(max_new_tokens=1))
    counts = [sample.num_visual for sample in batch.samples]
    assert result.visual_per_layer_survivor.tolist() == [round(0.4 * n) for n in counts], (family_name, counts)
