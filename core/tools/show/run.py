"""Seeing what a schedule does: its tokens put back on the image, layer by layer.

:func:`show` runs one image and question under a policy (any policy, built-in or plugin, on any
family) with a :class:`~vtsched.core.tools.trace.TracingEngine`, and returns a :class:`Show`: the
data (which visual tokens each stream carried in each run of layers, the partition, the token
counts per layer, fusion weights, optionally the last prompt token's attention) and matplotlib
figures drawn from it:

- ``partition``: each group's tokens tinted on the image;
- ``kept``: the tokens each stream carries in each run of layers (one panel per run and stream;
  what survives each ``keep_top``; carried text copies counted in the title);
- ``flow``: visual tokens per stream against layer, the schedule's events marked;
- ``fusion``: the weight each stream got per fused token, where the schedule fuses;
- ``attention``: where each live stream's last prompt token looks at the layers asked for.

Tokens go back on the image through the adapter's pixel boxes (``Sample.pixel_boxes``, the one
pixel-to-token mapping, :mod:`vtsched.core.pixels`): a pixel belongs to the token whose box holds its
centre. Families whose tokens overlap on the image are drawn in separate *views*: LLaVA-NeXT's
overview tile and its high-resolution tiles (after unpadding); LLaVA-1.5 and Qwen's merged patches
are one view each. Tinting is exact: a tinted pixel is ``round((1 - TINT) * pixel + TINT * colour)``,
every other pixel is faded to ``round(FADE * pixel + (1 - FADE) * 255)``, so the tinted pixels of a
panel are exactly the boxes of its tokens (``tests/test_show.py`` checks this on every family).

Figures are :class:`matplotlib.figure.Figure` objects made without pyplot (no global state, no
backend to choose): a notebook displays them, :meth:`Show.save` writes one PNG per figure, the
combined sheet and the JSON behind them.
"""

from __future__ import annotations

import io
import json
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vtsched.core.errors import InputError

__all__ = [
    "Show", "show", "check_attention_layers", "image_views", "token_owner", "tint", "GROUP_COLOURS", "TINT", "FADE",
    "FIGURES",
]

TINT = 0.55  # weight of a token's colour in a tinted pixel
FADE = 0.35  # weight of the image in a pixel no shown token covers (the rest is white)
GROUP_COLOURS = ((230, 97, 1), (33, 102, 172), (27, 158, 119), (117, 112, 179), (231, 41, 138), (166, 118, 29))
FIGURES = ("partition", "kept", "flow", "fusion", "attention")


def check_attention_layers(layers: Sequence[int], num_layers: int) -> tuple[int, ...]:
    """The layers ``--attention`` names, sorted and unique; one line for a layer the model lacks."""
    wrong = sorted({int(layer) for layer in layers if not 0 <= int(layer) < num_layers})
    if wrong:
        raise InputError(f"--attention {','.join(map(str, wrong))}: the model has {num_layers} decoder layers, "
                         f"numbered 0..{num_layers - 1}")
    return tuple(sorted({int(layer) for layer in layers}))


def parse_layers(text: str) -> tuple[int, ...]:
    """``"0,2,5-7"`` -> ``(0, 2, 5, 6, 7)``; anything else is one line."""
    out: list[int] = []
    try:
        for part in text.split(","):
            lo, _, hi = part.strip().partition("-")
            out.extend(range(int(lo), int(hi) + 1) if hi else [int(lo)])
    except ValueError:
        raise InputError(f"--attention {text!r}: give layers as numbers, e.g. 0,2,5-7") from None
    return tuple(out)


