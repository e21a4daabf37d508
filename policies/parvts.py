"""``parvts`` (alias ``parallel``): Parallel Vision Token Scheduling.

One stream per partition group runs through layers ``[0, K)`` in parallel (batched into one
call per layer, the shared text prefix computed once). At ``K`` the text tokens after the image
are fused across streams by a fusion rule into the subject stream; the other streams end and
layers ``[K, L)`` run on the subject stream alone.

Decode semantics: after prefill only the subject stream's cache is kept. For layers ``< K`` it
holds the subject stream's own (unfused) keys/values, for layers ``>= K`` the fused ones.
Generated tokens take the next original positions and exist only in the subject stream; they
are never fused. Decoding with the cache therefore equals a prefill of prompt + generated tokens
in which the generated tokens are carried by the subject stream alone (``Engine.prefill(tail=...)``).

Defaults: ``K = 2``, fusion rule ``attention`` (our reading of the paper, where it is silent),
fused tokens ``post_image``: every text token after the image, the question and the answer
template (``ASSISTANT:``) alike. The paper speaks of fusing the question tokens, but the answer is
read at the prompt's last token, which comes after the question, so a fusion that leaves that token
alone cannot change the answer's view of the image. ``fuse_tokens=question`` stays available for the
paper's wording, and ``fuse_tokens=last`` fuses the answer position alone.

``merge`` says what reaches the subject stream at ``K``: ``fuse`` (the paper: one averaged state
per text token), ``carry`` (the other streams' text states join the subject stream as extra
tokens, placed just before its own copies, so later tokens attend to both views instead of one
average; :class:`~vtsched.core.events.Carry`), or ``both`` (fuse, and carry the other views
besides). Carried tokens cost ``L - K`` layers of a few dozen text tokens each.

What these options do to answers is measured, not claimed here: docs/demo-model.md holds the
results on the shipped demo models (including where carrying recovers nothing and where ParVTS
loses to single-stream methods at equal cost).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from vtsched.core.geometry import ModelGeometry
from vtsched.core.budget import Budget
from vtsched.core.policy import DEFAULT_GROUPS, Policy
from vtsched.core.events import Carry, EndStream, Event, Fuse
from vtsched.core.schedule import Schedule, Stream


@dataclass(frozen=True)
class ParVTS(Policy):
    """Subject and non-subject streams in parallel up to layer K, fused (or carried) into the subject stream."""

    name: ClassVar[str] = "parvts"
    budget_counts: ClassVar[str] = "input"
    aliases: ClassVar[tuple[str, ...]] = ("parallel",)

    drop_layer: int = 2
    fusion: str = "attention"
    alpha: float = 0.5
    fuse_tokens: Literal["question", "post_image", "last"] = "post_image"
    merge: Literal["fuse", "carry", "both"] = "fuse"

    def schedule(
        self, geometry: ModelGeometry, groups: tuple[str, ...] = DEFAULT_GROUPS, budget: Budget | None = None
    ) -> Schedule:
        self.check_layer("drop_layer", self.drop_layer, geometry)
        subject, others = groups[0], groups[1:]
        streams = tuple(Stream(g, (g,)) for g in groups)
        events: list[Event] = []
        if others:
            if self.merge in ("fuse", "both"):
                params = (("alpha", self.alpha),) if self.fusion == "fixed" else ()
                events.append(Fuse(self.drop_layer, tuple(groups), subject, self.fusion, self.fuse_tokens, params))
            if self.merge in ("carry", "both"):
                events.append(Carry(self.drop_layer, tuple(others), subject, self.fuse_tokens))
            events.extend(EndStream(self.drop_layer, g) for g in others)
        return Schedule(
            geometry.num_layers, groups, streams, survivor=subject, events=tuple(events),
            meta=(("policy", self.describe()),),
        )
