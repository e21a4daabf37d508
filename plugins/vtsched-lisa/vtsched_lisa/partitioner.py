"""``lisa``: the subject is the object the question is about, as LISA segments it.

For each sample, LISA (run in full, teacher-forced with ``"[SEG]."`` as LISA evaluates) is asked
``prompt`` (default ``"{question} Please output segmentation mask."``) about the sample's image;
its mask, at the original image size, goes through the shared pixel-to-token mapping
(:mod:`vtsched.core.pixels`: the adapter's pixel boxes, exactly R subject tokens by coverage, ties
and shortfall by the model's token score). So it works for any model family whose adapter gives
pixel boxes, and unlike [CLS] attention it depends on the question.

The question is the sample's own (``Sample.extras["question"]``, which
:meth:`~vtsched.core.scheduler.Scheduler.prepare` records), else the ``question`` parameter; with
neither, one line says so. The partition records the prompts it used
(:attr:`LisaPartition.prompts`). Masks are cached by LISA checkpoint, image content and prompt
(the segment-anything plugin's :class:`~vtsched_segment_anything.cache.MaskCache`, in memory and
under ``cache_dir``), so a sweep asks LISA once per image and question. ``spent_flops()`` counts
what LISA ran for this partitioner (CLIP, the LLM prefill, SAM's encoder and decoder; measured by
torch's ``FlopCounterMode`` on every cache miss, cache hits cost nothing), which ``vtsched eval``
reports beside the partitioner's time: a question-conditioned partition costs a whole LISA pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from vtsched.core.budget import Budget
from vtsched.core.errors import InputError
from vtsched.core.partition import Partition
from vtsched.core.pixels import check_mask_inputs, image_digest, partition_from_masks
from vtsched.core.policy import Partitioner
from vtsched.core.tokens import PromptBatch

from vtsched_segment_anything.cache import MaskCache, cache_key

__all__ = ["LisaPartitioner", "LisaPartition", "MASKS", "load_segmenter", "clear_caches"]

MASKS = MaskCache()
DEFAULT_PROMPT = "{question} Please output segmentation mask."


@dataclass(frozen=True)
class LisaPartition(Partition):
    """A partition that records, per sample, the prompt LISA was asked."""

    prompts: tuple[str, ...] = ()


@dataclass(frozen=True)
class LisaPartitioner(Partitioner):
    """Subject = the R tokens LISA's mask for the question's object covers most; ties by token score."""

    name: ClassVar[str] = "lisa"

    model: str = ""
    clip: str = ""
    prompt: str = DEFAULT_PROMPT
    question: str = ""
    device: str = "cpu"
    cache_dir: str = ""

    def __post_init__(self) -> None:
        if "{question}" not in self.prompt:
            raise InputError(f"lisa: prompt={self.prompt!r} has no {{question}}")
        if self.model and not Path(self.model).is_dir():
            raise InputError(f"lisa: model={self.model!r} is not a LISA checkpoint folder")
        object.__setattr__(self, "_spent", [0.0])  # FLOPs LISA spent for this instance (not a parameter)

    def spent_flops(self) -> float:
        """FLOPs LISA has run for this partitioner so far (cache hits: 0)."""
        return float(self._spent[0])  # type: ignore[attr-defined]

    def partition(self, batch: PromptBatch, budget: Budget) -> LisaPartition:
        path = self._model_path()
        segmenter, fingerprint = _loaded(path, self.clip or None, self.device)
        model_key = cache_key(fingerprint, self.clip)
        keeps = [budget.resolve(s.num_visual) for s in batch.samples]
        masks, prompts = [], []
        for b, sample in enumerate(batch.samples):
            check_mask_inputs(b, sample, "lisa")
            question = sample.extras.get("question") or self.question
            if not question:
                raise InputError(f"lisa: sample {b} carries no question (Sample.extras['question']); pass "
                                 "question=TEXT (--partitioner-param question=...)")
            text = self.prompt.replace("{question}", str(question))
            key = cache_key(model_key, image_digest(sample.image), text)
            hit = MASKS.get(key, self.cache_dir)
            if hit is None:
                from torch.utils.flop_counter import FlopCounterMode

                with FlopCounterMode(display=False) as counter:
                    mask = segmenter.segment([sample.image], [text], "full")[0].mask
                self._spent[0] += float(counter.get_total_flops())  # type: ignore[attr-defined]
                MASKS.put(key, mask[None], np.ones(1, dtype=np.float32), self.cache_dir)
            else:
                mask = hit[0][0]
            masks.append(torch.from_numpy(np.asarray(mask, dtype=np.float64)))
            prompts.append(text)
        base = partition_from_masks(batch.samples, keeps, masks, None, self.group_names())
        return LisaPartition(base.groups, base.assignment, base.scores, base.features, tuple(prompts))

    def _model_path(self) -> str:
        if self.model:
            return self.model
        from vtsched_lisa.demo_lisa import demo_lisa_path

        demo = demo_lisa_path()
        if demo is None:
            raise InputError("lisa: no model given and no demo LISA is shipped; pass model=FOLDER "
                             "(--partitioner-param model=PATH, a LISA checkpoint folder)")
        return str(demo)


_SEGMENTERS: dict[tuple[str, str | None, str], tuple[Any, str]] = {}


def load_segmenter(path: str, clip: str | None = None, device: str = "cpu", registry: Any = None) -> Any:
    """A :class:`~vtsched_lisa.segment.LisaSegmenter` for a LISA folder, loaded once per process: the
    segmentation evaluator and the ``lisa`` partitioner of the same run share one model (``registry``:
    the scheduler's, used when the model is loaded here)."""
    return _loaded(path, clip, device, registry)[0]


def _loaded(path: str, clip: str | None, device: str, registry: Any = None) -> tuple[Any, str]:
    """The segmenter and the fingerprint of the weights it loaded (read once, with the weights)."""
    key = (str(Path(path).resolve()), clip, device)
    if key not in _SEGMENTERS:
        from vtsched_lisa.checkpoint import weights_fingerprint
        from vtsched_lisa.segment import LisaSegmenter, lisa_scheduler

        _SEGMENTERS.clear()  # one LISA at a time: a 7B one is 14 GB
        scheduler = lisa_scheduler(path, clip=clip, device=device, registry=registry)
        _SEGMENTERS[key] = (LisaSegmenter(scheduler), weights_fingerprint(path))
    return _SEGMENTERS[key]


def clear_caches() -> None:
    """Forget loaded LISA models and in-memory masks (the disk cache stays)."""
    _SEGMENTERS.clear()
    MASKS.clear()

