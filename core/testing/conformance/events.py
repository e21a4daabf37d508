"""The conformance kit for schedule event kinds, built-in or a plugin's.

    from vtsched.core.testing import EventConformance

    class TestMyEvent(EventConformance):
        event_class = MyEvent

Schedules are drawn with every built-in kind and the kind under test (its own
:meth:`~vtsched.core.events.Event.draws`), kept only when they contain it, and run on tiny random
float64 models through the engine. Checks:

- the class contract (what registration checks: a frozen dataclass subclassing ``Event`` with
  ``kind``, ``layer`` first, ``describe``/``check``/``apply``);
- the kind draws events (``draws`` is implemented and its events appear in drawn schedules), each
  schedule prints in ``explain`` with the event's own line and round-trips through JSON exactly;
- a batch runs as its samples one by one (every decoded step's logits);
- cached decoding equals recomputing the schedule with the generated token as the surviving
  stream's tail;
- the FLOPs the schedule's events account for (``count``; what ``vtsched sweep --dry-run``
  estimates) equal the FLOPs of the executed prefill;
- the FLOPs the run declares (layers, probes, rankers' projections) equal what
  ``torch.utils.flop_counter`` counts on an eager model;
- for a kind that only removes tokens (``removes_tokens_only``, every ranker's ``keep_top``): one event
  at layer L equals the model's own layers on the whole prompt up to L and then on the physically
  shortened sequence of the tokens the engine kept.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from hypothesis import HealthCheck, assume
from hypothesis import strategies as st

from vtsched.core.contracts import event_problems
from vtsched.core.events import BUILTIN_EVENTS, Event
from vtsched.core.events.rankers import Ranker
from vtsched.core.partition import Partition
from vtsched.core.schedule import Schedule
from vtsched.core.testing import strategies as strat
from vtsched.core.testing.conformance.kit import Kit, close, component_name, expect
from vtsched.core.tokens import Role

__all__ = ["EventConformance", "RankerConformance"]


class EventConformance(Kit):
    """Checks a schedule event kind (set ``event_class``)."""

    event_class: ClassVar[type[Event] | None] = None
    removes_tokens_only: ClassVar[bool] = False  # True: also held to the physically shortened sequence
    # A drawn schedule without the kind under test is discarded (``_with_event``): with every built-in kind
    # drawn, a ranker's kit (a keep_top naming one ranker among all) discards most, by design.
    suppressed: ClassVar[tuple[HealthCheck, ...]] = (HealthCheck.filter_too_much,)
    max_events_per_layer: ClassVar[int] = 2
    atol: ClassVar[float] = 1e-6

    # -- what is drawn (override to narrow) -----------------------------------------------------
    def kinds(self) -> tuple[type[Event], ...]:
        expect(self.event_class is not None, f"{type(self).__name__}: set event_class")
        assert self.event_class is not None
        return tuple(dict.fromkeys((*BUILTIN_EVENTS, self.event_class)))

    def schedules(self) -> st.SearchStrategy[Schedule]:
        """Drawn schedules that contain at least one event of the kind under test."""
        return strat.schedules(max_layers=self.max_layers, kinds=self.kinds(),
                               max_events_per_layer=self.max_events_per_layer,
                               fusion_rules=tuple(self.registry().fusion_rules()), rankers=self.rankers())

    def rankers(self) -> dict[str, type]:
        """Rankers a drawn ``keep_top`` may name (default: every ranker the registry has)."""
        return self.registry().rankers()

    def _with_event(self, schedule: Schedule) -> Schedule:
        assume(any(self.is_tested(e) for e in schedule.events))
        return schedule

    def is_tested(self, event: Any) -> bool:
        """Whether ``event`` is what the kit tests (a drawn schedule without one is discarded)."""
        return type(event) is self.event_class

    # -- the checks -----------------------------------------------------------------------------
    def test_contract(self) -> None:
        problems = event_problems(self.event_class)
        expect(not problems, f"event {component_name(self.event_class)!r} breaks the event contract: " + "; ".join(problems))

    def test_draws_events_that_explain_and_round_trip_through_json(self) -> None:
        kinds = {cls.kind: cls for cls in self.kinds()}

        def check(schedule: Schedule) -> None:
            schedule = self._with_event(schedule)
            text = schedule.explain()
            for event in schedule.events:
                expect(event.describe() in text, f"explain() lacks the line of {event!r}")
            again = Schedule.from_json(schedule.to_json(), kinds)
            expect(again == schedule, f"{component_name(self.event_class)}: the schedule changed through JSON:\n{text}")

        self._run(check, self.schedules())

    def test_batch_equals_samples_one_by_one_and_cached_decoding_equals_recompute(self) -> None:
        from vtsched.core.generation import GenerationConfig, generate

        def check(schedule: Schedule, shape: Any, inputs: tuple[list[Any], list[str]], seed: int) -> None:
            schedule = self._with_event(schedule)
            scheduler, batch = self._scheduler_and_batch(schedule, shape, inputs)
            engine = scheduler.engine
            partition = random_partition(schedule, batch.num_visual, seed)
            config = GenerationConfig(max_new_tokens=2)
            together = generate(engine, batch, schedule, partition, config, keep_logits=True)
            for b in range(len(batch)):
                alone = generate(engine, batch.select([b]), schedule,
                                 Partition(partition.groups, (partition.assignment[b],)), config, keep_logits=True)
                for step, logits in enumerate(alone.step_logits):
                    close(together.step_logits[step][b], logits[0], self.atol, 0.0,
                           f"{component_name(self.event_class)}: sample {b} at step {step} differs in a batch from alone "
                           f"under\n{schedule.explain()}")
            tail = [torch.tensor(t[:1], dtype=torch.long) for t in together.tokens]
            again = engine.prefill(batch, schedule, partition, tail=tail, use_cache=False)
            close(together.step_logits[1], again.logits, self.atol, 0.0,
                   f"{component_name(self.event_class)}: decoding from the cache differs from recomputing under\n"
                   f"{schedule.explain()}")

        self._run(check, self.schedules(), self.model_shapes(), strat.prompts(min_size=2, max_size=3),
                  st.integers(0, 99), model=True)

    def test_dry_run_flops_equal_the_executed_prefill(self) -> None:
        from vtsched.core.cost import prefill_flops
        from vtsched.core.tools.sweep.plan import estimate_prefill_flops

        def check(schedule: Schedule, shape: Any, inputs: tuple[list[Any], list[str]], seed: int) -> None:
            schedule = self._with_event(schedule)
            scheduler, batch = self._scheduler_and_batch(schedule, shape, inputs)
            engine, geometry = scheduler.engine, scheduler.adapter.geometry
            partition = random_partition(schedule, batch.num_visual, seed)
            ran = engine.prefill(batch, schedule, partition, use_cache=False)
            sample = batch.samples[0]
            roles = sample.roles
            after_image = torch.arange(roles.numel()) > torch.nonzero(roles == Role.VISUAL).max()
            sizes = {g: int(n) for g, n in zip(partition.groups, partition.sizes()[0])}
            estimate = estimate_prefill_flops(
                schedule, geometry, sizes, prefix=int((roles == Role.PREFIX).sum()), suffix=int(after_image.sum()),
                question=int((roles == Role.QUESTION).sum()), share_prefix=engine.share_prefix)
            executed = float(prefill_flops(ran.stats, geometry)[0])
            expect(abs(estimate - executed) <= 1e-9 * max(1.0, executed),
                    f"{component_name(self.event_class)}: the events account for {estimate:.6g} FLOPs, the engine ran "
                    f"{executed:.6g}, under\n{schedule.explain()}")

        self._run(check, self.schedules(), self.model_shapes(), strat.prompts(min_size=1, max_size=1),
                  st.integers(0, 99), model=True)

    def test_removing_tokens_equals_the_physically_shortened_sequence(self) -> None:
        """For a kind that only removes tokens (``removes_tokens_only``): one event of it at layer L on a
        single stream equals the model's own layers run on the whole prompt up to L, then on the tokens the
        engine kept (a physically shortened sequence, each token at its position), to the last token's logits."""
        if not self.removes_tokens_only:
            return
        import dataclasses

        from vtsched.core.events import DrawState, Layout
        from vtsched.core.schedule import Stream

        event_class = self.event_class
        assert event_class is not None

        def check(shape: Any, inputs: tuple[list[Any], list[str]], data: st.DataObject) -> None:
            layer = data.draw(st.integers(0, shape.layers - 1), label="layer")
            layout = Layout(shape.layers, ("subject",), ("main",), "main", {"main": ["subject"]})
            draws = event_class.draws(DrawState(layer, layout, tuple(self.registry().fusion_rules()),
                                                self.rankers()))
            assume(draws is not None)
            assert draws is not None  # (assume raised otherwise)
            event = data.draw(draws, label="event")
            assume(self.is_tested(event))
            schedule = Schedule(shape.layers, ("subject",), (Stream("main", ("subject",)),), "main", (event,))
            scheduler, batch = self._scheduler_and_batch(schedule, dataclasses.replace(shape), inputs)
            partition = Partition.single(batch.num_visual)
            ran = scheduler.engine.prefill(batch, schedule, partition, use_cache=False, return_hidden=True)
            kept = ran.index[0][ran.index[0] >= 0]
            expected = removed_at(scheduler.adapter.model, batch.samples[0], layer, kept)
            close(ran.logits[0].to(expected.dtype), expected, self.atol, 0.0,
                   f"{component_name(self.event_class)}: {event.describe()} at layer {layer} differs from the model's own "
                   "layers on the physically shortened sequence")

        self._run(check, self.model_shapes(), strat.prompts(min_size=1, max_size=1), st.data(), model=True)

    def test_declared_flops_equal_the_flop_counter(self) -> None:
        """What the run declares (the layers' work and the scoring work: probes' rows, rankers' projections)
        equals what ``torch.utils.flop_counter`` counts, on an eager model where every matmul is visible."""
        from torch.utils.flop_counter import FlopCounterMode

        from vtsched.core.cost import executed_prefill_flops, scoring_flops

        def check(schedule: Schedule, shape: Any, inputs: tuple[list[Any], list[str]], seed: int) -> None:
            schedule = self._with_event(schedule)
            scheduler, batch = self._scheduler_and_batch(schedule, shape, inputs, attn_implementation="eager")
            partition = random_partition(schedule, batch.num_visual, seed)
            with FlopCounterMode(display=False) as counter:
                ran = scheduler.engine.prefill(batch, schedule, partition, use_cache=False)
            g = scheduler.adapter.geometry
            declared = float((executed_prefill_flops(ran.stats, g) + scoring_flops(ran.stats, g))[0])
            declared += 2 * g.hidden_size * g.vocab_size  # the next-token logits
            counted = float(counter.get_total_flops())
            expect(abs(declared - counted) <= 1e-9 * max(1.0, counted),
                    f"{component_name(self.event_class)}: the run declares {declared:.6g} FLOPs, torch's flop counter counted "
                    f"{counted:.6g}, under\n{schedule.explain()}")

        self._run(check, self.schedules(), self.model_shapes(), strat.prompts(min_size=1, max_size=1),
                  st.integers(0, 99), model=True)

    # -- helpers --------------------------------------------------------------------------------
    def _scheduler_and_batch(self, schedule: Schedule, shape: Any, inputs: tuple[list[Any], list[str]],
                             attn_implementation: str = "sdpa"):
        import dataclasses

        from vtsched.core.testing.models import bound_scheduler

        model, processor = self.build_tiny_model(dataclasses.replace(shape, layers=schedule.num_layers),
                                                 attn_implementation=attn_implementation)
        scheduler = bound_scheduler(model, processor, self.registry())
        batch = scheduler.prepare(*inputs)
        return scheduler, batch


