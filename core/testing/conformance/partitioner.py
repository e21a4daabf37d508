"""The partitioner kit: partitions are disjoint covers of the budget's size, deterministic, and a
batch partitions like its samples."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from hypothesis import strategies as st

from vtsched.core.budget import Budget
from vtsched.core.contracts import partitioner_problems
from vtsched.core.errors import VtschedError
from vtsched.core.partition import Partition
from vtsched.core.policy import Partitioner
from vtsched.core.testing import strategies as strat
from vtsched.core.testing.conformance.kit import Kit, component_name, expect
from vtsched.core.tokens import PromptBatch

__all__ = ['PartitionerConformance']


class PartitionerConformance(Kit):
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
        expect(self.partitioner_class is not None, f"{type(self).__name__}: set partitioner_class")
        assert self.partitioner_class is not None
        return self.partitioner_class(**dict(self.partitioner_params))  # type: ignore[no-any-return]

    def prompt_batches(self, *, distinct_visual: bool = False) -> st.SearchStrategy[PromptBatch]:
        return strat.prompt_batches(min_size=1, max_size=3, distinct_visual=distinct_visual)

    def model_prompts(self) -> st.SearchStrategy[Any]:
        """(images, questions) a tiny model's adapter prepares for the check on real batches (override for
        inputs a partitioner needs, e.g. videos)."""
        return strat.prompts(min_size=1, max_size=2)

    def budgets(self, batch: PromptBatch) -> st.SearchStrategy[Budget]:
        """Budgets every sample of ``batch`` can meet."""
        return strat.token_budgets(num_visual=min(batch.num_visual))

    # -- the checks -----------------------------------------------------------------------------
    def test_contract(self) -> None:
        problems = partitioner_problems(self.partitioner_class)
        expect(not problems, f"partitioner {component_name(self.partitioner_class)!r} breaks the partitioner contract: "
                + "; ".join(problems))

    def test_partition_is_a_disjoint_cover_with_the_budgets_subject_size(self) -> None:
        def check(batch: PromptBatch, data: st.DataObject) -> None:
            budget = data.draw(self.budgets(batch), label="budget")
            self.check_partition(batch, budget, self._partition(batch, budget))

        self._run(check, self.prompt_batches(), st.data())

    def test_samples_with_different_token_counts_in_one_batch(self) -> None:
        def check(batch: PromptBatch, data: st.DataObject) -> None:
            expect(len(set(batch.num_visual)) > 1, "the batch should mix token counts")
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

        self._run(check, self.model_shapes(), self.model_prompts(), st.data(), model=True)

    # -- helpers --------------------------------------------------------------------------------
    def _partition(self, batch: PromptBatch, budget: Budget) -> Partition:
        partitioner = self.make_partitioner()
        try:
            partition = partitioner.partition(batch, budget)
        except VtschedError as exc:
            raise AssertionError(f"{component_name(partitioner)} refused budget {budget} on {batch.num_visual} visual "
                                 f"tokens: {exc}") from exc
        expect(isinstance(partition, Partition), f"{component_name(partitioner)}.partition() returned "
                                                  f"{type(partition).__name__}, not a Partition")
        return partition

    def check_partition(self, batch: PromptBatch, budget: Budget, partition: Partition) -> None:
        """The partition of ``batch`` is a disjoint cover whose subject group has the budget's size."""
        who = component_name(self.partitioner_class)
        expect(partition.batch_size == len(batch), f"{who}: partition for {partition.batch_size} samples, "
                                                    f"the batch has {len(batch)}")
        announced = tuple(self.make_partitioner().group_names())
        expect(partition.groups == announced, f"{who}: the partition names groups {partition.groups}, "
                                               f"group_names() announced {announced}")
        sizes = partition.sizes()
        for b, sample in enumerate(batch.samples):
            ids = partition.assignment[b]
            n = sample.num_visual
            expect(ids.numel() == n, f"{who}: sample {b} has {n} visual tokens, the partition assigns {ids.numel()}")
            members = [set(partition.members(b, g).tolist()) for g in partition.groups]
            expect(sum(len(m) for m in members) == n and set().union(*members) == set(range(n)),
                    f"{who}: sample {b}'s groups are not a disjoint cover of its {n} tokens")
            want = budget.resolve(n)
            expect(int(sizes[b, 0]) == want, f"{who}: sample {b} ({n} tokens), budget {budget}: the subject group "
                                              f"{partition.groups[0]!r} has {int(sizes[b, 0])} tokens, not {want}")
            if partition.scores is not None:
                scores = partition.scores[b]
                expect(scores.shape == (n,) and bool(torch.isfinite(scores).all()),
                        f"{who}: sample {b}'s scores are not {n} finite values")
            override = partition.features[b] if partition.features is not None else None
            if override is not None:
                index, values = override
                expect(index.dim() == 1 and (index.numel() == 0 or (int(index.min()) >= 0 and int(index.max()) < n))
                        and index.unique().numel() == index.numel(),
                        f"{who}: sample {b}'s merged features replace tokens outside 0..{n - 1} or twice")
                expect(tuple(values.shape) == (index.numel(), sample.visual_features.shape[-1])
                        and bool(torch.isfinite(values).all()),
                        f"{who}: sample {b}'s merged features have shape {tuple(values.shape)} or are not finite")

    def _expect_same(self, a: Partition, b: Partition, rows_a: Any, rows_b: Any, what: str) -> None:
        who = component_name(self.partitioner_class)
        expect(a.groups == b.groups, f"{who}: {what} (groups {a.groups} vs {b.groups})")
        for i, j in zip(rows_a, rows_b):
            expect(torch.equal(a.assignment[i], b.assignment[j]),
                    f"{who}: {what}: sample {i} {a.assignment[i].tolist()} vs {b.assignment[j].tolist()}")
            fa = a.features[i] if a.features is not None else None
            fb = b.features[j] if b.features is not None else None
            expect((fa is None) == (fb is None), f"{who}: {what}: merged features present in one only")
            if fa is not None and fb is not None:
                expect(torch.equal(fa[0], fb[0]) and torch.equal(fa[1], fb[1]), f"{who}: {what}: merged features")
