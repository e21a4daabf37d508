"""The vtsched-lmms-eval plugin: registration, exact log-likelihoods, and lmms-eval end to end, offline.

The end-to-end test writes the procedural set as an on-disk dataset with two lmms-eval tasks, runs
the `lmms-eval` command on the shipped demo model under parvts, and requires its exact-match
accuracy to equal `vtsched eval`'s on the same samples.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

lmms_eval = pytest.importorskip("lmms_eval", reason="install the plugin: pip install -e plugins/vtsched-lmms-eval")
vtsched_lmms_eval = pytest.importorskip("vtsched_lmms_eval")

VENV_BIN = Path(sys.executable).parent
OFFLINE = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def test_registered_through_the_lmms_eval_entry_point_without_decord():
    from lmms_eval.models.registry_v2 import ModelRegistryV2

    models = ModelRegistryV2()
    models.load_entrypoint_manifests()
    cls = models.get_model_class("vtsched")
    assert cls.__name__ == "VtschedLMM" and cls.is_simple
    assert "decord" not in sys.modules  # lmms-eval's own llava_hf wrapper imports it; this plugin never does


class _Request:
    def __init__(self, args):
        self.args = args


@pytest.fixture(scope="module")
def demo_lmm():
    from vtsched_lmms_eval.model import VtschedLMM

    return VtschedLMM(pretrained="demo", policy="full", batch_size=3, no_plugins=True, log_path=os.devnull)


def test_loglikelihood_is_transformers_own(demo_lmm, tmp_path):
    """-log p(continuation | image, question) through the engine equals transformers' forward pass."""
    from vtsched.core.demo.synthetic import generate

    samples = list(generate(2, 1))[:3]
    docs = {i: {"image": s.image} for i, s in enumerate(samples)}
    demo_lmm.task_dict = {"t": {"test": docs}}
    continuations = [" " + samples[0].answer, " red", " top-left"]
    requests = [_Request((s.question, c, lambda d: [d["image"]], i, "t", "test"))
                for i, (s, c) in enumerate(zip(samples, continuations))]
    scores = [getattr(r, "text", r) for r in demo_lmm.loglikelihood(requests)]
    scheduler = demo_lmm.scheduler
    tokenizer = demo_lmm.tokenizer
    model = scheduler.adapter.model
    for (nll, greedy), s, c in zip(scores, samples, continuations):
        sample = scheduler.prepare([s.image], [s.question]).samples[0]
        tail = tokenizer(c, add_special_tokens=False)["input_ids"]
        ids = torch.cat((sample.input_ids, torch.tensor(tail)))[None]
        pixels = scheduler.adapter.processor.image_processor([s.image], return_tensors="pt")["pixel_values"]
        with torch.inference_mode():
            logits = model(input_ids=ids, pixel_values=pixels).logits[0].double()
        logprobs = torch.log_softmax(logits[sample.length - 1 : sample.length - 1 + len(tail)], -1)
        expected = -float(logprobs.gather(1, torch.tensor(tail)[:, None]).sum())
        assert nll == pytest.approx(expected, abs=1e-3)
        assert greedy == bool((logprobs.argmax(-1) == torch.tensor(tail)).all())
    assert scores[0][1] is True  # the demo model answers its own question


