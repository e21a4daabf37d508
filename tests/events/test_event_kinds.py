"""Events as a registry kind: the built-ins and a plugin's kind go through the same hook and contract;
the dry-run FLOPs every event accounts for equal what the engine ran; schedule files name plugin kinds."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vtsched.core import Budget, GenerationConfig
from vtsched.core.errors import PluginError, ScheduleError
from vtsched.core.events import BUILTIN_EVENTS, DrawState, Event, Layout
from vtsched.core.hookspecs import hookimpl
from vtsched.core.registry import build_registry, make_plugin_manager
from vtsched.core.schedule import Schedule, Stream
from vtsched.core.testing import TinyShape, random_image, tiny_llava
from vtsched.core.testing.strategies import schedules
from vtsched.core.tokens import Role
from vtsched.core.tools.sweep.plan import estimate_prefill_flops

from tests.helpers import scheduler


@dataclass(frozen=True, slots=True)
class Dampen(Event):
    """Scale a group's states in a stream (a test kind no core file knows)."""

    kind: ClassVar[str] = "dampen"
    layer: int
    stream: str
    group: str
    factor: float = 0.5

    def describe(self) -> str:
        return f"dampen {self.group} in {self.stream} by {self.factor:g}"

    def check(self, layout: Layout) -> None:
        if layout.group(self.group) not in layout.carried(self.stream):
            raise ScheduleError(f"{self.stream} does not carry {self.group}")

    def apply(self, run, at: int) -> None:
        from vtsched.core.engine.rows import Rows

        rows, bound = run.streams[self.stream], run.bound
        member = bound.lookup(bound.groups, rows.index) == run.partition.group_id(self.group)
        scale = torch.where(member, self.factor, 1.0).to(rows.hidden.dtype)
        run.streams[self.stream] = Rows(rows.hidden * scale[..., None], rows.index)

    @classmethod
    def draws(cls, state: DrawState):
        carried = [(s, g) for s, gs in state.layout.alive.items() for g in gs]
        if not carried:
            return None
        return st.builds(lambda sg, f: cls(state.layer, sg[0], sg[1], f), st.sampled_from(carried),
                         st.floats(0.0, 2.0, allow_subnormal=False))


class DampenPlugin:
    __name__ = "dampen-plugin"

    @staticmethod
    @hookimpl
    def vtsched_register_events(register):
        register(Dampen)


def test_builtin_kinds_register_through_the_hook_a_plugin_uses():
    registry = build_registry(make_plugin_manager(load_entrypoints=False, extra=[DampenPlugin()]))
    kinds = registry.event_kinds()
    assert {cls.kind for cls in BUILTIN_EVENTS} | {"dampen"} == set(kinds)
    assert all(registry.plugin_of("event", cls.kind) == "vtsched.core.events" for cls in BUILTIN_EVENTS)
    assert registry.plugin_of("event", "dampen") == "dampen-plugin"


@pytest.mark.parametrize(("broken", "reason"), [
    ("no_check", "does not implement check()"),
    ("not_event", "is not a subclass of vtsched.core.events.Event"),
    ("layer_not_first", "must have 'layer: int' as its first field"),
    ("clash", "is provided by both"),
])
def test_a_kind_that_breaks_the_contract_is_refused_naming_the_plugin(broken, reason):
    if broken == "no_check":
        @dataclass(frozen=True, slots=True)
        class Bad(Event):
            kind: ClassVar[str] = "bad"
            layer: int

            def describe(self):
                return "bad"

            def apply(self, run, at):
                pass
    elif broken == "not_event":
        @dataclass(frozen=True)
        class Bad:  # type: ignore[no-redef]
            name: ClassVar[str] = "bad"
            layer: int
    elif broken == "layer_not_first":
        @dataclass(frozen=True, slots=True)
        class Bad(Event):  # type: ignore[no-redef]
            kind: ClassVar[str] = "bad"
            stream: str
            layer: int

            def describe(self):
                return "bad"

            def check(self, layout):
                pass

            def apply(self, run, at):
                pass
    else:
        Bad = type("Bad", (Dampen,), {"__slots__": ()})  # type: ignore[misc]
        Bad.kind = Bad.name = "remove"

    class Plugin:
        __name__ = "bad-plugin"

        @staticmethod
        @hookimpl
        def vtsched_register_events(register):
            register(Bad)

    with pytest.raises(PluginError, match="bad-plugin") as info:
        build_registry(make_plugin_manager(load_entrypoints=False, extra=[Plugin()]))
    assert reason in str(info.value)


