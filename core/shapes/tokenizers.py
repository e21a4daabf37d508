"""Tokenizers of the random shapes: small byte-level BPEs trained here, with each family's specials.

No tokenizer can be downloaded offline, so each family gets a real ``tokenizers`` BPE trained on a
fixed word list (the demo set's questions and answers among them): LLaVA's with a BOS and the
``<image>`` token, Qwen2-VL's with its chat and vision tokens and no BOS.
"""

from __future__ import annotations

from functools import lru_cache

__all__ = ["IMAGE_TOKEN", "QWEN_SPECIAL_TOKENS", "build_tokenizer", "build_qwen_tokenizer"]

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
QWEN_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                       "<|image_pad|>", "<|video_pad|>")


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
