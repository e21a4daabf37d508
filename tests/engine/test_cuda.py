"""GPU checks (skipped without CUDA): the same exactness on the device, in bf16 and fp32, with SDPA."""

from __future__ import annotations

import pytest
import torch

from vtsched.core import GenerationConfig, generate
from vtsched.core.demo.shapes import build_random_llava
from vtsched.core.testing import random_image

from tests.helpers import hf_inputs, plan, scheduler

pytestmark = pytest.mark.cuda


@pytest.mark.parametrize("dtype,atol", [(torch.float32, 1e-4), (torch.bfloat16, 6e-2)])
def test_full_matches_transformers_on_gpu(dtype, atol):
    model, processor = build_random_llava("llava-1.5-geometry", dtype=dtype, device="cuda")
    s = scheduler(model, processor)
    image, question = random_image(0, 336, 336), "what is in the top left corner?"
    batch = s.prepare([image], [question])
    pl = plan(s, batch, "full")
    ours = s.engine.prefill(batch, pl.schedule, pl.partition, use_cache=False).logits[0]
    inputs = {k: v.to("cuda") for k, v in hf_inputs(processor, image, question).items()}
    with torch.inference_mode():
        theirs = model(**inputs).logits[0, -1].float()
    torch.testing.assert_close(ours, theirs, atol=atol, rtol=0)


def test_parvts_batched_generation_on_gpu():
    model, processor = build_random_llava("llava-1.5-geometry", dtype=torch.bfloat16, device="cuda")
    s = scheduler(model, processor)
    images = [random_image(i, 336, 300) for i in range(3)]
    batch = s.prepare(images, ["what?", "what colour is the background?", "how many marks are there?"])
    pl = plan(s, batch, "parvts", 64, drop_layer=2)
    out = generate(s.engine, batch, pl.schedule, pl.partition, GenerationConfig(max_new_tokens=8))
    assert all(len(t) == 8 for t in out.tokens)
    assert out.prefill.logits.isfinite().all()


# every built-in that runs on the demo-shaped LLaVA, as the GPU bench runs it: a partitioner that
# computes on the CPU (visionzip's merge did) must hand the engine tensors it can place
CASES = [("prune", p) for p in ("cls", "random", "uniform", "downsample", "divprune", "cdpruner", "vispruner",
                                "visionzip")]
CASES += [(policy, None) for policy in ("parvts", "fastv", "dart", "pdrop", "sparsevlm", "visionzip",
                                        "subject-first", "non-subject-first")]


@pytest.mark.parametrize("policy,partitioner", CASES)
def test_every_builtin_prefills_on_gpu(policy, partitioner):
    model, processor = build_random_llava("llava-1.5-geometry", dtype=torch.bfloat16, device="cuda")
    s = scheduler(model, processor)
    batch = s.prepare([random_image(1, 336, 336), random_image(2, 300, 336)], ["what?", "what colour is it?"])
    pl = plan(s, batch, policy, 64, partitioner)
    logits = s.engine.prefill(batch, pl.schedule, pl.partition, use_cache=True).logits
    assert logits.device.type == "cuda" and logits.isfinite().all()
