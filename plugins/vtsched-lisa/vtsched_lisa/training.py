"""Training the demo LISA on the procedural scenes (``vtsched train-demo-lisa``).

The demo LISA is LISA's recipe at toy size on top of vtsched's shipped demo LLaVA (whose CLIP
tower, projector and LLaMA weights stay as they are): a ``[SEG]`` token (its embedding and output
rows), LoRA on the LLaMA's query and value projections (rank :attr:`TrainConfig.lora_rank`,
merged into the weights when saved, as LISA merges its LoRA), the ``text_hidden_fcs``
projection and a SAM built from segment-anything's classes at toy size
(:func:`vtsched_lisa.sams.build_demo_sam`), trained from scratch together.

Each training image (seed ``TRAIN_SEED + seed``; held-out evaluation uses seeds 1-3) gets one of
two questions, teacher-forced with the reply ``[SEG].`` exactly as the adapter builds prompts:
"Segment the big shape." (the subject's mask) or "Segment the small square in the corner." (the
mark's mask). The mask comes from the ``[SEG]`` token's normed last-layer state, projected and
decoded by SAM's mask decoder, as at inference. Losses:

- **mask**: per-pixel binary cross-entropy plus dice, at the image's size;
- **where** (auxiliary, weight ``aux_weight``): a linear head on the ``[SEG]`` state predicts
  where the target is (the mark's corner, or the subject's position) and what it looks like (the
  mark's colour, or the subject's shape and colour). As in real LISA, the ``[SEG]`` state must say
  *which* object and *where*; the head (not shipped) makes the LLM carry that in the state;
- **reply**: next-token cross-entropy on ``[SEG].</s>``, so ``--generate`` answers with ``[SEG]``.

Two choices make the ``[SEG]`` state, not SAM's own image embedding, locate the target (see the
model card):

- **decoys on SAM's side**: with probability ``decoy_prob``, the image SAM encodes (never the one
  CLIP and the LLM see) has a decoy mark painted in every other corner, so that SAM's embedding
  alone cannot tell which small square the question is about: only the ``[SEG]`` prompt can. At
  evaluation both see the same, undecorated, image;
- **early read-out** (as the demo LLaVA's second phase): with probability ``withdraw_prob`` the
  text tokens, ``[SEG]`` included, stop seeing the visual tokens after layer 2 or 3, so the
  ``[SEG]`` state gathers what it needs from the image early, as pretrained LLaVA's text tokens do
  (the premise of ParVTS).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["TRAIN_SEED", "LoraLinear", "TrainConfig", "train_demo_lisa"]

TRAIN_SEED = 2_000  # the demo LLaVA trained on seed 1000; held-out evaluation uses seeds 1, 2, 3
REPLY = "[SEG]."


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    steps: int = 2400
    batch_size: int = 24
    lr: float = 1.5e-3
    warmup: int = 100
    lora_rank: int = 8
    aux_weight: float = 0.5
    reply_weight: float = 0.1
    decoy_prob: float = 0.75
    withdraw_prob: float = 0.5
    withdraw_layers: tuple[int, ...] = (2, 3)
    threads: int = 1
    device: str = "cpu"


class LoraLinear(torch.nn.Module):
    """``base(x) + (x A^T) B^T``: a frozen Linear with a trainable low-rank update (merged on save)."""

    def __init__(self, base: torch.nn.Linear, rank: int) -> None:
        super().__init__()
        self.base = base
        self.a = torch.nn.Parameter(torch.randn(rank, base.in_features) / math.sqrt(base.in_features))
        self.b = torch.nn.Parameter(torch.zeros(base.out_features, rank))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.a.t()) @ self.b.t()

    def merged(self) -> torch.nn.Linear:
        with torch.no_grad():
            self.base.weight += self.b @ self.a
        return self.base


def _wheres() -> list[str]:
    from vtsched.core.demo.synthetic import CORNERS, POSITIONS

    return [f"corner:{c}" for c in CORNERS] + [f"subject:{p}" for p in POSITIONS]


class _WhereHead(torch.nn.Module):
    def __init__(self, hidden: int) -> None:
        from vtsched.core.demo.synthetic import SHAPES, SUBJECT_COLOURS

        super().__init__()
        self.where = torch.nn.Linear(hidden, len(_wheres()))
        self.colour = torch.nn.Linear(hidden, len(SUBJECT_COLOURS))
        self.shape = torch.nn.Linear(hidden, len(SHAPES) + 1)


def _scene(seed: int, index: int) -> tuple[dict[str, str], Any, np.ndarray, np.ndarray, str]:
    from vtsched.core.demo.synthetic import draw_scene, mark_mask, render, scene_rng

    rng = scene_rng(TRAIN_SEED + seed, index)
    scene = draw_scene(rng)
    image, subject = render(scene)
    kind = "corner" if rng.random() < 0.5 else "subject"
    return scene, image, subject, mark_mask(scene), kind


def _decoyed(image: Any, scene: dict[str, str], rng: np.random.Generator) -> np.ndarray:
    """SAM's view with a decoy mark (a random subject colour) in every corner but the mark's."""
    from vtsched.core.demo.synthetic import (
        CORNERS,
        MARK_SIZE,
        SUBJECT_COLOURS,
        mark_origin,
    )

    pixels = np.array(image.convert("RGB"))
    colours = list(SUBJECT_COLOURS.values())
    for corner in CORNERS:
        if corner != scene["corner"]:
            x0, y0 = mark_origin(corner)
            pixels[y0:y0 + MARK_SIZE, x0:x0 + MARK_SIZE] = colours[int(rng.integers(len(colours)))]
    return pixels


def _decode_batch(sam: Any, embeddings: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
    """SAM's mask decoder on ``B`` images with one prompt each: ``MaskDecoder.predict_masks`` with
    the image batch as the mask batch (segment-anything repeats one image per prompt instead)."""
    decoder = sam.mask_decoder
    b = embeddings.shape[0]
    sparse, dense = sam.prompt_encoder(points=None, boxes=None, masks=None)
    sparse = torch.cat((sparse.expand(b, -1, -1), prompts[:, None]), dim=1)
    output = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)[None].expand(b, -1, -1)
    tokens = torch.cat((output, sparse), dim=1)
    src = embeddings + dense
    pos = sam.prompt_encoder.get_dense_pe().expand(b, -1, -1, -1)
    _, c, h, w = src.shape
    hs, src = decoder.transformer(src, pos, tokens)
    mask_tokens = hs[:, 1:1 + decoder.num_mask_tokens]
    upscaled = decoder.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
    hyper = decoder.output_hypernetworks_mlps[0](mask_tokens[:, 0])  # multimask_output=False: mask 0
    _, c2, h2, w2 = upscaled.shape
    return (hyper[:, None] @ upscaled.reshape(b, c2, h2 * w2)).reshape(b, 1, h2, w2)


def _dice(logits: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    p = logits.sigmoid().flatten(1)
    t = truth.flatten(1)
    return (1 - (2 * (p * t).sum(1) + 1) / (p.sum(1) + t.sum(1) + 1)).mean()


def train_demo_lisa(out: str | Path, config: TrainConfig = TrainConfig(), progress: bool = True,
                    log: Any = None) -> dict[str, Any]:
    """Train the demo LISA from ``config.seed``; save it (and ``training.json``) to ``out``."""
    import tempfile

    from tqdm.auto import tqdm
    from vtsched.core.demo.synthetic import CORNERS, POSITIONS, SHAPES, SUBJECT_COLOURS
    from vtsched.core.demo.training import warmup_cosine, withdrawn_hidden
    from vtsched.core.engine.rows import pad_stack
    from vtsched.core.tokens import Role

    from vtsched_lisa.data import SYNTHETIC_QUESTIONS
    from vtsched_lisa.demo_lisa import init_demo_lisa, save_demo_lisa
    from vtsched_lisa.segment import lisa_scheduler

    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    with tempfile.TemporaryDirectory() as tmp:
        init_demo_lisa(tmp, seed=config.seed)
        adapter = lisa_scheduler(tmp, device=config.device).adapter
    model, processor = adapter.model, adapter.processor
    inner = model.model
    lm = inner.language_model
    sam = model.sam
    seg_id = model.config.seg_token_id
    base_rows = seg_id  # rows below the [SEG] id are the demo LLaVA's and stay as they are
    model.requires_grad_(False)
    loras = []
    for layer in lm.layers:
        for name in ("q_proj", "v_proj"):
            wrapped = LoraLinear(getattr(layer.self_attn, name), config.lora_rank).to(config.device)
            setattr(layer.self_attn, name, wrapped)
            loras.append(wrapped)
    embed, head = lm.embed_tokens.weight, model.lm_head.weight
    embed.requires_grad_(True)
    head.requires_grad_(True)
    inner.text_hidden_fcs.requires_grad_(True)
    sam.requires_grad_(True)
    hidden = model.config.text_config.hidden_size
    aux = _WhereHead(hidden).to(config.device)
    params = ([embed, head] + [p for m in loras for p in m.parameters() if p.requires_grad]
              + list(inner.text_hidden_fcs.parameters()) + list(sam.parameters()) + list(aux.parameters()))
    optimiser = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0, betas=(0.9, 0.98))

    scheduler = warmup_cosine(optimiser, config.warmup, config.steps)
    wheres = _wheres()
    colours, shapes = list(SUBJECT_COLOURS), list(SHAPES)
    rng = np.random.default_rng([config.seed, 7])
    model.train()
    sam.train()
    started = time.time()
    history: list[dict[str, float]] = []
    bar = tqdm(range(config.steps), desc="train-demo-lisa", disable=not progress)
    for step in bar:
        scenes = [_scene(config.seed, step * config.batch_size + i) for i in range(config.batch_size)]
        images = [s[1] for s in scenes]
        questions = [SYNTHETIC_QUESTIONS[s[4]] for s in scenes]
        with torch.no_grad():
            batch = adapter.prepare(images, questions, reply=REPLY)
        ids = pad_stack([s.input_ids for s in batch.samples], int(processor.tokenizer.pad_token_id))
        attention = pad_stack([torch.ones_like(s.input_ids) for s in batch.samples], 0)
        visual = pad_stack([s.roles == Role.VISUAL for s in batch.samples], False)
        ids, attention, visual = ids.to(config.device), attention.to(config.device), visual.to(config.device)
        embeds = F.embedding(ids, embed)
        features = torch.stack([s.visual_features for s in batch.samples]).to(config.device)
        embeds = embeds.masked_scatter(visual[..., None], features.reshape(-1, hidden).to(embeds.dtype))
        withdraw_at = int(rng.choice(config.withdraw_layers)) if rng.random() < config.withdraw_prob else None
        states = lm.norm(withdrawn_hidden(lm, embeds, attention, visual, withdraw_at))
        seg_at = (ids == seg_id).float().argmax(1)
        rows = torch.arange(len(scenes), device=ids.device)
        seg_states = states[rows, seg_at]
        # the reply: [SEG] . </s> predicted from the token before each
        reply_at = seg_at[:, None] + torch.arange(-1, 2, device=ids.device)[None]
        reply_logits = F.linear(states[rows[:, None], reply_at], head)
        reply_loss = F.cross_entropy(reply_logits.flatten(0, 1), ids[rows[:, None], reply_at + 1].flatten())
        # SAM: its own view (decoys in the other corners, sometimes), one embedding per image
        views = [_decoyed(img, s[0], rng) if rng.random() < config.decoy_prob else np.asarray(img.convert("RGB"))
                 for img, s in zip(images, scenes)]
        pixels = torch.from_numpy(np.stack(views)).permute(0, 3, 1, 2).float().to(config.device)
        embeddings = sam.image_encoder(sam.preprocess(pixels))
        prompts = inner.text_hidden_fcs[0](seg_states)
        low_res = _decode_batch(sam, embeddings, prompts)
        size = tuple(images[0].size[::-1])
        logits = sam.postprocess_masks(low_res, size, size)[:, 0]
        truth = torch.from_numpy(np.stack([s[3] if s[4] == "corner" else s[2] for s in scenes])).float()
        truth = truth.to(config.device)
        mask_loss = F.binary_cross_entropy_with_logits(logits, truth) + _dice(logits, truth)
        where_t = torch.tensor([wheres.index(f"corner:{s[0]['corner']}") if s[4] == "corner"
                                else wheres.index(f"subject:{s[0]['position']}") for s in scenes], device=ids.device)
        colour_t = torch.tensor([colours.index(s[0]["mark_colour" if s[4] == "corner" else "subject_colour"])
                                 for s in scenes], device=ids.device)
        shape_t = torch.tensor([len(shapes) if s[4] == "corner" else shapes.index(s[0]["shape"]) for s in scenes],
                               device=ids.device)
        aux_loss = (F.cross_entropy(aux.where(seg_states), where_t) + F.cross_entropy(aux.colour(seg_states), colour_t)
                    + F.cross_entropy(aux.shape(seg_states), shape_t))
        loss = mask_loss + config.aux_weight * aux_loss + config.reply_weight * reply_loss
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        embed.grad[:base_rows] = 0  # the demo LLaVA's rows stay as they are
        head.grad[:base_rows] = 0
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimiser.step()
        scheduler.step()
        if step % 25 == 0 or step == config.steps - 1:
            with torch.no_grad():
                pred, t = logits > 0, truth > 0.5
                iou = ((pred & t).flatten(1).sum(1).float() / (pred | t).flatten(1).sum(1).clamp(min=1).float())
                kinds = np.array([s[4] for s in scenes])
                record = {"step": step, "loss": loss.item(), "mask": mask_loss.item(), "aux": aux_loss.item(),
                          "reply": reply_loss.item(), "minutes": (time.time() - started) / 60,
                          "train_iou_subject": float(iou[torch.from_numpy(kinds == "subject")].mean()),
                          "train_iou_corner": float(iou[torch.from_numpy(kinds == "corner")].mean()),
                          "withdrawn_after": withdraw_at}
            history.append(record)
            bar.set_postfix(mask=f"{record['mask']:.3f}", aux=f"{record['aux']:.3f}",
                            iou_s=f"{record['train_iou_subject']:.2f}", iou_c=f"{record['train_iou_corner']:.2f}")
            if log is not None:
                print(json.dumps(record), file=log, flush=True)
    # merge LoRA into the LLaMA's projections, as LISA's merge script does, and save
    for layer in lm.layers:
        for name in ("q_proj", "v_proj"):
            setattr(layer.self_attn, name, getattr(layer.self_attn, name).merged())
    model.eval().requires_grad_(False)
    out = Path(out)
    save_demo_lisa(model, processor, out)
    facts = {"config": asdict(config), "train_seed": TRAIN_SEED + config.seed,
             "minutes": (time.time() - started) / 60, "torch": torch.__version__, "threads": torch.get_num_threads(),
             "trained_parameters": {
                 "seg_rows": 2 * hidden, "lora": sum(p.numel() for m in loras for p in (m.a, m.b)),
                 "text_hidden_fcs": sum(p.numel() for p in inner.text_hidden_fcs.parameters()),
                 "sam": sum(p.numel() for p in sam.parameters())},
             "shipped_bytes": (out / "model.safetensors").stat().st_size,
             "questions": dict(SYNTHETIC_QUESTIONS), "corners": list(CORNERS), "positions": list(POSITIONS),
             "history": history}
    (out / "training.json").write_text(json.dumps(facts, indent=2) + "\n")
    return facts
