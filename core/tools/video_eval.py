"""The ``video`` evaluator: ``vtsched eval --data video:SEED:CLIPS[:FRAMES]`` on the procedural video QA set.

The clips and their questions come from :mod:`vtsched.core.demo.video`; this module hands them to the
question-answering evaluation (:func:`vtsched.core.tools.evaluate.evaluate`: accuracy, agreement with
``full``, KL, the cost columns) on a model whose family takes video, and registers the evaluator through
``vtsched_register_evaluators`` (listed with core's built-in plugin modules), so ``vtsched eval`` and a
sweep's ``datasets`` find it as they find a plugin's.
"""

from __future__ import annotations

from typing import Any, ClassVar

from vtsched.core.evaluators import EvalOutcome, EvalRequest, Evaluator
from vtsched.core.hookspecs import hookimpl

__all__ = ["VideoQAEvaluator", "load_items"]


def load_items(spec: str, limit: int | None = None) -> list[Any]:
    """The evaluation's items (``vtsched.core.tools.evaluate.EvalItem``, the clip as a ``Video``) for ``spec``."""
    from vtsched.core.tools.evaluate import EvalItem

    from vtsched.core.demo.video import generate, parse_spec

    seed, clips, frames = parse_spec(spec)
    items = [EvalItem(s.id, s.video, s.question, s.answer, s.tag, s.type) for s in generate(seed, clips, frames=frames)]
    return items[:limit] if limit is not None else items


class VideoQAEvaluator(Evaluator):
    """``--data video:SEED:CLIPS[:FRAMES]``: the procedural clips, answered and scored as ``vtsched eval`` scores
    questions (accuracy, agreement with ``full``, KL, the cost columns), on a family that takes video."""

    name: ClassVar[str] = "video"
    help: ClassVar[str] = ("procedural video QA, video:SEED:CLIPS[:FRAMES]: a moving shape, a square in one frame, "
                           "a background that changes once (Qwen2-VL / Qwen2.5-VL)")
    score: ClassVar[str | None] = "accuracy"

    @classmethod
    def evaluate(cls, request: EvalRequest) -> EvalOutcome:
        from vtsched.core.errors import InputError
        from vtsched.core.io import read_config
        from vtsched.core.registry import build_registry
        from vtsched.core.scheduler import Scheduler
        from vtsched.core.tools.bench import expand_cases
        from vtsched.core.tools.evaluate import cross_partitioners, evaluate

        items = load_items(request.data, request.limit)  # a malformed spec fails before any model is read
        if request.model is None:
            raise InputError("--data video: needs --model, a Qwen2-VL or Qwen2.5-VL checkpoint (no demo video model "
                             "is shipped)")
        registry = request.registry or build_registry()
        adapter = registry.adapter_for_config(read_config(request.model))
        if not getattr(adapter, "takes_video", False):
            raise InputError(f"--data video: {request.model} is a {adapter.name} model, which takes still images only "
                             "(video: the qwen2_vl and qwen2_5_vl families)")
        scheduler = Scheduler.from_pretrained(request.model, device=request.device, registry=registry)
        cases = expand_cases(scheduler.planner, list(request.policies), list(request.budgets), keep_full=False)
        if request.partitioners:
            cases = cross_partitioners(scheduler.planner, cases, list(request.partitioners))
        report = evaluate(scheduler, items, cases, batch_size=request.batch_size, progress=request.progress)
        return EvalOutcome(rows=report.rows(), table=report.table(),
                           records=[dict(p.__dict__) for p in report.predictions], model=str(request.model))


@hookimpl
def vtsched_register_evaluators(register):
    register(VideoQAEvaluator)