def test_a_plugin_kind_round_trips_through_json_and_is_refused_in_one_line_without_the_plugin():
    registry = build_registry(make_plugin_manager(load_entrypoints=False, extra=[DampenPlugin()]))
    schedule = Schedule(2, ("subject",), (Stream("main", ("subject",)),), "main", (Dampen(1, "main", "subject", 0.25),))
    text = schedule.to_json()
    assert Schedule.from_json(text, registry.event_kinds()) == schedule
    with pytest.raises(ScheduleError, match="unknown event kind 'dampen'"):
        Schedule.from_json(text)


@settings(max_examples=25)
@given(schedule=schedules(kinds=(*BUILTIN_EVENTS, Dampen)))
def test_strategies_draw_every_kind_given_and_every_schedule_round_trips(schedule):
    kinds = {cls.kind: cls for cls in (*BUILTIN_EVENTS, Dampen)}
    assert Schedule.from_json(schedule.to_json(), kinds) == schedule


def test_a_plugin_event_runs_in_the_engine_and_changes_what_it_says():
    """Dampen by 1 is the identity; by 0 the group's states vanish from that layer on."""
    model, processor = tiny_llava(TinyShape(layers=3, image_size=42), torch.float64)
    s = scheduler(model, processor)
    batch = s.prepare([random_image(3, 50, 40)], ["what colour?"])
    plan = s.plan(batch, s.make_policy("full"), None, None)
    base = s.engine.prefill(batch, plan.schedule, plan.partition, use_cache=False).logits
    group = plan.schedule.groups[0]
    for factor, same in ((1.0, True), (0.0, False)):
        schedule = Schedule(3, plan.schedule.groups, plan.schedule.streams, plan.schedule.survivor,
                            (Dampen(1, "main", group, factor),))
        logits = s.engine.prefill(batch, schedule, plan.partition, use_cache=False).logits
        assert torch.allclose(logits, base) is same


POLICIES = [
    ("full", {}, None), ("prune", {}, "8"), ("fastv", {"drop_layer": 1}, "8"), ("vtw", {"drop_layer": 2}, None),
    ("pdrop", {"layers": (1, 2)}, None), ("subject-first", {"insert_layer": 2}, "8"),
    ("non-subject-first", {"switch_layer": 2}, "8"),
    ("parvts", {"drop_layer": 2, "fusion": "size"}, "8"),
    ("parvts", {"drop_layer": 2, "merge": "carry"}, "8"),
    ("parvts", {"drop_layer": 1, "merge": "both", "fuse_tokens": "question"}, "8"),
    ("parvts", {"drop_layer": 2, "merge": "carry", "fuse_tokens": "last"}, "8"),
]


@pytest.mark.parametrize(("policy", "params", "budget"), POLICIES,
                         ids=[f"{p}-{'-'.join(f'{k}={v}' for k, v in q.items())}" for p, q, _ in POLICIES])
def test_dry_run_flops_equal_what_the_engine_ran(policy, params, budget):
    """The sweep's estimate, from the schedule and token counts alone (each event's ``count``), equals the
    FLOPs of the executed prefill, for every built-in policy, carried copies included."""
    model, processor = tiny_llava(TinyShape(layers=4, image_size=56), torch.float32)
    s = scheduler(model, processor)
    images, questions = [random_image(7, 60, 45)], ["what colour is the small square in the corner?"]
    result = s.run(images, questions, policy, budget=budget, policy_params=params,
                   generation=GenerationConfig(max_new_tokens=1))
    sample = s.prepare(images, questions).samples[0]
    roles = sample.roles
    prefix = int((roles == Role.PREFIX).sum())
    suffix = int((torch.nonzero(roles == Role.VISUAL).max() < torch.arange(roles.numel())).sum())
    question = int((roles == Role.QUESTION).sum())
    sizes = result.plan.partition.sizes()[0]
    group_sizes = {g: int(n) for g, n in zip(result.plan.partition.groups, sizes)}
    estimate = estimate_prefill_flops(result.plan.schedule, s.adapter.geometry, group_sizes, prefix=prefix,
                                      suffix=suffix, question=question, share_prefix=s.engine.share_prefix)
    assert estimate == pytest.approx(float(result.flops[0]), rel=1e-9), (policy, params)


