"""What one run did to one image's tokens: :class:`Show`, its JSON-ready data, the figures drawn from it
(:mod:`vtsched.core.tools.show.drawing`) and the files it writes."""

from __future__ import annotations

import io
import json
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vtsched.core.errors import InputError
from vtsched.core.tools.show.drawing import DRAW, FIGURES, SIZES
from vtsched.core.tools.show.on_image import GROUP_COLOURS, tint, token_owner

__all__ = ["Show"]


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

    def panel(self, tokens: Sequence[int], view: Sequence[int],
              colours: Mapping[int, Sequence[float] | np.ndarray] | None = None) -> np.ndarray:
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

            size = SIZES[name](self)
            if size is None:
                self._figures[name] = None
            else:
                fig = Figure(figsize=size, dpi=110, layout="constrained")
                DRAW[name](self, fig)
                self._figures[name] = fig
        return self._figures[name]

    @property
    def figures(self) -> dict[str, Any]:
        """Every figure that has something to show, by name."""
        return {name: fig for name in FIGURES if (fig := self.figure(name)) is not None}

    def sheet(self) -> Any:
        """All figures on one page (a new figure each call)."""
        from matplotlib.figure import Figure

        names = [name for name in FIGURES if SIZES[name](self) is not None]
        sizes = [SIZES[name](self) for name in names]
        width = max(s[0] for s in sizes)  # type: ignore[index]
        heights = [s[1] for s in sizes]  # type: ignore[index]
        fig = Figure(figsize=(width, sum(heights) + 0.6), dpi=110, layout="constrained")
        fig.suptitle(textwrap.fill(self.title(), int(width * 12)), fontsize=9)
        subs: Any = (fig.subfigures(len(names), 1, height_ratios=heights) if len(names) > 1
                     else [fig.subfigures(1, 1)])
        for name, sub in zip(names, np.atleast_1d(subs)):
            DRAW[name](self, sub)
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
