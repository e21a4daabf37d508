"""Training the demo LLaVA from scratch on the procedural VQA set (``vtsched train-demo``).

No pretrained CLIP exists offline, so two auxiliary losses on the vision tower stand in for its
pretraining, both read at the layer LLaVA takes features from (``vision_feature_layer = -2``):

- a per-patch loss: every patch predicts what covers it (background, subject or mark), its
  colour, and for subject patches the subject's shape, so patch features carry meaning the way
  CLIP's do (shape needs the patches to talk to each other, which is what makes it learnable);
- a [CLS] loss: the CLS token predicts the subject's shape, colour and position, so the CLS
  query learns to attend to the subject, as CLIP's does to salient objects. That is what makes
  the ``cls`` partitioner pick subject tokens, the premise of pruning and of ParVTS.

The language model learns to answer with one word and an end-of-sequence token. In half the
batches (``withdraw_prob``) the text tokens stop seeing the visual tokens after a random early
layer (1-3), as in VTW: pretrained LLaVA moves visual information into the text tokens in early
layers (the premise of VTW and ParVTS), and a small model trained from scratch only does so when
asked to. Without it, this model reads the image until its last layers (see the model card).
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

from vtsched.core.shapes import Shape, build_random_llava
from vtsched.core.errors import InputError
from vtsched.core.io import apply_umask
from vtsched.core.demo.synthetic import (
    BACKGROUNDS, MARK_SIZE, POSITIONS, QUESTIONS, SHAPES, SUBJECT_COLOURS, SyntheticSample, draw_scene, mark_origin,
    render, scene_rng,
)

__all__ = ["DEMO_SHAPE", "TrainConfig", "train_demo", "train_demo_recipe", "RECIPE", "TRAIN_SEED"]

DEMO_SHAPE = Shape("demo-trained", 112, 14, 128, 4, 4, 256, 192, 6, 6, 6, 512)
TRAIN_SEED = 1_000  # held-out evaluation uses seeds 1, 2, 3
PROMPT = "USER: <image>\n{question} ASSISTANT:"
COLOURS = list(SUBJECT_COLOURS) + list(BACKGROUNDS)


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    steps: int = 3000
    batch_size: int = 32
    lr: float = 2e-3
    warmup: int = 150
    aux_weight: float = 0.5
    withdraw_prob: float = 0.5
    withdraw_layers: tuple[int, ...] = (1, 2, 3)
    init_from: str = ""  # continue from a saved demo model instead of random weights
    device: str = "cpu"


class _AuxHeads(torch.nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.region = torch.nn.Linear(width, 3)
        self.colour = torch.nn.Linear(width, len(COLOURS))
        self.shape = torch.nn.Linear(width, len(SHAPES) + 1)
        self.cls_shape = torch.nn.Linear(width, len(SHAPES))
        self.cls_colour = torch.nn.Linear(width, len(SUBJECT_COLOURS))
        self.cls_position = torch.nn.Linear(width, len(POSITIONS))


def _patch_labels(scene: dict[str, str], mask: np.ndarray, grid: int, patch: int) -> tuple[np.ndarray, ...]:
    region = np.zeros(mask.shape, dtype=np.int64)
    region[mask] = 1
    x0, y0 = mark_origin(scene["corner"])
    region[y0 : y0 + MARK_SIZE, x0 : x0 + MARK_SIZE] = 2
    share = np.stack([(region == k).reshape(grid, patch, grid, patch).mean((1, 3)) for k in range(3)])
    patch_region = np.where(share[2] > 0.25, 2, np.where(share[1] > 0.3, 1, 0)).reshape(-1)
    colour = np.full(grid * grid, COLOURS.index(scene["background"]))
    colour[patch_region == 1] = COLOURS.index(scene["subject_colour"])
    colour[patch_region == 2] = COLOURS.index(scene["mark_colour"])
    shape = np.where(patch_region == 1, SHAPES.index(scene["shape"]), len(SHAPES))
    return patch_region, colour, shape


def _batch(processor, step: int, config: TrainConfig, grid: int, patch: int):
    start = step * config.batch_size
    samples = [_one(config.seed, start + i) for i in range(config.batch_size)]
    tokenizer = processor.tokenizer
    pixel_values = processor.image_processor([s.image for s in samples], return_tensors="pt")["pixel_values"]
    n_visual = grid * grid
    ids, labels = [], []
    for s in samples:
        prompt = PROMPT.format(question=s.question).replace("<image>", processor.image_token * n_visual)
        p_ids = tokenizer(prompt)["input_ids"]
        a_ids = tokenizer(" " + s.answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        ids.append(p_ids + a_ids)
        labels.append([-100] * len(p_ids) + a_ids)
    width = max(map(len, ids))
    input_ids = torch.full((len(ids), width), tokenizer.pad_token_id)
    label_ids = torch.full((len(ids), width), -100)
    attention = torch.zeros((len(ids), width), dtype=torch.long)
    for i, (a, b) in enumerate(zip(ids, labels)):
        input_ids[i, : len(a)] = torch.tensor(a)
        label_ids[i, : len(b)] = torch.tensor(b)
        attention[i, : len(a)] = 1
    aux = [_patch_labels(s.scene, s.subject_mask, grid, patch) for s in samples]
    targets = {
        "region": torch.tensor(np.stack([a[0] for a in aux])),
        "colour": torch.tensor(np.stack([a[1] for a in aux])),
        "shape": torch.tensor(np.stack([a[2] for a in aux])),
        "cls_shape": torch.tensor([SHAPES.index(s.scene["shape"]) for s in samples]),
        "cls_colour": torch.tensor([list(SUBJECT_COLOURS).index(s.scene["subject_colour"]) for s in samples]),
        "cls_position": torch.tensor([list(POSITIONS).index(s.scene["position"]) for s in samples]),
    }
    return pixel_values, input_ids, label_ids, attention, targets


def _one(seed: int, index: int):
    """Training sample ``index``: one image of the training seed, one drawn question about it."""
    rng = scene_rng(TRAIN_SEED + seed, index)
    scene = draw_scene(rng)
    image, mask = render(scene)
    qtype = str(rng.choice(list(QUESTIONS)))
    tag, question, key = QUESTIONS[qtype]
    return SyntheticSample(f"train-{index}", image, question, scene[key], tag, qtype, scene, mask)


def warmup_cosine(optimiser: torch.optim.Optimizer, warmup: int, steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warmup`` steps, then a cosine decay to zero at ``steps`` (both demo trainers)."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    return torch.optim.lr_scheduler.LambdaLR(optimiser, factor)


def withdrawn_hidden(lm: Any, embeds: torch.Tensor, attention: torch.Tensor, image_mask: torch.Tensor,
                     withdraw_at: int | None) -> torch.Tensor:
    """Last-layer states (before the final norm) of the language model ``lm`` run layer by layer;
    from layer ``withdraw_at`` on, text tokens do not see the image (``None``: they always do).

    The demo LLaVA's second phase and the demo LISA train with it, so that image information moves
    into the text tokens in the first layers, as it does in pretrained LLaVA.
    """
    batch, length = attention.shape
    positions = torch.arange(length, device=embeds.device)[None].expand(batch, length)
    cos, sin = lm.rotary_emb(embeds, positions)
    causal = torch.tril(torch.ones(length, length, dtype=torch.bool, device=embeds.device))
    allowed = causal[None] & attention.bool()[:, None, :]
    allowed = allowed | torch.eye(length, dtype=torch.bool, device=embeds.device)[None]
    blind = allowed & ~((~image_mask)[:, :, None] & image_mask[:, None, :])
    minimum = torch.finfo(embeds.dtype).min

    def additive(mask: torch.Tensor) -> torch.Tensor:
        return torch.zeros(mask.shape, dtype=embeds.dtype, device=embeds.device).masked_fill(~mask, minimum)[:, None]

    seeing = additive(allowed)
    not_seeing = additive(blind) if withdraw_at is not None else seeing
    hidden = embeds
    for index, layer in enumerate(lm.layers):
        mask = seeing if withdraw_at is None or index < withdraw_at else not_seeing
        hidden = layer(hidden, attention_mask=mask, position_embeddings=(cos, sin), position_ids=positions)
    return hidden


def _language_logits(model, embeds, attention, image_mask, withdraw_at: int | None) -> torch.Tensor:
    """The language model's logits; from layer ``withdraw_at`` on, text tokens do not see the image."""
    if withdraw_at is None:
        return model(inputs_embeds=embeds, attention_mask=attention).logits
    lm = model.model.language_model
    return model.lm_head(lm.norm(withdrawn_hidden(lm, embeds, attention, image_mask, withdraw_at)))


