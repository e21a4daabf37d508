"""The adapter kit: a model family run through the engine equals transformers' own forward and
generate, on tiny random models of the family."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from hypothesis import strategies as st

from vtsched.core.adapters.base import ModelAdapter
from vtsched.core.budget import Budget
from vtsched.core.contracts import adapter_problems
from vtsched.core.policy import Policy
from vtsched.core.testing import models
from vtsched.core.testing import strategies as strat
from vtsched.core.testing.conformance.kit import Kit, close, component_name, expect
from vtsched.core.tokens import PromptBatch, Role

__all__ = ['AdapterConformance']


class AdapterConformance(Kit):
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

    adapter_class: ClassVar[type[ModelAdapter] | None] = None
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
        expect(not problems, f"adapter {component_name(self.adapter_class)!r} breaks the adapter contract: "
                + "; ".join(problems))

    def test_accepts_its_model_and_prepares_prompts(self) -> None:
        def check(shape: Any, inputs: tuple[list[Any], list[str]]) -> None:
            adapter = self._adapter(shape)
            who = component_name(adapter)
            model = adapter.model
            expect(type(adapter).accepts(model), f"{who} does not accept its own tiny {type(model).__name__}")
            geometry = adapter.geometry
            expect(type(adapter).geometry_from_config(model.config) == geometry,
                    f"{who}: geometry from the config differs from the loaded model's")
            parts = adapter.decoder()
            expect(len(parts.layers) == geometry.num_layers, f"{who}: {len(parts.layers)} decoder layers, "
                                                              f"geometry says {geometry.num_layers}")
            batch = adapter.prepare(*inputs)
            expect(len(batch) == len(inputs[0]), f"{who}: prepared {len(batch)} samples from {len(inputs[0])}")
            for b, sample in enumerate(batch.samples):
                visual = sample.visual_positions
                expect(sample.num_visual > 0, f"{who}: sample {b} has no visual tokens")
                expect(bool((visual.diff() == 1).all()), f"{who}: sample {b}'s image tokens are not contiguous")
                expect(bool((sample.roles == Role.QUESTION).any()), f"{who}: sample {b} marks no question token")
                expect(not bool((sample.roles == Role.TAIL).any()), f"{who}: a prompt has no tail tokens")
                expect(sample.visual_features.shape[-1] == geometry.hidden_size,
                        f"{who}: features of width {sample.visual_features.shape[-1]}, the decoder's is "
                        f"{geometry.hidden_size}")
                if sample.cls_scores is not None:
                    expect(sample.cls_scores.shape == (sample.num_visual,), f"{who}: sample {b}: CLS scores' shape")
                if sample.grid is not None:
                    expect(sample.grid[0] * sample.grid[1] == sample.num_visual, f"{who}: sample {b}: grid size")

        self._run(check, self.model_shapes(), self.prompts(min_size=1, max_size=2), model=True)

    def test_full_equals_the_models_own_forward(self) -> None:
        def check(shape: Any, inputs: tuple[list[Any], list[str]]) -> None:
            adapter, engine, planner, batch = self._prepared(shape, inputs)
            reference_inputs = self.reference_inputs(adapter.processor, inputs[0][0], inputs[1][0])
            expect(reference_inputs["input_ids"][0].tolist() == batch.samples[0].input_ids.tolist(),
                    f"{component_name(adapter)}: prepared token ids differ from the processor's")
            plan = planner.plan(batch, self._policy("full"), None, None)
            ours = engine.prefill(batch, plan.schedule, plan.partition, use_cache=False, return_hidden=True)
            reference = self.reference_logits(adapter.model, reference_inputs)
            expect(ours.all_logits is not None and ours.all_logits.shape[1] == reference.shape[0],
                    f"{component_name(adapter)}: the engine ran a different number of tokens than the model")
            close(ours.all_logits[0], reference, self.atol, 0.0,
                   f"{component_name(adapter)}: full through the engine differs from the model's own forward")

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
            expect(ours.tokens[0] == theirs, f"{component_name(adapter)}: greedy tokens {ours.tokens[0]}, the model's own "
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
            expect(kept == keep.tolist(), f"{component_name(adapter)}: prune kept positions {kept}, expected {keep.tolist()}")
            reference = self.shortened_reference_logits(adapter.model, sample, keep)
            close(ours.all_logits[0], reference, self.atol, 0.0,
                   f"{component_name(adapter)}: prune differs from the model on the shortened sequence")

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
                    close(together.step_logits[step][b], logits[0], self.atol, 0.0,
                           f"{component_name(adapter)}: {name}, sample {b}, step {step}: batch differs from alone")
                expect(alone.tokens[0] == together.tokens[b], f"{component_name(adapter)}: {name}, sample {b}: tokens differ")

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
            close(logits[1], logits[0], self.atol, 0.0,
                   f"{component_name(adapter)}: parvts with alpha = 1 (drop layer {drop}) differs from prune")

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
            close(ours, reference, self.atol, 0.0,
                   f"{component_name(adapter)}: parvts (merge={merge}, {tokens} tokens, alpha {alpha}, layer {drop}) differs "
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
                close(ours.step_logits[step], again.logits, self.atol, 0.0,
                       f"{component_name(adapter)}: {name}, step {step}: cached decoding differs from recomputing the prompt "
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
            close(logits[0], logits[1], self.backend_atol, self.backend_atol,
                   f"{component_name(sdpa)}: {name} under SDPA differs from eager attention")

        self._run(check, self.model_shapes(), self.prompts(min_size=1, max_size=2), st.data(), model=True)

    # -- helpers --------------------------------------------------------------------------------
    def _adapter(self, shape: Any, *, dtype: torch.dtype = torch.float64, attn_implementation: str = "sdpa") -> Any:
        expect(self.adapter_class is not None, f"{type(self).__name__}: set adapter_class")
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
