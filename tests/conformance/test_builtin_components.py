"""Every built-in component through the conformance kit, and the kit catching
deliberately broken components (a kit that cannot fail would prove nothing)."""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from typing import ClassVar

import pytest
import torch
from hypothesis import Phase, find, given
from hypothesis import strategies as st

from vtsched.core import (
    Budget, Carry, EndStream, Fuse, InsertGroup, KeepTop, ModelGeometry, RemoveGroup, Schedule, Stream, hookimpl,
)
from vtsched.core.adapters import LlavaAdapter
from vtsched.core.partition import top_k_partition
from vtsched.core.policy import DEFAULT_GROUPS, Partitioner, Policy
from vtsched.core.registry import build_registry, make_plugin_manager
from vtsched.core.testing import (
    AdapterConformance, FusionRuleConformance, PartitionerConformance, PolicyConformance, geometries,
    prompt_batches, random_image, schedules,
)
from vtsched.core.testing.families import tiny_qwen, tiny_qwen_shapes
from vtsched.partitioners import ClsAttention, RandomTokens, UniformGrid, VisionZipPartitioner
from vtsched.partitioners.attention import AttentionReceived
from vtsched.policies import (
    DART, VTW, AttentionFusion, FastV, FixedFusion, FixedSchedule, Full, NonSubjectFirst, ParVTS, PDrop, Prune, Search,
    SizeFusion, SparseVLM, SubjectFirst, VisionZip,
)
from vtsched.policies.pdrop import average_tokens


# -- policies ----------------------------------------------------------------------------------
class TestFull(PolicyConformance):
    policy_class = Full


class TestPrune(PolicyConformance):
    policy_class = Prune


class TestParVTSAttentionQuestion(PolicyConformance):
    policy_class = ParVTS
    policy_params = {"drop_layer": 1, "fusion": "attention", "fuse_tokens": "question"}


class TestParVTSSizePostImage(PolicyConformance):
    policy_class = ParVTS
    policy_params = {"drop_layer": 2, "fusion": "size", "fuse_tokens": "post_image"}
    min_layers = 2


class TestParVTSFixedAtLayerZero(PolicyConformance):
    policy_class = ParVTS
    policy_params = {"drop_layer": 0, "fusion": "fixed", "alpha": 0.3, "fuse_tokens": "question"}


class TestParVTSFixedPostImage(PolicyConformance):
    policy_class = ParVTS
    policy_params = {"drop_layer": 1, "fusion": "fixed", "alpha": 0.7, "fuse_tokens": "post_image"}


class TestParVTSCarry(PolicyConformance):
    policy_class = ParVTS
    policy_params = {"drop_layer": 1, "merge": "carry", "fuse_tokens": "post_image"}


class TestParVTSFuseAndCarryQuestion(PolicyConformance):
    policy_class = ParVTS
    policy_params = {"drop_layer": 1, "merge": "both", "fusion": "size", "fuse_tokens": "question"}


class TestSubjectFirst(PolicyConformance):
    policy_class = SubjectFirst
    policy_params = {"insert_layer": 1}


class TestNonSubjectFirst(PolicyConformance):
    policy_class = NonSubjectFirst
    policy_params = {"switch_layer": 1}


class TestFastV(PolicyConformance):
    policy_class = FastV
    policy_params = {"drop_layer": 1}


class TestDART(PolicyConformance):
    policy_class = DART
    policy_params = {"drop_layer": 1}


class TestSparseVLM(PolicyConformance):
    policy_class = SparseVLM  # default pruning layers: 2/6/15 of 32 scaled to the depth


class TestVTW(PolicyConformance):
    policy_class = VTW  # default drop layer: half the depth


class TestPDrop(PolicyConformance):
    policy_class = PDrop
    policy_params = {"layers": (0, 1), "ratio": 0.5}
    min_layers = 2

    def budgets(self, policy, geometry):
        """PDrop refuses budgets below what its first stage allows: draw the reachable ones (or none)."""
        floor = average_tokens(geometry.num_visual, policy.layers, 0.0, geometry.num_layers)
        reachable = st.integers(math.ceil(floor - 1e-9), geometry.num_visual).map(lambda n: Budget(count=n))
        return st.one_of(st.none(), reachable)


