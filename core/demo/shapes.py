"""Random-weight LLaVA models built from configs, in the real checkpoint layout.

No pretrained weights exist offline, so tests, tutorials and speed measurements build LLaVA
models from ``transformers`` configs with random weights: the real classes, a real tokenizer
(byte-level BPE trained here on a fixed word list) and a real ``LlavaProcessor``, savable with
``save_pretrained`` and loadable with ``from_pretrained`` like any checkpoint. Their answers are
meaningless; their shapes, token geometry and code paths are the real ones.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache

import torch

__all__ = [
    "Shape", "SHAPES", "build_tokenizer", "build_processor", "llava_config", "build_random_llava", "random_image",
    "QUESTION_WORDS", "demo_model_path",
]

QUESTION_WORDS = (
    "what", "colour", "is", "the", "shape", "in", "corner", "background", "red", "small", "object", "left",
    "how", "many", "describe", "image", "top", "mark",
)


def demo_model_path():
    """The demo model shipped inside the package (trained by ``vtsched train-demo``), or ``None``."""
    from pathlib import Path

    path = Path(__file__).resolve().parent / "model"
    return path if (path / "model.safetensors").exists() else None


def random_image(seed: int, width: int = 40, height: int = 30):
    """A noise image (PIL, RGB) from a seed: an input with no meaning, for shapes and speed."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8))

IMAGE_TOKEN = "<image>"
_WORDS = (
    "USER ASSISTANT what is the colour color of shape in image picture photo corner top bottom left right "
    "background foreground object small large big red green blue yellow black white orange purple pink grey "
    "brown circle square triangle star cross stripe dot mark there a an and or yes no how many which where "
    "does do it this that one two three four five six seven eight nine zero describe answer word single "
    "What colour is the big shape? What shape is the big object? Where is the big shape? "
    "What colour is the background? Is the background plain or striped? "
    "What colour is the small square in the corner? Which corner has the small square? "
    "red green blue yellow white purple black grey brown teal circle square triangle cross "
    "left right top bottom center top-left top-right bottom-left bottom-right plain striped has big"
)


@dataclass(frozen=True)
class Shape:
    """Sizes of a random LLaVA: vision tower, projector into a Llama-family LM."""

    name: str
    image_size: int
    patch_size: int
    vision_hidden: int
    vision_layers: int
    vision_heads: int
    vision_intermediate: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int

    @property
    def num_visual(self) -> int:
        return (self.image_size // self.patch_size) ** 2


SHAPES = {
    s.name: s
    for s in (
        Shape("tiny", 28, 14, 16, 2, 2, 32, 32, 2, 4, 2, 64),
        Shape("demo", 112, 14, 64, 3, 4, 128, 128, 4, 4, 4, 256),
        # LLaVA-1.5's token geometry (336 px, 14 px patches: 576 visual tokens) at CPU-friendly width.
        Shape("llava-1.5-geometry", 336, 14, 64, 4, 4, 128, 256, 8, 8, 8, 704),
        # The same token geometry with a language model a 2-core CPU can time in seconds.
        # (32 layers like the 7B, so K/L matches; hidden 384, head size 64, MLP ratio 2.69 as in the 7B).
        Shape("llava-1.5-cpu", 336, 14, 64, 4, 4, 128, 384, 32, 6, 6, 1032),
        Shape("llava-1.5-7b", 336, 14, 1024, 24, 16, 4096, 4096, 32, 32, 32, 11008),
    )
}


@lru_cache(maxsize=1)
def _tokenizer_object():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=["<unk>", "<s>", "</s>", "<pad>", IMAGE_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([_WORDS, _WORDS.lower(), _WORDS.upper()] * 4, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    return tok


def build_tokenizer():
    """A small byte-level BPE tokenizer with LLaVA's special tokens (BOS prepended like Llama's)."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=_tokenizer_object().__class__.from_str(_tokenizer_object().to_str()),
        bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
        extra_special_tokens={"image_token": IMAGE_TOKEN},
    )


def build_processor(shape: Shape, tokenizer=None):
    from transformers import CLIPImageProcessor, LlavaProcessor

    size = shape.image_size
    image_processor = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer or build_tokenizer(),
        patch_size=shape.patch_size,
        vision_feature_select_strategy="default",
        image_token=IMAGE_TOKEN,
        num_additional_image_tokens=1,
    )


def build_random_llava(
    shape: str | Shape = "demo",
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    attn_implementation: str = "sdpa",
    device: str | torch.device = "cpu",
    **overrides,
):
    """``(model, processor)``: a ``LlavaForConditionalGeneration`` with random weights.

    ``overrides`` replace fields of the named :class:`Shape` (e.g. ``layers=3``).
    """
    from transformers import LlavaForConditionalGeneration

    if isinstance(shape, str):
        shape = get_shape(shape)
    shape = replace(shape, **overrides) if overrides else shape
    processor = build_processor(shape)
    config = llava_config(shape, processor.tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with torch.device(device):  # built in place and in its dtype: a 7B shape never exists in fp32
            model = LlavaForConditionalGeneration._from_config(
                config, dtype=dtype, attn_implementation=attn_implementation
            )
    model.eval()
    model.generation_config.eos_token_id = processor.tokenizer.eos_token_id
    model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    return model, processor


def get_shape(name: str) -> Shape:
    from vtsched.core.errors import InputError

    try:
        return SHAPES[name]
    except KeyError:
        raise InputError(f"unknown shape {name!r}; shapes: {', '.join(SHAPES)}") from None


def llava_config(shape: Shape | str, tokenizer=None):
    """The ``LlavaConfig`` of a shape (no weights are built)."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    shape = get_shape(shape) if isinstance(shape, str) else shape
    tokenizer = tokenizer or build_tokenizer()
    vision = CLIPVisionConfig(
        hidden_size=shape.vision_hidden, intermediate_size=shape.vision_intermediate,
        num_hidden_layers=shape.vision_layers, num_attention_heads=shape.vision_heads,
        image_size=shape.image_size, patch_size=shape.patch_size, projection_dim=shape.vision_hidden,
    )
    text = LlamaConfig(
        hidden_size=shape.hidden, intermediate_size=shape.intermediate, num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads, num_key_value_heads=shape.kv_heads, vocab_size=len(tokenizer),
        max_position_embeddings=4096, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config = LlavaConfig(  # type: ignore[call-arg]
        vision_config=vision, text_config=text, image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        image_seq_length=shape.num_visual, vision_feature_layer=-2, vision_feature_select_strategy="default",
    )
    return config
