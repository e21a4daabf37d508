"""The demo LISA's layout: a tiny SAM and a ``[SEG]`` head on top of vtsched's shipped demo LLaVA.

The demo LISA folder (``vtsched_lisa/demo``, trained by ``vtsched train-demo-lisa``) is a LISA
checkpoint folder that the ordinary loader (:func:`vtsched_lisa.checkpoint.load_lisa`) reads: its
``config.json`` says ``base_llava: "vtsched:demo"`` (every weight it does not hold comes from the
demo LLaVA, CLIP tower and image processor included), ``mm_projector_type: "mlp2x_gelu"`` (the
demo LLaVA's projector is LLaVA-1.5's two-layer MLP) and ``conv_type: "vtsched_demo"`` (the demo
LLaVA's prompt). Its ``model.safetensors`` holds, under LISA's published keys, only what the demo
LISA adds or changes:

- ``model.embed_tokens.weight`` and ``lm_head.weight`` (the demo LLaVA's 512 rows plus ``[SEG]``);
- ``model.layers.N.self_attn.{q,v}_proj.weight`` (LoRA updates merged into the demo LLaVA's, as
  LISA fine-tunes its LLaMA with LoRA);
- ``model.text_hidden_fcs.0.{0,2}.*`` (the ``[SEG]`` projection, 192 -> 192 -> 64);
- ``model.visual_model.*``: a SAM built from segment-anything's own classes at toy size (the
  ``demo-lisa`` variant of :mod:`vtsched_lisa.sams`, which the loader knows without registering it).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from vtsched_lisa.checkpoint import published_state_dict, read_base_llava
from vtsched_lisa.model import SEG_TOKEN
from vtsched_lisa.sams import PROMPT_DIM, build_demo_sam

__all__ = ["demo_lisa_path", "demo_config", "init_demo_lisa", "save_demo_lisa", "SHIPPED_PREFIXES",
           "SHIPPED_LAYER_KEYS"]

# the published keys the demo LISA ships (everything else comes from the demo LLaVA)
SHIPPED_PREFIXES = ("model.embed_tokens.", "lm_head.", "model.text_hidden_fcs.", "model.visual_model.")
SHIPPED_LAYER_KEYS = ("self_attn.q_proj.weight", "self_attn.v_proj.weight")


def demo_lisa_path() -> Path | None:
    """The demo LISA shipped inside this package (``vtsched train-demo-lisa``), or ``None`` if it is missing."""
    path = Path(__file__).resolve().parent / "demo"
    return path if (path / "config.json").is_file() else None


def demo_config(base: Path) -> dict[str, Any]:
    """The demo LISA's ``config.json``: LISA's fields, sizes read from the base LLaVA's config."""
    text = json.loads((base / "config.json").read_text())["text_config"]
    return {
        "architectures": ["LISAForCausalLM"], "model_type": "llava", "base_llava": "vtsched:demo",
        "mm_projector_type": "mlp2x_gelu", "conv_type": "vtsched_demo", "mm_use_im_start_end": False,
        "mm_vision_select_layer": -2, "mm_vision_select_feature": "patch", "out_dim": PROMPT_DIM,
        "hidden_size": text["hidden_size"], "intermediate_size": text["intermediate_size"],
        "num_hidden_layers": text["num_hidden_layers"], "num_attention_heads": text["num_attention_heads"],
        "num_key_value_heads": text["num_key_value_heads"], "rms_norm_eps": text["rms_norm_eps"],
        "max_position_embeddings": text["max_position_embeddings"],
        "rope_theta": text.get("rope_parameters", {}).get("rope_theta", 10000.0),
        "bos_token_id": text["bos_token_id"], "eos_token_id": text["eos_token_id"],
        "pad_token_id": text["pad_token_id"], "train_mask_decoder": True, "tie_word_embeddings": False,
        "torch_dtype": "float32",
    }


def _shipped(key: str) -> bool:
    return key.startswith(SHIPPED_PREFIXES) or (key.startswith("model.layers.") and key.endswith(SHIPPED_LAYER_KEYS))


def init_demo_lisa(folder: str | Path, seed: int = 0) -> Path:
    """Write an untrained demo LISA to ``folder``: the demo LLaVA's tokenizer with ``[SEG]`` added,
    the config, and the new parts (``[SEG]`` rows: the mean of the demo LLaVA's embeddings and
    output rows; ``text_hidden_fcs`` and SAM: random from ``seed``)."""
    from safetensors.torch import save_file
    from transformers import AutoTokenizer

    from vtsched.core.demo import demo_model_path

    base = demo_model_path()
    if base is None:
        raise RuntimeError("vtsched ships no demo LLaVA: train it first (vtsched train-demo)")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(str(base))
    tokenizer.add_tokens([SEG_TOKEN])
    published, _, _ = read_base_llava(Path(base))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        hidden = published["model.embed_tokens.weight"].shape[1]
        fcs = torch.nn.Sequential(torch.nn.Linear(hidden, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, PROMPT_DIM))
        sam = build_demo_sam()
    state: dict[str, torch.Tensor] = {}
    for key in ("model.embed_tokens.weight", "lm_head.weight"):
        rows = published[key]
        extra = len(tokenizer) - rows.shape[0]
        state[key] = torch.cat((rows, rows.mean(0, keepdim=True).expand(extra, -1)))
    for key, value in fcs.state_dict().items():
        state[f"model.text_hidden_fcs.0.{key}"] = value
    for key, value in sam.state_dict().items():
        state[f"model.visual_model.{key}"] = value
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(demo_config(Path(base)), indent=2) + "\n")
    tokenizer.save_pretrained(str(folder))
    return folder


def save_demo_lisa(model: Any, processor: Any, folder: str | Path) -> Path:
    """Write a (trained) demo LISA to ``folder``: config, tokenizer, and only the shipped weights."""
    from safetensors.torch import save_file

    from vtsched.core.demo import demo_model_path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.float().contiguous() for k, v in published_state_dict(model).items() if _shipped(k)}
    save_file(state, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(demo_config(Path(demo_model_path())), indent=2) + "\n")
    processor.tokenizer.save_pretrained(str(folder))
    return folder
