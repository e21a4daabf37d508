"""``cdpruner``: CDPruner (Zhang et al., NeurIPS 2025), a conditional DPP over the visual tokens.

The subject group is the budget's R tokens chosen by greedy MAP inference of a determinantal point
process whose kernel is ``L = diag(q) S diag(q)``: ``S`` the cosine similarity of the tokens' features,
``q`` each token's relevance to the instruction. The greedy adds, R times, the token that most
increases ``log det L_Y`` (fast greedy MAP: an incremental Cholesky factor, Chen et al. 2018), so the
kept tokens are both relevant and unlike each other. Every other token is non-subject.

Reproduced (from the official code, Theia-4869/CDPruner, ``encode_images`` in ``llava_arch.py`` and
``forward`` in ``clip_encoder.py``):

- similarity: cosine of the features after the projector (``visual_features``; Qwen: after the merger);
- relevance with a CLIP (``clip_path``: a ``transformers`` CLIP checkpoint with a text tower, e.g.
  ``openai/clip-vit-large-patch14-336``, the tower LLaVA-1.5 was built from): the question is tokenized,
  zero-padded to a multiple of the text tower's ``max_position_embeddings`` and cut into segments of
  that length, each embedded by the text tower and its projection; each visual token's embedding is
  the CLIP visual projection of the post-LayerNorm of its tower features (``vision_feature_layer``'s
  hidden states, ``extras["vision_features"]``); relevance is the mean over segments of the *negated*
  cosine, then min-max scaled, ``(q - min + 1e-6) / (max - min)`` (the code negates; the paper writes
  the plain similarity, and the authors say they observed the inversion with LLaVA's CLIP only,
  Theia-4869/CDPruner#14);
- the kernel ``q_i S_ij q_j`` and the fast greedy MAP loop, ties to the lower index (``argmax``).

Differs, and why:

- no ``clip_path`` (the default; LLaVA-hf checkpoints carry no text tower, Qwen has no CLIP): relevance
  is the cosine between each token's features after the projector and the mean of the LLM's own input
  embeddings of the question tokens (``extras["question_embeddings"]``): both live in the LLM's input
  space. It is not negated (the inversion is a CLIP observation), then min-max scaled as above.
- the min-max scaling is over each sample's tokens (the official code scales over the whole batch,
  so a sample's selection would depend on its batch mates).
- the post-LayerNorm is the CLIP checkpoint's (the official code uses the LLaVA tower's own; they are
  the same weights for LLaVA-1.5's tower). A ``clip_path`` whose vision width is not the tower's is
  refused.
- when every remaining token's gain is below 1e-12 (the kernel's rank is used up: more tokens than
  feature dimensions, or duplicates), the rest are taken in index order: the official loop takes the
  square root of a non-positive gain there, and its NaN gains make ``argmax`` take the lowest index left.
- all kernel arithmetic is float64 (the official code uses float32); positions: kept tokens keep
  their original position ids (the official code renumbers the shortened sequence).
- LLaVA-NeXT: the official code selects per tile (the same R per tile, newline tokens all kept on top).
  Here newline tokens are kept first and count in the budget; ``budget_mode="global"`` (default) runs
  one DPP over every image token of the span, ``"per_tile"`` splits the rest of R over the tiles as
  ``cls`` does (:func:`~vtsched.partitioners.cls.tile_quotas`) and runs one DPP per tile. Relevance is
  scaled over all the image's tokens in both modes, as the official code scales over all tiles.
- video (not in the official code): ``"per_frame"`` runs one DPP per frame, the budget split evenly
  over the frames (:func:`~vtsched.partitioners.cls.frame_quotas`); relevance is scaled over the clip.
- a relevance that is the same for every token (max = min) leaves the kernel as ``S``.

Scores: each token's relevance ``q`` (higher: more relevant to the question).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, ClassVar

import torch

from vtsched.core.budget import Budget
from vtsched.core.errors import InputError
from vtsched.core.geometry import ModelGeometry
from vtsched.core.partition import NON_SUBJECT, SUBJECT, Partition
from vtsched.core.policy import Partitioner
from vtsched.core.tokens import PromptBatch, Sample
from vtsched.partitioners.cls import BudgetMode, frame_quotas, tile_quotas

__all__ = ["CDPruner", "conditional_kernel", "fast_greedy_map", "min_max"]

GAIN_FLOOR = 1e-12  # below this no token adds volume: the kernel's rank is used up


def min_max(relevance: torch.Tensor) -> torch.Tensor:
    """The official scaling ``(q - min + 1e-6) / (max - min)``; all ones when every value is the same."""
    span = relevance.max() - relevance.min() if relevance.numel() else relevance.new_zeros(())
    if relevance.numel() == 0 or float(span) == 0.0:
        return torch.ones_like(relevance)
    return (relevance - relevance.min() + 1e-6) / span


def conditional_kernel(features: torch.Tensor, relevance: torch.Tensor) -> torch.Tensor:
    """``(n, n)`` float64 ``L = diag(q) S diag(q)``, ``S`` the cosine similarity of ``features`` ``(n, d)``."""
    normed = torch.nn.functional.normalize(features.detach().double(), dim=-1)
    q = relevance.double().to(normed.device)
    return q[:, None] * (normed @ normed.T) * q[None, :]


def fast_greedy_map(kernel: torch.Tensor, count: int) -> torch.Tensor:
    """Greedy MAP of the DPP with ``kernel`` ``(n, n)``: ``count`` indices in the order chosen."""
    n = kernel.shape[0]
    count = min(count, n)
    factors = torch.zeros(count, n, dtype=torch.float64)  # rows of the incremental Cholesky factor
    gains = torch.diagonal(kernel).clone().double()  # each token's marginal gain in det (squared residual)
    chosen = torch.empty(count, dtype=torch.long)
    taken = torch.zeros(n, dtype=torch.bool)
    for i in range(count):
        j = int(torch.argmax(gains))
        if float(gains[j]) <= GAIN_FLOOR:  # nothing adds volume: the rest in index order
            chosen[i:] = torch.nonzero(~taken).flatten()[: count - i]
            break
        chosen[i], taken[j] = j, True
        row = (kernel[j].double() - factors[:i, j] @ factors[:i]) / gains[j].sqrt()
        factors[i] = row
        gains = gains - row.square()
        gains[taken] = -torch.inf
    return chosen


@dataclass(frozen=True)
class CDPruner(Partitioner):
    """The budget's tokens by greedy MAP of a DPP whose kernel weighs feature similarity by question relevance."""

    name: ClassVar[str] = "cdpruner"
    clip_path: str | None = None
    budget_mode: BudgetMode = "global"

    def __post_init__(self) -> None:
        if self.clip_path is not None:
            _clip_config(str(self.clip_path))  # refuse a bad path before any image is seen

    def selection_flops(self, num_visual: int, keep: int, geometry: ModelGeometry) -> float:
        """The ``(n, n)`` similarity of the features entering the LLM (``2 n^2 d``), the relevance against
        the question (``2 n d``) and the greedy MAP's Cholesky rows (step ``i`` multiplies an ``(i, n)``
        block: ``2 i n``, ``R (R - 1) n`` over R steps). A CLIP text tower (``clip_path``) is not counted."""
        n, d = num_visual, geometry.hidden_size
        return 2.0 * n * n * d + 2.0 * n * d + float(keep) * (keep - 1) * n

    def partition(self, batch: PromptBatch, budget: Budget) -> Partition:
        assignment, scores = [], []
        for b, sample in enumerate(batch.samples):
            keep = budget.resolve(sample.num_visual)
            ids = torch.ones(sample.num_visual, dtype=torch.long)
            relevance = torch.zeros(sample.num_visual, dtype=torch.float64)
            untiled, parts = self._parts(sample, keep)
            ids[untiled[:keep]] = 0
            image = torch.cat([members for members, _ in parts]) if parts else untiled[:0]
            if image.numel():
                relevance[image] = min_max(self._relevance(b, sample, image))
            for members, count in parts:
                kernel = conditional_kernel(sample.visual_features[members], relevance[members]).cpu()
                ids[members[fast_greedy_map(kernel, count)]] = 0
            assignment.append(ids)
            scores.append(relevance.float())
        return Partition((SUBJECT, NON_SUBJECT), tuple(assignment), tuple(scores))

    def _parts(self, sample: Sample, keep: int) -> tuple[torch.Tensor, list[tuple[torch.Tensor, int]]]:
        """``(tokens kept first, [(image tokens, count)...])``: LLaVA-NeXT's newline tokens first, then one
        DPP over the image tokens (``global``), one per tile (``per_tile``) or one per video frame with the
        budget split evenly over the frames (``per_frame``)."""
        by_frame = frame_quotas(sample, keep) if self.budget_mode == "per_frame" else None
        if by_frame is not None:  # a still image under per_frame is one part, as under global
            return by_frame
        split = tile_quotas(sample, keep)
        if split is None:
            return torch.arange(0), [(torch.arange(sample.num_visual), keep)]
        untiled, quotas = split
        if self.budget_mode == "per_tile":
            return untiled, list(quotas)
        tiled = torch.cat([members for members, _ in quotas]).sort().values if quotas else untiled[:0]
        return untiled, [(tiled, keep - min(keep, untiled.numel()))]

    def _relevance(self, b: int, sample: Sample, tokens: torch.Tensor) -> torch.Tensor:
        """Raw relevance of ``tokens`` (before min-max scaling)."""
        if self.clip_path is not None:
            return _clip_relevance(b, sample, tokens, str(self.clip_path))
        question = sample.extras.get("question_embeddings")
        if not isinstance(question, torch.Tensor) or question.dim() != 2 or question.shape[0] == 0:
            raise InputError(f"sample {b}: cdpruner without clip_path needs the LLM's embeddings of the question "
                             "(extras['question_embeddings']); this adapter does not give them, or the question is empty")
        if question.shape[-1] != sample.visual_features.shape[-1]:
            raise InputError(f"sample {b}: the question embeddings have width {question.shape[-1]}, the visual "
                             f"features {sample.visual_features.shape[-1]}; cdpruner compares them in one space")
        text = torch.nn.functional.normalize(question.detach().double().mean(0), dim=-1)
        image = torch.nn.functional.normalize(sample.visual_features[tokens].detach().double(), dim=-1)
        return (image @ text.to(image.device)).cpu()