def train_demo(out: str | Path, config: TrainConfig = TrainConfig(), progress: bool = True) -> dict:
    """Train, save the model, tokenizer and processor to ``out``, and return training facts."""
    from tqdm.auto import tqdm

    torch.manual_seed(config.seed)
    model, processor = build_random_llava(DEMO_SHAPE, seed=config.seed, device=config.device)
    if config.init_from:
        from transformers import AutoProcessor, LlavaForConditionalGeneration

        model = LlavaForConditionalGeneration.from_pretrained(config.init_from)
        model.to(config.device)  # type: ignore[arg-type]
        processor = AutoProcessor.from_pretrained(config.init_from)
    model.train()
    grid = DEMO_SHAPE.image_size // DEMO_SHAPE.patch_size
    heads = _AuxHeads(DEMO_SHAPE.vision_hidden).to(config.device)
    params = list(model.parameters()) + list(heads.parameters())
    optimiser = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.01, betas=(0.9, 0.98))

    scheduler = warmup_cosine(optimiser, config.warmup, config.steps)
    inner = model.model
    rng = np.random.default_rng(config.seed)
    started = time.time()
    bar = tqdm(range(config.steps), desc="train-demo", disable=not progress)
    history = []
    for step in bar:
        pixel_values, input_ids, labels, attention, targets = _batch(processor, step, config, grid,
                                                                      DEMO_SHAPE.patch_size)
        vision = inner.vision_tower(pixel_values.to(config.device), output_hidden_states=True)
        features = vision.hidden_states[model.config.vision_feature_layer]
        patches, cls = features[:, 1:], features[:, 0]
        image_features = inner.multi_modal_projector(patches)
        embeds = inner.get_input_embeddings()(input_ids.to(config.device))
        image_mask = (input_ids == model.config.image_token_id).to(config.device)
        embeds = embeds.masked_scatter(image_mask[..., None], image_features.reshape(-1, embeds.shape[-1]))
        withdraw_at = None
        if rng.random() < config.withdraw_prob:
            withdraw_at = int(rng.choice(config.withdraw_layers))
        logits = _language_logits(model, embeds, attention.to(config.device), image_mask, withdraw_at)
        lm = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1).to(config.device))
        t = {k: v.to(config.device) for k, v in targets.items()}
        patch_loss = (F.cross_entropy(heads.region(patches).flatten(0, 1), t["region"].flatten())
                      + F.cross_entropy(heads.colour(patches).flatten(0, 1), t["colour"].flatten())
                      + F.cross_entropy(heads.shape(patches).flatten(0, 1), t["shape"].flatten()))
        cls_loss = (F.cross_entropy(heads.cls_shape(cls), t["cls_shape"])
                    + F.cross_entropy(heads.cls_colour(cls), t["cls_colour"])
                    + F.cross_entropy(heads.cls_position(cls), t["cls_position"]))
        loss = lm + config.aux_weight * (patch_loss + cls_loss)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimiser.step()
        scheduler.step()
        if step % 50 == 0 or step == config.steps - 1:
            history.append({"step": step, "loss": loss.item(), "lm": lm.item(), "patch": patch_loss.item(),
                            "cls": cls_loss.item()})
            bar.set_postfix(lm=f"{lm.item():.3f}", patch=f"{patch_loss.item():.3f}", cls=f"{cls_loss.item():.3f}")
    model.eval()
    out = Path(out)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    apply_umask(out.iterdir())  # safetensors writes the weights 0600; every file gets the user's umask
    facts = {"config": asdict(config), "shape": asdict(DEMO_SHAPE), "minutes": (time.time() - started) / 60,
             "parameters": sum(p.numel() for p in model.parameters()), "history": history,
             "torch": torch.__version__, "threads": torch.get_num_threads()}
    (out / "training.json").write_text(json.dumps(facts, indent=2) + "\n")
    return facts