# -- tokens on the image -----------------------------------------------------------------------
def image_views(sample: Any) -> list[tuple[str, list[int]]]:
    """``(name, visual token numbers)`` per view: sets of tokens whose boxes tile the image without overlap.

    LLaVA-NeXT (``extras["provenance"]``: tile 0 is the overview): the overview tile and the
    high-resolution tiles; every other family: one view. Tokens without pixels (newlines) are in none.
    """
    boxes = sample.pixel_boxes
    if boxes is None:
        raise InputError("the model's adapter gives no pixel boxes (Sample.pixel_boxes), so its tokens cannot be "
                         "put back on the image")
    has = boxes.has_pixels
    provenance = sample.extras.get("provenance")
    if isinstance(provenance, torch.Tensor) and provenance.shape[0] == boxes.num_visual:
        tile = provenance[:, 0].long()
        views = [("overview tile", torch.nonzero(has & (tile == 0)).flatten().tolist()),
                 ("high-resolution tiles", torch.nonzero(has & (tile > 0)).flatten().tolist())]
        return [view for view in views if view[1]]
    return [("image", torch.nonzero(has).flatten().tolist())]


def token_owner(boxes: Any, tokens: Sequence[int]) -> np.ndarray:
    """``(height, width)`` int: the token among ``tokens`` whose box holds each pixel's centre, ``-1`` for none.

    Pixel ``(x, y)`` is the unit square ``[x, x+1) x [y, y+1)`` (:mod:`vtsched.core.pixels`); its centre
    lies in box ``(x0, y0, x1, y1)`` when ``x0 <= x + 0.5 < x1`` and ``y0 <= y + 0.5 < y1``.
    """
    width, height = boxes.image_size
    owner = np.full((height, width), -1, dtype=np.int64)
    table = boxes.boxes.detach().cpu().numpy()
    for token in tokens:
        x0, y0, x1, y1 = table[token]
        if np.isnan(table[token]).any():
            continue
        cols = slice(max(0, int(np.ceil(x0 - 0.5))), max(0, min(width, int(np.ceil(x1 - 0.5)))))
        rows = slice(max(0, int(np.ceil(y0 - 0.5))), max(0, min(height, int(np.ceil(y1 - 0.5)))))
        owner[rows, cols] = token
    return owner


def tint(image: np.ndarray, owner: np.ndarray, colours: Mapping[int, Sequence[float]]) -> np.ndarray:
    """``image`` (``(H, W, 3)`` uint8) with each pixel of a token in ``colours`` tinted by its colour, the rest faded."""
    base = image.astype(np.float64)
    out = np.rint(FADE * base + (1 - FADE) * 255.0)
    table = np.full((int(max([owner.max(), *colours], default=-1)) + 2, 3), np.nan)
    for token, colour in colours.items():
        table[token] = colour
    colour = table[owner]  # owner -1 reads the last row: NaN
    painted = ~np.isnan(colour).any(-1)
    out[painted] = np.rint((1 - TINT) * base[painted] + TINT * colour[painted])
    return out.clip(0, 255).astype(np.uint8)


