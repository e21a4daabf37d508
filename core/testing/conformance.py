"""Conformance kits: the checks every policy, partitioner, fusion rule and model adapter must pass.

Like transformers' ``ModelTesterMixin``, each kit is a plain class of pytest tests. Subclass it
in your own test file and name the component in a class attribute; pytest collects the
subclass (its name starts with ``Test``) and runs every check on your component::

    # tests/test_my_plugin.py
    from vtsched.core.testing import FusionRuleConformance, PartitionerConformance, PolicyConformance
    from my_plugin import MyPartitioner, MyPolicy, MyRule

    class TestMyPolicy(PolicyConformance):
        policy_class = MyPolicy
        policy_params = {"drop_layer": 1}  # keep layer parameters inside the tiny models
        min_layers = 1                      # geometries and tiny models: min_layers..max_layers layers

    class TestMyPartitioner(PartitionerConformance):
        partitioner_class = MyPartitioner

    class TestMyRule(FusionRuleConformance):
        fusion_rule_class = MyRule

Every kit's first test reads the class alone (:mod:`vtsched.core.contracts`, what registration
checks); the others run the component, on drawn vocabulary values and on tiny random float64
models, against references computed without it (transformers' own forward and generate, the
same inputs one sample at a time, recomputation without a cache). A failure raises
``AssertionError`` naming the component and what broke; hypothesis prints the input.

Inputs are drawn by overridable methods (``geometries()``, ``group_sets()``, ``budgets()``,
``model_shapes()``, ``prompt_batches()`` ...). Narrow one where your component's domain is
smaller than what the kit draws (e.g. the budgets a multi-stage policy can reach); never widen
a refusal into a pass. Properties run under the active hypothesis profile with at most
``examples`` (vocabulary checks) or ``model_examples`` (checks that run a model) examples each;
``settings_overrides`` passes any other hypothesis setting; checks run with ``torch_threads``
intra-op threads (default 1, restored afterwards).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vtsched.core.budget import Budget
from vtsched.core.contracts import adapter_problems, fusion_rule_problems, partitioner_problems, policy_problems
from vtsched.core.errors import VtschedError
from vtsched.core.fusion import FusionInputs, check_weights
from vtsched.core.geometry import ModelGeometry
from vtsched.core.partition import SUBJECT, Partition
from vtsched.core.policy import CalibratedPolicy, Partitioner, Policy
from vtsched.core.schedule import Schedule
from vtsched.core.testing import models
from vtsched.core.testing import strategies as strat
from vtsched.core.tokens import PromptBatch, Role

__all__ = ["PolicyConformance", "PartitionerConformance", "FusionRuleConformance", "AdapterConformance"]


def _expect(condition: object, message: str) -> None:
    """``assert`` that survives ``python -O``: a conformance check must be able to fail."""
    if not condition:
        raise AssertionError(message)


def _close(actual: torch.Tensor, expected: torch.Tensor, atol: float, rtol: float, what: str) -> None:
    torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol, msg=lambda m: f"{what}\n{m}")


def _name(obj: Any) -> str:
    return getattr(obj, "name", None) or getattr(obj, "__name__", None) or type(obj).__name__


class _Kit:
    """What every kit shares: how many examples, which registry, which tiny models."""

    examples: ClassVar[int] = 25
    model_examples: ClassVar[int] = 8
    settings_overrides: ClassVar[Mapping[str, Any]] = {}
    min_layers: ClassVar[int] = 1
    max_layers: ClassVar[int] = 3
    # Tiny models gain nothing from intra-op threads, and on a shared CPU more threads make every
    # small op wait for the others (10x slower under load); the previous count is restored after.
    torch_threads: ClassVar[int | None] = 1

    def registry(self) -> Any:
        """Fusion rules, partitioners and adapters by name (default: built-ins plus installed plugins)."""
        return models.default_registry()

    def model_shapes(self) -> st.SearchStrategy[Any]:
        """Hashable shapes of the tiny models ``build_tiny_model`` builds (default: tiny LLaVA)."""
        return strat.tiny_llava_shapes(min_layers=self.min_layers, max_layers=self.max_layers)

    def build_tiny_model(self, shape: Any, *, dtype: torch.dtype = torch.float64,
                         attn_implementation: str = "sdpa") -> tuple[torch.nn.Module, Any]:
        """``(model, processor)`` of ``shape`` with random weights, cached (default: tiny LLaVA)."""
        return strat.tiny_llava(shape, dtype, attn_implementation)

    def _run(self, test: Callable[..., None], *strategies: st.SearchStrategy[Any], model: bool = False) -> None:
        """Run ``test`` on drawn inputs under the active profile, capped at the kit's example count."""
        active = settings()
        limit = self.model_examples if model else self.examples
        options: dict[str, Any] = {
            "max_examples": max(1, min(limit, active.max_examples)),
            "deadline": None,
            "suppress_health_check": tuple({*active.suppress_health_check, HealthCheck.too_slow,
                                            HealthCheck.data_too_large}),
        }
        options.update(self.settings_overrides)
        threads = torch.get_num_threads()
        if self.torch_threads:
            torch.set_num_threads(self.torch_threads)
        try:
            given(*strategies)(settings(active, **options)(test))()
        finally:
            torch.set_num_threads(threads)