@torch.inference_mode()
def removed_at(model: Any, sample: Any, layer: int, kept: torch.Tensor) -> torch.Tensor:
    """``(vocab,)`` last-token logits of the model's own layers on the whole prompt up to ``layer``, then
    on the tokens at positions ``kept`` only (each at its own position), through the final norm and head."""
    from vtsched.core.testing.models import rotary_ids, decoder_slice, layer_embeds, one_sequence

    lm = model.model.language_model
    hidden = layer_embeds(model, sample)
    if layer:
        ids = rotary_ids(sample, torch.arange(hidden.shape[1], device=hidden.device))
        with decoder_slice(lm, list(lm.layers[:layer]), final_norm=False) as first:
            hidden = first(inputs_embeds=hidden, position_ids=ids, attention_mask=one_sequence(ids)).last_hidden_state
    kept = kept.to(hidden.device)
    ids = rotary_ids(sample, kept)
    with decoder_slice(lm, list(lm.layers[layer:]), final_norm=True) as rest:
        out = rest(inputs_embeds=hidden[:, kept], position_ids=ids, attention_mask=one_sequence(ids)).last_hidden_state
    return model.lm_head(out[0, -1]).float()


def random_partition(schedule: Schedule, num_visual: list[int], seed: int) -> Partition:
    """Every visual token of each sample in a random group of ``schedule``'s groups."""
    g = torch.Generator().manual_seed(seed)
    return Partition(schedule.groups, tuple(torch.randint(0, len(schedule.groups), (n,), generator=g)
                                            for n in num_visual))


