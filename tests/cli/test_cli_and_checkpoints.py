"""The command line and checkpoint loading: real layouts, one-line errors, no half-written files."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch

from vtsched.core import InputError, Scheduler
from vtsched.core.cli import main
from vtsched.core.testing import TinyShape, random_image, tiny_llava

from tests.helpers import registry, run_logits, scheduler


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny LLaVA saved in the real checkpoint layout (config, safetensors, tokenizer, processor)."""
    path = tmp_path_factory.mktemp("ckpt") / "tiny-llava"
    model, processor = tiny_llava(TinyShape(layers=2, image_size=42), torch.float32)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "photo.png"
    random_image(11, 64, 48).save(path)
    return path


def test_checkpoint_round_trip_gives_the_same_logits(checkpoint):
    loaded = Scheduler.from_pretrained(str(checkpoint), registry=registry())
    original = scheduler(*tiny_llava(TinyShape(layers=2, image_size=42), torch.float32))
    batch = original.prepare([random_image(2)], ["what colour is the corner?"])
    for policy in ("full", "prune", "parvts"):
        params = {"drop_layer": 1} if policy == "parvts" else {}
        torch.testing.assert_close(run_logits(loaded, batch, policy, 3, **params),
                                   run_logits(original, batch, policy, 3, **params))
    assert {p.name for p in checkpoint.iterdir()} >= {"config.json", "model.safetensors", "tokenizer.json",
                                                      "processor_config.json"}


def test_cli_run_on_a_checkpoint_prints_answer_and_what_ran(checkpoint, image_file, tmp_path, capsys):
    out = tmp_path / "result.json"
    code = main(["run", "--model", str(checkpoint), "--image", str(image_file), "--question", "what is it?",
                 "--policy", "parvts", "-p", "drop_layer=1", "-p", "fusion=fixed", "-p", "alpha=0.7",
                 "--budget", "3", "--max-new-tokens", "4", "--json", str(out), "--no-plugins"])
    assert code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith("ran: policy parvts(drop_layer=1, fusion=fixed, alpha=0.7")
    assert "visual tokens/layer: 3.0 kept" in lines[-1] and "GFLOPs" in lines[-1] and "budget 3" in lines[-1]
    record = json.loads(out.read_text())
    assert record["budget"] == "3" and len(record["subject_tokens"]) == 3 and len(record["tokens"]) <= 4
    assert record["schedule"]["events"][0]["kind"] == "fuse"


def test_cli_run_without_model_uses_the_shipped_demo_model(tmp_path, capsys):
    from vtsched.core.demo.synthetic import render

    scene = {"shape": "square", "subject_colour": "blue", "position": "left", "background": "grey",
             "pattern": "plain", "mark_colour": "red", "corner": "top-right"}
    image, _ = render(scene)
    image.save(tmp_path / "scene.png")
    assert main(["run", "--image", str(tmp_path / "scene.png"), "--question", "What colour is the big shape?",
                 "--policy", "full", "--max-new-tokens", "3", "--no-plugins"]) == 0
    captured = capsys.readouterr()
    assert "random weights" not in captured.err
    assert captured.out.splitlines()[0] == "blue"


def test_schedule_file_runs_exactly(checkpoint, image_file, tmp_path, capsys):
    path = tmp_path / "s.json"
    assert main(["explain", "--model", str(checkpoint), "--policy", "parvts", "-p", "drop_layer=1",
                 "--budget", "3", "--json", str(path), "--no-plugins"]) == 0
    assert main(["run", "--model", str(checkpoint), "--image", str(image_file), "--question", "q?",
                 "--schedule", str(path), "--budget", "3", "--max-new-tokens", "2", "--no-plugins"]) == 0
    out = capsys.readouterr().out
    assert "policy parvts(drop_layer=1" in out and "budget 3" in out.splitlines()[-1]


@pytest.fixture(scope="module")
def not_a_llava(tmp_path_factory):
    from transformers import LlamaConfig

    path = tmp_path_factory.mktemp("llama")
    LlamaConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32).save_pretrained(path)
    return path


@pytest.mark.parametrize(
    "args,message",
    [
        (["--image", "{missing}"], "image not found"),
        (["--image", "{text_file}"], "not an image file"),
        (["--image", "{image}", "--budget", "abc"], "is not a token count"),
        (["--image", "{image}", "--budget", "999", "--model", "{ckpt}"], "exceeds the 9 visual tokens"),
        (["--image", "{image}", "--policy", "nope", "--model", "{ckpt}"], "unknown policy 'nope'"),
        (["--image", "{image}", "-p", "speed=11", "--model", "{ckpt}"], "parvts has no parameter 'speed'"),
        (["--image", "{image}", "-p", "drop_layer=9", "--model", "{ckpt}"], "drop_layer 9 outside 0..2"),
        (["--image", "{image}", "--model", "{llama}"], "is a 'llama' model, which no adapter reads"),
        (["--image", "{image}", "--model", "{nowhere}"], "cannot load"),
    ],
)
def test_cli_errors_are_one_line_and_exit_non_zero(args, message, checkpoint, image_file, not_a_llava, tmp_path,
                                                   capsys):
    text_file = tmp_path / "notes.png"
    text_file.write_text("not a picture")
    values = {"missing": tmp_path / "nope.png", "text_file": text_file, "image": image_file, "ckpt": checkpoint,
              "llama": not_a_llava, "nowhere": tmp_path / "no-such-checkpoint"}
    out = tmp_path / "result.json"
    argv = ["run", "--question", "q?", "--json", str(out), "--no-plugins", "--max-new-tokens", "1"]
    argv += [a.format(**{k: str(v) for k, v in values.items()}) for a in args]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vtsched: error: ") and message in err, err
    assert "\n" not in err and "Traceback" not in err
    assert not out.exists()  # never a half-written results file


def test_console_script_lists_components():
    exe = shutil.which("vtsched") or f"{sys.executable} -m vtsched.core.cli"
    result = subprocess.run(f"{exe} list", shell=True, capture_output=True, text=True, check=True)
    assert "parvts" in result.stdout and "[vtsched.policies]" in result.stdout and "cls" in result.stdout


def test_explain_prints_the_paper_setting(capsys):
    assert main(["explain", "--policy", "parvts", "--budget", "64", "-p", "drop_layer=2", "--no-plugins"]) == 0
    out = capsys.readouterr().out
    assert "32 layers, 576 visual tokens" in out and "88.9% pruned" in out and "@2   end non_subject" in out


def test_missing_processor_is_an_input_error():
    model, _ = tiny_llava(TinyShape())
    with pytest.raises(InputError, match="without a processor"):
        Scheduler(model, None, registry=registry()).prepare([random_image(0)], ["q"])


def test_llava_refuses_a_video_several_images_or_none_in_one_line():
    """The same prompt checks every family's adapter makes (ModelAdapter.check_prompts)."""
    import numpy as np

    s = scheduler(*tiny_llava(TinyShape()))
    image = random_image(0)
    for images, words in (([np.zeros((4, 28, 28, 3), dtype=np.uint8)], "video"),
                          ([[image, image]], "one image per prompt"), ([None], "no image")):
        with pytest.raises(InputError, match=words) as info:
            s.prepare(images, ["what?"])
        assert "\n" not in str(info.value)