# -- policies ----------------------------------------------------------------------------------
class PolicyConformance(_Kit):
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
        _expect(self.policy_class is not None, f"{type(self).__name__}: set policy_class")
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

    # -- the checks -----------------------------------------------------------------------------
    def test_contract(self) -> None:
        problems = policy_problems(self.policy_class)
        _expect(not problems, f"policy {_name(self.policy_class)!r} breaks the policy contract: " + "; ".join(problems))

    def test_schedule_is_valid_for_any_geometry_groups_and_budget(self) -> None:
        policy = self.make_policy()

        def check(geometry: ModelGeometry, data: st.DataObject) -> None:
            for each in self._scheduling_policies(policy, geometry):
                groups = data.draw(self.group_sets(each), label="groups")
                budget = data.draw(self.budgets(each, geometry), label="budget")
                schedule = self._schedule(each, geometry, groups, budget)
                self._check_schedule(each, schedule, geometry, groups)
                again = self._schedule(each, geometry, groups, budget)
                _expect(again == schedule, f"{_name(each)}: two calls with the same input gave different schedules")
                if not each.uses_budget:
                    unbudgeted = self._schedule(each, geometry, groups, None)
                    _expect(unbudgeted == schedule, f"{_name(each)} says uses_budget = False, but budget {budget} "
                                                    "changed its schedule")

        self._run(check, self.geometries(), st.data())

    def test_explain_and_json_round_trip(self) -> None:
        policy = self.make_policy()

        def check(geometry: ModelGeometry, data: st.DataObject) -> None:
            for each in self._scheduling_policies(policy, geometry):
                groups = data.draw(self.group_sets(each), label="groups")
                schedule = self._schedule(each, geometry, groups, data.draw(self.budgets(each, geometry)))
                text = schedule.explain()
                _expect(isinstance(text, str) and text.strip(), f"{_name(each)}: explain() printed nothing")
                again = Schedule.from_json(schedule.to_json(), self.registry().event_kinds())
                _expect(again == schedule, f"{_name(each)}: the schedule changed through JSON:\n{text}")
                _expect(again.to_dict() == schedule.to_dict(), f"{_name(each)}: to_dict() changed through JSON")

        self._run(check, self.geometries(), st.data())

    def test_params_round_trip(self) -> None:
        policy = self.make_policy()
        _expect(isinstance(hash(policy), int), "a policy is a hashable value")
        rebuilt = type(policy).from_params(policy.params())
        _expect(rebuilt == policy, f"{_name(policy)}: from_params(params()) gave {rebuilt!r}, not {policy!r}")
        _expect(isinstance(policy.describe(), str) and policy.describe(), f"{_name(policy)}: describe() is empty")

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
                    _close(together.step_logits[step][b], logits[0], self.atol, 0.0,
                           f"{_name(policy)}: sample {b} at step {step} differs in a batch of {len(batch)} "
                           "from the sample alone")
                _expect(alone.tokens[0] == together.tokens[b],
                        f"{_name(policy)}: sample {b} decodes {together.tokens[b]} in a batch, {alone.tokens[0]} alone")

        self._run(check, self.model_shapes(), strat.prompts(min_size=2, max_size=3), st.data(), model=True)

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
                _close(logits, fresh.logits, self.atol, 0.0,
                       f"{_name(policy)}: decode step {step} from the cache differs from recomputing the schedule "
                       "with the generated tokens in the surviving stream")

        self._run(check, self.model_shapes(), strat.prompts(min_size=1, max_size=2), st.data(), model=True)

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
                f"{_name(policy)}.schedule(geometry, groups, budget) raised TypeError: {exc}; a policy must accept "
                "the budget argument (even one it ignores)"
            ) from exc
        except VtschedError as exc:
            raise AssertionError(
                f"{_name(policy)} refused groups {groups}, budget {budget} on {geometry}: {exc}. If this input is "
                "outside the policy's domain, narrow geometries()/group_sets()/budgets() in the test class"
            ) from exc
        _expect(isinstance(schedule, Schedule), f"{_name(policy)}.schedule() returned {type(schedule).__name__}, "
                                                "not a Schedule")
        return schedule

    def _check_schedule(self, policy: Policy, schedule: Schedule, geometry: ModelGeometry,
                        groups: tuple[str, ...]) -> None:
        dataclasses.replace(schedule)  # validates again, as construction does
        _expect(schedule.num_layers == geometry.num_layers,
                f"{_name(policy)}: schedule over {schedule.num_layers} layers for a {geometry.num_layers}-layer model")
        stray = [g for g in schedule.groups if g not in groups]
        _expect(not stray, f"{_name(policy)}: schedule names groups {stray} the partition ({list(groups)}) lacks")
        for event in schedule.events:  # every component an event names is registered and takes its parameters
            try:
                event.check_components(self.registry())
            except VtschedError as exc:
                raise AssertionError(f"{_name(policy)}: {event.describe()}: {exc}") from exc

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
            raise AssertionError(f"{_name(policy)} could not be planned with budget {budget} on "
                                 f"{batch.num_visual} visual tokens: {exc}") from exc

    def _generate(self, scheduler: Any, batch: PromptBatch, policy: Policy, budget: Budget | None,
                  config: Any) -> Any:
        from vtsched.core.generation import generate

        plan = self._plan(scheduler, batch, policy, budget)
        return generate(scheduler.engine, batch, plan.schedule, plan.partition, config, keep_logits=True)


