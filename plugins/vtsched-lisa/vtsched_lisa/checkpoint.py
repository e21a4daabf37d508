"""Loading LISA checkpoints in their published layout, by an explicit key map.

A LISA checkpoint folder (``xinlai/LISA-7B-v1`` and friends, what LISA's
``merge_lora_weights_and_save_hf_model.py`` writes) holds ``config.json``, the tokenizer (with
``[SEG]`` added) and the weights (``pytorch_model*.bin`` or ``model*.safetensors``, sharded with an
``*.index.json`` or not). The weights are LISA's ``state_dict()`` minus the CLIP tower:

==========================================  ====================================================
published key                               module key (:class:`~vtsched_lisa.model.LisaModel`)
==========================================  ====================================================
``model.embed_tokens.*``                    ``model.language_model.embed_tokens.*``
``model.layers.N.*``                        ``model.language_model.layers.N.*``
``model.norm.*``                            ``model.language_model.norm.*``
``lm_head.*``                               ``lm_head.*``
``model.mm_projector.{weight,bias}``        ``model.multi_modal_projector.*`` (one ``Linear``)
``model.text_hidden_fcs.0.{0,2}.*``         ``model.text_hidden_fcs.0.{0,2}.*``
``model.visual_model.*``                    ``model.visual_model.*`` (Meta's SAM layout)
==========================================  ====================================================

Ignored on purpose: ``*.rotary_emb.inv_freq`` (transformers 4.31 saved it; it is recomputed) and
``model.vision_tower.*`` (CLIP ViT-L/14-224 comes from its own folder). Any other key is refused
in one line naming it, and so is any module key the checkpoint lacks (a checkpoint without SAM
weights is said as such). SAM's variant (vit_h / vit_l / vit_b, or one registered with
:func:`vtsched_segment_anything.register_variant`) is read from the shapes by the
segment-anything plugin and built by segment-anything's own registry; the variants of
:data:`vtsched_lisa.sams.LISA_SAM_VARIANTS` (the demo LISA's SAM and the segment-anything
plugin's tiny test SAM, so a tiny LISA checkpoint loads from the command line) and any passed as
``sam_variants`` are known as well, handed to the detection rather than registered anywhere.

Two config fields go beyond LISA's published configs, both for checkpoints built on a LLaVA-1.5
(the demo LISA, :mod:`vtsched_lisa.demo_lisa`):

- ``mm_projector_type: "mlp2x_gelu"`` (LLaVA-1.5's name): the projector is LLaVA-1.5's two-layer
  MLP, ``model.mm_projector.{0,2}.*``, instead of LISA's single ``Linear``;
- ``base_llava``: a LLaVA-1.5 folder in transformers' layout (relative to the LISA folder,
  absolute, or ``vtsched:demo`` for the demo LLaVA shipped with vtsched) that supplies every
  weight the LISA folder does not hold, by the key map :data:`BASE_KEY_MAP` (the folder's own
  weights win), and the CLIP tower and image processor. So a LISA trained on top of a LLaVA ships
  only what it added or changed. ``conv_type`` (``llava_v1``, LISA's default, or ``vtsched_demo``)
  picks the prompt.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from vtsched.core.errors import InputError
from vtsched_segment_anything.checkpoint import SamVariant

from vtsched_lisa.model import CONVERSATIONS, PROJECTORS, SEG_TOKEN, LisaConfig, LisaModel, LisaProcessor
from vtsched_lisa.sams import LISA_SAM_VARIANTS

__all__ = ["KEY_MAP", "IGNORED", "BASE_KEY_MAP", "map_keys", "published_state_dict", "read_weights", "load_lisa",
           "find_clip", "weights_fingerprint", "base_llava_folder", "read_base_llava"]

# published prefix -> module prefix, in the order they are tried
KEY_MAP: tuple[tuple[str, str], ...] = (
    ("model.embed_tokens.", "model.language_model.embed_tokens."),
    ("model.layers.", "model.language_model.layers."),
    ("model.norm.", "model.language_model.norm."),
    ("lm_head.", "lm_head."),
    ("model.mm_projector.", "model.multi_modal_projector."),
    ("model.text_hidden_fcs.", "model.text_hidden_fcs."),
    ("model.visual_model.", "model.visual_model."),
)
# a base LLaVA-1.5's module keys (transformers' LlavaForConditionalGeneration) -> published LISA keys
BASE_KEY_MAP: tuple[tuple[str, str], ...] = (
    ("model.language_model.", "model."),
    ("model.multi_modal_projector.linear_1.", "model.mm_projector.0."),
    ("model.multi_modal_projector.linear_2.", "model.mm_projector.2."),
    ("lm_head.", "lm_head."),
)
BASE_DEMO = "vtsched:demo"
IGNORED = (re.compile(r"\.rotary_emb\.inv_freq$"), re.compile(r"^model\.vision_tower\."))
SAM_PREFIX = "model.visual_model."
WEIGHT_FILES = ("model.safetensors.index.json", "model.safetensors", "pytorch_model.bin.index.json",
                "pytorch_model.bin")


def _names(keys: list[str], limit: int = 3) -> str:
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def map_keys(published: Mapping[str, torch.Tensor], where: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Module keys from published keys by :data:`KEY_MAP`; unknown keys refused in one line."""
    mapped: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in published.items():
        if any(p.search(key) for p in IGNORED):
            continue
        for source, target in KEY_MAP:
            if key.startswith(source):
                mapped[target + key[len(source):]] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise InputError(f"{where}: unknown keys for a LISA checkpoint: {_names(sorted(unknown))}")
    return mapped


