"""Segmentation datasets inside ``vtsched eval``: the ``segmentation`` evaluator.

``vtsched eval`` hands this plugin the datasets written ``segmentation:SPEC``
(``segmentation:synthetic:1:20``, ``segmentation:reason_seg/val``) and those it recognises by
their layout without the prefix: a JSONL file (or a folder holding ``data.jsonl``) whose records
have ``mask`` and ``question`` but no ``answer``, and a ReasonSeg folder (``NAME.json`` beside
``NAME.jpg``, no ``data.jsonl``). See :mod:`vtsched_lisa.data` for the formats.

The model is ``--model`` (a LISA checkpoint folder; CLIP from ``MODEL/clip`` or the config's
``mm_vision_tower`` folder; float32) or, without it, the demo LISA. This is the one command-line
entry point for segmentation evaluation; a LISA loaded another way (bfloat16, CLIP elsewhere) is
evaluated from Python with :mod:`vtsched_lisa.evaluation`. Every item runs teacher-forced under
``full`` and each case; a row per case gives gIoU and cIoU, overall and per tag, the LLM prefill
time, SAM's encoder time (with how many embeddings were computed rather than reused) and SAM's
mask decoder time, apart, with visual tokens per layer and prefill GFLOPs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

from vtsched.core.errors import InputError
from vtsched.core.evaluators import EvalOutcome, EvalRequest, Evaluator

__all__ = ["SegmentationEvaluator", "looks_like_segmentation"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def looks_like_segmentation(data: str) -> bool:
    """Whether ``data`` is a segmentation JSONL (records with ``mask`` and ``question``, no
    ``answer``) or a ReasonSeg folder; cheap checks on the first record or file only."""
    path = Path(data)
    try:
        if path.is_dir() and not (path / "data.jsonl").is_file():
            return any(p.with_suffix(s).is_file() for p in path.glob("*.json") for s in IMAGE_SUFFIXES)
        if path.is_dir():
            path = path / "data.jsonl"
        if not path.is_file() or path.suffix != ".jsonl":
            return False
        with path.open() as handle:
            for line in handle:
                if line.strip():
                    record = json.loads(line)
                    return isinstance(record, dict) and "mask" in record and "question" in record \
                        and "answer" not in record
    except (OSError, ValueError):
        return False
    return False


class SegmentationEvaluator(Evaluator):
    """LISA's masks scored by gIoU and cIoU (JSONL image + mask, ReasonSeg, synthetic:SEED:IMAGES)."""

    name: ClassVar[str] = "segmentation"
    help: ClassVar[str] = "LISA's masks scored by gIoU and cIoU, teacher-forced; LLM prefill and SAM times apart"
    score: ClassVar[str | None] = "giou"  # what a sweep's table and plots show as its accuracy

    @classmethod
    def accepts(cls, data: str) -> bool:
        return looks_like_segmentation(data)

    @classmethod
    def evaluate(cls, request: EvalRequest) -> EvalOutcome:
        from vtsched_lisa.data import load_seg_items
        from vtsched_lisa.demo_lisa import demo_lisa_path
        from vtsched_lisa.evaluation import evaluate_segmentation, format_table, segmentation_cases
        from vtsched_lisa.partitioner import load_segmenter

        if not request.data:
            raise InputError("--data segmentation: needs a dataset after the colon (a JSONL file, a ReasonSeg folder "
                             "or synthetic:SEED:IMAGES)")
        items = load_seg_items(request.data, request.limit)
        path = request.model or demo_lisa_path()
        if path is None:
            raise InputError("no --model given and no demo LISA is shipped; pass --model FOLDER, a LISA checkpoint")
        # the lisa partitioner, if this run uses one, finds the same model loaded
        scheduler = load_segmenter(str(path), None, request.device, request.registry).scheduler
        cases = segmentation_cases(scheduler, request.policies, request.budgets, request.partitioners)
        report = evaluate_segmentation(scheduler, items, cases, progress=request.progress)
        return EvalOutcome(rows=report["rows"], table=format_table(report["rows"]), records=report["items"],
                           model=str(request.model or "demo LISA"))