# -- partitioners ------------------------------------------------------------------------------
class PartitionerConformance(_Kit):
    """Checks a :class:`~vtsched.core.policy.Partitioner`.

    Set ``partitioner_class`` (and ``partitioner_params``), or override ``make_partitioner()``.
    Checks, on synthetic batches whose samples carry different numbers of visual tokens
    (``prompt_batches()``) and on batches a tiny model's adapter prepared:

    - the class contract (frozen dataclass, ``partition(batch, budget)``);
    - a disjoint cover: one group id per visual token of every sample, nothing more;
    - the partition names the groups ``group_names()`` announced (what the planner schedules
      and explains before any image is seen);
    - the subject group (``groups[0]``) of sample b has exactly ``budget.resolve(num_visual_b)``
      tokens; scores and merged features (if any) have the sample's sizes and are finite;
    - deterministic: a fresh instance with the same parameters gives the same partition;
    - a sample is partitioned the same in a batch as alone (batches decode like their samples).
    """

    partitioner_class: ClassVar[type | None] = None
    partitioner_params: ClassVar[Mapping[str, Any]] = {}

    def make_partitioner(self) -> Partitioner:
        _expect(self.partitioner_class is not None, f"{type(self).__name__}: set partitioner_class")
        assert self.partitioner_class is not None
        return self.partitioner_class(**dict(self.partitioner_params))  # type: ignore[no-any-return]

    def prompt_batches(self, *, distinct_visual: bool = False) -> st.SearchStrategy[PromptBatch]:
        return strat.prompt_batches(min_size=1, max_size=3, distinct_visual=distinct_visual)

    def budgets(self, batch: PromptBatch) -> st.SearchStrategy[Budget]:
        """Budgets every sample of ``batch`` can meet."""
        return strat.token_budgets(num_visual=min(batch.num_visual))

    # -- the checks -----------------------------------------------------------------------------
    def test_contract(self) -> None:
        problems = partitioner_problems(self.partitioner_class)
        _expect(not problems, f"partitioner {_name(self.partitioner_class)!r} breaks the partitioner contract: "
                + "; ".join(problems))

    def test_partition_is_a_disjoint_cover_with_the_budgets_subject_size(self) -> None:
        def check(batch: PromptBatch, data: st.DataObject) -> None:
            budget = data.draw(self.budgets(batch), label="budget")
            self.check_partition(batch, budget, self._partition(batch, budget))

        self._run(check, self.prompt_batches(), st.data())

    def test_samples_with_different_token_counts_in_one_batch(self) -> None:
        def check(batch: PromptBatch, data: st.DataObject) -> None:
            _expect(len(set(batch.num_visual)) > 1, "the batch should mix token counts")
            budget = data.draw(self.budgets(batch), label="budget")
            self.check_partition(batch, budget, self._partition(batch, budget))

        self._run(check, self.prompt_batches(distinct_visual=True), st.data())

    def test_deterministic(self) -> None:
        def check(batch: PromptBatch, data: st.DataObject) -> None:
            budget = data.draw(self.budgets(batch), label="budget")
            first, second = self._partition(batch, budget), self._partition(batch, budget)
            self._expect_same(first, second, range(len(batch)), range(len(batch)),
                              "partitioning the same batch twice gave different partitions")

        self._run(check, self.prompt_batches(), st.data())

    def test_batch_equals_samples_one_by_one(self) -> None:
        def check(batch: PromptBatch, data: st.DataObject) -> None:
            budget = data.draw(self.budgets(batch), label="budget")
            together = self._partition(batch, budget)
            for b in range(len(batch)):
                alone = self._partition(batch.select([b]), budget)
                self._expect_same(together, alone, [b], [0], f"sample {b} is partitioned differently in a batch "
                                                             "than alone")

        self._run(check, self.prompt_batches(), st.data())

    def test_on_a_batch_an_adapter_prepared(self) -> None:
        def check(shape: Any, inputs: tuple[list[Any], list[str]], data: st.DataObject) -> None:
            model, processor = self.build_tiny_model(shape)
            adapter = self.registry().adapter_for(model)(model, processor)
            batch = adapter.prepare(*inputs)
            budget = data.draw(self.budgets(batch), label="budget")
            self.check_partition(batch, budget, self._partition(batch, budget))

        self._run(check, self.model_shapes(), strat.prompts(min_size=1, max_size=2), st.data(), model=True)

    # -- helpers --------------------------------------------------------------------------------
    def _partition(self, batch: PromptBatch, budget: Budget) -> Partition:
        partitioner = self.make_partitioner()
        try:
            partition = partitioner.partition(batch, budget)
        except VtschedError as exc:
            raise AssertionError(f"{_name(partitioner)} refused budget {budget} on {batch.num_visual} visual "
                                 f"tokens: {exc}") from exc
        _expect(isinstance(partition, Partition), f"{_name(partitioner)}.partition() returned "
                                                  f"{type(partition).__name__}, not a Partition")
        return partition

    def check_partition(self, batch: PromptBatch, budget: Budget, partition: Partition) -> None:
        """The partition of ``batch`` is a disjoint cover whose subject group has the budget's size."""
        who = _name(self.partitioner_class)
        _expect(partition.batch_size == len(batch), f"{who}: partition for {partition.batch_size} samples, "
                                                    f"the batch has {len(batch)}")
        announced = tuple(self.make_partitioner().group_names())
        _expect(partition.groups == announced, f"{who}: the partition names groups {partition.groups}, "
                                               f"group_names() announced {announced}")
        sizes = partition.sizes()
        for b, sample in enumerate(batch.samples):
            ids = partition.assignment[b]
            n = sample.num_visual
            _expect(ids.numel() == n, f"{who}: sample {b} has {n} visual tokens, the partition assigns {ids.numel()}")
            members = [set(partition.members(b, g).tolist()) for g in partition.groups]
            _expect(sum(len(m) for m in members) == n and set().union(*members) == set(range(n)),
                    f"{who}: sample {b}'s groups are not a disjoint cover of its {n} tokens")
            want = budget.resolve(n)
            _expect(int(sizes[b, 0]) == want, f"{who}: sample {b} ({n} tokens), budget {budget}: the subject group "
                                              f"{partition.groups[0]!r} has {int(sizes[b, 0])} tokens, not {want}")
            if partition.scores is not None:
                scores = partition.scores[b]
                _expect(scores.shape == (n,) and bool(torch.isfinite(scores).all()),
                        f"{who}: sample {b}'s scores are not {n} finite values")
            override = partition.features[b] if partition.features is not None else None
            if override is not None:
                index, values = override
                _expect(index.dim() == 1 and (index.numel() == 0 or (0 <= int(index.min()) and int(index.max()) < n))
                        and index.unique().numel() == index.numel(),
                        f"{who}: sample {b}'s merged features replace tokens outside 0..{n - 1} or twice")
                _expect(tuple(values.shape) == (index.numel(), sample.visual_features.shape[-1])
                        and bool(torch.isfinite(values).all()),
                        f"{who}: sample {b}'s merged features have shape {tuple(values.shape)} or are not finite")

    def _expect_same(self, a: Partition, b: Partition, rows_a: Any, rows_b: Any, what: str) -> None:
        who = _name(self.partitioner_class)
        _expect(a.groups == b.groups, f"{who}: {what} (groups {a.groups} vs {b.groups})")
        for i, j in zip(rows_a, rows_b):
            _expect(torch.equal(a.assignment[i], b.assignment[j]),
                    f"{who}: {what}: sample {i} {a.assignment[i].tolist()} vs {b.assignment[j].tolist()}")
            fa = a.features[i] if a.features is not None else None
            fb = b.features[j] if b.features is not None else None
            _expect((fa is None) == (fb is None), f"{who}: {what}: merged features present in one only")
            if fa is not None and fb is not None:
                _expect(torch.equal(fa[0], fb[0]) and torch.equal(fa[1], fb[1]), f"{who}: {what}: merged features")


