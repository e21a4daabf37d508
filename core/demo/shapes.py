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
from typing import Any, ClassVar

import torch

__all__ = [
    "Shape", "SHAPES", "build_tokenizer", "build_processor", "llava_config", "build_random_llava", "random_image",
    "QUESTION_WORDS", "demo_model_path", "NextShape", "QwenShape", "build_qwen_tokenizer", "shape_family",
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
    shape: Any = "demo",
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
    if not isinstance(shape, Shape):  # a LLaVA-NeXT or Qwen2-VL shape builds its own family
        return shape.build(seed=seed, dtype=dtype, attn_implementation=attn_implementation, device=device)
    processor = build_processor(shape)
    return _build(LlavaForConditionalGeneration, llava_config(shape, processor.tokenizer), processor, seed=seed,
                  dtype=dtype, attn_implementation=attn_implementation, device=device)


def get_shape(name: str) -> Any:
    from vtsched.core.errors import InputError

    try:
        return SHAPES[name]
    except KeyError:
        raise InputError(f"unknown shape {name!r}; shapes: {', '.join(SHAPES)}") from None


def llava_config(shape: Any, tokenizer=None):
    """The config of a shape (no weights are built): a ``LlavaConfig``, or the family's own for a
    LLaVA-NeXT or Qwen2-VL shape."""
    from transformers import LlavaConfig

    shape = get_shape(shape) if isinstance(shape, str) else shape
    if not isinstance(shape, Shape):  # a LLaVA-NeXT or Qwen2-VL shape: its own family's config
        return shape.config(tokenizer)
    tokenizer = tokenizer or build_tokenizer()
    vision, text = _clip_and_llama(shape, shape.image_size, tokenizer, max_positions=4096)
    config = LlavaConfig(  # type: ignore[call-arg]
        vision_config=vision, text_config=text, image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        image_seq_length=shape.num_visual, vision_feature_layer=-2, vision_feature_select_strategy="default",
    )
    return config


# -- LLaVA-NeXT and Qwen2-VL / Qwen2.5-VL shapes ----------------------------------------------------
# Each family shape knows its config, its processor and how to build itself, so the functions
# above (``llava_config``, ``build_random_llava``, ``get_shape``) serve every family through one
# call: ``shape.config()``, ``shape.build()``.

QWEN_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                       "<|image_pad|>", "<|video_pad|>")
NEXT_PINPOINT_TILES = ((1, 2), (2, 1), (2, 2), (3, 1), (1, 3))  # llava-hf's pinpoints, in tiles (rows, cols)


