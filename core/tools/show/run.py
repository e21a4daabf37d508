"""Running one image and question under a policy with a tracing engine: :func:`show` returns the
:class:`~vtsched.core.tools.show.data.Show` of it; the ``--attention`` layers are read and checked here."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from vtsched.core.errors import InputError
from vtsched.core.tools.show.data import Show
from vtsched.core.tools.show.on_image import image_views

__all__ = ["check_attention_layers", "parse_layers", "show"]


def check_attention_layers(layers: Sequence[int], num_layers: int) -> tuple[int, ...]:
    """The layers ``--attention`` names, sorted and unique; one line for a layer the model lacks."""
    wrong = sorted({int(layer) for layer in layers if not 0 <= int(layer) < num_layers})
    if wrong:
        raise InputError(f"--attention {','.join(map(str, wrong))}: the model has {num_layers} decoder layers, "
                         f"numbered 0..{num_layers - 1}")
    return tuple(sorted({int(layer) for layer in layers}))


def parse_layers(text: str) -> tuple[int, ...]:
    """``"0,2,5-7"`` -> ``(0, 2, 5, 6, 7)``; anything else is one line."""
    out: list[int] = []
    try:
        for part in text.split(","):
            lo, _, hi = part.strip().partition("-")
            out.extend(range(int(lo), int(hi) + 1) if hi else [int(lo)])
    except ValueError:
        raise InputError(f"--attention {text!r}: give layers as numbers, e.g. 0,2,5-7") from None
    return tuple(out)


def show(
    scheduler: Any,
    image: Any,
    question: str,
    policy: Any = "parvts",
    *,
    partitioner: Any = None,
    budget: Any = None,
    policy_params: Mapping[str, Any] | None = None,
    partitioner_params: Mapping[str, Any] | None = None,
    attention_layers: Sequence[int] = (),
    generation: Any = None,
) -> Show:
    """Run ``question`` about ``image`` under ``policy`` on ``scheduler``'s model, recording which tokens ran where.

    ``policy`` and ``partitioner`` are names (with ``policy_params`` / ``partitioner_params``) or
    objects; ``budget`` anything :meth:`~vtsched.core.budget.Budget.parse` reads. ``attention_layers``:
    the layers at which to read each live stream's last prompt token's attention over the image.
    Returns a :class:`Show`; ``show(...).figures`` are matplotlib figures.
    """
    from vtsched.core.budget import Budget
    from vtsched.core.generation import GenerationConfig
    from vtsched.core.io import to_rgb
    from vtsched.core.tools.trace import TracingEngine

    layers = check_attention_layers(attention_layers, scheduler.adapter.geometry.num_layers)
    batch = scheduler.prepare([image], [question])
    sample = batch.samples[0]
    views = image_views(sample)
    policy_obj = scheduler.make_policy(policy, policy_params) if isinstance(policy, str) else policy
    part = (scheduler.make_partitioner(partitioner, partitioner_params) if isinstance(partitioner, str)
            else partitioner)
    plan = scheduler.plan(batch, policy_obj, part, Budget.parse(budget) if budget is not None else None)
    engine = TracingEngine(scheduler.engine, layers)
    result = scheduler.answer(batch, plan, generation or GenerationConfig(max_new_tokens=12), engine=engine)
    stats = result.generated.prefill.stats
    schedule, partition = plan.schedule, plan.partition
    shown_image = sample.image if sample.image is not None else image
    rgb = np.asarray(to_rgb(shown_image))
    fusions = []
    for (layer, streams, weights), event in zip(stats.fusions, [e for e in schedule.events if e.kind == "fuse"]):
        positions = _fused_positions(sample, event.tokens)
        labels = [scheduler.adapter.decode_text([int(sample.input_ids[p])]) for p in positions]
        fusions.append({"layer": layer, "streams": list(streams), "into": event.into, "rule": event.rule,
                        "tokens": labels, "weights": weights[:, 0, : len(positions)].double().tolist()})
    data = {
        "vtsched_show": 1,
        "question": question,
        "answer": result.texts[0],
        "policy": dict(schedule.meta).get("policy") or plan.policy.describe(),
        "partitioner": plan.partitioner.describe() if plan.partitioner is not None else None,
        "budget": str(plan.budget) if plan.budget is not None else None,
        "num_layers": schedule.num_layers,
        "survivor": schedule.survivor,
        "streams": list(schedule.stream_names),
        "schedule": schedule.to_dict(),
        "image_size": list(sample.pixel_boxes.image_size),
        "groups": list(partition.groups),
        "token_group": partition.assignment[0].tolist(),
        "token_boxes": [None if bool(torch.isnan(b).any()) else b.tolist() for b in sample.pixel_boxes.boxes],
        "views": [{"name": name, "tokens": tokens} for name, tokens in views],
        "runs": [{"start": r.start, "end": r.end, "stream": r.stream, "visual": list(r.visual),
                  "carried": r.carried} for r in stats.tokens[0]],
        "events": [{"layer": e.layer, "event": e.describe()} for e in schedule.events],
        "fusions": fusions,
        "attention": [{"layer": a.layer, "stream": a.stream, "visual": a.visual.tolist(), "total": a.total}
                      for a in engine.attention[0]],
        "prefill_gflops": float(result.flops[0]) / 1e9,
        "visual_tokens_per_layer": float(result.visual_per_layer[0]),  # every stream: the equivalent tokens
        "visual_tokens_per_layer_survivor": float(result.visual_per_layer_survivor[0]),  # the plot's surviving stream
    }
    return Show(data, rgb, sample.pixel_boxes)


def _fused_positions(sample: Any, tokens: str) -> list[int]:
    """Positions of the text tokens a ``fuse`` of kind ``tokens`` merges, in order (as the engine picks them)."""
    from vtsched.core.tokens import Role

    roles = sample.roles
    if tokens == "last":
        return [sample.length - 1]
    return torch.nonzero(torch.isin(roles, torch.tensor(Role.FUSED[tokens]))).flatten().tolist()