def test_a_saved_schedule_with_a_plugin_event_runs_and_says_which_plugin_it_needs(tmp_path):
    from vtsched.core import Scheduler

    model, processor = tiny_llava(TinyShape(layers=3, image_size=42), torch.float32)
    with_plugin = build_registry(make_plugin_manager(load_entrypoints=False, extra=[DampenPlugin()]))
    schedule = Schedule(3, ("subject",), (Stream("main", ("subject",)),), "main", (Dampen(1, "main", "subject", 0.0),),
                        meta=(("budget", "1.0"),))
    path = tmp_path / "dampen.json"
    path.write_text(schedule.to_json())
    assert '"providers": {\n    "dampen": "tests"' in path.read_text()
    image, question = [random_image(3, 50, 40)], ["what colour?"]
    ran = Scheduler(model, processor, registry=with_plugin).run(image, question, f"schedule:{path}", budget="1.0",
                                                                generation=GenerationConfig(max_new_tokens=1))
    assert ran.plan.schedule == schedule
    with pytest.raises(ScheduleError, match="unknown event kind 'dampen' \\(it comes from 'tests': install"):
        scheduler(model, processor).run(image, question, f"schedule:{path}", budget="1.0")


# -- the event kit, on every built-in kind and a plugin's ------------------------------------------
from vtsched.core.events import Carry, EndStream, Fuse, InsertGroup, KeepTop, RemoveGroup  # noqa: E402
from vtsched.core.testing import EventConformance  # noqa: E402


class TestRemoveGroupEvent(EventConformance):
    event_class = RemoveGroup
    removes_tokens_only = True


class TestInsertGroupEvent(EventConformance):
    event_class = InsertGroup


class TestKeepTopEvent(EventConformance):
    event_class = KeepTop
    removes_tokens_only = True


class TestFuseEvent(EventConformance):
    event_class = Fuse


class TestEndStreamEvent(EventConformance):
    event_class = EndStream


class TestCarryEvent(EventConformance):
    event_class = Carry


class TestPluginEvent(EventConformance):
    event_class = Dampen


# -- rankers: a registry kind ------------------------------------------------------------------------
from vtsched.core.events import Ranker  # noqa: E402
from vtsched.core.events.rankers import LastTokenAttention, NextLayerAttention  # noqa: E402
from vtsched.core.testing import RankerConformance  # noqa: E402


class Reversed(LastTokenAttention):
    """FastV's scores, negated: keeps the tokens the last prompt token attends to least."""

    name = "reversed_attention"

    def scores(self, event, run, at):
        index, scores = super().scores(event, run, at)
        return index, -scores


class NotFinite(NextLayerAttention):
    name = "not_finite"

    def scores(self, event, run, at):
        index, scores = super().scores(event, run, at)
        return index, scores * float("nan")


class RankerPlugin:
    __name__ = "ranker-plugin"

    @staticmethod
    @hookimpl
    def vtsched_register_rankers(register):
        register(Reversed)
        register(NotFinite)


def _ranker_registry():
    return build_registry(make_plugin_manager(load_entrypoints=False, extra=[RankerPlugin()]))


def _fastv_like(num_layers, ranker, keep, layer=1):
    return Schedule(num_layers, ("subject",), (Stream("main", ("subject",)),), "main",
                    (KeepTop(layer, "main", "subject", keep, ranker),))


