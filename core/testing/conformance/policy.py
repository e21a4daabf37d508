"""The policy kit: a policy's schedules are valid on every drawn geometry, and run and decode
on tiny models like the references."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from hypothesis import strategies as st

from vtsched.core.budget import Budget
from vtsched.core.contracts import policy_problems
from vtsched.core.errors import VtschedError
from vtsched.core.geometry import ModelGeometry
from vtsched.core.partition import SUBJECT
from vtsched.core.policy import CalibratedPolicy, Policy
from vtsched.core.schedule import Schedule
from vtsched.core.testing import models
from vtsched.core.testing import strategies as strat
from vtsched.core.testing.conformance.kit import Kit, close, component_name, expect
from vtsched.core.tokens import PromptBatch

__all__ = ['PolicyConformance']


class PolicyConformance(Kit):
    """Checks a :class:`~vtsched.core.policy.Policy`.

    Set ``policy_class`` (and ``policy_params``, its keyword arguments), or override
    ``make_policy()``. Checks, in order:

    - the class contract (frozen dataclass, ``schedule(geometry, groups, budget)``);
    - ``schedule`` returns a valid :class:`Schedule` for every drawn geometry, group set and
      budget: the geometry's layer count, only the partition's groups, fusion rules the registry
      knows, the same schedule twice; a policy that says ``uses_budget = False`` schedules the
      same with and without a budget. The budget is always passed: every policy must accept it;
    - ``explain()`` prints and the JSON round trip is exact (``Schedule.from_json(s.to_json()) == s``);
    - ``from_params(params())`` rebuilds the policy (what saved runs and ``describe()`` rely on);
    - on a tiny random float64 model through the engine: a batch decodes exactly like its samples
      one by one (next-token logits of every step, and the greedy tokens);
    - cached decoding equals recomputing the schedule with the generated tokens as the surviving
      stream's tail (``Engine.prefill(..., tail=generated)``), step by step.

    Group sets follow ``needs_partition`` (one group where the policy sees every visual token as
    one). A calibrated policy (drop-layer search) is checked through its request: the base
    policy's schedules at every layer of each geometry, and on the models the policy the
    scheduler's calibration chooses (give it a ``calibration`` data file so a batch and its
    samples calibrate alike).
    """

    policy_class: ClassVar[type | None] = None
    policy_params: ClassVar[Mapping[str, Any]] = {}
    partitioner_name: ClassVar[str | None] = None  # default: the policy's own default partitioner
    decode_steps: ClassVar[int] = 3
    atol: ClassVar[float] = 1e-6

    def make_policy(self) -> Policy:
        expect(self.policy_class is not None, f"{type(self).__name__}: set policy_class")
        assert self.policy_class is not None
        return self.policy_class(**dict(self.policy_params))  # type: ignore[no-any-return]

    # -- what is drawn (override to narrow) -----------------------------------------------------
    def geometries(self) -> st.SearchStrategy[ModelGeometry]:
        return strat.geometries(min_layers=self.min_layers, max_layers=self.max_layers)

    def group_sets(self, policy: Policy) -> st.SearchStrategy[tuple[str, ...]]:
        """Groups ``schedule`` receives: drawn names (subject first), or one group without a partition."""
        if not policy.needs_partition:
            return st.just((SUBJECT,))
        return strat.group_sets(min_size=1, max_size=3)

    def budgets(self, policy: Policy, geometry: ModelGeometry) -> st.SearchStrategy[Budget | None]:
        """Budgets for images of ``geometry.num_visual`` tokens (counts and ratios)."""
        return strat.token_budgets(num_visual=geometry.num_visual)

    def prompts(self, *, min_size: int = 1, max_size: int = 3) -> st.SearchStrategy[Any]:
        """``(visuals, questions)`` the model checks prepare (default: still images; video clips for a
        family that takes video: :class:`vtsched.core.testing.videos.VideoPolicyConformance`)."""
        return strat.prompts(min_size=min_size, max_size=max_size)

    # -- the checks -----------------------------------------------------------------------------
    def test_contract(self) -> None:
        problems = policy_problems(self.policy_class)
        expect(not problems, f"policy {component_name(self.policy_class)!r} breaks the policy contract: " + "; ".join(problems))

    def test_schedule_is_valid_for_any_geometry_groups_and_budget(self) -> None:
        policy = self.make_policy()

        def check(geometry: ModelGeometry, data: st.DataObject) -> None:
            for each in self._scheduling_policies(policy, geometry):
                groups = data.draw(self.group_sets(each), label="groups")
                budget = data.draw(self.budgets(each, geometry), label="budget")
                schedule = self._schedule(each, geometry, groups, budget)
                self._check_schedule(each, schedule, geometry, groups)
                again = self._schedule(each, geometry, groups, budget)
                expect(again == schedule, f"{component_name(each)}: two calls with the same input gave different schedules")
                if not each.uses_budget:
                    unbudgeted = self._schedule(each, geometry, groups, None)
                    expect(unbudgeted == schedule, f"{component_name(each)} says uses_budget = False, but budget {budget} "
                                                    "changed its schedule")

        self._run(check, self.geometries(), st.data())

    def test_explain_and_json_round_trip(self) -> None:
        policy = self.make_policy()

        def check(geometry: ModelGeometry, data: st.DataObject) -> None:
            for each in self._scheduling_policies(policy, geometry):
                groups = data.draw(self.group_sets(each), label="groups")
                schedule = self._schedule(each, geometry, groups, data.draw(self.budgets(each, geometry)))
                text = schedule.explain()
                expect(isinstance(text, str) and text.strip(), f"{component_name(each)}: explain() printed nothing")
                again = Schedule.from_json(schedule.to_json(), self.registry().event_kinds())
                expect(again == schedule, f"{component_name(each)}: the schedule changed through JSON:\n{text}")
                expect(again.to_dict() == schedule.to_dict(), f"{component_name(each)}: to_dict() changed through JSON")

        self._run(check, self.geometries(), st.data())

    def test_params_round_trip(self) -> None:
        policy = self.make_policy()
        expect(isinstance(hash(policy), int), "a policy is a hashable value")
        rebuilt = type(policy).from_params(policy.params())
        expect(rebuilt == policy, f"{component_name(policy)}: from_params(params()) gave {rebuilt!r}, not {policy!r}")
        expect(isinstance(policy.describe(), str) and policy.describe(), f"{component_name(policy)}: describe() is empty")

    def test_batch_equals_samples_one_by_one(self) -> None:
        from vtsched.core.generation import GenerationConfig

        policy = self.make_policy()

        def check(shape: Any, inputs: tuple[list[Any], list[str]], data: st.DataObject) -> None:
            scheduler = self._scheduler(shape)
            batch = scheduler.prepare(*inputs)
            budget = data.draw(self.budgets(policy, self._batch_geometry(scheduler, batch)), label="budget")
            config = GenerationConfig(max_new_tokens=self.decode_steps)
            together = self._generate(scheduler, batch, policy, budget, config)
            for b in range(len(batch)):
                alone = self._generate(scheduler, batch.select([b]), policy, budget, config)
                for step, logits in enumerate(alone.step_logits):
                    close(together.step_logits[step][b], logits[0], self.atol, 0.0,
                           f"{component_name(policy)}: sample {b} at step {step} differs in a batch of {len(batch)} "
                           "from the sample alone")
                expect(alone.tokens[0] == together.tokens[b],
                        f"{component_name(policy)}: sample {b} decodes {together.tokens[b]} in a batch, {alone.tokens[0]} alone")

        self._run(check, self.model_shapes(), self.prompts(min_size=2, max_size=3), st.data(), model=True)

    def test_cached_decoding_equals_recompute(self) -> None:
        from vtsched.core.generation import GenerationConfig, generate

        policy = self.make_policy()

        def check(shape: Any, inputs: tuple[list[Any], list[str]], data: st.DataObject) -> None:
            scheduler = self._scheduler(shape)
            batch = scheduler.prepare(*inputs)
            budget = data.draw(self.budgets(policy, self._batch_geometry(scheduler, batch)), label="budget")
            plan = self._plan(scheduler, batch, policy, budget)
            cached = generate(scheduler.engine, batch, plan.schedule, plan.partition,
                              GenerationConfig(max_new_tokens=self.decode_steps), keep_logits=True)
            for step, logits in enumerate(cached.step_logits):
                tail = [torch.tensor(t[:step], dtype=torch.long) for t in cached.tokens] if step else None
                fresh = scheduler.engine.prefill(batch, plan.schedule, plan.partition, tail=tail, use_cache=False)
                close(logits, fresh.logits, self.atol, 0.0,
                       f"{component_name(policy)}: decode step {step} from the cache differs from recomputing the schedule "
                       "with the generated tokens in the surviving stream")

        self._run(check, self.model_shapes(), self.prompts(min_size=1, max_size=2), st.data(), model=True)

    # -- helpers --------------------------------------------------------------------------------
    def _scheduling_policies(self, policy: Policy, geometry: ModelGeometry) -> list[Policy]:
        """The policies whose ``schedule`` runs: the policy, or a calibrated policy's base at every layer."""
        if not isinstance(policy, CalibratedPolicy):
            return [policy]
        request = policy.calibration_request()
        base = self.registry().policy(request.base)
        return [base(**dict(request.params, **{request.layer_param: k})) for k in range(geometry.num_layers + 1)]

    @staticmethod
    def _schedule(policy: Policy, geometry: ModelGeometry, groups: tuple[str, ...],
                  budget: Budget | None) -> Schedule:
        try:
            schedule = policy.schedule(geometry, groups, budget)  # positionally, as the planner calls it
        except TypeError as exc:
            raise AssertionError(
                f"{component_name(policy)}.schedule(geometry, groups, budget) raised TypeError: {exc}; a policy must accept "
                "the budget argument (even one it ignores)"
            ) from exc
        except VtschedError as exc:
            raise AssertionError(
                f"{component_name(policy)} refused groups {groups}, budget {budget} on {geometry}: {exc}. If this input is "
                "outside the policy's domain, narrow geometries()/group_sets()/budgets() in the test class"
            ) from exc
        expect(isinstance(schedule, Schedule), f"{component_name(policy)}.schedule() returned {type(schedule).__name__}, "
                                                "not a Schedule")
        return schedule

    def _check_schedule(self, policy: Policy, schedule: Schedule, geometry: ModelGeometry,
                        groups: tuple[str, ...]) -> None:
        dataclasses.replace(schedule)  # validates again, as construction does
        expect(schedule.num_layers == geometry.num_layers,
                f"{component_name(policy)}: schedule over {schedule.num_layers} layers for a {geometry.num_layers}-layer model")
        stray = [g for g in schedule.groups if g not in groups]
        expect(not stray, f"{component_name(policy)}: schedule names groups {stray} the partition ({list(groups)}) lacks")
        for event in schedule.events:  # every component an event names is registered and takes its parameters
            try:
                event.check_components(self.registry())
            except VtschedError as exc:
                raise AssertionError(f"{component_name(policy)}: {event.describe()}: {exc}") from exc

    def _scheduler(self, shape: Any) -> Any:
        model, processor = self.build_tiny_model(shape)
        return models.bound_scheduler(model, processor, self.registry())

    @staticmethod
    def _batch_geometry(scheduler: Any, batch: PromptBatch) -> ModelGeometry:
        return dataclasses.replace(scheduler.adapter.geometry, num_visual=min(batch.num_visual))

    def _plan(self, scheduler: Any, batch: PromptBatch, policy: Policy, budget: Budget | None) -> Any:
        partitioner = scheduler.make_partitioner(self.partitioner_name) if self.partitioner_name else None
        try:
            return scheduler.plan(batch, policy, partitioner, budget)
        except VtschedError as exc:
            raise AssertionError(f"{component_name(policy)} could not be planned with budget {budget} on "
                                 f"{batch.num_visual} visual tokens: {exc}") from exc

    def _generate(self, scheduler: Any, batch: PromptBatch, policy: Policy, budget: Budget | None,
                  config: Any) -> Any:
        from vtsched.core.generation import generate

        plan = self._plan(scheduler, batch, policy, budget)
        return generate(scheduler.engine, batch, plan.schedule, plan.partition, config, keep_logits=True)