# -- the data ----------------------------------------------------------------------------------
@dataclass
class Show:
    """What one run did to one image's tokens, and the figures of it.

    ``data`` is JSON-ready (what ``vtsched show --json`` writes); ``image`` the original image as
    ``(H, W, 3)`` uint8; ``boxes`` its :class:`~vtsched.core.pixels.TokenBoxes`.
    """

    data: dict[str, Any]
    image: np.ndarray
    boxes: Any
    _figures: dict[str, Any] = field(default_factory=dict, repr=False)

    # -- what the figures read ----------------------------------------------------------------
    @property
    def views(self) -> list[tuple[str, list[int]]]:
        return [(v["name"], v["tokens"]) for v in self.data["views"]]

    def group_colour(self, group: int) -> tuple[int, int, int]:
        return GROUP_COLOURS[group % len(GROUP_COLOURS)]

    def stream_colour(self, stream: str) -> Any:
        """A stream's line colour: the colour of the first group it starts with (black for none)."""
        for s in self.data["schedule"]["streams"]:
            if s["name"] == stream and s["groups"]:
                return np.array(self.group_colour(self.data["groups"].index(s["groups"][0]))) / 255
        return np.zeros(3)

    def panel(self, tokens: Sequence[int], view: Sequence[int], colours: Mapping[int, Sequence[float]] | None = None
              ) -> np.ndarray:
        """The image with ``tokens`` (those of ``view``) tinted by group colour (or ``colours``)."""
        shown = set(view)
        groups = self.data["token_group"]
        chosen = {t: (colours[t] if colours is not None else self.group_colour(groups[t])) for t in tokens if t in shown}
        return tint(self.image, token_owner(self.boxes, sorted(shown)), chosen)

    def runs(self) -> list[tuple[int, int]]:
        """The runs of layers, in order."""
        return list(dict.fromkeys((r["start"], r["end"]) for r in self.data["runs"]))

    # -- figures -------------------------------------------------------------------------------
    def figure(self, name: str) -> Any:
        """The named figure (one of :data:`FIGURES`), or ``None`` where it has nothing to show (no fusion,
        no ``attention_layers``)."""
        if name not in FIGURES:
            raise InputError(f"no figure {name!r}; figures: {', '.join(FIGURES)}")
        if name not in self._figures:
            from matplotlib.figure import Figure

            size = _SIZES[name](self)
            if size is None:
                self._figures[name] = None
            else:
                fig = Figure(figsize=size, dpi=110, layout="constrained")
                _DRAW[name](self, fig)
                self._figures[name] = fig
        return self._figures[name]

    @property
    def figures(self) -> dict[str, Any]:
        """Every figure that has something to show, by name."""
        return {name: fig for name in FIGURES if (fig := self.figure(name)) is not None}

    def sheet(self) -> Any:
        """All figures on one page (a new figure each call)."""
        from matplotlib.figure import Figure

        names = [name for name in FIGURES if _SIZES[name](self) is not None]
        sizes = [_SIZES[name](self) for name in names]
        width = max(s[0] for s in sizes)  # type: ignore[index]
        heights = [s[1] for s in sizes]  # type: ignore[index]
        fig = Figure(figsize=(width, sum(heights) + 0.6), dpi=110, layout="constrained")
        fig.suptitle(textwrap.fill(self.title(), int(width * 12)), fontsize=9)
        subs = fig.subfigures(len(names), 1, height_ratios=heights) if len(names) > 1 else [fig.subfigures(1, 1)]
        for name, sub in zip(names, np.atleast_1d(subs)):
            _DRAW[name](self, sub)
        return fig

    def title(self) -> str:
        d = self.data
        budget = f", budget {d['budget']}" if d.get("budget") else ""
        return f"{d['policy']}{budget} | Q: {d['question']} | A: {d['answer'].strip() or '(empty)'}"

    # -- files ---------------------------------------------------------------------------------
    def save(self, folder: str | Path, *, json_path: str | Path | None = None) -> list[Path]:
        """One PNG per figure and ``sheet.png`` in ``folder`` (and the data as JSON at ``json_path``)."""
        from vtsched.core.io import write_atomic

        folder = Path(folder)
        written = [_save_png(fig, folder / f"{name}.png") for name, fig in self.figures.items()]
        written.append(_save_png(self.sheet(), folder / "sheet.png"))
        if json_path is not None:
            written.append(write_atomic(Path(json_path), json.dumps(self.data, indent=1) + "\n"))
        return written

    def sheet_png(self) -> bytes:
        """The combined sheet as PNG bytes (what ``vtsched report`` inlines)."""
        buffer = io.BytesIO()
        self.sheet().savefig(buffer, format="png")
        return buffer.getvalue()


def _save_png(fig: Any, path: Path) -> Path:
    from vtsched.core.io import write_atomic

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return write_atomic(path, buffer.getvalue())


