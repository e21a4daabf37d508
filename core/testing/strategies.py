"""Hypothesis strategies and helpers for testing vtsched and its plugins.

Strategies are keyword-only and valid by construction with small bounds, so a plugin author can
reuse them:

- models and prompts: ``tiny_llava_shapes()``, ``tiny_llava()``, ``prompts()``;
- the vocabulary: ``schedules()`` (every registered event kind: the built-ins, or the ones given),
  ``geometries()``, ``group_sets()``, ``token_budgets()`` (:class:`Budget` values),
  ``budgets()`` (token counts), ``prompt_batches()`` (synthetic :class:`PromptBatch` es whose
  samples have different numbers of visual tokens), ``fusion_inputs()``.

Models are built with random weights and cached per shape, so a property can draw shapes freely.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from functools import lru_cache

import torch
from hypothesis import strategies as st

from vtsched.core.budget import Budget
from vtsched.core.demo.shapes import QUESTION_WORDS, random_image
from vtsched.core.shapes import SHAPES, Shape, build_random_llava
from vtsched.core.fusion import FusionInputs
from vtsched.core.geometry import ModelGeometry
from vtsched.core.pixels import TokenBoxes, grid_boxes
from vtsched.core.partition import NON_SUBJECT, SUBJECT
from vtsched.core.events import BUILTIN_EVENTS, BUILTIN_RANKERS, DrawState, Event, Layout
from vtsched.core.schedule import BUILTIN_KINDS, Schedule, Stream
from vtsched.core.tokens import PromptBatch, Role, Sample

__all__ = [
    "TinyShape", "tiny_llava_shapes", "tiny_llava", "random_image", "prompts", "budgets", "schedules",
    "QUESTION_WORDS", "geometries", "group_sets", "token_budgets", "prompt_batches", "fusion_inputs",
    "BUILTIN_FUSION_RULES", "GROUP_NAMES",
]

BUILTIN_FUSION_RULES = ("fixed", "size", "attention")
GROUP_NAMES = (SUBJECT, NON_SUBJECT, "background", "corner", "rest")  # what group_sets() draws from


@dataclass(frozen=True)
class TinyShape:
    """Parameters of a tiny random LLaVA, hashable so models can be cached."""

    layers: int = 2
    heads: int = 2
    kv_heads: int = 2
    head_dim: int = 8
    image_size: int = 28
    vision_layers: int = 2
    seed: int = 0

    def shape(self) -> Shape:
        return Shape(
            "tiny", self.image_size, 14, 16, self.vision_layers, 2, 32,
            self.heads * self.head_dim, self.layers, self.heads, self.kv_heads, 2 * self.heads * self.head_dim,
        )


@st.composite
def tiny_llava_shapes(draw, *, max_layers: int = 3, max_visual_side: int = 3, min_layers: int = 1) -> TinyShape:
    """Tiny LLaVA geometries: min_layers..max_layers layers, MHA or GQA, 4..max_visual_side^2 visual tokens."""
    heads = draw(st.sampled_from([2, 4]))
    kv_heads = draw(st.sampled_from([h for h in (1, 2, 4) if heads % h == 0]))
    return TinyShape(
        layers=draw(st.integers(min_layers, max_layers)),
        heads=heads,
        kv_heads=kv_heads,
        head_dim=draw(st.sampled_from([4, 8])),
        image_size=14 * draw(st.integers(2, max_visual_side)),
        vision_layers=draw(st.integers(2, 3)),
        seed=draw(st.integers(0, 3)),
    )


@lru_cache(maxsize=32)
def tiny_llava(shape: TinyShape, dtype: torch.dtype = torch.float64, attn_implementation: str = "sdpa"):
    """``(model, processor)`` for ``shape``, cached; do not modify the returned model."""
    return build_random_llava(shape.shape(), seed=shape.seed, dtype=dtype, attn_implementation=attn_implementation)


@st.composite
def prompts(draw, *, min_size: int = 1, max_size: int = 3):
    """A batch of (image, question) pairs with questions of different lengths."""
    size = draw(st.integers(min_size, max_size))
    images, questions = [], []
    for _ in range(size):
        images.append(random_image(draw(st.integers(0, 10_000)), draw(st.integers(16, 60)), draw(st.integers(16, 60))))
        words = draw(st.lists(st.sampled_from(QUESTION_WORDS), min_size=1, max_size=8))
        questions.append(" ".join(words) + "?")
    return images, questions


def budgets(*, num_visual: int):
    """Token counts 0..num_visual."""
    return st.integers(0, num_visual)


def token_budgets(*, num_visual: int, ratios: bool = True):
    """:class:`Budget` values valid for images of at least ``num_visual`` tokens: a count
    ``0..num_visual`` or (with ``ratios``) a ratio in [0, 1]."""
    counts = st.integers(0, num_visual).map(lambda n: Budget(count=n))
    if not ratios:
        return counts
    shares = st.one_of(st.sampled_from([0.0, 0.25, 0.5, 1.0]), st.floats(0.0, 1.0, allow_subnormal=False))
    return st.one_of(counts, shares.map(lambda r: Budget(ratio=r)))


@st.composite
def geometries(draw, *, min_layers: int = 1, max_layers: int = 4, min_visual: int = 1,
               max_visual: int = 16) -> ModelGeometry:
    """Model geometries: min_layers..max_layers layers, MHA or GQA, min_visual..max_visual visual tokens."""
    heads = draw(st.sampled_from([1, 2, 4]))
    kv_heads = draw(st.sampled_from([h for h in (1, 2, 4) if heads % h == 0]))
    head_dim = draw(st.sampled_from([4, 8, 16]))
    hidden = heads * head_dim
    num_visual = draw(st.integers(min_visual, max_visual))
    vision_hidden = draw(st.sampled_from([8, 16, 32]))
    return ModelGeometry(
        num_layers=draw(st.integers(min_layers, max_layers)),
        hidden_size=hidden,
        intermediate_size=hidden * draw(st.integers(1, 4)),
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        vocab_size=draw(st.integers(16, 1024)),
        num_visual=num_visual,
        vision_layers=draw(st.integers(0, 3)),
        vision_hidden_size=vision_hidden,
        vision_intermediate_size=2 * vision_hidden,
        vision_tokens=num_visual + 1,
    )


def group_sets(*, min_size: int = 1, max_size: int = 3, names: tuple[str, ...] = GROUP_NAMES):
    """Tuples of distinct group names (the first is the subject), ``min_size..max_size`` long.

    Names vary on purpose: a policy must schedule ``groups[0]`` as the subject, whatever it is called.
    """
    return st.lists(st.sampled_from(names), min_size=min_size, max_size=max_size, unique=True).map(tuple)


@st.composite
def schedules(draw, *, max_layers: int = 6, max_groups: int = 3, max_streams: int = 3,
              max_events_per_layer: int = 2, fusion_rules: tuple[str, ...] = BUILTIN_FUSION_RULES,
              kinds: Sequence[type[Event]] = BUILTIN_EVENTS, rankers: Mapping[str, type] | None = None) -> Schedule:
    """Valid schedules drawing every event kind of ``kinds`` (default: the built-ins; a plugin passes
    its own too, e.g. ``(*BUILTIN_EVENTS, MyEvent)``) and every ranker of ``rankers`` (classes by name;
    default: the built-ins), on 1..max_streams streams that start with any subsets of the groups.

    Events are drawn layer by layer from what each kind says is valid in the layout at that layer
    (:meth:`~vtsched.core.events.Event.draws`), and each drawn event applies its own effect
    (:meth:`~vtsched.core.events.Event.check`); streams other than the survivor (the first) that are
    still running at the last layer end there.
    """
    num_layers = draw(st.integers(1, max_layers))
    groups = tuple(f"g{i}" for i in range(draw(st.integers(1, max_groups))))
    names = [f"s{i}" for i in range(draw(st.integers(1, max_streams)))]
    subsets = st.lists(st.sampled_from(groups), unique=True, max_size=len(groups)).map(tuple)
    streams = tuple(Stream(name, draw(subsets)) for name in names)
    survivor = names[0]
    layout = Layout(num_layers, groups, tuple(names), survivor, {s.name: list(s.groups) for s in streams})
    events: list[Event] = []
    for layer in range(num_layers + 1):
        for _ in range(draw(st.integers(0, max_events_per_layer))):
            state = DrawState(layer, layout, tuple(fusion_rules), BUILTIN_RANKERS if rankers is None else rankers)
            options = [o for o in (kind.draws(state) for kind in kinds) if o is not None]
            if not options:
                break
            event = draw(st.one_of(*options))
            event.check(layout)
            events.append(event)
    end = BUILTIN_KINDS["end"]  # a schedule ends every stream but the survivor
    events.extend(end(num_layers, name) for name in list(layout.alive) if name != survivor)  # type: ignore[call-arg]
    return Schedule(num_layers, groups, streams, survivor, tuple(events))


IMAGE_TOKEN_ID = 4  # token id synthetic samples use for visual tokens


@st.composite
def prompt_batches(draw, *, min_size: int = 1, max_size: int = 3, max_side: int = 4, hidden_size: int = 8,
                   key_size: int = 4, vocab_size: int = 64, distinct_visual: bool = False,
                   images: Sequence[Any] | None = None) -> PromptBatch:
    """Synthetic prompt batches for partitioners, no model needed.

    Each sample has its own patch grid (1..max_side rows and columns, so samples in one batch
    carry different numbers of visual tokens; ``distinct_visual`` makes every count different),
    random features ``(num_visual, hidden_size)``, [CLS] scores (sometimes all tied), patch keys
    in ``extras["patch_keys"]`` and a small noise image, laid out as prefix, image, question,
    suffix like an adapter's prompt. With ``images``, each sample gets one of them instead, with the
    pixel boxes an identity-geometry adapter would give (for partitioners that read pixels).
    """
    size = draw(st.integers(max(min_size, 2 if distinct_visual else 1), max_size))
    grid = st.tuples(st.integers(1, max_side), st.integers(1, max_side))
    grids = draw(st.lists(grid, min_size=size, max_size=size,
                          unique_by=(lambda g: g[0] * g[1]) if distinct_visual else None))
    samples = []
    for rows, cols in grids:
        seed = draw(st.integers(0, 2**16))
        gen = torch.Generator().manual_seed(seed)
        n = rows * cols
        prefix, question, suffix = draw(st.integers(1, 3)), draw(st.integers(1, 5)), draw(st.integers(1, 3))
        roles = torch.tensor([Role.PREFIX] * prefix + [Role.VISUAL] * n + [Role.QUESTION] * question
                             + [Role.SUFFIX] * suffix, dtype=torch.long)
        ids = torch.randint(IMAGE_TOKEN_ID + 1, vocab_size, (roles.numel(),), generator=gen)
        ids[roles == Role.VISUAL] = IMAGE_TOKEN_ID
        if draw(st.booleans()):
            cls = torch.softmax(torch.randn(n, generator=gen), 0)
        else:  # ties: a partitioner must still be deterministic
            cls = torch.full((n,), 1.0 / n)
        samples.append(Sample(
            input_ids=ids,
            roles=roles,
            visual_features=torch.randn(n, hidden_size, generator=gen, dtype=torch.float64),
            cls_scores=cls.float(),
            grid=(rows, cols),
            image=random_image(seed, 14 * cols, 14 * rows),
            extras={"patch_keys": torch.randn(n, key_size, generator=gen)},
        ))
        if images:
            image = images[draw(st.integers(0, len(images) - 1))]
            boxes = TokenBoxes(grid_boxes(image.size, rows, cols), image.size)
            samples[-1] = dataclasses.replace(samples[-1], image=image, pixel_boxes=boxes)
    return PromptBatch(samples)


@st.composite
def fusion_inputs(draw, *, max_streams: int = 4, max_batch: int = 3, max_tokens: int = 5,
                  attention_mass: bool = True) -> FusionInputs:
    """What the engine hands a fusion rule: visual counts (some streams empty), attention mass
    (zeros and near-zeros included; ``None`` without ``attention_mass``), padded token slots."""
    streams, batch, tokens = draw(st.integers(2, max_streams)), draw(st.integers(1, max_batch)), draw(
        st.integers(1, max_tokens))
    counts = draw(st.lists(st.integers(0, 9), min_size=streams * batch, max_size=streams * batch))
    visual_counts = torch.tensor(counts, dtype=torch.float32).view(streams, batch)
    mass = None
    if attention_mass:
        values = st.one_of(st.sampled_from([0.0, 1e-9, 0.1, 0.5, 1.0]), st.floats(0.0, 1.0, allow_subnormal=False))
        cells = streams * batch * tokens
        mass = torch.tensor(draw(st.lists(values, min_size=cells, max_size=cells))).view(streams, batch, tokens)
    lengths = draw(st.lists(st.integers(1, tokens), min_size=batch, max_size=batch))
    token_valid = torch.arange(tokens)[None, :] < torch.tensor(lengths)[:, None]
    return FusionInputs(visual_counts, mass, token_valid, draw(st.integers(0, streams - 1)))


__all__ += ["SHAPES"]