# -- the CLIP text tower ------------------------------------------------------------------------------

@lru_cache(maxsize=4)
def _clip_config(path: str) -> Any:
    """The CLIP config at ``path``, or one line saying why there is none."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"cdpruner: clip_path {path!r} holds no model config ({reason})") from None
    if getattr(config, "model_type", None) != "clip" or getattr(config, "text_config", None) is None:
        raise InputError(f"cdpruner: clip_path {path!r} is a {getattr(config, 'model_type', '?')!r} model, not a CLIP "
                         "model with a text tower and a visual projection (e.g. openai/clip-vit-large-patch14-336)")
    return config


@lru_cache(maxsize=2)
def _clip(path: str) -> tuple[Any, Any]:
    """``(CLIPModel, tokenizer)`` loaded once per path, on the CPU, in evaluation mode."""
    from transformers import AutoTokenizer, CLIPModel

    _clip_config(path)
    try:
        model = CLIPModel.from_pretrained(path).eval()
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"cdpruner: clip_path {path!r}: the CLIP weights or tokenizer do not load ({reason})") from None
    return model, tokenizer


@torch.inference_mode()
def clip_text_embeds(path: str, question: str) -> torch.Tensor:
    """``(M, P)`` the question's CLIP text embeddings, one per ``max_position_embeddings`` segment (zero-padded)."""
    model, tokenizer = _clip(path)
    width = model.config.text_config.max_position_embeddings
    encoded = tokenizer(text=question, return_tensors="pt")
    ids, mask = encoded["input_ids"], encoded["attention_mask"]
    pad = -ids.shape[1] % width
    ids = torch.cat((ids, ids.new_zeros(1, pad)), dim=1).view(-1, width)
    mask = torch.cat((mask, mask.new_zeros(1, pad)), dim=1).view(-1, width)
    pooled = model.text_model(input_ids=ids, attention_mask=mask).pooler_output
    return model.text_projection(pooled)