# -- running -----------------------------------------------------------------------------------
def show(
    scheduler: Any,
    image: Any,
    question: str,
    policy: Any = "parvts",
    *,
    partitioner: Any = None,
    budget: Any = None,
    policy_params: Mapping[str, Any] | None = None,
    partitioner_params: Mapping[str, Any] | None = None,
    attention_layers: Sequence[int] = (),
    generation: Any = None,
) -> Show:
    """Run ``question`` about ``image`` under ``policy`` on ``scheduler``'s model, recording which tokens ran where.

    ``policy`` and ``partitioner`` are names (with ``policy_params`` / ``partitioner_params``) or
    objects; ``budget`` anything :meth:`~vtsched.core.budget.Budget.parse` reads. ``attention_layers``:
    the layers at which to read each live stream's last prompt token's attention over the image.
    Returns a :class:`Show`; ``show(...).figures`` are matplotlib figures.
    """
    from vtsched.core.budget import Budget
    from vtsched.core.generation import GenerationConfig
    from vtsched.core.io import to_rgb
    from vtsched.core.tools.trace import TracingEngine

    layers = check_attention_layers(attention_layers, scheduler.adapter.geometry.num_layers)
    batch = scheduler.prepare([image], [question])
    sample = batch.samples[0]
    views = image_views(sample)
    policy_obj = scheduler.make_policy(policy, policy_params) if isinstance(policy, str) else policy
    part = (scheduler.make_partitioner(partitioner, partitioner_params) if isinstance(partitioner, str)
            else partitioner)
    plan = scheduler.plan(batch, policy_obj, part, Budget.parse(budget) if budget is not None else None)
    engine = TracingEngine(scheduler.engine, layers)
    result = scheduler.answer(batch, plan, generation or GenerationConfig(max_new_tokens=12), engine=engine)
    stats = result.generated.prefill.stats
    schedule, partition = plan.schedule, plan.partition
    shown_image = sample.image if sample.image is not None else image
    rgb = np.asarray(to_rgb(shown_image))
    fusions = []
    for (layer, streams, weights), event in zip(stats.fusions, [e for e in schedule.events if e.kind == "fuse"]):
        positions = _fused_positions(sample, event.tokens)
        labels = [scheduler.adapter.decode_text([int(sample.input_ids[p])]) for p in positions]
        fusions.append({"layer": layer, "streams": list(streams), "into": event.into, "rule": event.rule,
                        "tokens": labels, "weights": weights[:, 0, : len(positions)].double().tolist()})
    data = {
        "vtsched_show": 1,
        "question": question,
        "answer": result.texts[0],
        "policy": dict(schedule.meta).get("policy") or plan.policy.describe(),
        "partitioner": plan.partitioner.describe() if plan.partitioner is not None else None,
        "budget": str(plan.budget) if plan.budget is not None else None,
        "num_layers": schedule.num_layers,
        "survivor": schedule.survivor,
        "streams": list(schedule.stream_names),
        "schedule": schedule.to_dict(),
        "image_size": list(sample.pixel_boxes.image_size),
        "groups": list(partition.groups),
        "token_group": partition.assignment[0].tolist(),
        "token_boxes": [None if bool(torch.isnan(b).any()) else b.tolist() for b in sample.pixel_boxes.boxes],
        "views": [{"name": name, "tokens": tokens} for name, tokens in views],
        "runs": [{"start": r.start, "end": r.end, "stream": r.stream, "visual": list(r.visual),
                  "carried": r.carried} for r in stats.tokens[0]],
        "events": [{"layer": e.layer, "event": e.describe()} for e in schedule.events],
        "fusions": fusions,
        "attention": [{"layer": a.layer, "stream": a.stream, "visual": a.visual.tolist(), "total": a.total}
                      for a in engine.attention[0]],
        "prefill_gflops": float(result.flops[0]) / 1e9,
        "visual_tokens_per_layer": float(result.visual_per_layer[0]),  # every stream: the equivalent tokens
        "visual_tokens_per_layer_survivor": float(result.visual_per_layer_survivor[0]),  # the plot's surviving stream
    }
    return Show(data, rgb, sample.pixel_boxes)