def published_state_dict(model: LisaModel) -> dict[str, torch.Tensor]:
    """The model's weights under the published keys (CLIP left out, as LISA's merge script does)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        if key.startswith("model.vision_tower."):
            continue
        for source, target in KEY_MAP:
            if key.startswith(target):
                out[source + key[len(target):]] = value.detach().clone().contiguous()
                break
        else:
            raise ValueError(f"no published key for {key}")
    return out


def _weight_files(folder: Path) -> list[Path]:
    for name in WEIGHT_FILES:
        path = folder / name
        if path.is_file():
            if name.endswith(".index.json"):
                try:
                    shards = sorted(set(json.loads(path.read_text())["weight_map"].values()))
                except (OSError, ValueError, KeyError):
                    raise InputError(f"{path} is not a weight index (no weight_map)") from None
                missing = [s for s in shards if not (folder / s).is_file()]
                if missing:
                    raise InputError(f"{folder}: weight shards missing: {_names(missing)}")
                return [folder / s for s in shards]
            return [path]
    raise InputError(f"{folder} holds no weights ({', '.join(WEIGHT_FILES)})")


def read_weights(folder: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint folder under its published key (``.bin`` read with ``weights_only``)."""
    state: dict[str, torch.Tensor] = {}
    for path in _weight_files(Path(folder)):
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state.update(load_file(str(path)))
        else:
            try:
                state.update(torch.load(path, map_location="cpu", weights_only=True))
            except Exception as exc:  # torch raises many kinds on a foreign file
                raise InputError(f"{path}: torch.load(weights_only=True) cannot read it "
                                 f"({str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__})"
                                 ) from None
    return state


def weights_fingerprint(folder: str | Path) -> str:
    """A content key of a checkpoint's weights (the segment-anything plugin's file fingerprint), its
    base LLaVA's included."""
    from vtsched_segment_anything.checkpoint import fingerprint

    folder = Path(folder)
    files = _weight_files(folder)
    try:
        base = base_llava_folder(folder, json.loads((folder / "config.json").read_text()))
    except (OSError, ValueError, InputError):
        base = None
    if base is not None:
        files += sorted(base.glob("*.safetensors")) + sorted(base.glob("pytorch_model*.bin"))
    return "-".join(fingerprint(p) for p in files)


def base_llava_folder(folder: Path, data: Mapping[str, Any]) -> Path | None:
    """The config's ``base_llava`` folder (``vtsched:demo``: the shipped demo LLaVA), or ``None``."""
    spec = data.get("base_llava")
    if not spec:
        return None
    if spec == BASE_DEMO:
        from vtsched.core.demo import demo_model_path

        base = demo_model_path()
        if base is None:
            raise InputError(f"{folder}: base_llava {BASE_DEMO} but vtsched ships no demo LLaVA")
        return Path(base)
    base = Path(str(spec))
    base = base if base.is_absolute() else folder / base
    if not (base / "config.json").is_file():
        raise InputError(f"{folder}: base_llava {spec} is not a LLaVA folder (no config.json)")
    return base