class RankerConformance(EventConformance):
    """Checks a ranker (set ``ranker_class``): the event kit's checks on schedules whose ``keep_top``
    events rank by it (batch equals one by one, cached decoding equals recompute, FLOPs as declared),
    plus the contract. The ranker must be in ``registry()`` (override it to add a ranker that is not
    installed through an entry point)."""

    ranker_class: ClassVar[type[Ranker] | None] = None
    removes_tokens_only: ClassVar[bool] = True  # a keep_top only removes tokens

    @property
    def event_class(self) -> type[Event]:  # type: ignore[override]
        return self.registry().event_kinds()["keep_top"]  # the kind that ranks

    def rankers(self) -> dict[str, type[Ranker]]:
        expect(self.ranker_class is not None, f"{type(self).__name__}: set ranker_class")
        assert self.ranker_class is not None
        expect(self.registry().rankers().get(self.ranker_class.name) is self.ranker_class,
                f"{type(self).__name__}: ranker {self.ranker_class.name!r} is not in registry(); override registry()")
        return {self.ranker_class.name: self.ranker_class}

    def is_tested(self, event: Any) -> bool:
        return type(event) is self.event_class and getattr(event, "ranker", None) == getattr(self.ranker_class, "name", None)

    def test_contract(self) -> None:
        from vtsched.core.contracts import ranker_problems

        problems = ranker_problems(self.ranker_class)
        expect(not problems, f"ranker {component_name(self.ranker_class)!r} breaks the ranker contract: " + "; ".join(problems))