class TestVisionZip(PolicyConformance):
    policy_class = VisionZip


class TestScheduleFile(PolicyConformance):
    """A saved ParVTS schedule (written to a temporary JSON file) run exactly as written."""

    policy_class = FixedSchedule
    min_layers = max_layers = 2  # a saved schedule is for one depth
    path: ClassVar[str] = ""

    @pytest.fixture(autouse=True, scope="class")
    @classmethod
    def _saved_schedule(cls, tmp_path_factory):
        geometry = ModelGeometry(2, 16, 32, 2, 2, 8, 64, 4)
        schedule = ParVTS(drop_layer=1, fusion="size").schedule(geometry)
        schedule = dataclasses.replace(schedule, meta=(*schedule.meta, ("partitioner", "uniform")))
        path = tmp_path_factory.mktemp("schedule") / "parvts.json"
        path.write_text(schedule.to_json())
        cls.path = str(path)

    def make_policy(self):
        return FixedSchedule(path=self.path)

    def group_sets(self, policy):
        return st.just(policy.groups)  # the saved schedule's own groups


@pytest.fixture(scope="module")
def calibration_file(tmp_path_factory) -> str:
    """A calibration set of two noise images (JSONL beside them), what ``search`` calibrates on."""
    folder = tmp_path_factory.mktemp("calibration")
    lines = []
    for i, question in enumerate(["what colour?", "what is in the corner?"]):
        random_image(100 + i).save(folder / f"{i}.png")
        lines.append(f'{{"image": "{i}.png", "question": "{question}"}}')
    (folder / "calibration.jsonl").write_text("\n".join(lines) + "\n")
    return str(folder / "calibration.jsonl")


class TestSearch(PolicyConformance):
    """``search`` is calibrated: its schedule needs data. The kit checks its request (the base
    policy's schedules at every layer) and, on the tiny models, the policy the scheduler's
    calibration chooses on a fixed calibration file, so a batch and its samples calibrate alike.
    Base ``vtw``: at K = L it equals full (KL 0), so the search always finds a layer."""

    policy_class = Search
    model_examples = 4
    calibration: ClassVar[str] = ""

    @pytest.fixture(autouse=True, scope="class")
    @classmethod
    def _calibration(cls, calibration_file):
        cls.calibration = calibration_file

    def make_policy(self):
        return Search(base="vtw", calibration=self.calibration)

    def budgets(self, policy, geometry):
        """Counts, and ratios that print exactly: calibrate() passes the budget on as str(budget),
        which loses digits and prints small ratios as '1e-05', which Budget.parse refuses
        (test_search_calibrates_under_a_small_ratio_budget)."""
        ratios = st.sampled_from([0.0, 0.25, 0.5, 1.0]).map(lambda r: Budget(ratio=r))
        return st.one_of(st.integers(0, geometry.num_visual).map(lambda n: Budget(count=n)), ratios)


def test_search_calibrates_under_a_small_ratio_budget(calibration_file):
    """Once a strict xfail: calibration re-parsed str(budget), which wrote 1e-05 in a form parse() refused."""
    class SmallRatio(_Broken, TestSearch):
        calibration = calibration_file
        model_examples = 1

        def budgets(self, policy, geometry):
            return st.just(Budget(ratio=1e-5))

    SmallRatio().test_cached_decoding_equals_recompute()


# -- partitioners ------------------------------------------------------------------------------
class TestClsPartitioner(PartitionerConformance):
    partitioner_class = ClsAttention


class TestRandomPartitioner(PartitionerConformance):
    partitioner_class = RandomTokens
    partitioner_params = {"seed": 3}


class TestUniformPartitioner(PartitionerConformance):
    partitioner_class = UniformGrid


class TestVisionZipPartitioner(PartitionerConformance):
    partitioner_class = VisionZipPartitioner


