"""``fuse``: the text-token states of several streams merge into one, weighted by a fusion rule."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from vtsched.core.errors import ScheduleError
from vtsched.core.events.base import FUSED_TOKENS, DrawState, Event, Layout, ParamValue

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from vtsched.core.engine.layout import Segment
    from vtsched.core.engine.probes import Probe, QueryRows
    from vtsched.core.engine.run import PrefillRun

__all__ = ["Fuse", "MassProbe"]


@dataclass(frozen=True, slots=True)
class Fuse(Event):
    """Merge the text-token states of ``streams`` into ``into`` with the fusion rule ``rule``.

    ``tokens`` chooses which text tokens are fused: ``"question"`` (the user's question only),
    ``"post_image"`` (every text token after the image) or ``"last"`` (the prompt's last token
    only, where the answer is read). ``params`` are the rule's keyword arguments, as sorted
    ``(name, value)`` pairs so the event stays hashable. A rule that weighs streams by attention
    (``needs_attention_mass``) reads, in every layer before the fuse while all fused streams run,
    the share of each fused token's attention on its own stream's visual tokens.
    """

    kind: ClassVar[str] = "fuse"
    layer: int
    streams: tuple[str, ...]
    into: str
    rule: str
    tokens: Literal["question", "post_image", "last"] = "question"
    params: tuple[tuple[str, ParamValue], ...] = ()

    @property
    def param_dict(self) -> dict[str, ParamValue]:
        return dict(self.params)

    def describe(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self.params)
        rule = f"{self.rule}({args})" if args else self.rule
        return f"fuse {self.tokens} tokens of {', '.join(self.streams)} -> {self.into} by {rule}"

    def check(self, layout: Layout) -> None:
        for name in self.streams:
            layout.carried(name)
        if len(set(self.streams)) != len(self.streams) or len(self.streams) < 2:
            raise ScheduleError("fuse needs at least two distinct streams")
        if self.into not in self.streams:
            raise ScheduleError(f"fuse target {self.into!r} is not among the fused streams")
        if self.tokens not in FUSED_TOKENS:
            raise ScheduleError(f"tokens must be one of {FUSED_TOKENS}")

    def check_components(self, registry: Any) -> None:
        """The rule is registered and takes the event's parameters (``alpha`` outside [0, 1] is refused)."""
        rules = registry.fusion_rules()
        if self.rule not in rules:
            raise ScheduleError(f"unknown fusion rule {self.rule!r}; known: {', '.join(registry.names('fusion_rule'))}")
        try:
            rules[self.rule](**self.param_dict)
        except (TypeError, ValueError) as exc:
            raise ScheduleError(f"fusion rule {self.rule!r}: bad parameters {self.param_dict}: {exc}") from None

    # -- the engine -------------------------------------------------------------------------------
    def probes(self, run: PrefillRun, segment: Segment, at: int) -> list[tuple[int, Probe]]:
        """Every layer of ``segment`` before the fuse, while all fused streams run, for rules that weigh by mass."""
        import torch

        from vtsched.core.engine.probes import QueryRows
        from vtsched.core.tokens import Role

        if self.layer < segment.end or not run.rule(self.rule).needs_attention_mass:
            return []
        if not all(s in segment.names for s in self.streams):
            return []
        fused = run.bound.fused(segment.rows.index, self.tokens)
        key_is_visual = (run.bound.lookup(run.bound.roles, segment.key_index) == Role.VISUAL).to(torch.float32)
        probes: list[Probe] = []
        for stream in self.streams:
            block = segment.block(stream)
            sel = torch.zeros_like(segment.row_roles, dtype=torch.bool)
            sel[:, block] = fused[:, block]
            queries = QueryRows.select(segment, sel, block)
            probes.append(MassProbe(queries, at, stream, key_is_visual[:, : queries.width]))
        return [(layer, probe) for layer in range(segment.start, segment.end) for probe in probes]

    def apply(self, run: PrefillRun, at: int) -> None:
        """Replace the fused text tokens of ``into`` by the rule-weighted sum over ``streams``."""
        import torch

        from vtsched.core.engine.rows import Rows, pad_stack

        slots, states = [], []  # per stream: the fused tokens' slots per row, and their states
        for name in self.streams:
            rows = run.streams[name]
            slot = [torch.nonzero(s).flatten() for s in run.bound.fused(rows.index, self.tokens)]
            slots.append(slot)
            states.append(pad_stack([rows.hidden[b, s] for b, s in enumerate(slot)], 0.0))
        token_valid = pad_stack([torch.ones(s.numel(), dtype=torch.bool, device=s.device) for s in slots[0]], False)
        weights = self._weights(run, at, token_valid)
        fused = sum(w[..., None] * s.float() for w, s in zip(weights, states)).to(states[0].dtype)
        target = run.streams[self.into]
        into_slot = slots[self.streams.index(self.into)]
        b_idx = torch.cat([torch.full_like(s, b) for b, s in enumerate(into_slot)])
        t_idx = torch.cat(into_slot)
        values = torch.cat([fused[b, : s.numel()] for b, s in enumerate(into_slot)])
        run.streams[self.into] = Rows(target.hidden.index_put((b_idx, t_idx), values), target.index)

    def _weights(self, run: PrefillRun, at: int, token_valid: torch.Tensor) -> torch.Tensor:
        """``(streams, batch, tokens)`` weights from the event's rule, checked and recorded."""
        import torch

        from vtsched.core.fusion import FusionInputs, check_weights
        from vtsched.core.tokens import Role

        bound = run.bound
        counts = torch.stack([
            (bound.lookup(bound.roles, run.streams[n].index) == Role.VISUAL).sum(1).float() for n in self.streams
        ])
        rule_cls = run.rule(self.rule)
        mass = None
        if rule_cls.needs_attention_mass:
            mass = torch.stack([run.readings.mean_mass((at, n), token_valid) for n in self.streams])
        inputs = FusionInputs(counts, mass, token_valid, self.streams.index(self.into))
        try:
            rule = rule_cls(**self.param_dict)
        except TypeError as exc:
            raise ScheduleError(f"fusion rule {self.rule!r}: bad parameters {self.param_dict}: {exc}") from None
        weights = check_weights(self.rule, rule.weights(inputs), inputs)
        run.stats.add_fusion(self.layer, self.streams, weights)
        return weights

    # -- JSON: params as an object ------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {**Event.to_json(self), "params": dict(self.params)}

    @classmethod
    def from_json(cls, data: Any) -> Event:
        data = dict(data)
        data["params"] = tuple(sorted(dict(data.get("params", {})).items()))
        return super(Fuse, cls).from_json(data)

    @classmethod
    def draws(cls, state: DrawState):
        from hypothesis import strategies as st

        alive = list(state.layout.alive)
        if len(alive) < 2 or not state.fusion_rules:
            return None

        @st.composite
        def fuse(draw):
            fused = tuple(draw(st.lists(st.sampled_from(alive), min_size=2, max_size=len(alive), unique=True)))
            rule = draw(st.sampled_from(state.fusion_rules))
            params = (("alpha", draw(st.floats(0.0, 1.0, allow_subnormal=False))),) if rule == "fixed" else ()
            return cls(state.layer, fused, draw(st.sampled_from(fused)), rule, draw(st.sampled_from(FUSED_TOKENS)),
                       params)

        return fuse()


@dataclass(frozen=True)
class MassProbe:
    """For a fuse: the share of each fused token's attention on its own stream's visual tokens.

    ``key_is_visual``: ``(rows, width)`` float32, 1.0 where the key is a visual token. Cross-stream
    keys are masked, so the mass is on this stream's own visual tokens. Kept in ``run.readings``
    under ``(at, stream)``.
    """

    queries: QueryRows
    at: int
    stream: str
    key_is_visual: torch.Tensor

    def read(self, run: PrefillRun, layer: int, layer_input: torch.Tensor, keys: torch.Tensor) -> None:
        probs = self.queries.probs(run, layer, layer_input, keys)
        mass = (probs * self.key_is_visual[:, None, None, :]).sum(-1).mean(1)  # (rows, q)
        run.readings.add_mass((self.at, self.stream), mass)
