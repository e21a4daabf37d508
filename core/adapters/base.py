"""What the engine needs to know about a model family, behind one small interface.

An adapter is the only code that knows a family's attribute names (where the decoder layers,
the rotary embedding, the vision tower live). Register new ones with the
``vtsched_register_adapters`` hook.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from vtsched.core.engine.parts import DecoderParts
from vtsched.core.geometry import ModelGeometry
from vtsched.core.tokens import PromptBatch, Role

# DecoderParts is the engine's (core/engine/parts.py); re-exported because adapter plugins import it from here
__all__ = ["ModelGeometry", "DecoderParts", "ModelAdapter", "check_one_image", "decoder_sizes", "llama_style_decoder",
           "rotate_half"]


def check_one_image(family: str, index: int, image: Any) -> None:
    """One still image per prompt: refuse a missing image, video clips and several images, in one line."""
    from vtsched.core.errors import InputError

    if image is None:
        raise InputError(f"prompt {index} has no image; {family} prompts here carry exactly one")
    if isinstance(image, (list, tuple)):
        raise InputError(f"prompt {index} has {len(image)} images (or video frames); one image per prompt is "
                         "supported for now")
    shape = getattr(image, "shape", None)
    if shape is not None and len(shape) >= 4:
        raise InputError(f"prompt {index} is an array of frames ({tuple(shape)}); give one image, or a video as a "
                         "vtsched.core.pixels.Video (read_video) to a family that takes video")


def decoder_sizes(text: Any) -> dict[str, int]:
    """The decoder's sizes from a transformers text config, as :class:`ModelGeometry` fields (GQA and
    an explicit ``head_dim`` where the config has them)."""
    heads = text.num_attention_heads
    return {
        "num_layers": text.num_hidden_layers,
        "hidden_size": text.hidden_size,
        "intermediate_size": text.intermediate_size,
        "num_heads": heads,
        "num_kv_heads": getattr(text, "num_key_value_heads", None) or heads,
        "head_dim": getattr(text, "head_dim", None) or text.hidden_size // heads,
        "vocab_size": text.vocab_size,
    }


class ModelAdapter(ABC):
    """Binds one loaded model (and its processor) to the engine."""

    name: ClassVar[str]
    model_type: ClassVar[str]  # transformers' ``config.model_type`` this adapter reads
    prompt_template: ClassVar[str] = "{question}"
    image_placeholder: ClassVar[str] = "<image>"  # what marks the image in prompt_template
    # The partitioner a policy whose default is ``cls`` uses on this family: ``cls`` where the
    # vision tower has a [CLS] token, the family's own score otherwise (``attention`` on Qwen2-VL).
    default_partitioner: ClassVar[str] = "cls"
    # Whether ``prepare`` takes a :class:`~vtsched.core.pixels.video.Video` in place of an image
    # (the family's processor has a video path and its positions a time axis: Qwen2-VL, Qwen2.5-VL).
    takes_video: ClassVar[bool] = False

    def __init__(self, model: nn.Module, processor: Any = None, **options: Any) -> None:
        # Any: modules are reached through family-specific attribute names that torch's
        # typing cannot see; the adapter is the one place that knows them.
        if options:
            from vtsched.core.errors import InputError

            raise InputError(f"adapter {self.name!r} takes no options; got {', '.join(sorted(options))}")
        self.model: Any = model
        self.processor = processor


    def check_prompts(self, images: Sequence[Any], questions: Sequence[str]) -> None:
        """Refuse, in one line each, what no family can prepare: no processor, images and questions that
        do not pair up, a missing image, several images in one prompt, a video where the family takes
        still images only (or frames not given as a :class:`~vtsched.core.pixels.video.Video`), an
        empty question."""
        from vtsched.core.errors import InputError
        from vtsched.core.pixels.video import Video

        if self.processor is None:
            raise InputError("this model was loaded without a processor; save one next to the weights")
        if len(images) != len(questions):
            raise InputError(f"{len(images)} images but {len(questions)} questions")
        for b, (image, question) in enumerate(zip(images, questions)):
            if isinstance(image, Video):
                if not self.takes_video:
                    raise InputError(f"prompt {b} is a video; {self.name} takes still images only "
                                     "(video: the qwen2_vl and qwen2_5_vl families)")
            else:
                check_one_image(self.name, b, image)
            if not isinstance(question, str) or not question.strip():
                raise InputError(f"question {b} is empty: ask something about the image")
    @classmethod
    @abstractmethod
    def accepts(cls, model: nn.Module) -> bool:
        """Whether this adapter knows ``model``'s family."""

    @classmethod
    @abstractmethod
    def geometry_from_config(cls, config: Any) -> ModelGeometry:
        """Geometry from a transformers config alone (no weights needed)."""

    @property
    def geometry(self) -> ModelGeometry:
        return self.geometry_from_config(self.model.config)

    @classmethod
    def nominal_image_side(cls, config: Any) -> int:
        """Side of the square image the nominal token count (``geometry.num_visual``) assumes; what
        ``bench`` feeds a random shape (default: the vision tower's input size)."""
        return int(config.vision_config.image_size)

    @classmethod
    def budget_notes(cls, config: Any, keep: int, partitioner: str | None,
                     partitioner_params: Mapping[str, Any]) -> list[str]:
        """Lines ``vtsched explain`` prints about this family's tokens: what the image span holds and
        what a budget of ``keep`` tokens keeps under ``partitioner`` (``None``: the policy selects
        inside the LLM). None for a plain patch grid."""
        return []

    @abstractmethod
    def decoder(self) -> DecoderParts: ...

    @abstractmethod
    def prepare(self, images: Sequence[Any], questions: Sequence[str]) -> PromptBatch:
        """Tokenise prompts, encode images, return roles, features and CLS scores per sample."""

    @property
    def language_model(self) -> Any:
        """The text decoder (``model.model.language_model`` in transformers 5's multimodal classes)."""
        return self.model.model.language_model

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def chat_prompt(self, image_marker: str) -> str | None:
        """The processor's chat template for one image and one question, as a template with
        ``{question}`` where the question goes and ``image_marker`` where the image goes
        (``None`` when the processor has no chat template). Adapters that prefer the checkpoint's
        own conversation format over ``prompt_template`` use it."""
        processor = self.processor
        if processor is None or not getattr(processor, "chat_template", None):
            return None
        marker = "VTSCHED_QUESTION_MARKER"
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": marker}]}]
        try:
            text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        except Exception:  # a template that cannot render this conversation: use prompt_template
            return None
        if not isinstance(text, str) or text.count(marker) != 1 or text.count(image_marker) != 1:
            return None
        return text.replace(marker, "{question}")  # filled with str.replace, not str.format

    @torch.inference_mode()
    def question_embeddings(self, input_ids: torch.Tensor, roles: torch.Tensor) -> torch.Tensor:
        """``(Q, hidden)`` the LLM's input embeddings of a prompt's question tokens (``extras["question_embeddings"]``:
        what a question-conditioned partitioner compares visual tokens with when it has no text tower)."""
        question = input_ids[roles == Role.QUESTION].to(self.device)
        return self.model.get_input_embeddings()(question)

    def decode_text(self, token_ids: Sequence[int]) -> str:
        tokenizer = getattr(self.processor, "tokenizer", self.processor)
        if tokenizer is None:
            return " ".join(map(str, token_ids))
        return tokenizer.decode(list(token_ids), skip_special_tokens=True).strip()

    def stop_token_ids(self) -> tuple[int, ...]:
        eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        if eos is None:
            eos = getattr(getattr(self.model.config, "text_config", self.model.config), "eos_token_id", None)
        if eos is None:
            return ()
        return tuple(eos) if isinstance(eos, (list, tuple)) else (int(eos),)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """The rotary embedding's half rotation, as Llama-style attention applies it."""
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def llama_style_decoder(language_model: Any, lm_head: nn.Module, **extra: Any) -> DecoderParts:
    """:class:`DecoderParts` of a Llama-style text model (``embed_tokens``, ``layers`` with
    ``input_layernorm`` and ``self_attn.q_proj``, ``rotary_emb``, ``norm``), as LLaVA's and Qwen2-VL's
    language models are; ``extra`` sets the family's fields (``rope_rows``, ``layer_position_ids``)."""
    lm = language_model

    def rotated_rows(projection: str) -> Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
        """A layer's input norm, then its ``projection`` (``q_proj``/``k_proj``) per head, then the rotary embedding."""

        def rows(layer: int, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
            block = lm.layers[layer]
            attn = block.self_attn
            x = block.input_layernorm(hidden)
            states = getattr(attn, projection)(x).view(*x.shape[:-1], -1, attn.head_dim).transpose(1, 2)
            return states * cos[:, None] + rotate_half(states) * sin[:, None]

        return rows

    return DecoderParts(
        embed_tokens=lm.embed_tokens,
        layers=lm.layers,
        rotary=lm.rotary_emb,
        norm=lm.norm,
        lm_head=lm_head,
        attn_implementation=lm.config._attn_implementation,
        query_rows=rotated_rows("q_proj"),
        key_rows=rotated_rows("k_proj"),
        scaling=lm.layers[0].self_attn.scaling,
        **extra,
    )