class TestAttentionReceivedPartitioner(PartitionerConformance):
    """``attention`` reads the vision tower's attention scores that only the Qwen adapters give: the
    synthetic batches carry their [CLS] scores (ties included) there, and the model check runs on Qwen."""

    partitioner_class = AttentionReceived

    def prompt_batches(self, *, distinct_visual: bool = False):
        def with_attention_scores(batch):
            for sample in batch.samples:
                sample.extras["attention_scores"] = sample.cls_scores
            return batch

        return super().prompt_batches(distinct_visual=distinct_visual).map(with_attention_scores)

    def model_shapes(self):
        return tiny_qwen_shapes(max_layers=2)

    def build_tiny_model(self, shape, *, dtype=torch.float64, attn_implementation="sdpa"):
        return tiny_qwen(shape, dtype, attn_implementation)


# -- fusion rules ------------------------------------------------------------------------------
class TestFixedFusion(FusionRuleConformance):
    fusion_rule_class = FixedFusion
    fusion_rule_params = {"alpha": 0.3}


class TestFixedFusionAlphaOne(FusionRuleConformance):
    fusion_rule_class = FixedFusion
    fusion_rule_params = {"alpha": 1.0}


class TestSizeFusion(FusionRuleConformance):
    fusion_rule_class = SizeFusion


class TestAttentionFusion(FusionRuleConformance):
    fusion_rule_class = AttentionFusion


# -- adapters ----------------------------------------------------------------------------------
class TestLlavaAdapter(AdapterConformance):
    adapter_class = LlavaAdapter


# -- the strategies ----------------------------------------------------------------------------
@pytest.mark.parametrize("kind", [RemoveGroup, InsertGroup, Fuse, KeepTop, Carry, EndStream])
def test_schedules_draw_every_event_kind(kind):
    # the check is find itself: it raises NoSuchExample when no schedule it draws has an event of the kind
    find(schedules(), lambda s: any(isinstance(e, kind) for e in s.events))


@given(prompt_batches(distinct_visual=True))
def test_prompt_batches_with_distinct_visual_mix_token_counts(batch):
    assert len(set(batch.num_visual)) == len(batch) >= 2


def test_geometries_vary_and_draw_grouped_query_attention():
    assert find(geometries(), lambda g: g.num_kv_heads < g.num_heads).num_heads % 2 == 0


# -- the kit rejects broken components ---------------------------------------------------------
FAIL_FAST = {"phases": (Phase.explicit, Phase.generate), "report_multiple_bugs": False}


@dataclasses.dataclass(frozen=True)
class NoBudget(Policy):
    """The mistake tests/plugins_api/test_plugin_hooks.py's Keep0 once made: schedule() cannot receive the budget."""

    name: ClassVar[str] = "no-budget"

    def schedule(self, geometry, groups=DEFAULT_GROUPS):  # type: ignore[override]
        return Schedule(geometry.num_layers, groups, (Stream("main", groups[:1]),), "main")


@dataclasses.dataclass(frozen=True)
class SubjectByName(Policy):
    """Keeps the group called 'subject' instead of groups[0]."""

    name: ClassVar[str] = "subject-by-name"

    def schedule(self, geometry, groups=DEFAULT_GROUPS, budget=None):
        return Schedule(geometry.num_layers, groups, (Stream("main", ("subject",)),), "main")


@dataclasses.dataclass(frozen=True)
class ClaimsNoBudget(Policy):
    """Says a budget does not change it (uses_budget = False), then keeps budget.count tokens."""

    name: ClassVar[str] = "claims-no-budget"
    needs_partition: ClassVar[bool] = False
    uses_budget: ClassVar[bool] = False

    def schedule(self, geometry, groups=DEFAULT_GROUPS, budget=None):
        events = (KeepTop(1, "main", groups[0], budget.count),) if budget is not None and budget.count else ()
        return Schedule(geometry.num_layers, groups, (Stream("main", groups),), "main", events)


class _Broken:
    settings_overrides = FAIL_FAST


class BrokenNoBudget(_Broken, PolicyConformance):
    policy_class = NoBudget


class BrokenSubjectByName(_Broken, PolicyConformance):
    policy_class = SubjectByName


class BrokenClaimsNoBudget(_Broken, PolicyConformance):
    policy_class = ClaimsNoBudget