@torch.inference_mode()
def clip_image_embeds(path: str, vision_features: torch.Tensor) -> torch.Tensor:
    """``(n, P)`` CLIP image embeddings of tower features ``(n, C)``: post-LayerNorm, then the visual projection."""
    model, _ = _clip(path)
    return model.visual_projection(model.vision_model.post_layernorm(vision_features.float().cpu()))


def _clip_relevance(b: int, sample: Sample, tokens: torch.Tensor, path: str) -> torch.Tensor:
    question = sample.extras.get("question")
    tower = sample.extras.get("vision_features")
    if not isinstance(question, str) or not question.strip():
        raise InputError(f"sample {b}: cdpruner with clip_path needs the question text (extras['question'], set by "
                         "Scheduler.prepare)")
    width = _clip_config(path).vision_config.hidden_size
    if not isinstance(tower, torch.Tensor) or tower.dim() != 2 or tower.shape[-1] != width:
        have = "none" if not isinstance(tower, torch.Tensor) else f"width {tower.shape[-1]}"
        raise InputError(f"sample {b}: the CLIP at {path!r} projects vision features of width {width}; this model's "
                         f"tower features have {have} (leave clip_path unset on this family)")
    image = torch.nn.functional.normalize(clip_image_embeds(path, tower[tokens]).double(), dim=-1)
    text = torch.nn.functional.normalize(clip_text_embeds(path, question).double(), dim=-1)
    return (-(image @ text.T)).mean(-1)
