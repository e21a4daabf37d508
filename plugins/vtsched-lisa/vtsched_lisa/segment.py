"""ParVTS inside LISA: run under a schedule, read ``[SEG]`` from the surviving stream, decode with SAM.

One request runs:

1. the prompt (with ``reply="[SEG]."`` in teacher-forced mode, as LISA validates; or generated)
   through :meth:`Scheduler.answer <vtsched.core.scheduler.Scheduler.answer>` under the plan's
   schedule, asking it for the normed last-layer states it computes anyway
   (``hidden_states=N``: the prompt's last ``N`` positions, from ``[SEG]`` on, and every
   generated token; :class:`~vtsched.core.generation.HiddenStates`). No second prefill runs;
2. the ``[SEG]`` token's original position is found in the token ids (the prompt's, then the
   generated ones) and *looked up* among the positions of the states returned, never computed by
   offsets: pruned and fused sequences are shorter than the prompt;
3. the state (after the decoder's final norm, as LISA reads ``output_hidden_states[-1]``) goes
   through ``text_hidden_fcs`` to SAM's prompt width and is appended to SAM's (empty) sparse prompt
   embeddings; SAM's mask decoder runs on the image embedding, which SAM's encoder computes once
   per image (kept by image content) whatever the policy or budget;
4. ``postprocess_masks`` brings the low-resolution logits back to the original image; ``> 0``.

Times are kept apart: ``llm_prefill_s`` (the engine's prefill), ``llm_decode_s`` (decoding,
generated mode only), ``vision_s`` (CLIP), ``sam_encoder_s`` (0 when the embedding was cached;
``sam_encoder_cached`` says so) and ``sam_decoder_s``. SAM's encoder cost does not shrink with the
token budget, so it is never folded into the LLM's.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from vtsched.core.app import parse_budget
from vtsched.core.budget import Budget
from vtsched.core.errors import InputError, VtschedError
from vtsched.core.generation import GenerationConfig, HiddenStates
from vtsched.core.pixels import image_digest, rgb_array
from vtsched.core.planner import Plan
from vtsched.core.policy import Partitioner, Policy
from vtsched.core.tokens import PromptBatch

from vtsched_lisa.model import SEG_TOKEN, LisaModel

__all__ = ["TEACHER_REPLY", "LisaSegmenter", "Segmentation", "lisa_scheduler", "seg_state"]

TEACHER_REPLY = "[SEG]."
EMBEDDINGS_KEPT = 16


@dataclass
class Segmentation:
    """One image's result. ``mask``: ``(H, W)`` bool at the original size (empty, with a warning, when
    the answer has no ``[SEG]``); ``seg_state``: the normed last-layer ``[SEG]`` state (``None``
    without one)."""

    mask: np.ndarray
    plan: Plan
    answer: str | None = None
    warning: str | None = None
    seg_state: torch.Tensor | None = None
    seg_position: int | None = None
    llm_prefill_s: float = 0.0
    llm_decode_s: float = 0.0
    vision_s: float = 0.0
    sam_encoder_s: float = 0.0
    sam_encoder_cached: bool = False
    sam_decoder_s: float = 0.0
    flops: float = 0.0
    visual_per_layer: float = 0.0
    visual_per_layer_all: float = 0.0

    def summary(self) -> str:
        sam_enc = "cached" if self.sam_encoder_cached else f"{self.sam_encoder_s * 1e3:.1f} ms"
        decode = f" + decode {self.llm_decode_s * 1e3:.1f} ms" if self.llm_decode_s else ""
        return (self.plan.describe()
                + f" | visual tokens/layer: {self.visual_per_layer:.1f} kept ({self.visual_per_layer_all:.1f} counting "
                f"parallel streams) | LLM prefill {self.llm_prefill_s * 1e3:.1f} ms ({self.flops / 1e9:.3g} GFLOPs)"
                f"{decode} | CLIP {self.vision_s * 1e3:.1f} ms | SAM encoder {sam_enc}, mask decoder "
                f"{self.sam_decoder_s * 1e3:.1f} ms | mask {int(self.mask.sum())} px")

    def record(self) -> dict[str, Any]:
        plan = self.plan
        return {
            "answer": self.answer, "warning": self.warning, "seg_position": self.seg_position,
            "policy": plan.policy.describe(), "partitioner": plan.partitioner.describe() if plan.partitioner else None,
            "budget": str(plan.budget) if plan.budget else None, "mask_pixels": int(self.mask.sum()),
            "llm_prefill_s": self.llm_prefill_s, "llm_decode_s": self.llm_decode_s, "vision_s": self.vision_s,
            "sam_encoder_s": self.sam_encoder_s, "sam_encoder_cached": self.sam_encoder_cached,
            "sam_decoder_s": self.sam_decoder_s, "prefill_flops": self.flops,
            "visual_tokens_per_layer": self.visual_per_layer,
            "visual_tokens_per_layer_all_streams": self.visual_per_layer_all,
            "subject_tokens": plan.partition.members(0, plan.partition.groups[0]).tolist(),
        }


def seg_state(hidden: HiddenStates, sample: int, ids: torch.Tensor,
              seg_token_id: int) -> tuple[int, torch.Tensor] | None:
    """``(position, state)`` of the first ``[SEG]`` in ``ids`` (sample ``sample``'s prompt, then its
    generated tokens), or ``None`` if it has none. The state is the normed last-layer one that
    generation returned for that position; a ``[SEG]`` that did not run is refused (a schedule must
    keep text tokens)."""
    found = torch.nonzero(ids == seg_token_id).flatten()
    if found.numel() == 0:
        return None
    position = int(found[0])
    state = hidden.at(sample, position)
    if state is None:
        raise VtschedError(f"sample {sample}: the {SEG_TOKEN} token (position {position}) is not in the sequence "
                           "that ran; a schedule must keep text tokens")
    return position, state


def prompt_positions_from_seg(batch: PromptBatch, seg_token_id: int) -> int:
    """How many last prompt positions reach back to every sample's first ``[SEG]`` (0 without one)."""
    counts = [0]
    for sample in batch.samples:
        found = torch.nonzero(sample.input_ids == seg_token_id).flatten()
        if found.numel():
            counts.append(sample.length - int(found[0]))
    return max(counts)