def test_kit_rejects_a_policy_whose_schedule_takes_no_budget():
    kit = BrokenNoBudget()
    with pytest.raises(AssertionError, match=r"schedule\(\) must accept \(geometry, groups, budget\); it lacks budget"):
        kit.test_contract()
    with pytest.raises(AssertionError, match="must accept the budget argument"):
        kit.test_schedule_is_valid_for_any_geometry_groups_and_budget()
    with pytest.raises(AssertionError, match="must accept the budget argument"):
        kit.test_explain_and_json_round_trip()


def test_kit_rejects_a_policy_that_ignores_the_subjects_name():
    kit = BrokenSubjectByName()
    kit.test_contract()  # statically fine: only running it shows the mistake
    with pytest.raises(AssertionError, match="refused groups"):
        kit.test_schedule_is_valid_for_any_geometry_groups_and_budget()


def test_kit_rejects_a_policy_that_misstates_uses_budget():
    kit = BrokenClaimsNoBudget()
    kit.test_contract()
    with pytest.raises(AssertionError, match="says uses_budget = False, but budget"):
        kit.test_schedule_is_valid_for_any_geometry_groups_and_budget()


@dataclasses.dataclass(frozen=True)
class OffByOne(Partitioner):
    """Keeps one token more than the budget asks for (where there is one)."""

    name: ClassVar[str] = "off-by-one"

    def partition(self, batch, budget):
        keep = [min(budget.resolve(s.num_visual) + 1, s.num_visual) for s in batch.samples]
        return top_k_partition([-torch.arange(s.num_visual, dtype=torch.float32) for s in batch.samples], keep)


_calls = itertools.count()


@dataclasses.dataclass(frozen=True)
class FlipFlop(Partitioner):
    """Not deterministic: alternate calls keep the first or the last tokens."""

    name: ClassVar[str] = "flip-flop"

    def partition(self, batch, budget):
        sign = 1.0 if next(_calls) % 2 else -1.0
        scores = [sign * torch.arange(s.num_visual, dtype=torch.float32) for s in batch.samples]
        return top_k_partition(scores, [budget.resolve(s.num_visual) for s in batch.samples])


@dataclasses.dataclass(frozen=True)
class SharedGenerator(Partitioner):
    """The mistake partitioners/random.py avoids: one generator for the whole batch, so a
    sample's draw depends on the samples before it."""

    name: ClassVar[str] = "shared-generator"

    def partition(self, batch, budget):
        generator = torch.Generator().manual_seed(0)
        scores = [torch.rand(s.num_visual, generator=generator) for s in batch.samples]
        return top_k_partition(scores, [budget.resolve(s.num_visual) for s in batch.samples])


@dataclasses.dataclass(frozen=True)
class AnnouncesThree(Partitioner):
    """Announces three groups (so the planner schedules three streams) but delivers two."""

    name: ClassVar[str] = "announces-three"

    def group_names(self):
        return ("subject", "objects", "background")

    def partition(self, batch, budget):
        keep = [budget.resolve(s.num_visual) for s in batch.samples]
        return top_k_partition([s.cls_scores for s in batch.samples], keep)


class BrokenAnnouncesThree(_Broken, PartitionerConformance):
    partitioner_class = AnnouncesThree


class BrokenOffByOne(_Broken, PartitionerConformance):
    partitioner_class = OffByOne


class BrokenFlipFlop(_Broken, PartitionerConformance):
    partitioner_class = FlipFlop


class BrokenSharedGenerator(_Broken, PartitionerConformance):
    partitioner_class = SharedGenerator


def test_kit_rejects_a_partitioner_whose_subject_size_is_off_by_one():
    kit = BrokenOffByOne()
    kit.test_contract()
    with pytest.raises(AssertionError, match="the subject group 'subject' has"):
        kit.test_partition_is_a_disjoint_cover_with_the_budgets_subject_size()
    with pytest.raises(AssertionError, match="the subject group 'subject' has"):
        kit.test_samples_with_different_token_counts_in_one_batch()


def test_kit_rejects_a_partitioner_whose_groups_are_not_the_ones_it_announced():
    kit = BrokenAnnouncesThree()
    kit.test_deterministic()
    with pytest.raises(AssertionError, match=r"names groups \('subject', 'non_subject'\), group_names\(\) announced"):
        kit.test_partition_is_a_disjoint_cover_with_the_budgets_subject_size()


