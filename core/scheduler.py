"""The front door: load a model, pick a policy and a partitioner, run a request.

``image + question -> adapter.prepare -> partitioner -> Partition -> policy -> Schedule
-> engine.prefill -> generation.decode -> text``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .budget import Budget
from .cost import prefill_flops
from .engine import Engine
from .errors import InputError, VtschedError
from .generation import GenerationConfig, Generated, generate
from .partition import Partition
from .policy import Partitioner, Policy, build_policy
from .registry import Registry, build_registry
from .schedule import Schedule
from .tokens import PromptBatch

__all__ = ["Scheduler", "RunResult", "Plan"]


@dataclass(frozen=True)
class Plan:
    policy: Policy
    partitioner: Partitioner | None
    budget: Budget | None
    partition: Partition
    schedule: Schedule


@dataclass
class RunResult:
    texts: list[str]
    generated: Generated
    plan: Plan
    flops: torch.Tensor  # (batch,) decoder prefill FLOPs of what ran
    visual_per_layer: torch.Tensor  # (batch,) visual tokens per layer, all streams
    visual_per_layer_survivor: torch.Tensor  # (batch,)

    def summary(self) -> str:
        policy = dict(self.plan.schedule.meta).get("policy") or self.plan.policy.describe()
        parts = [f"policy {policy}"]
        if self.plan.partitioner is not None:
            parts.append(f"partitioner {self.plan.partitioner.name}")
        if self.plan.budget is not None:
            parts.append(f"budget {self.plan.budget}")
        return (
            ", ".join(parts)
            + f" | visual tokens/layer: {self.visual_per_layer_survivor.mean():.1f} kept"
            f" ({self.visual_per_layer.mean():.1f} counting parallel streams)"
            f" | prefill {self.flops.mean() / 1e9:.3g} GFLOPs"
        )


class Scheduler:
    """A model bound to its adapter and an engine, plus the registry of components."""

    def __init__(self, model: torch.nn.Module, processor: Any = None, *, registry: Registry | None = None,
                 share_prefix: bool = True) -> None:
        self.registry = registry or build_registry()
        self.adapter = self.registry.adapter_for(model)(model, processor)
        self.engine = Engine(self.adapter.decoder(), self.registry.fusion_rules(), share_prefix=share_prefix)

    @classmethod
    def from_pretrained(cls, path: str, *, device: str = "cpu", dtype: torch.dtype | None = None,
                        attn_implementation: str = "sdpa", registry: Registry | None = None) -> Scheduler:
        """Load a checkpoint folder (or hub id, where a hub is reachable) with its processor."""
        from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

        try:
            config = AutoConfig.from_pretrained(path)
        except (OSError, ValueError) as exc:
            where = "folder" if os.path.isdir(path) else "model id or folder"
            raise InputError(f"cannot load {where} {path!r}: {str(exc).splitlines()[0]}") from None
        registry = registry or build_registry()
        registry.adapter_for_config(config)  # refuses model types no adapter reads, before loading weights
        try:
            model = AutoModelForImageTextToText.from_pretrained(
                path, dtype=dtype or "auto", attn_implementation=attn_implementation
            )
            processor = AutoProcessor.from_pretrained(path)
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot load {path!r}: {str(exc).splitlines()[0]}") from None
        return cls(model.to(device).eval(), processor, registry=registry)  # type: ignore[arg-type]

    @classmethod
    def random(cls, shape: str = "demo", **kwargs: Any) -> Scheduler:
        """A random-weight LLaVA of a named shape (see :mod:`vtsched.core.demo`)."""
        from .demo import build_random_llava

        registry = kwargs.pop("registry", None)
        return cls(*build_random_llava(shape, **kwargs), registry=registry)

    # -- components --------------------------------------------------------------------------
    def make_policy(self, name: str | Policy, params: Mapping[str, Any] | None = None) -> Policy:
        """A policy by registry name, or ``"schedule:PATH"`` for a saved schedule run exactly."""
        if isinstance(name, Policy):
            return name
        return build_policy(self.registry, name, params)

    def make_partitioner(self, name: str | Partitioner, params: Mapping[str, Any] | None = None) -> Partitioner:
        if isinstance(name, Partitioner):
            return name
        return self.registry.partitioner(name).from_params(params)

    def plan(self, batch: PromptBatch, policy: Policy, partitioner: Partitioner | None, budget: Budget | None) -> Plan:
        if hasattr(policy, "calibrate"):  # a policy that picks its parameters on data (search)
            policy = policy.calibrate(self, batch, partitioner, budget)
        if not policy.needs_partition:
            partition = Partition.single(batch.num_visual)
            partitioner = None
            if not policy.uses_budget:
                budget = None
            elif budget is not None:  # a policy that cannot do without one says so itself
                for n in batch.num_visual:
                    budget.resolve(n)  # refuse a budget larger than an image's tokens
        else:
            if partitioner is None:
                partitioner = self.make_partitioner(policy.default_partitioner)
            if budget is None:
                raise VtschedError(f"policy {policy.name!r} needs a budget (--budget)")
            partition = partitioner.partition(batch, budget)
        schedule = policy.schedule(self.adapter.geometry, partition.groups, budget)
        return Plan(policy, partitioner, budget, partition, schedule)

    # -- running -----------------------------------------------------------------------------
    def prepare(self, images: Sequence[Any], questions: Sequence[str]) -> PromptBatch:
        return self.adapter.prepare(images, questions)

    def run(
        self,
        images: Sequence[Any],
        questions: Sequence[str],
        policy: str | Policy = "full",
        *,
        partitioner: str | Partitioner | None = None,
        budget: str | int | float | Budget | None = None,
        policy_params: Mapping[str, Any] | None = None,
        generation: GenerationConfig | None = None,
    ) -> RunResult:
        batch = self.prepare(images, questions)
        policy_obj = self.make_policy(policy, policy_params)
        part = self.make_partitioner(partitioner) if partitioner is not None else None
        plan = self.plan(batch, policy_obj, part, Budget.parse(budget) if budget is not None else None)
        config = generation or GenerationConfig()
        if not config.stop_token_ids:  # the model's own end-of-sequence tokens
            config = dataclasses.replace(config, stop_token_ids=self.adapter.stop_token_ids())
        generated = generate(self.engine, batch, plan.schedule, plan.partition, config)
        stats = generated.prefill.stats
        layers = self.adapter.geometry.num_layers
        stop = set(config.stop_token_ids)
        texts = [self.adapter.decode_text([t for t in toks if t not in stop]) for toks in generated.tokens]
        return RunResult(
            texts=texts,
            generated=generated,
            plan=plan,
            flops=prefill_flops(stats, self.adapter.geometry),
            visual_per_layer=stats.visual_per_layer(layers),
            visual_per_layer_survivor=stats.visual_per_layer(layers, plan.schedule.survivor),
        )