@dataclass(frozen=True)
class NextShape:
    """Sizes of a random LLaVA-NeXT: a CLIP tower on ``tile``-px tiles, a projector, a Llama-family LM.

    The grid pinpoints are llava-hf's ((336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008))
    in units of ``tile``, so token geometry scales with the tile: at ``tile=336`` a 672x672 image
    gives 576 overview tokens + a 48x48 grid + 48 newline tokens = 2,928.
    """

    name: str
    tile: int
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
    family: ClassVar[str] = "llava_next"

    @property
    def pinpoints(self) -> list[list[int]]:
        return [[rows * self.tile, cols * self.tile] for rows, cols in NEXT_PINPOINT_TILES]

    @property
    def num_visual(self) -> int:
        """Tokens of a square image at the 2x2-tile pinpoint (672x672 at 336-px tiles)."""
        side = self.tile // self.patch_size
        return side * side + (2 * side) * (2 * side) + 2 * side

    def processor(self, tokenizer=None):
        from transformers import LlavaNextProcessor
        from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

        image_processor = LlavaNextImageProcessorPil(
            size={"shortest_edge": self.tile}, crop_size={"height": self.tile, "width": self.tile},
            image_grid_pinpoints=self.pinpoints,
        )
        return LlavaNextProcessor(
            image_processor=image_processor, tokenizer=tokenizer or build_tokenizer(), patch_size=self.patch_size,
            vision_feature_select_strategy="default", image_token=IMAGE_TOKEN, num_additional_image_tokens=1,
        )

    def config(self, tokenizer=None):
        from transformers import LlavaNextConfig

        tokenizer = tokenizer or build_tokenizer()
        vision, text = _clip_and_llama(self, self.tile, tokenizer, max_positions=8192)
        return LlavaNextConfig(  # type: ignore[call-arg]
            vision_config=vision, text_config=text, image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
            image_grid_pinpoints=self.pinpoints, image_seq_length=(self.tile // self.patch_size) ** 2,
            vision_feature_layer=-2, vision_feature_select_strategy="default",
        )

    def build(self, *, seed: int = 0, dtype: torch.dtype = torch.float32, attn_implementation: str = "sdpa",
              device: str | torch.device = "cpu"):
        from transformers import LlavaNextForConditionalGeneration

        processor = self.processor()
        return _build(LlavaNextForConditionalGeneration, self.config(processor.tokenizer), processor, seed=seed,
                      dtype=dtype, attn_implementation=attn_implementation, device=device)


@dataclass(frozen=True)
class QwenShape:
    """Sizes of a random Qwen2-VL (``version="2"``) or Qwen2.5-VL (``version="2.5"``).

    Visual tokens are the merger's outputs: 2x2 patches of 14 px, one token per 28x28 px of the
    smart-resized image (a 672x672 image: 24x24 = 576 tokens). ``image_size`` is the nominal
    input side for explain and bench; ``max_pixels`` caps the processor's resize. Qwen2.5-VL's
    window attention groups ``window`` px (4x4 merged tokens at 112) and runs full attention in the
    blocks ``full_blocks`` (default: every 8th block, ending with the last).
    """

    name: str
    version: str
    image_size: int
    vision_hidden: int
    vision_layers: int
    vision_heads: int
    vision_intermediate: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    window: int = 112
    max_pixels: int = 28 * 28 * 1280
    min_pixels: int = 56 * 56
    full_blocks: tuple[int, ...] | None = None
    rope_theta: float = 1e6
    family: ClassVar[str] = "qwen2_vl"

    @property
    def num_visual(self) -> int:
        return (self.image_size // 28) ** 2

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def mrope_section(self) -> list[int]:
        """Temporal/height/width split of the rotary half-dimension: [16, 24, 24] at head size 128."""
        half = self.head_dim // 2
        temporal = half // 4
        height = (half - temporal) // 2
        return [temporal, height, half - temporal - height]

    def fullatt_blocks(self) -> list[int]:
        if self.full_blocks is not None:
            return list(self.full_blocks)
        step = max(1, self.vision_layers // 4)
        return sorted({b for b in range(step - 1, self.vision_layers, step)} | {self.vision_layers - 1})

    def processor(self, tokenizer=None):
        from transformers import Qwen2VLProcessor, Qwen2_5_VLProcessor
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
        from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

        image_processor = Qwen2VLImageProcessorPil(min_pixels=self.min_pixels, max_pixels=self.max_pixels)
        cls = Qwen2_5_VLProcessor if self.version == "2.5" else Qwen2VLProcessor
        return cls(image_processor=image_processor, tokenizer=tokenizer or build_qwen_tokenizer(),
                   video_processor=Qwen2VLVideoProcessor())

    def config(self, tokenizer=None):
        from transformers import Qwen2_5_VLConfig, Qwen2VLConfig

        tokenizer = tokenizer or build_qwen_tokenizer()
        ids = {key: tokenizer.convert_tokens_to_ids(token) for key, token in (
            ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
            ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>"))}
        text = dict(
            vocab_size=len(tokenizer), hidden_size=self.hidden, intermediate_size=self.intermediate,
            num_hidden_layers=self.layers, num_attention_heads=self.heads, num_key_value_heads=self.kv_heads,
            max_position_embeddings=32768, bos_token_id=None, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            rope_parameters={"rope_type": "default", "mrope_section": self.mrope_section(), "rope_theta": self.rope_theta},
        )
        if self.version == "2.5":
            vision = dict(depth=self.vision_layers, hidden_size=self.vision_hidden, num_heads=self.vision_heads,
                          intermediate_size=self.vision_intermediate, out_hidden_size=self.hidden,
                          fullatt_block_indexes=self.fullatt_blocks(), window_size=self.window)
            return Qwen2_5_VLConfig(text_config=text, vision_config=vision, **ids)
        vision = dict(depth=self.vision_layers, embed_dim=self.vision_hidden, hidden_size=self.hidden,
                      num_heads=self.vision_heads, mlp_ratio=self.vision_intermediate // self.vision_hidden)
        return Qwen2VLConfig(text_config=text, vision_config=vision, **ids)

    def build(self, *, seed: int = 0, dtype: torch.dtype = torch.float32, attn_implementation: str = "sdpa",
              device: str | torch.device = "cpu"):
        from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2VLForConditionalGeneration

        processor = self.processor()
        cls = Qwen2_5_VLForConditionalGeneration if self.version == "2.5" else Qwen2VLForConditionalGeneration
        return _build(cls, self.config(processor.tokenizer), processor, seed=seed, dtype=dtype,
                      attn_implementation=attn_implementation, device=device)


def _clip_and_llama(shape: Any, image_size: int, tokenizer: Any, *, max_positions: int) -> tuple[Any, Any]:
    """The CLIP vision and Llama text configs of a LLaVA-family shape (its ``vision_*`` and text sizes)."""
    from transformers import CLIPVisionConfig, LlamaConfig

    vision = CLIPVisionConfig(
        hidden_size=shape.vision_hidden, intermediate_size=shape.vision_intermediate,
        num_hidden_layers=shape.vision_layers, num_attention_heads=shape.vision_heads,
        image_size=image_size, patch_size=shape.patch_size, projection_dim=shape.vision_hidden,
    )
    text = LlamaConfig(
        hidden_size=shape.hidden, intermediate_size=shape.intermediate, num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads, num_key_value_heads=shape.kv_heads, vocab_size=len(tokenizer),
        max_position_embeddings=max_positions, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    return vision, text


def _build(model_class, config, processor, *, seed, dtype, attn_implementation, device):
    """``(model, processor)``: ``model_class`` with random weights, built in place and in its dtype
    (a 7B shape never exists in fp32)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with torch.device(device):
            model = model_class._from_config(config, dtype=dtype, attn_implementation=attn_implementation)
    model.eval()
    model.generation_config.eos_token_id = processor.tokenizer.eos_token_id
    model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    return model, processor


@lru_cache(maxsize=1)
def _qwen_tokenizer_json() -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=list(QWEN_SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([_WORDS, _WORDS.lower(), _WORDS.upper(), "system user assistant helpful"] * 4, trainer)
    return tok.to_str()


def build_qwen_tokenizer():
    """A small byte-level BPE tokenizer with Qwen2-VL's special tokens (no BOS, ``<|im_end|>`` ends a turn)."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(_qwen_tokenizer_json()),
                                   eos_token="<|im_end|>", pad_token="<|endoftext|>")


SHAPES.update({
    s.name: s  # type: ignore[misc]
    for s in (
        NextShape("llava-next-tiny", 28, 14, 16, 2, 2, 32, 32, 2, 4, 2, 64),
        # LLaVA-NeXT's token geometry (336-px tiles, 14-px patches, llava-hf pinpoints: 2,928 tokens
        # at 672x672) with the narrow 32-layer language model of llava-1.5-cpu.
        NextShape("llava-next-cpu", 336, 14, 64, 4, 4, 128, 384, 32, 6, 6, 1032),
        NextShape("llava-next-7b", 336, 14, 1024, 24, 16, 4096, 4096, 32, 32, 32, 11008),
        QwenShape("qwen2-vl-tiny", "2", 56, 32, 2, 2, 64, 64, 2, 4, 2, 128, max_pixels=28 * 28 * 16),
        QwenShape("qwen2.5-vl-tiny", "2.5", 56, 32, 2, 2, 64, 64, 2, 4, 2, 128, window=56, max_pixels=28 * 28 * 16),
        # Qwen2.5-VL's token geometry (28-px merged tokens: 576 at 672x672, windows of 112 px, full
        # attention every 8th block) with a narrow 28-layer language model a CPU times in seconds.
        QwenShape("qwen2.5-vl-cpu", "2.5", 672, 64, 8, 4, 128, 384, 28, 6, 2, 1032),
        QwenShape("qwen2-vl-7b", "2", 672, 1280, 32, 16, 5120, 3584, 28, 28, 4, 18944),
        QwenShape("qwen2.5-vl-7b", "2.5", 672, 1280, 32, 16, 3420, 3584, 28, 28, 4, 18944,
                  full_blocks=(7, 15, 23, 31)),
    )
})


def shape_family(shape: Any) -> str:
    """``"llava"``, ``"llava_next"`` or ``"qwen2_vl"``: the adapter family a shape builds."""
    shape = get_shape(shape) if isinstance(shape, str) else shape
    return getattr(shape, "family", "llava")