# -- fusion rules ------------------------------------------------------------------------------
class FusionRuleConformance(_Kit):
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
        _expect(self.fusion_rule_class is not None, f"{type(self).__name__}: set fusion_rule_class")
        assert self.fusion_rule_class is not None
        return self.fusion_rule_class(**dict(self.fusion_rule_params))

    def fusion_inputs(self) -> st.SearchStrategy[FusionInputs]:
        return strat.fusion_inputs(attention_mass=bool(getattr(self.fusion_rule_class, "needs_attention_mass", True)))

    def test_contract(self) -> None:
        problems = fusion_rule_problems(self.fusion_rule_class)
        _expect(not problems, f"fusion rule {_name(self.fusion_rule_class)!r} breaks the fusion-rule contract: "
                + "; ".join(problems))

    def test_weights_are_finite_non_negative_and_sum_to_one(self) -> None:
        def check(inputs: FusionInputs) -> None:
            rule = self.make_rule()
            who = _name(rule)
            weights = rule.weights(inputs)
            _expect(isinstance(weights, torch.Tensor) and tuple(weights.shape) == inputs.shape,
                    f"{who}: weights of shape {tuple(getattr(weights, 'shape', ()))}, expected {inputs.shape}")
            _expect(bool(torch.isfinite(weights).all()), f"{who}: non-finite weights {weights}")
            _expect(bool((weights >= 0).all()), f"{who}: negative weights {weights}")
            _close(weights.sum(0).float(), torch.ones(inputs.shape[1:]), 1e-5, 0.0,
                   f"{who}: weights do not sum to one over streams")
            try:
                check_weights(who, weights, inputs)
            except VtschedError as exc:
                raise AssertionError(f"{who}: the engine would refuse these weights: {exc}") from exc
            empty = inputs.visual_counts == 0
            for s in range(inputs.shape[0]):
                if s != inputs.survivor and bool(empty[s].any()):
                    _expect(float(weights[s][empty[s]].abs().max()) == 0.0,
                            f"{who}: stream {s} carries no visual tokens but gets weight {weights[s]}")
            _expect(torch.equal(weights, self.make_rule().weights(inputs)), f"{who}: weights differ between calls")

        self._run(check, self.fusion_inputs())