def test_kit_rejects_a_non_deterministic_partitioner():
    kit = BrokenFlipFlop()
    kit.test_partition_is_a_disjoint_cover_with_the_budgets_subject_size()  # sizes are right
    with pytest.raises(AssertionError, match="partitioning the same batch twice gave different partitions"):
        kit.test_deterministic()


def test_kit_rejects_a_partitioner_whose_samples_depend_on_their_batch():
    kit = BrokenSharedGenerator()
    kit.test_deterministic()  # the same batch gives the same partition...
    with pytest.raises(AssertionError, match="partitioned differently in a batch than alone"):
        kit.test_batch_equals_samples_one_by_one()  # ...but not the same as its samples alone


@dataclasses.dataclass(frozen=True)
class PruneBySharedGenerator(Prune):
    """prune whose default partitioner is SharedGenerator: batches no longer decode like their samples."""

    name: ClassVar[str] = "prune-shared"
    default_partitioner: ClassVar[str] = "shared-generator"


class SharedGeneratorPlugin:
    __name__ = "shared-generator-plugin"

    @hookimpl
    def vtsched_register_partitioners(self, register):
        register(SharedGenerator)


class BrokenBatchPolicy(_Broken, PolicyConformance):
    policy_class = PruneBySharedGenerator

    def registry(self):
        return _registry_with_shared_generator()


@functools.lru_cache(maxsize=1)
def _registry_with_shared_generator():
    return build_registry(make_plugin_manager(load_entrypoints=False, extra=[SharedGeneratorPlugin()]))


def test_kit_rejects_a_policy_whose_batch_does_not_decode_like_its_samples():
    kit = BrokenBatchPolicy()
    kit.test_cached_decoding_equals_recompute()  # each batch is consistent with itself
    with pytest.raises(AssertionError, match="differs in a batch of"):
        kit.test_batch_equals_samples_one_by_one()


def test_kit_rejects_cached_decoding_that_drifts_from_recomputing(monkeypatch):
    """An engine whose decode steps drift (here: logits shifted by 1e-3) fails every policy's kit."""
    from vtsched.core.engine import Engine

    extend = Engine.extend
    monkeypatch.setattr(Engine, "extend", lambda self, state, ids: extend(self, state, ids) + 1e-3)
    kit = BrokenPrune()
    with pytest.raises(AssertionError, match="decode step 1 from the cache differs from recomputing"):
        kit.test_cached_decoding_equals_recompute()


class BrokenPrune(_Broken, PolicyConformance):
    policy_class = Prune


@dataclasses.dataclass(frozen=True)
class Unnormalised:
    """Weights proportional to visual counts, but never divided by their sum."""

    name: ClassVar[str] = "unnormalised"
    needs_attention_mass: ClassVar[bool] = False

    def weights(self, inputs):
        return inputs.visual_counts[:, :, None].expand(*inputs.shape).float()


class BrokenUnnormalised(_Broken, FusionRuleConformance):
    fusion_rule_class = Unnormalised


def test_kit_rejects_fusion_weights_that_do_not_sum_to_one():
    kit = BrokenUnnormalised()
    kit.test_contract()
    with pytest.raises(AssertionError, match="do not sum to one"):
        kit.test_weights_are_finite_non_negative_and_sum_to_one()


class MirroredImage(LlavaAdapter):
    """Hands the engine the visual features in reverse order (a wrong patch order)."""

    name: ClassVar[str] = "mirrored"

    def prepare(self, images, questions):
        batch = super().prepare(images, questions)
        for sample in batch.samples:
            sample.visual_features = sample.visual_features.flip(0)
        return batch


class BrokenMirroredImage(_Broken, AdapterConformance):
    adapter_class = MirroredImage
    model_examples = 2


def test_kit_rejects_an_adapter_that_scrambles_the_image():
    kit = BrokenMirroredImage()
    kit.test_contract()
    with pytest.raises(AssertionError, match="differs from the model's own forward"):
        kit.test_full_equals_the_models_own_forward()


def test_kit_reports_a_class_it_was_not_given():
    with pytest.raises(AssertionError, match="set policy_class"):
        PolicyConformance().make_policy()
