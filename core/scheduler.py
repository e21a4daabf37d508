"""The front door: load a model, pick a policy and a partitioner, run a request.

``image + question -> adapter.prepare -> partitioner -> Partition -> policy -> Schedule
-> engine.prefill -> generation.decode -> text``. Planning goes through the one
:class:`~vtsched.core.planner.Planner`; a calibrated policy (drop-layer search) is calibrated in an
explicit step first (:func:`vtsched.core.calibration.calibrate`), which returns a fixed schedule.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from vtsched.core.budget import Budget
from vtsched.core.cost import RunCosts, plan_costs, prefill_flops, visual_input
from vtsched.core.engine import Engine
from vtsched.core.errors import InputError
from vtsched.core.generation import Generated, GenerationConfig, generate
from vtsched.core.planner import Plan, Planner
from vtsched.core.policy import CalibratedPolicy, Partitioner, Policy
from vtsched.core.registry import Registry, build_registry
from vtsched.core.tokens import PromptBatch

__all__ = ["Plan", "RunResult", "Scheduler"]


@dataclass
class RunResult:
    texts: list[str]
    generated: Generated
    plan: Plan
    flops: torch.Tensor  # (batch,) decoder prefill FLOPs of what ran
    visual_per_layer: torch.Tensor  # (batch,) visual tokens per layer, all streams
    visual_per_layer_survivor: torch.Tensor  # (batch,)
    carried_per_layer: torch.Tensor | None = None  # (batch,) carried text-token copies per layer (``carry``)
    visual_input: torch.Tensor | None = None  # (batch,) visual tokens entering the LLM (layer 0, all streams)
    costs: RunCosts | None = None  # the cost columns of every results row (vtsched.core.cost.plan_costs)

    def summary(self) -> str:
        carried = ""
        if self.carried_per_layer is not None and bool((self.carried_per_layer > 0).any()):
            carried = f", {self.carried_per_layer.mean():.1f} carried text tokens besides"
        return (
            self.plan.describe()
            + f" | visual tokens/layer: {self.visual_per_layer_survivor.mean():.1f} kept"
            f" ({self.visual_per_layer.mean():.1f} counting parallel streams{carried})"
            f" | prefill {self.flops.mean() / 1e9:.3g} GFLOPs"
        )


class Scheduler:
    """A model bound to its adapter and an engine, plus the registry of components."""

    def __init__(self, model: torch.nn.Module, processor: Any = None, *, registry: Registry | None = None,
                 share_prefix: bool = True, adapter_options: Mapping[str, Any] | None = None) -> None:
        self.registry = registry or build_registry()
        adapter_class = self.registry.adapter_for(model)
        try:
            self.adapter = adapter_class(model, processor, **dict(adapter_options or {}))
        except TypeError as exc:  # an option the family's adapter does not take
            raise InputError(f"adapter {adapter_class.name!r}: {exc}") from None
        self.engine = Engine(self.adapter.decoder(), self.registry.fusion_rules(), share_prefix=share_prefix,
                             rankers=self.registry.rankers())
        self.planner = Planner(self.registry, self.adapter.geometry, type(self.adapter).default_partitioner)
        self._calibrated: dict[tuple[Any, ...], Policy] = {}  # calibrations on a fixed data file, once each

    @classmethod
    def from_pretrained(cls, path: str, *, device: str = "cpu", dtype: torch.dtype | None = None,
                        attn_implementation: str = "sdpa", registry: Registry | None = None,
                        adapter_options: Mapping[str, Any] | None = None) -> Scheduler:
        """Load a checkpoint folder (or hub id, where a hub is reachable) with its processor.

        ``adapter_options`` are the family adapter's options (LLaVA-NeXT: ``image_size=672``)."""
        from transformers import AutoModelForImageTextToText, AutoProcessor
        from vtsched.core.io import check_processor_files, read_config

        config = read_config(path)
        registry = registry or build_registry()
        registry.adapter_for_config(config)  # refuses model types no adapter reads, before loading weights
        check_processor_files(path)
        try:  # the processor first: a folder without one is refused before gigabytes of weights are read
            processor = AutoProcessor.from_pretrained(path)
            model = AutoModelForImageTextToText.from_pretrained(
                path, dtype=dtype or "auto", attn_implementation=attn_implementation
            )
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot load {path!r}: {str(exc).splitlines()[0]}") from None
        return cls(model.to(device).eval(), processor, registry=registry,  # type: ignore[arg-type]
                   adapter_options=adapter_options)

    @classmethod
    def random(cls, shape: str = "demo", **kwargs: Any) -> Scheduler:
        """A random-weight model of a named shape, any family (see :mod:`vtsched.core.shapes`)."""
        from vtsched.core.shapes import build_random_llava

        registry = kwargs.pop("registry", None)
        adapter_options = kwargs.pop("adapter_options", None)
        return cls(*build_random_llava(shape, **kwargs), registry=registry, adapter_options=adapter_options)

    # -- components --------------------------------------------------------------------------
    def make_policy(self, name: str | Policy, params: Mapping[str, Any] | None = None) -> Policy:
        """A policy by registry name, or ``"schedule:PATH"`` for a saved schedule run exactly."""
        return self.planner.policy(name, params)

    def make_partitioner(self, name: str | Partitioner, params: Mapping[str, Any] | None = None) -> Partitioner:
        return self.planner.partitioner(name, params)

    def plan(self, batch: PromptBatch, policy: Policy, partitioner: Partitioner | None, budget: Budget | None) -> Plan:
        """The plan for ``batch``: calibrate first where the policy asks for it, then the one planner."""
        if isinstance(policy, CalibratedPolicy):
            policy = self.calibrate(policy, batch, partitioner, budget)
        return self.planner.plan(batch, policy, partitioner, budget)

    def calibrate(self, policy: CalibratedPolicy, batch: PromptBatch, partitioner: Partitioner | None,
                  budget: Budget | None) -> Policy:
        """The policy a calibrated policy's search chooses (computed once per scheduler for a data file)."""
        from vtsched.core.calibration import calibrate

        request = policy.calibration_request()
        key = (request, str(budget), partitioner.describe() if partitioner is not None else None)
        if request.data and key in self._calibrated:
            return self._calibrated[key]
        chosen = calibrate(self, request, batch, partitioner, budget).policy
        if request.data:
            self._calibrated[key] = chosen
        return chosen

    # -- running -----------------------------------------------------------------------------
    def prepare(self, images: Sequence[Any], questions: Sequence[str]) -> PromptBatch:
        """The adapter's batch, each sample's question text kept in ``extras["question"]`` (what a
        question-conditioned partitioner, such as the LISA plugin's ``lisa``, reads). PIL images of
        other modes are converted as a viewer shows them (:func:`~vtsched.core.io.to_rgb`: 16-bit
        scaled, transparency on white), not by the processor's clipping ``convert("RGB")``."""
        from vtsched.core.io import to_rgb

        images = [to_rgb(i) if getattr(i, "mode", "RGB") != "RGB" and hasattr(i, "convert") else i for i in images]
        batch = self.adapter.prepare(images, questions)
        for sample, question in zip(batch.samples, questions):
            sample.extras.setdefault("question", question)
        return batch

    def run(
        self,
        images: Sequence[Any],
        questions: Sequence[str],
        policy: str | Policy = "full",
        *,
        partitioner: str | Partitioner | None = None,
        budget: str | float | Budget | None = None,
        policy_params: Mapping[str, Any] | None = None,
        generation: GenerationConfig | None = None,
    ) -> RunResult:
        batch = self.prepare(images, questions)
        policy_obj = self.make_policy(policy, policy_params)
        part = self.make_partitioner(partitioner) if partitioner is not None else None
        plan = self.plan(batch, policy_obj, part, Budget.parse(budget) if budget is not None else None)
        return self.answer(batch, plan, generation)

    def answer(self, batch: PromptBatch, plan: Plan, generation: GenerationConfig | None = None, *,
               engine: Any = None, hidden_states: int | None = None) -> RunResult:
        """Generate for a prepared and planned batch: texts (stop tokens dropped), FLOPs and token counts.

        ``engine`` stands in for ``self.engine`` (e.g. one that times its prefills).
        ``hidden_states=N`` keeps the normed last-layer states of each sample's last ``N`` prompt
        positions and of its generated tokens in ``result.generated.hidden_states``
        (:class:`~vtsched.core.generation.HiddenStates`), from the same prefill and decoding steps.
        """
        config = generation or GenerationConfig()
        if not config.stop_token_ids:  # the model's own end-of-sequence tokens
            config = dataclasses.replace(config, stop_token_ids=self.adapter.stop_token_ids())
        generated = generate(engine or self.engine, batch, plan.schedule, plan.partition, config,
                             hidden_states=hidden_states)
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
            carried_per_layer=stats.carried_per_layer(layers),
            visual_input=visual_input(stats),
            costs=plan_costs(plan, stats, self.adapter.geometry),
        )
