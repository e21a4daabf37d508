"""The video benchmark: rows for transformers' forward, full and each method on a short clip, ratios against
full, token counts the budget says, and the transformers row doing full's work (the same logits)."""

from __future__ import annotations

import torch
from vtsched.core.tools.video_bench import (
    DEFAULT_METHODS,
    format_video_table,
    run_video_bench,
)


def test_video_bench_rows_and_table():
    methods = tuple(m for m in DEFAULT_METHODS if m.label in ("prune/temporal", "framefusion@1"))
    rows = run_video_bench((4,), models=("qwen2.5-vl-tiny",), methods=methods, budget="25%", repeats=1)
    assert [r["method"] for r in rows] == ["transformers", "full", "prune/temporal", "framefusion@1"]
    by = {r["method"]: r for r in rows}
    tokens = by["full"]["visual_tokens"]
    assert tokens > 0 and all(r["visual_tokens"] == tokens and r["frames"] == 4 for r in rows)
    assert by["full"]["flops_ratio"] == 1.0 and by["full"]["time_ratio"] == 1.0
    assert by["transformers"]["gflops"] == by["full"]["gflops"]
    assert by["prune/temporal"]["visual_tokens_input"] == round(0.25 * tokens)
    assert by["prune/temporal"]["flops_ratio"] < 1.0 and by["framefusion@1"]["flops_ratio"] < 1.0
    assert all(r["ms"] > 0 and r["time_ratio"] > 0 for r in rows)
    table = format_video_table(rows)
    assert table.splitlines()[0].split()[:4] == ["model", "frames", "tokens", "method"]
    assert all(r["method"] in table for r in rows) and len(table.splitlines()) == 2 + len(rows)


def test_the_transformers_row_is_fulls_work():
    """The forward the transformers row times gives the engine's full logits on the same prepared clip."""
    import numpy as np
    from vtsched.core.demo.video import FPS, draw_clip, render_clip
    from vtsched.core.pixels.video import Video
    from vtsched.core.scheduler import Scheduler
    from vtsched.core.tools.video_bench import _transformers_run

    scheduler = Scheduler.random("qwen2-vl-tiny")
    clip = Video.from_frames(render_clip(draw_clip(np.random.default_rng(1), 6)), FPS)
    batch = scheduler.prepare([clip], ["what moves?"])
    plan = scheduler.plan(batch, scheduler.make_policy("full"), None, None)
    ours = scheduler.engine.prefill(batch, plan.schedule, plan.partition, use_cache=False)
    with torch.inference_mode():
        theirs = _transformers_run(scheduler, batch).call().logits[0, -1]
    torch.testing.assert_close(ours.logits[0].float(), theirs.float(), atol=1e-4, rtol=1e-4)