class _PrefillTimer:
    """The engine, with the seconds its ``prefill`` calls take added up (the rest passes through)."""

    def __init__(self, engine: Any) -> None:
        self.engine, self.seconds = engine, 0.0

    def prefill(self, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        out = self.engine.prefill(*args, **kwargs)
        self.seconds += time.perf_counter() - start
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)


def lisa_scheduler(path: str, *, clip: str | None = None, device: str = "cpu", dtype: torch.dtype | None = None,
                   registry: Any = None) -> Any:
    """A :class:`~vtsched.core.scheduler.Scheduler` bound to a LISA checkpoint folder (its registry holds
    this plugin's adapter even where entry points are not loaded)."""
    import sys

    from vtsched.core.registry import build_registry, make_plugin_manager
    from vtsched.core.scheduler import Scheduler

    from vtsched_lisa.checkpoint import load_lisa

    if registry is None or "lisa" not in registry.names("adapter"):
        registry = build_registry(make_plugin_manager(load_entrypoints=False, extra=[sys.modules["vtsched_lisa"]]))
    model, processor = load_lisa(path, clip=clip, device=device, dtype=dtype)
    return Scheduler(model, processor, registry=registry)


class LisaSegmenter:
    """Segments images with a LISA model bound to a :class:`~vtsched.core.scheduler.Scheduler`."""

    def __init__(self, scheduler: Any) -> None:
        model = scheduler.adapter.model
        if not isinstance(model, LisaModel):
            raise InputError(f"segmentation needs a LISA model, not {type(model).__name__}")
        self.scheduler = scheduler
        self.model: LisaModel = model
        self._embeddings: OrderedDict[str, tuple[torch.Tensor, tuple[int, int], tuple[int, int]]] = OrderedDict()

    # -- SAM ------------------------------------------------------------------------------------
    @torch.inference_mode()
    def image_embedding(self, image: Any) -> tuple[torch.Tensor, tuple[int, int], tuple[int, int], float, bool]:
        """SAM's image embedding ``(1, C, h, w)``, input size, original size, seconds, and whether it was
        cached (computed once per image content)."""
        from vtsched_segment_anything.checkpoint import import_segment_anything

        pixels = rgb_array(image, "lisa")
        digest = image_digest(pixels)
        if digest in self._embeddings:
            self._embeddings.move_to_end(digest)
            return (*self._embeddings[digest], 0.0, True)
        predictor = import_segment_anything().SamPredictor(self.model.sam)
        start = time.perf_counter()
        predictor.set_image(pixels)
        seconds = time.perf_counter() - start
        entry = (predictor.features, tuple(predictor.input_size), tuple(predictor.original_size))
        self._embeddings[digest] = entry  # type: ignore[assignment]
        while len(self._embeddings) > EMBEDDINGS_KEPT:
            self._embeddings.popitem(last=False)
        return (*entry, seconds, False)  # type: ignore[return-value]

    @torch.inference_mode()
    def decode_mask(self, embedding: torch.Tensor, input_size: tuple[int, int], original_size: tuple[int, int],
                    state: torch.Tensor) -> np.ndarray:
        """SAM's mask for one normed ``[SEG]`` state: ``(H, W)`` bool at the original size."""
        sam = self.model.sam
        prompt = self.model.project_seg(state[None].to(next(self.model.model.text_hidden_fcs.parameters()).dtype))
        sparse, dense = sam.prompt_encoder(points=None, boxes=None, masks=None)
        sparse = torch.cat((sparse, prompt[:, None].to(sparse.dtype)), dim=1)
        low_res, _ = sam.mask_decoder(image_embeddings=embedding, image_pe=sam.prompt_encoder.get_dense_pe(),
                                      sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                      multimask_output=False)
        logits = sam.postprocess_masks(low_res, input_size, original_size)
        return (logits[0, 0] > 0).cpu().numpy()

    # -- requests -------------------------------------------------------------------------------
    def segment(self, images: Sequence[Any], questions: Sequence[str], policy: str | Policy = "full", *,
                partitioner: str | Partitioner | None = None, budget: str | float | Budget | None = None,
                policy_params: Mapping[str, Any] | None = None, generation: GenerationConfig | None = None,
                reply: str = TEACHER_REPLY) -> list[Segmentation]:
        """Masks for ``questions`` about ``images`` under ``policy``. Teacher-forced (the reply in the
        prompt, as LISA evaluates) unless ``generation`` is given: then the answer is generated and its
        first ``[SEG]`` decoded (an answer without one gives an empty mask and a warning)."""
        scheduler = self.scheduler
        start = time.perf_counter()
        batch = scheduler.adapter.prepare(images, questions, reply="" if generation is not None else reply)
        vision_s = (time.perf_counter() - start) / max(1, len(images))
        policy_obj = scheduler.make_policy(policy, policy_params)
        part = scheduler.make_partitioner(partitioner) if isinstance(partitioner, str) else partitioner
        plan = scheduler.plan(batch, policy_obj, part, parse_budget(budget))  # a Budget, or a caller's words
        seg_id = self.model.config.seg_token_id
        timer = _PrefillTimer(scheduler.engine)
        start = time.perf_counter()
        # teacher-forced, [SEG] is in the prompt: its states from [SEG] on; generated, in the answer's tokens
        answered = scheduler.answer(batch, plan, generation or GenerationConfig(max_new_tokens=0), engine=timer,
                                    hidden_states=prompt_positions_from_seg(batch, seg_id))
        decode_s = time.perf_counter() - start - timer.seconds if generation is not None else 0.0
        prefill_s = timer.seconds
        hidden = answered.generated.hidden_states
        assert hidden is not None
        answers: list[str | None] = list(answered.texts) if generation is not None else [None] * len(batch)
        states = [seg_state(hidden, b, torch.cat((sample.input_ids, torch.tensor(tokens, dtype=torch.long))), seg_id)
                  for b, (sample, tokens) in enumerate(zip(batch.samples, answered.generated.tokens))]
        results = []
        for b, image in enumerate(images):
            embedding, input_size, original_size, enc_s, cached = self.image_embedding(image)
            found = states[b]
            warning = None
            start = time.perf_counter()
            if found is None:
                height, width = original_size
                mask = np.zeros((height, width), dtype=bool)
                warning = f"the answer has no {SEG_TOKEN} token: empty mask"
            else:
                mask = self.decode_mask(embedding, input_size, original_size, found[1])
            results.append(Segmentation(
                mask=mask, plan=plan, answer=answers[b], warning=warning,
                seg_state=None if found is None else found[1].detach().float().cpu(),
                seg_position=None if found is None else found[0],
                llm_prefill_s=prefill_s / len(images), llm_decode_s=decode_s / len(images), vision_s=vision_s,
                sam_encoder_s=enc_s, sam_encoder_cached=cached, sam_decoder_s=time.perf_counter() - start,
                flops=float(answered.flops[b]), visual_per_layer=float(answered.visual_per_layer_survivor[b]),
                visual_per_layer_all=float(answered.visual_per_layer[b])))
        return results