def _fused_positions(sample: Any, tokens: str) -> list[int]:
    """Positions of the text tokens a ``fuse`` of kind ``tokens`` merges, in order (as the engine picks them)."""
    from vtsched.core.tokens import Role

    roles = sample.roles
    if tokens == "last":
        return [sample.length - 1]
    return torch.nonzero(torch.isin(roles, torch.tensor(Role.FUSED[tokens]))).flatten().tolist()


# -- drawing -----------------------------------------------------------------------------------
def _image_axes(ax: Any, array: np.ndarray, title: str) -> None:
    ax.imshow(array, interpolation="nearest")
    ax.set_title(title, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])


def _legend(fig: Any, show: Show) -> None:
    from matplotlib.patches import Patch

    counts = np.bincount(np.asarray(show.data["token_group"], dtype=np.int64), minlength=len(show.data["groups"]))
    handles = [Patch(color=np.array(show.group_colour(g)) / 255, label=f"{name} ({counts[g]})")
               for g, name in enumerate(show.data["groups"])]
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=8, frameon=False)


def _draw_partition(show: Show, fig: Any) -> None:
    views = show.views
    axes = np.atleast_1d(fig.subplots(1, len(views)))
    everything = list(range(len(show.data["token_group"])))
    for ax, (name, tokens) in zip(axes, views):
        _image_axes(ax, show.panel(everything, tokens), f"partition: {name}")
    fig.suptitle(f"partition ({show.data['partitioner'] or 'one group'})", fontsize=9)
    _legend(fig, show)


def _draw_kept(show: Show, fig: Any) -> None:
    runs, views, streams = show.runs(), show.views, show.data["streams"]
    live = [s for s in streams if any(r["stream"] == s for r in show.data["runs"])]
    axes = np.atleast_2d(fig.subplots(len(live), len(runs) * len(views), squeeze=False))
    by_key = {(r["start"], r["end"], r["stream"]): r for r in show.data["runs"]}
    survivor = show.data["survivor"]
    for i, stream in enumerate(live):
        for j, (start, end) in enumerate(runs):
            record = by_key.get((start, end, stream))
            for v, (name, view) in enumerate(views):
                ax = axes[i, j * len(views) + v]
                span = f"layer {start}" if end - start == 1 else f"layers {start}-{end - 1}"
                if record is None:
                    ax.set_axis_off()
                    ax.text(0.5, 0.5, f"{stream}\nnot running\n({span})", ha="center", va="center", fontsize=7,
                            transform=ax.transAxes, color="0.5")
                    continue
                carried = f", +{record['carried']} carried" if record["carried"] else ""
                mark = " *" if stream == survivor else ""
                view_name = f" · {name}" if len(views) > 1 else ""
                _image_axes(ax, show.panel(record["visual"], view),
                            f"{stream}{mark}, {span}{view_name}\n{len(record['visual'])} visual{carried}")
    fig.suptitle("visual tokens per stream and run of layers (* survivor)", fontsize=9)
    _legend(fig, show)


def _draw_flow(show: Show, fig: Any) -> None:
    ax = fig.subplots()
    layers = show.data["num_layers"]
    streams = show.data["streams"]
    for stream in streams:
        mine = [r for r in show.data["runs"] if r["stream"] == stream]
        if not mine:
            continue
        xs, ys = [], []
        for r in mine:
            xs += [r["start"], r["end"]]
            ys += [len(r["visual"])] * 2
        ax.plot(xs, ys, color=show.stream_colour(stream), lw=2,
                label=stream + (" (survivor)" if stream == show.data["survivor"] else ""))
        if any(r["carried"] for r in mine):
            cs = [r["carried"] for r in mine for _ in (0, 1)]
            ax.plot(xs, cs, color=show.stream_colour(stream), lw=1, ls="--", label=f"{stream}: carried text copies")
    marks: dict[int, list[str]] = {}
    for e in show.data["events"]:
        marks.setdefault(e["layer"], []).append(e["event"])
    top = max([len(r["visual"]) for r in show.data["runs"]] + [1])
    for layer, texts in marks.items():
        ax.axvline(layer, color="0.4", ls=":", lw=1)
        ax.annotate("\n".join(texts), (layer, top), xytext=(3, -2), textcoords="offset points", fontsize=6,
                    va="top", color="0.25")
    ax.set_xlim(0, layers)
    ax.set_ylim(0, top * 1.15)
    ax.set_xlabel("layer")
    ax.set_ylabel("visual tokens")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    ax.set_title(f"token flow: {show.data['visual_tokens_per_layer']:.1f} visual tokens per layer in all streams, "
                 f"{show.data['visual_tokens_per_layer_survivor']:.1f} in the survivor; "
                 f"{show.data['prefill_gflops']:.3g} GFLOPs", fontsize=8)