# -- model adapters ----------------------------------------------------------------------------
class AdapterConformance(_Kit):
    """Checks a :class:`~vtsched.core.adapters.base.ModelAdapter` against its family's own code.

    Set ``adapter_class`` and, for a family other than LLaVA, override the family-specific parts:
    ``model_shapes()`` and ``build_tiny_model()`` (a tiny random model and its processor),
    ``reference_inputs()`` (the processor call for one prompt), ``reference_logits()`` /
    ``reference_greedy_tokens()`` (the model's own forward and generate) and
    ``shortened_reference_logits()`` (the model on a physically shortened sequence with the
    original position ids). Checks:

    - the class contract; ``accepts`` the tiny model; its geometry from the config equals the
      loaded model's; ``prepare`` gives one contiguous image per sample, question tokens, and
      features of the decoder's width;
    - ``full`` through the engine = the model's own forward (logits at every position, float64)
      and the model's own greedy ``generate`` (tokens);
    - ``prune`` (a random subject group) = the model on the physically shortened sequence;
    - a batch = its samples one by one (``full`` and ``prune``, a few decode steps);
    - ``parvts`` with fixed fusion and alpha = 1 = ``prune`` (any drop layer, either fused-token set);
    - cached decoding = recomputing the prompt with the generated tokens as tail (``full``,
      ``prune``, ``parvts``), step by step;
    - SDPA = eager attention (float32, tolerance ``backend_atol``) for ``full``, ``prune``, ``parvts``.

    Prompts come from ``prompts()`` (override for images a family needs, e.g. larger ones).
    """

    adapter_class: ClassVar[type | None] = None
    new_tokens: ClassVar[int] = 3
    atol: ClassVar[float] = 1e-6
    backend_atol: ClassVar[float] = 1e-4

    # -- family-specific parts (override for a new family) --------------------------------------
    def prompts(self, *, min_size: int = 1, max_size: int = 3) -> st.SearchStrategy[Any]:
        """Batches of (image, question) pairs the checks draw (default: small noise images)."""
        return strat.prompts(min_size=min_size, max_size=max_size)

    def reference_inputs(self, processor: Any, image: Any, question: str) -> Mapping[str, torch.Tensor]:
        assert self.adapter_class is not None
        return models.processor_inputs(processor, self.adapter_class.prompt_template, image, question)

    def reference_logits(self, model: Any, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return models.model_logits(model, inputs)

    def reference_greedy_tokens(self, model: Any, inputs: Mapping[str, torch.Tensor], new_tokens: int) -> list[int]:
        return models.model_greedy_tokens(model, inputs, new_tokens)

    def shortened_reference_logits(self, model: Any, sample: Any, keep: torch.Tensor,
                                   features: torch.Tensor | None = None) -> torch.Tensor:
        return models.shortened_logits(model, sample, keep, features)

    def joined_reference_logits(self, adapter: Any, sample: Any, keeps: list[torch.Tensor], drop_layer: int, *,
                                averaged: set[int], alpha: float, carried: set[int]) -> torch.Tensor:
        """Two streams ``keeps`` run apart up to ``drop_layer``, then joined by hand (states at ``averaged``
        fused with ``alpha``, copies of ``carried`` inserted) and run on (the model's own decoder)."""
        return models.joined_logits(adapter.model, adapter.language_model, sample, keeps, drop_layer,
                                    averaged=averaged, alpha=alpha, carried=carried)

    # -- the checks -----------------------------------------------------------------------------
    def test_contract(self) -> None:
        problems = adapter_problems(self.adapter_class)
        _expect(not problems, f"adapter {_name(self.adapter_class)!r} breaks the adapter contract: "
                + "; ".join(problems))

    def test_accepts_its_model_and_prepares_prompts(self) -> None:
        def check(shape: Any, inputs: tuple[list[Any], list[str]]) -> None:
            adapter = self._adapter(shape)
            who = _name(adapter)
            model = adapter.model
            _expect(type(adapter).accepts(model), f"{who} does not accept its own tiny {type(model).__name__}")
            geometry = adapter.geometry
            _expect(type(adapter).geometry_from_config(model.config) == geometry,
                    f"{who}: geometry from the config differs from the loaded model's")
            parts = adapter.decoder()
            _expect(len(parts.layers) == geometry.num_layers, f"{who}: {len(parts.layers)} decoder layers, "
                                                              f"geometry says {geometry.num_layers}")
            batch = adapter.prepare(*inputs)
            _expect(len(batch) == len(inputs[0]), f"{who}: prepared {len(batch)} samples from {len(inputs[0])}")
            for b, sample in enumerate(batch.samples):
                visual = sample.visual_positions
                _expect(sample.num_visual > 0, f"{who}: sample {b} has no visual tokens")
                _expect(bool((visual.diff() == 1).all()), f"{who}: sample {b}'s image tokens are not contiguous")
                _expect(bool((sample.roles == Role.QUESTION).any()), f"{who}: sample {b} marks no question token")
                _expect(not bool((sample.roles == Role.TAIL).any()), f"{who}: a prompt has no tail tokens")
                _expect(sample.visual_features.shape[-1] == geometry.hidden_size,
                        f"{who}: features of width {sample.visual_features.shape[-1]}, the decoder's is "
                        f"{geometry.hidden_size}")
                if sample.cls_scores is not None:
                    _expect(sample.cls_scores.shape == (sample.num_visual,), f"{who}: sample {b}: CLS scores' shape")
                if sample.grid is not None:
                    _expect(sample.grid[0] * sample.grid[1] == sample.num_visual, f"{who}: sample {b}: grid size")

        self._run(check, self.model_shapes(), self.prompts(min_size=1, max_size=2), model=True)

    def test_full_equals_the_models_own_forward(self) -> None:
        def check(shape: Any, inputs: tuple[list[Any], list[str]]) -> None:
            adapter, engine, planner, batch = self._prepared(shape, inputs)
            reference_inputs = self.reference_inputs(adapter.processor, inputs[0][0], inputs[1][0])
            _expect(reference_inputs["input_ids"][0].tolist() == batch.samples[0].input_ids.tolist(),
                    f"{_name(adapter)}: prepared token ids differ from the processor's")
            plan = planner.plan(batch, self._policy("full"), None, None)
            ours = engine.prefill(batch, plan.schedule, plan.partition, use_cache=False, return_hidden=True)
            reference = self.reference_logits(adapter.model, reference_inputs)
            _expect(ours.all_logits is not None and ours.all_logits.shape[1] == reference.shape[0],
                    f"{_name(adapter)}: the engine ran a different number of tokens than the model")
            _close(ours.all_logits[0], reference, self.atol, 0.0,
                   f"{_name(adapter)}: full through the engine differs from the model's own forward")

        self._run(check, self.model_shapes(), self.prompts(min_size=1, max_size=1), model=True)

    def test_full_greedy_tokens_equal_the_models_own_generate(self) -> None:
        from vtsched.core.generation import GenerationConfig, generate

        def check(shape: Any, inputs: tuple[list[Any], list[str]]) -> None:
            adapter, engine, planner, batch = self._prepared(shape, inputs)
            plan = planner.plan(batch, self._policy("full"), None, None)
            config = GenerationConfig(max_new_tokens=self.new_tokens)
            ours = generate(engine, batch, plan.schedule, plan.partition, config)
            theirs = self.reference_greedy_tokens(
                adapter.model, self.reference_inputs(adapter.processor, inputs[0][0], inputs[1][0]), self.new_tokens)
            _expect(ours.tokens[0] == theirs, f"{_name(adapter)}: greedy tokens {ours.tokens[0]}, the model's own "
                                              f"generate gives {theirs}")

        self._run(check, self.model_shapes(), self.prompts(min_size=1, max_size=1), model=True)

    def test_prune_equals_the_model_on_a_physically_shortened_sequence(self) -> None:
        def check(shape: Any, inputs: tuple[list[Any], list[str]], data: st.DataObject) -> None:
            adapter, engine, planner, batch = self._prepared(shape, inputs)
            sample = batch.samples[0]
            budget = Budget(count=data.draw(st.integers(0, sample.num_visual), label="keep"))
            partitioner = self.registry().partitioner("random")(seed=data.draw(st.integers(0, 99), label="seed"))
            plan = planner.plan(batch, self._policy("prune"), partitioner, budget)
            ours = engine.prefill(batch, plan.schedule, plan.partition, use_cache=False, return_hidden=True)
            keep = models.stream_positions(sample, plan.partition.members(0, plan.partition.groups[0]))
            kept = ours.index[0].tolist() if ours.index is not None else None
            _expect(kept == keep.tolist(), f"{_name(adapter)}: prune kept positions {kept}, expected {keep.tolist()}")
            reference = self.shortened_reference_logits(adapter.model, sample, keep)
            _close(ours.all_logits[0], reference, self.atol, 0.0,
                   f"{_name(adapter)}: prune differs from the model on the shortened sequence")

        self._run(check, self.model_shapes(), self.prompts(min_size=1, max_size=1), st.data(), model=True)

    def test_batch_equals_samples_one_by_one(self) -> None:
        from vtsched.core.generation import GenerationConfig, generate

        def check(shape: Any, inputs: tuple[list[Any], list[str]], data: st.DataObject) -> None:
            adapter, engine, planner, batch = self._prepared(shape, inputs)
            name = data.draw(st.sampled_from(["full", "prune"]), label="policy")
            budget = Budget(count=data.draw(st.integers(0, min(batch.num_visual)), label="keep"))
            partitioner = self.registry().partitioner("uniform")() if name == "prune" else None
            config = GenerationConfig(max_new_tokens=self.new_tokens)

            def run(part_batch: PromptBatch) -> Any:
                plan = planner.plan(part_batch, self._policy(name), partitioner, budget if name == "prune" else None)
                return generate(engine, part_batch, plan.schedule, plan.partition, config, keep_logits=True)

            together = run(batch)
            for b in range(len(batch)):
                alone = run(batch.select([b]))
                for step, logits in enumerate(alone.step_logits):
                    _close(together.step_logits[step][b], logits[0], self.atol, 0.0,
                           f"{_name(adapter)}: {name}, sample {b}, step {step}: batch differs from alone")
                _expect(alone.tokens[0] == together.tokens[b], f"{_name(adapter)}: {name}, sample {b}: tokens differ")

        self._run(check, self.model_shapes(), self.prompts(min_size=2, max_size=3), st.data(), model=True)

    def test_parvts_with_alpha_one_equals_prune(self) -> None:
        def check(shape: Any, inputs: tuple[list[Any], list[str]], data: st.DataObject) -> None:
            adapter, engine, planner, batch = self._prepared(shape, inputs)
            budget = Budget(count=data.draw(st.integers(0, min(batch.num_visual)), label="keep"))
            drop = data.draw(st.integers(0, adapter.geometry.num_layers), label="drop_layer")
            tokens = data.draw(st.sampled_from(["question", "post_image", "last"]), label="fuse_tokens")
            partitioner = self.registry().partitioner("uniform")()
            logits = []
            for name, params in (("prune", {}), ("parvts", {"drop_layer": drop, "fusion": "fixed", "alpha": 1.0,
                                                            "fuse_tokens": tokens})):
                plan = planner.plan(batch, self._policy(name, params), partitioner, budget)
                logits.append(engine.prefill(batch, plan.schedule, plan.partition, use_cache=False).logits)
            _close(logits[1], logits[0], self.atol, 0.0,
                   f"{_name(adapter)}: parvts with alpha = 1 (drop layer {drop}) differs from prune")

        self._run(check, self.model_shapes(), self.prompts(min_size=1, max_size=2), st.data(), model=True)

    def test_parvts_equals_the_streams_run_apart_and_joined_by_hand(self) -> None:
        def check(shape: Any, inputs: tuple[list[Any], list[str]], data: st.DataObject) -> None:
            adapter, engine, planner, batch = self._prepared(shape, inputs)
            sample = batch.samples[0]
            budget = Budget(count=data.draw(st.integers(0, sample.num_visual), label="keep"))
            drop = data.draw(st.integers(0, adapter.geometry.num_layers), label="drop_layer")
            tokens = data.draw(st.sampled_from(["question", "post_image", "last"]), label="tokens")
            merge = data.draw(st.sampled_from(["fuse", "carry", "both"]), label="merge")
            alpha = data.draw(st.sampled_from([0.0, 0.3, 0.5, 1.0]), label="alpha")
            partitioner = self.registry().partitioner("random")(seed=data.draw(st.integers(0, 99), label="seed"))
            params = {"drop_layer": drop, "merge": merge, "fuse_tokens": tokens, "fusion": "fixed", "alpha": alpha}
            plan = planner.plan(batch, self._policy("parvts", params), partitioner, budget)
            ours = engine.prefill(batch, plan.schedule, plan.partition, use_cache=False).logits[0]
            members = [plan.partition.members(0, g) for g in plan.partition.groups]
            keeps = [models.stream_positions(sample, m) for m in members]
            chosen = models.fused_positions(sample, tokens)
            reference = self.joined_reference_logits(
                adapter, sample, keeps, drop, averaged=chosen if merge != "carry" else set(),
                alpha=alpha if len(members[1]) else 1.0, carried=chosen if merge != "fuse" else set())
            _close(ours, reference, self.atol, 0.0,
                   f"{_name(adapter)}: parvts (merge={merge}, {tokens} tokens, alpha {alpha}, layer {drop}) differs "
                   "from the streams run apart and joined by hand")

        self._run(check, self.model_shapes(), self.prompts(min_size=1, max_size=1), st.data(), model=True)

    def test_cached_decoding_equals_recomputation(self) -> None:
        from vtsched.core.generation import GenerationConfig, generate

        def check(shape: Any, inputs: tuple[list[Any], list[str]], data: st.DataObject) -> None:
            adapter, engine, planner, batch = self._prepared(shape, inputs)
            name = data.draw(st.sampled_from(["full", "prune", "parvts"]), label="policy")
            params: dict[str, Any] = {}
            if name == "parvts":
                merge = data.draw(st.sampled_from(["fuse", "carry", "both"]), label="merge")
                params = {"drop_layer": min(1, adapter.geometry.num_layers), "merge": merge}
            budget = Budget(count=data.draw(st.integers(0, min(batch.num_visual)), label="keep")) if name != "full" \
                else None
            plan = planner.plan(batch, self._policy(name, params), None, budget)
            ours = generate(engine, batch, plan.schedule, plan.partition,
                            GenerationConfig(max_new_tokens=self.new_tokens), keep_logits=True)
            for step in range(1, len(ours.step_logits)):
                tail = [torch.tensor(t[:step], dtype=torch.long) for t in ours.tokens]
                again = engine.prefill(batch, plan.schedule, plan.partition, tail=tail, use_cache=False)
                _close(ours.step_logits[step], again.logits, self.atol, 0.0,
                       f"{_name(adapter)}: {name}, step {step}: cached decoding differs from recomputing the prompt "
                       "with the generated tokens")

        self._run(check, self.model_shapes(), self.prompts(min_size=1, max_size=2), st.data(), model=True)

    def test_sdpa_equals_eager(self) -> None:
        def check(shape: Any, inputs: tuple[list[Any], list[str]], data: st.DataObject) -> None:
            sdpa = self._adapter(shape, dtype=torch.float32, attn_implementation="sdpa")
            eager = self._adapter(shape, dtype=torch.float32, attn_implementation="eager")
            batch = sdpa.prepare(*inputs)
            name = data.draw(st.sampled_from(["full", "prune", "parvts"]), label="policy")
            params = {"drop_layer": min(1, sdpa.geometry.num_layers)} if name == "parvts" else {}
            budget = Budget(count=min(batch.num_visual) // 2) if name != "full" else None
            logits = []
            for adapter in (sdpa, eager):
                engine, planner = self._runner(adapter)
                plan = planner.plan(batch, self._policy(name, params), None, budget)
                logits.append(engine.prefill(batch, plan.schedule, plan.partition, use_cache=False).logits)
            _close(logits[0], logits[1], self.backend_atol, self.backend_atol,
                   f"{_name(sdpa)}: {name} under SDPA differs from eager attention")

        self._run(check, self.model_shapes(), self.prompts(min_size=1, max_size=2), st.data(), model=True)

    # -- helpers --------------------------------------------------------------------------------
    def _adapter(self, shape: Any, *, dtype: torch.dtype = torch.float64, attn_implementation: str = "sdpa") -> Any:
        _expect(self.adapter_class is not None, f"{type(self).__name__}: set adapter_class")
        assert self.adapter_class is not None
        model, processor = self.build_tiny_model(shape, dtype=dtype, attn_implementation=attn_implementation)
        return self.adapter_class(model, processor)

    def _runner(self, adapter: Any) -> tuple[Any, Any]:
        from vtsched.core.engine import Engine
        from vtsched.core.planner import Planner

        planner = Planner(self.registry(), adapter.geometry, type(adapter).default_partitioner)
        return Engine(adapter.decoder(), self.registry().fusion_rules(), rankers=self.registry().rankers()), planner

    def _prepared(self, shape: Any, inputs: tuple[list[Any], list[str]]) -> tuple[Any, Any, Any, PromptBatch]:
        """The tiny model's adapter, an engine and a planner on it, and ``inputs`` prepared as a batch."""
        adapter = self._adapter(shape)
        engine, planner = self._runner(adapter)
        return adapter, engine, planner, adapter.prepare(*inputs)

    def _policy(self, name: str, params: Mapping[str, Any] | None = None) -> Policy:
        return self.registry().policy(name)(**dict(params or {}))  # type: ignore[no-any-return]
