"""The LISA adapter: the engine runs LISA's LLaMA under any policy, as it runs LLaVA-1.5's.

LISA's language side is LLaVA-v1, so the LLaVA adapter's decoder parts, CLIP encoding ([CLS]
scores at the feature layer) and pixel boxes (resize + center-crop of CLIP's image processor)
apply unchanged; only the prompt differs. It is LLaVA-v1's conversation, with the image wrapped
in ``<im_start> ... <im_end>`` as LISA's ``mm_use_im_start_end`` says::

    {SYSTEM} USER: <im_start>{visual tokens}<im_end>\\n{question} ASSISTANT:[ {reply}</s>]

``reply`` (``"[SEG]."`` when LISA is evaluated teacher-forced) is part of the prompt: its tokens
are post-image text, which ``fuse_tokens=post_image`` fuses, so the ``[SEG]`` state at the end of
prefill is the one the schedule produced. Each chunk around the image is tokenised on its own, as
LLaVA-v1's ``tokenizer_image_token`` does (the visual tokens replace one ``<image>`` marker).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from vtsched.core.adapters.llava import LlavaAdapter
from vtsched.core.tokens import PromptBatch, Role, Sample

from vtsched_lisa.model import IM_END, IM_START, SYSTEM, LisaModel

__all__ = ["LisaAdapter"]


class LisaAdapter(LlavaAdapter):
    """Adapter for :class:`~vtsched_lisa.model.LisaModel` (LISA checkpoints loaded by ``load_lisa``)."""

    name: ClassVar[str] = "lisa"
    model_type: ClassVar[str] = "lisa"
    prompt_template: ClassVar[str] = SYSTEM + " USER: <image>\n{question} ASSISTANT:"

    @classmethod
    def accepts(cls, model: nn.Module) -> bool:
        return isinstance(model, LisaModel)

    def prepare(self, images: Sequence[Any], questions: Sequence[str], *, reply: str = "") -> PromptBatch:
        """Prompts for ``questions`` about ``images``; with ``reply`` the assistant's answer is part of
        the prompt (teacher forcing) and ends with the end-of-sequence token."""
        features, cls, keys, grid = self.encode_prompts(images, questions)
        samples = []
        for b, (question, image) in enumerate(zip(questions, images)):
            sample = self._lisa_sample(question, reply, features[b], None if cls is None else cls[b], grid, image)
            if keys is not None:
                sample.extras["patch_keys"] = keys[b].float().cpu()
            sample.extras["question"] = question
            samples.append(sample)
        return PromptBatch(samples)

    def _lisa_sample(self, question: str, reply: str, features: torch.Tensor, cls: torch.Tensor | None,
                     grid: tuple[int, int] | None, image: Any) -> Sample:
        tokenizer = self.processor.tokenizer
        start, end = (IM_START, IM_END) if self.model.config.use_mm_start_end else ("", "")
        template = getattr(self.model.config, "prompt_template", "") or self.prompt_template
        head_text, tail_template = template.split("<image>")
        head_text += start
        before, after = tail_template.split("{question}")
        before = end + before
        tail_text = before + question + after + (f" {reply}" if reply else "")
        head = tokenizer(head_text, add_special_tokens=True)["input_ids"]
        enc = tokenizer(tail_text, add_special_tokens=False, return_offsets_mapping=True)
        tail = list(enc["input_ids"]) + ([tokenizer.eos_token_id] if reply and tokenizer.eos_token_id is not None
                                         else [])
        n = features.shape[0]
        ids = torch.tensor(head + [self.model.config.image_token_id] * n + tail, dtype=torch.long)
        roles = torch.full_like(ids, Role.SUFFIX)
        roles[: len(head)] = Role.PREFIX
        roles[len(head): len(head) + n] = Role.VISUAL
        q_start, q_end = len(before), len(before) + len(question)
        for t, (a, b) in enumerate(enc["offset_mapping"]):
            if b > a and a < q_end and b > q_start:
                roles[len(head) + n + t] = Role.QUESTION
        sample = Sample(ids, roles, features, None if cls is None else cls.float().cpu(), grid, image)
        if grid is not None and hasattr(image, "size"):
            sample.pixel_boxes = self.token_boxes(tuple(image.size), grid)
        return sample