def read_base_llava(base: Path) -> tuple[dict[str, torch.Tensor], Any, Any]:
    """A base LLaVA-1.5's weights under published LISA keys (by :data:`BASE_KEY_MAP`; any other key
    refused in one line), its CLIP tower and its image processor."""
    from transformers import AutoImageProcessor, LlavaForConditionalGeneration
    from transformers.utils import logging as hf_logging

    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        llava = LlavaForConditionalGeneration.from_pretrained(str(base), attn_implementation="sdpa")
        image_processor = AutoImageProcessor.from_pretrained(str(base))
    except (OSError, ValueError) as exc:
        raise InputError(f"{base}: cannot load the base LLaVA ({str(exc).splitlines()[0]})") from None
    finally:
        if bar:
            hf_logging.enable_progress_bar()
    published: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in llava.state_dict().items():
        if key.startswith("model.vision_tower."):
            continue
        for source, target in BASE_KEY_MAP:
            if key.startswith(source):
                published[target + key[len(source):]] = value.detach()
                break
        else:
            unknown.append(key)
    if unknown:
        raise InputError(f"{base}: base LLaVA keys with no place in a LISA: {_names(sorted(unknown))}")
    return published, llava.model.vision_tower, image_processor


def find_clip(folder: Path, data: Mapping[str, Any], clip: str | None) -> Path:
    """The CLIP folder: ``clip`` if given, else ``FOLDER/clip``, else the config's ``mm_vision_tower``
    (or ``vision_tower``) when it is a local folder; LISA checkpoints omit CLIP's weights."""
    candidates = [Path(clip)] if clip else [folder / "clip"] + [
        Path(str(data[k])) for k in ("mm_vision_tower", "vision_tower") if data.get(k)]
    for candidate in candidates:
        if (candidate / "config.json").is_file():
            return candidate
    if clip:
        raise InputError(f"CLIP folder not found (no config.json): {clip}")
    named = data.get("mm_vision_tower") or data.get("vision_tower") or "openai/clip-vit-large-patch14"
    raise InputError(f"{folder}: LISA checkpoints omit the CLIP tower; pass --clip FOLDER (a saved {named})")


def _load_clip(clip_folder: Path) -> tuple[Any, Any]:
    from transformers import CLIPImageProcessor, CLIPVisionModel
    from transformers.utils import logging as hf_logging

    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # one load line per tensor file is noise in a command's output
    try:
        tower = CLIPVisionModel.from_pretrained(str(clip_folder), attn_implementation="sdpa")
    except (OSError, ValueError) as exc:
        raise InputError(f"{clip_folder}: cannot load CLIP ({str(exc).splitlines()[0]})") from None
    finally:
        if bar:
            hf_logging.enable_progress_bar()
    return tower, CLIPImageProcessor.from_pretrained(str(clip_folder))


def _llama_config(data: Mapping[str, Any], vocab: int) -> Any:
    from transformers import LlamaConfig

    heads = int(data["num_attention_heads"])
    config = LlamaConfig(
        vocab_size=vocab, hidden_size=int(data["hidden_size"]), intermediate_size=int(data["intermediate_size"]),
        num_hidden_layers=int(data["num_hidden_layers"]), num_attention_heads=heads,
        num_key_value_heads=int(data.get("num_key_value_heads") or heads),
        rms_norm_eps=float(data.get("rms_norm_eps", 1e-6)),
        max_position_embeddings=int(data.get("max_position_embeddings", 2048)),
        rope_parameters={"rope_type": "default", "rope_theta": float(data.get("rope_theta", 10000.0))},
        bos_token_id=data.get("bos_token_id", 1), eos_token_id=data.get("eos_token_id", 2),
        pad_token_id=data.get("pad_token_id", 0), tie_word_embeddings=False,
    )
    config._attn_implementation = "sdpa"
    return config


def _seg_token_id(tokenizer: Any, folder: Path) -> int:
    ids = tokenizer(SEG_TOKEN, add_special_tokens=False)["input_ids"]
    vocab = tokenizer.get_vocab()
    if SEG_TOKEN not in vocab or len(ids) != 1:
        raise InputError(f"{folder}: the tokenizer has no {SEG_TOKEN} token (LISA adds it with "
                         f"tokenizer.add_tokens('{SEG_TOKEN}')); not a LISA tokenizer")
    return int(ids[0])