def test_lmms_eval_end_to_end_offline_equals_vtsched_eval(tmp_path):
    from vtsched.core.app import load_scheduler
    from vtsched.core.registry import build_registry, make_plugin_manager
    from vtsched.core.tools.bench import Case
    from vtsched.core.tools.evaluate import evaluate, load_items
    from vtsched_lmms_eval.tasks import write_tasks

    tasks = write_tasks(tmp_path / "tasks", "synthetic:4:2", name="synthetic")
    out = tmp_path / "out"
    env = dict(os.environ, **OFFLINE, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    command = [str(VENV_BIN / "vtsched-lmms-eval"), "--model", "vtsched",
               "--model_args", "pretrained=demo,policy=parvts,budget=7,drop_layer=2,fusion=size,no_plugins=true",
               "--tasks", "vtsched_synthetic,vtsched_synthetic_mc", "--include_path", str(tasks), "--batch_size", "4",
               "--device", "cpu", "--output_path", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=400, cwd=tmp_path)
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    results = json.loads(next(out.rglob("*_results.json")).read_text())["results"]
    exact = results["vtsched_synthetic"]["exact_match,none"]
    choice = results["vtsched_synthetic_mc"]["acc,none"]

    report = evaluate(load_scheduler(None, build_registry(make_plugin_manager(load_entrypoints=False))),
                      load_items(f"hf:{tasks / 'data'}:test"),
                      [Case("parvts", "7", (("drop_layer", "2"), ("fusion", "size")))], batch_size=4,
                      max_new_tokens=4, progress=False)
    accuracy = next(r["accuracy"] for r in report.rows() if r["case"] != "full" and r["split"] == "all")
    assert exact == pytest.approx(accuracy), (exact, accuracy)
    assert 0.0 <= choice <= 1.0

    logged = [json.loads(line) for line in (out / "vtsched_requests.jsonl").read_text().splitlines()]
    generated = [r for r in logged if r["kind"] == "generate_until"]
    # every stream counts (issue 21): parvts runs all 64 tokens through its 2 parallel layers, 7 through the other 4
    assert len(generated) == 14 and all(r["visual_tokens_per_layer"] == (2 * 64 + 4 * 7) / 6 for r in generated)
    assert all(r["visual_tokens_input"] == 64.0 and r["budget_counts"] == "input" and r["prefill_ms"] > 0
               for r in generated)
    assert all(r["prefill_gflops"] > 0 for r in logged)
    assert {r["kind"] for r in logged} == {"generate_until", "loglikelihood"}
    assert "vtsched generate_until: 14 requests under parvts" in done.stdout + done.stderr


def test_bad_model_args_fail_before_weights_load():
    from vtsched.core.errors import VtschedError
    from vtsched_lmms_eval.model import VtschedLMM

    with pytest.raises(VtschedError, match="has no parameter 'drop_layr'"):
        VtschedLMM(pretrained="demo", policy="parvts", budget=7, drop_layr=2, no_plugins=True)
    with pytest.raises(VtschedError, match="budget 999 exceeds"):
        VtschedLMM(pretrained="demo", policy="prune", budget=999, no_plugins=True)


def test_a_failed_evaluation_exits_non_zero_with_lmms_evals_reason(tmp_path):
    """lmms-eval 0.7.3 logs "Error during evaluation" and exits 0; vtsched-lmms-eval exits 1 and names it."""
    from vtsched_lmms_eval.tasks import write_tasks
    tasks = write_tasks(tmp_path / "tasks", "synthetic:4:1", name="synthetic")
    env = dict(os.environ, **OFFLINE, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    command = ["--model", "vtsched", "--model_args", "pretrained=demo,policy=nosuch,no_plugins=true",
               "--tasks", "vtsched_synthetic", "--include_path", str(tasks), "--device", "cpu",
               "--output_path", str(tmp_path / "out")]
    plain = subprocess.run([str(VENV_BIN / "lmms-eval"), *command], capture_output=True, text=True, env=env,
                           timeout=300, cwd=tmp_path)
    checked = subprocess.run([str(VENV_BIN / "vtsched-lmms-eval"), *command], capture_output=True, text=True,
                             env=env, timeout=300, cwd=tmp_path)
    assert plain.returncode == 0  # lmms-eval's own behaviour: the reason this command exists
    assert checked.returncode == 1, checked.stderr[-2000:]
    last = checked.stderr.strip().splitlines()[-1]
    assert last.startswith("vtsched-lmms-eval: lmms-eval exited 0 but wrote no results file under ")
    assert "Error during evaluation" in last and "nosuch" in last


def test_the_checked_command_needs_an_output_path(capsys):
    from vtsched_lmms_eval.run import logged_error, main, output_path

    assert main(["--model", "vtsched", "--tasks", "mme"]) == 2
    assert "give --output_path" in capsys.readouterr().err
    assert output_path(["--output_path=a/b"]) == output_path(["--output_path", "a/b"])
    assert logged_error(["x", "2026 | ERROR | Error during evaluation: boom. Please", "y"]) == \
        "Error during evaluation: boom. Please"