def _draw_fusion(show: Show, fig: Any) -> None:
    fusions = show.data["fusions"]
    axes = np.atleast_1d(fig.subplots(1, len(fusions), squeeze=False)[0])
    for ax, f in zip(axes, fusions):
        weights = np.asarray(f["weights"])
        x = np.arange(weights.shape[1])
        bottom = np.zeros(weights.shape[1])
        for s, stream in enumerate(f["streams"]):
            ax.bar(x, weights[s], bottom=bottom, label=stream, color=show.stream_colour(stream))
            bottom += weights[s]
        ax.set_xticks(x, [repr(t)[1:-1] for t in f["tokens"]], rotation=60, fontsize=6)
        ax.set_ylim(0, 1)
        ax.set_ylabel("weight")
        ax.set_title(f"fusion at layer {f['layer']} by {f['rule']} into {f['into']}", fontsize=8)
        ax.legend(fontsize=7)


def _draw_attention(show: Show, fig: Any) -> None:
    from matplotlib import colormaps

    cmap = colormaps["magma"]
    readings, views = show.data["attention"], show.views
    layers = list(dict.fromkeys(a["layer"] for a in readings))
    streams = list(dict.fromkeys(a["stream"] for a in readings))
    axes = fig.subplots(len(layers), len(streams) * len(views), squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for a in readings:
        i, j = layers.index(a["layer"]), streams.index(a["stream"])
        values = np.asarray(a["visual"])
        carried = [t for t, v in enumerate(values) if v > 0]
        scale = values.max() if values.max() > 0 else 1.0
        colours = {t: np.array(cmap(0.15 + 0.85 * values[t] / scale)[:3]) * 255 for t in carried}
        for v, (name, view) in enumerate(views):
            ax = axes[i, j * len(views) + v]
            ax.set_axis_on()
            view_name = f" · {name}" if len(views) > 1 else ""
            _image_axes(ax, show.panel(carried, view, colours),
                        f"layer {a['layer']}, {a['stream']}{view_name}\n"
                        f"{100 * values.sum() / max(a['total'], 1e-12):.1f}% of its attention on the image")
    fig.suptitle("last prompt token's attention (brighter = more)", fontsize=9)


def _grid_size(show: Show, rows: int, cols: int) -> tuple[float, float]:
    width, height = show.data["image_size"]
    cell = 2.1
    return (max(4.6, cols * cell), rows * cell * height / max(width, 1) + 1.1)


_SIZES: dict[str, Any] = {
    "partition": lambda s: _grid_size(s, 1, len(s.views)),
    "kept": lambda s: _grid_size(s, len({r["stream"] for r in s.data["runs"]}), len(s.runs()) * len(s.views)),
    "flow": lambda s: (7.0, 3.6),
    "fusion": lambda s: (max(5.0, 4.5 * len(s.data["fusions"])), 3.4) if s.data["fusions"] else None,
    "attention": lambda s: (_grid_size(s, len({a["layer"] for a in s.data["attention"]}),
                                       len({a["stream"] for a in s.data["attention"]}) * len(s.views))
                            if s.data["attention"] else None),
}
_DRAW: dict[str, Any] = {
    "partition": _draw_partition, "kept": _draw_kept, "flow": _draw_flow, "fusion": _draw_fusion,
    "attention": _draw_attention,
}