def load_lisa(path: str | Path, *, clip: str | None = None, device: str = "cpu", dtype: torch.dtype | None = None,
              sam_variants: Mapping[str, SamVariant] | None = None) -> tuple[LisaModel, LisaProcessor]:
    """A LISA checkpoint folder as a :class:`LisaModel` and its processor, every key accounted for.

    SAM's variant is detected among Meta's, the registered ones, :data:`~vtsched_lisa.sams.LISA_SAM_VARIANTS`
    and ``sam_variants`` (name -> variant, for a SAM of another size)."""
    from transformers import AutoTokenizer

    from vtsched_segment_anything.checkpoint import detect_variant, variants

    folder = Path(path)
    if not folder.is_dir():
        raise InputError(f"LISA checkpoint folder not found: {folder}" if not folder.exists()
                         else f"a LISA checkpoint is a folder, not a file: {folder}")
    try:
        data = json.loads((folder / "config.json").read_text())
    except OSError:
        raise InputError(f"{folder} has no config.json: not a checkpoint folder") from None
    except ValueError as exc:
        raise InputError(f"{folder}/config.json is not JSON ({exc})") from None
    published = read_weights(folder)
    base = base_llava_folder(folder, data)
    base_tower = base_image_processor = None
    if base is not None:
        base_published, base_tower, base_image_processor = read_base_llava(base)
        published = {**base_published, **published}  # the LISA folder's own weights win
    projector = str(data.get("mm_projector_type", "linear"))
    if projector not in PROJECTORS:
        raise InputError(f"{folder}: mm_projector_type {projector!r} is not one of {', '.join(PROJECTORS)}")
    conv_type = str(data.get("conv_type", "llava_v1"))
    if conv_type not in CONVERSATIONS:
        raise InputError(f"{folder}: conv_type {conv_type!r} is not one of {', '.join(CONVERSATIONS)}")
    state = map_keys(published, str(folder))
    sam_state = {k[len(SAM_PREFIX):]: v for k, v in state.items() if k.startswith(SAM_PREFIX)}
    if not sam_state:
        raise InputError(f"{folder} has no SAM weights ({SAM_PREFIX}*): a LISA checkpoint carries SAM "
                         "(a plain LLaVA checkpoint runs with `vtsched run`)")
    if "model.language_model.embed_tokens.weight" not in state:
        raise InputError(f"{folder} has no model.embed_tokens.weight: not a LISA checkpoint")
    known = {**variants(), **LISA_SAM_VARIANTS, **(sam_variants or {})}
    try:
        embed_dim, depth, variant = detect_variant(sam_state, known)
    except KeyError:
        raise InputError(f"{folder}: the SAM weights lack image_encoder.patch_embed.proj.weight") from None
    if variant is None:
        raise InputError(f"{folder}: a SAM image encoder {embed_dim} wide with {depth} blocks is no known "
                         f"variant ({', '.join(known)})")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError) as exc:
        raise InputError(f"{folder}: cannot load the tokenizer ({str(exc).splitlines()[0]})") from None
    seg_id = _seg_token_id(tokenizer, folder)
    if base_tower is not None and clip is None:
        tower, image_processor = base_tower, base_image_processor
    else:
        tower, image_processor = _load_clip(find_clip(folder, data, clip))
    vocab = int(state["model.language_model.embed_tokens.weight"].shape[0])
    sam_prompt = known[variant].build()
    out_dim = int(data.get("out_dim", 256))
    prompt_dim = int(sam_prompt.prompt_encoder.embed_dim)
    if prompt_dim != out_dim:
        raise InputError(f"{folder}: config out_dim {out_dim} but the {variant} SAM takes {prompt_dim}-wide prompts")
    config = LisaConfig(
        text_config=_llama_config(data, vocab), vision_config=tower.config, out_dim=out_dim, seg_token_id=seg_id,
        use_mm_start_end=bool(data.get("mm_use_im_start_end", True)),
        vision_feature_layer=int(data.get("mm_vision_select_layer", -2)),
        vision_feature_select_strategy="full" if data.get("mm_vision_select_feature") == "cls_patch" else "default",
        image_token_id=int(tokenizer.unk_token_id if tokenizer.unk_token_id is not None else 0),
        sam_variant=variant, projector_type=projector, prompt_template=CONVERSATIONS[conv_type],
    )
    model = LisaModel(config, sam_prompt)
    model.model.vision_tower = tower
    expected = {k for k in model.state_dict() if not k.startswith("model.vision_tower.")}
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - expected)
    inverse = {t: s for s, t in KEY_MAP}

    def published_name(key: str) -> str:
        for target, source in inverse.items():
            if key.startswith(target):
                return source + key[len(target):]
        return key

    if missing:
        raise InputError(f"{folder}: missing keys for this LISA ({variant} SAM): "
                         f"{_names([published_name(k) for k in missing])}")
    if unexpected:
        raise InputError(f"{folder}: keys this LISA ({variant} SAM) has no place for: "
                         f"{_names([published_name(k) for k in unexpected])}")
    try:
        model.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        detail = next((line.strip() for line in str(exc).splitlines() if "size mismatch" in line), str(exc)[:160])
        raise InputError(f"{folder}: {detail}") from None
    model = model.eval().requires_grad_(False).to(device)
    if dtype is not None:
        model = model.to(dtype)
        model.model.visual_model.float()  # SAM in float32: its postprocessing interpolates logits
    return model, LisaProcessor(tokenizer, image_processor)
