"""The video benchmark: each method against ``full`` on clips of 8, 16 and 32 frames, FLOPs and CPU prefill time.

For every model shape (the tiny Qwen2-VL and Qwen2.5-VL by default, random weights) and frame count, one
clip of the procedural video set (:mod:`vtsched.core.demo.video`: a moving shape, a one-frame flash, a
background change) is prepared once (the vision tower is outside every measurement), then every method is
timed side by side in one run: each round times every method of every model and frame count in turn,
and the rounds repeat, so a burst of other work on a shared machine lands on one round of everything
rather than on one method or one block. Each method's time is its fastest run (``ms``; interference from other
work on the machine only adds time, as ``timeit`` reasons), and its median is kept too (``median_ms``).
Rows:

- ``transformers``: the model's own forward (``model(inputs_embeds=..., position_ids=...)``, the language
  model and head on the prepared prompt), the reference the engine's ``full`` is held equal to;
- ``full`` and every method: planning (the partitioner's call included) and the engine's prefill.

FLOPs are the engine's accounting of what ran (:mod:`vtsched.core.cost`: the decoder's FLOPs plus the
method's declared scoring; held equal to ``torch.utils.flop_counter`` on eager models by the cost tests);
the ``transformers`` row does the same work as ``full``. Ratios are against ``full`` of the same model and
frame count.

``vtsched bench --video [--frames 8 16 32] [--repeats 15] [--budgets 25%]`` prints the table.
Python: :func:`run_video_bench` returns the rows, :func:`format_video_table` prints them.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT_METHODS", "VideoMethod", "format_video_table", "run_video_bench"]


@dataclass(frozen=True)
class VideoMethod:
    """A row of the benchmark: ``label``, the policy and its parameters, the partitioner (if any)."""

    label: str
    policy: str
    params: tuple[tuple[str, Any], ...] = ()
    partitioner: str | None = None


DEFAULT_METHODS: tuple[VideoMethod, ...] = (
    VideoMethod("full", "full"),
    VideoMethod("prune/temporal", "prune", (), "temporal"),
    VideoMethod("prune/vidcom2", "prune", (), "vidcom2"),
    VideoMethod("fastv@1", "fastv", (("drop_layer", 1),)),
    VideoMethod("dart@1", "dart", (("drop_layer", 1),)),
    VideoMethod("parvts@1/temporal", "parvts", (("drop_layer", 1),), "temporal"),
    VideoMethod("framefusion@1", "framefusion", (("merge_layers", 1), ("drop_layer", 1))),
)
"""The tiny shapes have 2 layers: every in-LLM method drops after layer 1 (its own default, 2, is the end)."""

TRANSFORMERS = "transformers"


def run_video_bench(frames: Sequence[int] = (8, 16, 32), *,
                    models: Sequence[str] = ("qwen2-vl-tiny", "qwen2.5-vl-tiny"),
                    methods: Sequence[VideoMethod] = DEFAULT_METHODS, budget: str = "25%", repeats: int = 15,
                    seed: int = 0, progress: bool = False) -> list[dict[str, Any]]:
    """Measure every method against ``full`` on each model shape and frame count; one row per
    (model, frames, method), the ``transformers`` forward first, then ``full``, then ``methods``.

    Args:
        frames: clip lengths (sampled frames; the models embed two frames per temporal step).
        models: checkpoint folders, or named random-weight shapes (:mod:`vtsched.core.shapes`), of a
            family that takes video.
        methods: what to measure (``full`` is added first if missing).
        budget: the budget every method but ``full`` gets (a count, ratio or percentage).
        repeats: timed runs per method (after one untimed warm-up round), interleaved across methods.
        seed: the clip drawn (the same clip content at every frame count).

    Row keys: ``model``, ``frames``, ``visual_tokens`` (the clip's visual tokens), ``method``, ``budget``,
    ``visual_tokens_input``, ``visual_tokens_per_layer``, ``gflops``, ``flops_ratio``, ``ms`` (the fastest
    run), ``median_ms``, ``time_ratio`` (of the fastest runs), ``repeats``.
    """
    import numpy as np
    import torch
    from vtsched.core.budget import Budget
    from vtsched.core.cost import plan_costs
    from vtsched.core.demo.video import FPS, draw_clip, render_clip
    from vtsched.core.pixels.video import Video
    from vtsched.core.scheduler import Scheduler

    if repeats < 1:
        raise ValueError("repeats must be at least 1")
    chosen = list(methods) if any(m.policy == "full" and not m.partitioner for m in methods) \
        else [VideoMethod("full", "full"), *methods]
    blocks = []  # (model, frames, geometry, batch, runs): everything is built before anything is timed
    for name in models:  # a saved checkpoint's folder, or a named random shape
        scheduler = Scheduler.from_pretrained(name) if Path(name).is_dir() else Scheduler.random(name)
        for count in frames:
            clip = Video.from_frames(render_clip(draw_clip(np.random.default_rng([seed, count]), count)), FPS)
            batch = scheduler.prepare([clip], ["Which way does the big shape move: left, right, up or down?"])
            runs = [_transformers_run(scheduler, batch)]
            for method in chosen:
                policy = scheduler.make_policy(method.policy, dict(method.params))
                partitioner = scheduler.make_partitioner(method.partitioner) if method.partitioner else None
                runs.append(_engine_run(scheduler, batch, method.label, policy, partitioner,
                                        None if method.policy == "full" else Budget.parse(budget)))
            blocks.append((name, count, scheduler.adapter.geometry, batch, runs))
    times: dict[tuple[int, str], list[float]] = {(i, run.label): [] for i, block in enumerate(blocks) for run in block[4]}
    with torch.inference_mode():
        for round_ in range(repeats + 1):  # round 0 warms up; each round visits every block, so a burst of
            for i, (*_, runs) in enumerate(blocks):  # other work lands on one round of each, not on one block
                for run in runs:
                    start = time.perf_counter()
                    run.call()
                    if round_:
                        times[(i, run.label)].append(time.perf_counter() - start)
            if progress and round_:
                print(f"video bench: round {round_} of {repeats} done", flush=True)
    rows: list[dict[str, Any]] = []
    for i, (name, count, geometry, batch, runs) in enumerate(blocks):
        reference = runs[1]  # full
        base_ms = 1e3 * min(times[(i, reference.label)])
        with torch.inference_mode():
            full_costs = plan_costs(reference.plan, reference.call().stats, geometry).row(0)
            for run in runs:
                costs = full_costs if run.plan is None else plan_costs(run.plan, run.call().stats, geometry).row(0)
                ms = 1e3 * min(times[(i, run.label)])
                rows.append({
                    "model": name, "frames": count, "visual_tokens": batch.num_visual[0], "method": run.label,
                    "budget": "-" if run.label in (TRANSFORMERS, "full") else budget,
                    "visual_tokens_input": costs["visual_tokens_input"],
                    "visual_tokens_per_layer": costs["visual_tokens_per_layer"],
                    "gflops": costs["prefill_gflops"], "flops_ratio": costs["prefill_gflops"] / full_costs["prefill_gflops"],
                    "ms": ms, "median_ms": 1e3 * statistics.median(times[(i, run.label)]), "time_ratio": ms / base_ms,
                    "repeats": repeats,
                })
    return rows


@dataclass
class _Run:
    label: str
    call: Any  # () -> the prefill's result (with .stats for engine runs)
    plan: Any = None


def _engine_run(scheduler: Any, batch: Any, label: str, policy: Any, partitioner: Any, budget: Any) -> _Run:
    """Planning (the partitioner's call) and the prefill, as one timed call."""
    plan = scheduler.plan(batch, policy, partitioner, budget)

    def call() -> Any:
        planned = scheduler.plan(batch, policy, partitioner, budget)
        return scheduler.engine.prefill(batch, planned.schedule, planned.partition, use_cache=False)

    return _Run(label, call, plan)


def _transformers_run(scheduler: Any, batch: Any) -> _Run:
    """transformers' own forward of the language model and head on the prepared prompt (visual features in
    place, the sample's M-RoPE ids), no cache: the work ``full`` does."""
    import torch

    model, sample = scheduler.adapter.model, batch.samples[0]
    device = next(model.parameters()).device
    with torch.inference_mode():
        embeds = model.get_input_embeddings()(sample.input_ids[None].to(device))
        embeds[0, sample.visual_positions.to(device)] = sample.visual_features.to(device, embeds.dtype)
    rope = sample.rope_positions
    ids = (torch.arange(embeds.shape[1])[None] if rope is None else rope[:, None] if rope.dim() == 2 else rope[None])
    ids = ids.to(embeds.device)

    def call() -> Any:
        return model(inputs_embeds=embeds, position_ids=ids, use_cache=False, logits_to_keep=1)

    return _Run(TRANSFORMERS, call)


def format_video_table(rows: Sequence[dict[str, Any]]) -> str:
    """The rows of :func:`run_video_bench` as a text table, one block per model and frame count."""
    header = (f"{'model':<16s} {'frames':>6s} {'tokens':>6s} {'method':<20s} {'budget':>6s} {'vis in':>7s} "
              f"{'vis/layer':>9s} {'GFLOPs':>8s} {'FLOPs x':>7s} {'ms':>8s} {'time x':>7s}")
    lines = [header, "-" * len(header)]
    previous = None
    for r in rows:
        block = (r["model"], r["frames"])
        if previous is not None and block != previous:
            lines.append("")
        previous = block
        lines.append(f"{r['model']:<16s} {r['frames']:>6d} {r['visual_tokens']:>6d} {r['method']:<20s} "
                     f"{r['budget']:>6s} {r['visual_tokens_input']:>7.1f} {r['visual_tokens_per_layer']:>9.1f} "
                     f"{r['gflops']:>8.4f} {r['flops_ratio']:>7.3f} {r['ms']:>8.2f} {r['time_ratio']:>7.3f}")
    return "\n".join(lines)
