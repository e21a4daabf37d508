"""The figures, drawn from a :class:`~vtsched.core.tools.show.data.Show`'s data on matplotlib figures made
without pyplot: ``FIGURES`` in order, each one's size (``SIZES``, ``None``: nothing to show) and drawing
function (``DRAW``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from vtsched.core.tools.show.data import Show

__all__ = ["DRAW", "FIGURES", "SIZES"]

FIGURES = ("partition", "kept", "flow", "fusion", "attention")


def _image_axes(ax: Any, array: np.ndarray, title: str) -> None:
    ax.imshow(array, interpolation="nearest")
    ax.set_title(title, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])


def _legend(fig: Any, show: Show) -> None:
    from matplotlib.patches import Patch

    counts = np.bincount(np.asarray(show.data["token_group"], dtype=np.int64), minlength=len(show.data["groups"]))
    handles = []
    for g, name in enumerate(show.data["groups"]):
        red, green, blue = show.group_colour(g)
        handles.append(Patch(color=(red / 255, green / 255, blue / 255), label=f"{name} ({counts[g]})"))
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


SIZES: dict[str, Any] = {
    "partition": lambda s: _grid_size(s, 1, len(s.views)),
    "kept": lambda s: _grid_size(s, len({r["stream"] for r in s.data["runs"]}), len(s.runs()) * len(s.views)),
    "flow": lambda s: (7.0, 3.6),
    "fusion": lambda s: (max(5.0, 4.5 * len(s.data["fusions"])), 3.4) if s.data["fusions"] else None,
    "attention": lambda s: (_grid_size(s, len({a["layer"] for a in s.data["attention"]}),
                                       len({a["stream"] for a in s.data["attention"]}) * len(s.views))
                            if s.data["attention"] else None),
}
DRAW: dict[str, Any] = {
    "partition": _draw_partition, "kept": _draw_kept, "flow": _draw_flow, "fusion": _draw_fusion,
    "attention": _draw_attention,
}
