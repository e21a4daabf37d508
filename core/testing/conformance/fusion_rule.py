"""The fusion-rule kit: weights of the right shape, finite, summing to one."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from hypothesis import strategies as st

from vtsched.core.contracts import fusion_rule_problems
from vtsched.core.errors import VtschedError
from vtsched.core.fusion import FusionInputs, check_weights
from vtsched.core.testing import strategies as strat
from vtsched.core.testing.conformance.kit import Kit, close, component_name, expect

__all__ = ['FusionRuleConformance']


class FusionRuleConformance(Kit):
    """Checks a fusion rule (see :mod:`vtsched.core.fusion`).

    Set ``fusion_rule_class`` (and ``fusion_rule_params``, the ``fuse`` event's parameters).
    Checks: the class contract (``name``, boolean ``needs_attention_mass``, ``weights(inputs)``);
    on drawn :class:`FusionInputs` (attention mass only where the rule asks for it, as the
    engine does): weights of shape ``(streams, batch, tokens)``, finite, non-negative, summing
    to one over streams (what the engine's ``check_weights`` enforces), zero for a non-surviving
    stream with no visual tokens (so an empty group changes nothing), and the same twice.
    """

    fusion_rule_class: ClassVar[type | None] = None
    fusion_rule_params: ClassVar[Mapping[str, Any]] = {}
    examples: ClassVar[int] = 50

    def make_rule(self) -> Any:
        expect(self.fusion_rule_class is not None, f"{type(self).__name__}: set fusion_rule_class")
        assert self.fusion_rule_class is not None
        return self.fusion_rule_class(**dict(self.fusion_rule_params))

    def fusion_inputs(self) -> st.SearchStrategy[FusionInputs]:
        return strat.fusion_inputs(attention_mass=bool(getattr(self.fusion_rule_class, "needs_attention_mass", True)))

    def test_contract(self) -> None:
        problems = fusion_rule_problems(self.fusion_rule_class)
        expect(not problems, f"fusion rule {component_name(self.fusion_rule_class)!r} breaks the fusion-rule contract: "
                + "; ".join(problems))

    def test_weights_are_finite_non_negative_and_sum_to_one(self) -> None:
        def check(inputs: FusionInputs) -> None:
            rule = self.make_rule()
            who = component_name(rule)
            weights = rule.weights(inputs)
            expect(isinstance(weights, torch.Tensor) and tuple(weights.shape) == inputs.shape,
                    f"{who}: weights of shape {tuple(getattr(weights, 'shape', ()))}, expected {inputs.shape}")
            expect(bool(torch.isfinite(weights).all()), f"{who}: non-finite weights {weights}")
            expect(bool((weights >= 0).all()), f"{who}: negative weights {weights}")
            close(weights.sum(0).float(), torch.ones(inputs.shape[1:]), 1e-5, 0.0,
                   f"{who}: weights do not sum to one over streams")
            try:
                check_weights(who, weights, inputs)
            except VtschedError as exc:
                raise AssertionError(f"{who}: the engine would refuse these weights: {exc}") from exc
            empty = inputs.visual_counts == 0
            for s in range(inputs.shape[0]):
                if s != inputs.survivor and bool(empty[s].any()):
                    expect(float(weights[s][empty[s]].abs().max()) == 0.0,
                            f"{who}: stream {s} carries no visual tokens but gets weight {weights[s]}")
            expect(torch.equal(weights, self.make_rule().weights(inputs)), f"{who}: weights differ between calls")

        self._run(check, self.fusion_inputs())