# The shipped model's recipe: learn the task, then learn to move the image into the text tokens early.
RECIPE = (
    TrainConfig(steps=3500, withdraw_prob=0.0),
    TrainConfig(steps=1500, lr=1e-3, warmup=50, withdraw_prob=0.5, withdraw_layers=(2, 3)),
)


def train_demo_recipe(out: str | Path, seed: int = 0, device: str = "cpu", progress: bool = True,
                      scale: float = 1.0) -> dict:
    """Both phases of :data:`RECIPE` from ``seed`` (``scale`` shortens them, for trying it out)."""
    from dataclasses import replace

    if not scale > 0:
        raise InputError(f"scale must be above 0 (1.0 is the shipped recipe), not {scale}")
    out = Path(out)
    first = replace(RECIPE[0], seed=seed, device=device, steps=max(1, int(RECIPE[0].steps * scale)))
    facts_first = train_demo(out / "phase1", first, progress)
    second = replace(RECIPE[1], seed=seed, device=device, steps=max(1, int(RECIPE[1].steps * scale)),
                     init_from=str(out / "phase1"))
    facts = train_demo(out, second, progress)
    facts["phases"] = [facts_first, dict(facts)]
    facts["minutes"] = facts_first["minutes"] + facts["minutes"]
    (out / "training.json").write_text(json.dumps(facts, indent=2) + "\n")
    return facts