def test_a_reversed_ranker_keeps_exactly_the_other_tokens():
    """With n visual tokens and keep n/2, ranking by -scores keeps the complement of what the scores keep."""
    from vtsched.core import Scheduler

    model, processor = tiny_llava(TinyShape(layers=3, image_size=56), torch.float64)
    s = Scheduler(model, processor, registry=_ranker_registry())
    batch = s.prepare([random_image(4, 60, 60), random_image(5, 40, 70)], ["what colour?", "where is the square?"])
    plan = s.plan(batch, s.make_policy("full"), None, None)
    n = batch.num_visual[0]
    kept = {}
    for ranker in ("last_token_attention", "reversed_attention"):
        out = s.engine.prefill(batch, _fastv_like(3, ranker, n // 2), plan.partition, use_cache=False,
                               return_hidden=True)
        kept[ranker] = [set(out.index[b][out.index[b] >= 0].tolist()) & set(batch.samples[b].visual_positions.tolist())
                        for b in range(len(batch))]
    for b, sample in enumerate(batch.samples):
        visual = set(sample.visual_positions.tolist())
        assert len(kept["last_token_attention"][b]) == len(kept["reversed_attention"][b]) == n // 2
        assert kept["last_token_attention"][b] | kept["reversed_attention"][b] == visual
        assert not kept["last_token_attention"][b] & kept["reversed_attention"][b]


def test_a_ranker_returning_nan_fails_in_one_line_naming_it():
    from vtsched.core import Scheduler

    model, processor = tiny_llava(TinyShape(layers=3, image_size=42), torch.float32)
    s = Scheduler(model, processor, registry=_ranker_registry())
    batch = s.prepare([random_image(4, 40, 40)], ["what colour?"])
    plan = s.plan(batch, s.make_policy("full"), None, None)
    with pytest.raises(ScheduleError, match="ranker 'not_finite' returned scores that are not finite"):
        s.engine.prefill(batch, _fastv_like(3, "not_finite", 2), plan.partition, use_cache=False)


def test_a_schedule_naming_an_unknown_ranker_is_refused_before_the_model_runs(tmp_path):
    from vtsched.core.planner import Planner

    model, processor = tiny_llava(TinyShape(layers=3, image_size=42), torch.float32)
    geometry = scheduler(model, processor).adapter.geometry
    path = tmp_path / "s.json"
    path.write_text(_fastv_like(3, "reversed_attention", 2).to_json())
    planner = Planner(build_registry(make_plugin_manager(load_entrypoints=False)), geometry)
    policy = planner.policy(f"schedule:{path}")
    with pytest.raises(ScheduleError, match="unknown ranker 'reversed_attention'; known: dart_duplication, "
                                            "last_token_attention, next_layer_attention"):
        planner.check(policy, Budget(ratio=1.0))


def test_a_ranker_that_breaks_the_contract_is_refused_naming_the_plugin():
    class NoScores(Ranker):
        name = "no_scores"

    class Plugin:
        __name__ = "bad-ranker-plugin"

        @staticmethod
        @hookimpl
        def vtsched_register_rankers(register):
            register(NoScores)

    with pytest.raises(PluginError, match="bad-ranker-plugin.*does not implement scores"):
        build_registry(make_plugin_manager(load_entrypoints=False, extra=[Plugin()]))


class TestLastTokenAttentionRanker(RankerConformance):
    ranker_class = LastTokenAttention


class TestNextLayerAttentionRanker(RankerConformance):
    ranker_class = NextLayerAttention


class TestPluginRanker(RankerConformance):
    ranker_class = Reversed

    def registry(self):
        return _REGISTRY_WITH_RANKER


_REGISTRY_WITH_RANKER = _ranker_registry()


class TestDartRanker(RankerConformance):
    """dart's ranker: a built-in from vtsched.policies, registered through the same hook as a plugin's."""

    from vtsched.policies import DartDuplication as ranker_class


class TestSparseVLMRanker(RankerConformance):
    """sparsevlm's ranker: the raters' attention, a built-in from vtsched.policies like dart's."""

    from vtsched.policies import SparseVLMRaters as ranker_class
