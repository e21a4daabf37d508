"""``VtschedLMM``: an lmms-eval model that answers through the vtsched engine under any policy.

``--model_args`` (lmms-eval parses ``k=v,...``): ``pretrained`` (a checkpoint folder, or ``demo``
for vtsched's shipped demo model), ``policy``, ``budget``, ``partitioner``, ``dtype``,
``max_new_tokens`` (default when a task gives none), ``log_path`` (per-request JSONL), ``no_plugins``;
every other key is a policy parameter (``drop_layer=2``, ``fusion=size``) and ``partitioner.NAME``
a partitioner parameter (``partitioner.seed=1``). Policy, partitioner and budget are checked by
vtsched's planner against the checkpoint's config before any weights load.

``generate_until`` batches requests (``--batch_size``) through prefill and cached decoding, greedy
unless the task samples; ``loglikelihood`` (multiple choice) prefills the context with the
continuation appended as the surviving stream's tail, exactly how decoded tokens are treated, and
returns the continuation's negative log-likelihood (lmms-eval picks the smallest). Each request's
cost, in the columns every vtsched results row has (``budget_counts``, ``visual_tokens_input``,
``visual_tokens_per_layer`` over every stream, ``prefill_gflops`` with the method's scoring,
``prefill_ms`` measured: the plan and the prefill, the batch's time shared), is written to ``log_path``
(default: ``vtsched_requests.jsonl`` in lmms-eval's ``--output_path``, else ``vtsched-out/lmms-eval/``) and summarised in the log.

One image per request: the LLaVA-1.5 prompt has one image slot. The model never reads video, so
nothing here needs ``decord``.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from loguru import logger
from tqdm import tqdm
from vtsched.core.app import TimedEngine

__all__ = ["VtschedLMM"]

IMAGE_TOKENS = ("<image>", "<|image|>")


def _default_log_path() -> Path:
    """``vtsched_requests.jsonl`` beside lmms-eval's own results (its ``--output_path``), else under vtsched-out/."""
    argv = sys.argv
    for i, arg in enumerate(argv):
        if arg == "--output_path" and i + 1 < len(argv):
            out = Path(argv[i + 1])
            return (out.parent if out.suffix == ".jsonl" else out) / "vtsched_requests.jsonl"
        if arg.startswith("--output_path="):
            return Path(arg.split("=", 1)[1]) / "vtsched_requests.jsonl"
    return Path("vtsched-out") / "lmms-eval" / "vtsched_requests.jsonl"


class VtschedLMM(lmms):
    """lmms-eval's ``lmms`` over a vtsched :class:`~vtsched.core.scheduler.Scheduler`."""

    is_simple = True

    def __init__(
        self,
        pretrained: str = "demo",
        policy: str = "full",
        budget: str | float | None = None,
        partitioner: str | None = None,
        device: str | None = "cpu",
        dtype: str | None = None,
        batch_size: int | str = 1,
        max_batch_size: int | None = None,
        max_new_tokens: int = 32,
        log_path: str | None = None,
        no_plugins: bool = False,
        **params: Any,
    ) -> None:
        super().__init__()
        from vtsched.core.app import (
            Request,
            check_request,
            load_scheduler,
            planner_for_model,
            registry,
        )
        from vtsched.core.tools.sweep.cells import model_path

        policy_params = {k: _text(v) for k, v in params.items() if not k.startswith("partitioner.")}
        partitioner_params = {k.split(".", 1)[1]: _text(v) for k, v in params.items() if k.startswith("partitioner.")}
        components = registry(no_plugins)
        path = model_path(str(pretrained))
        # the model args are the request's words, read here once; refused in one line before weights load
        request = Request.from_words(policy, params=policy_params, partitioner=partitioner,
                                     partitioner_params=partitioner_params,
                                     budget=_text(budget) if budget is not None else None, model=path)
        checked = check_request(planner_for_model(path, components), request, default_budget=None)
        self.policy, self.budget, check = checked.policy, checked.budget, checked.check
        partitioner_params = checked.partitioner_params
        self.partitioner_name = check.partitioner
        self.partitioner_params = partitioner_params
        device = str(device or "cpu")
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if device.startswith("cuda") and world > 1:  # data parallel: one device per rank
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        self._device = torch.device(device)
        self.scheduler = load_scheduler(path, components, device, dtype=getattr(torch, dtype) if dtype else None)
        self.partitioner = (self.scheduler.make_partitioner(self.partitioner_name, partitioner_params)
                            if self.partitioner_name else None)
        self.batch_size_per_device = int(batch_size) if str(batch_size).isdigit() else 1
        self.max_new_tokens = int(max_new_tokens)
        self.log_path = Path(log_path) if log_path else _default_log_path()
        self.pretrained = str(pretrained)
        self.records: list[dict[str, Any]] = []

    # -- what lmms-eval reads ------------------------------------------------------------------
    @property
    def batch_size(self) -> int:
        return self.batch_size_per_device

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def tokenizer(self) -> Any:
        return self.scheduler.adapter.processor.tokenizer

    def describe(self) -> str:
        name = self.policy.describe()
        if self.partitioner is not None:
            name += f", partitioner {self.partitioner.describe()}"
        return name + (f", budget {self.budget}" if self.budget is not None else "")

    # -- requests ------------------------------------------------------------------------------
    def _visual(self, doc_to_visual: Any, doc_id: int, task: str, split: str) -> Any:
        visuals = doc_to_visual(self.task_dict[task][split][doc_id])
        visuals = [v for v in (visuals if isinstance(visuals, (list, tuple)) else [visuals]) if v is not None]
        if len(visuals) != 1:
            raise ValueError(f"vtsched answers one image per request; {task} doc {doc_id} gave {len(visuals)}")
        image = visuals[0]
        if isinstance(image, (str, Path)):
            from vtsched.core.io import load_image

            return load_image(image)
        return image.convert("RGB") if hasattr(image, "convert") else image

    @staticmethod
    def _question(context: str) -> str:
        for token in IMAGE_TOKENS:  # the adapter places the image itself
            context = context.replace(token, "")
        return context.strip()

    def _plan(self, batch: Any) -> Any:
        return self.scheduler.plan(batch, self.policy, self.partitioner, self.budget)

    def _batch_costs(self, plan: Any, stats: Any, seconds: float, size: int) -> tuple[Any, float]:
        """A batch's cost columns per sample (:func:`vtsched.core.app.run_costs`) and each sample's share
        of its measured prefill ``seconds``."""
        from vtsched.core.app import run_costs

        return run_costs(self.scheduler, plan, stats), 1e3 * seconds / max(1, size)

    def _record(self, kind: str, task: str, doc_id: int, costs: tuple[Any, float], b: int) -> None:
        from vtsched.core.app import cost_row

        row, ms = costs
        self.records.append({"kind": kind, "task": task, "doc_id": doc_id, "policy": self.describe(),
                             **cost_row(self.scheduler, self.policy, row, b, ms)})

    def _flush(self, kind: str, n: int) -> None:
        """Append this call's per-request records to ``log_path`` and log their means."""
        if not self.records:
            return
        records, self.records = self.records, []
        path = self.log_path
        if self.world_size > 1:
            path = path.with_name(f"{path.stem}.rank{self.rank}{path.suffix}")
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as handle:
            for r in records:
                handle.write(json.dumps(r) + "\n")
        logger.info(f"vtsched {kind}: {n} requests under {self.describe()}: "
                    f"{statistics.fmean(r['visual_tokens_per_layer'] for r in records):.1f} visual tokens/layer, "
                    f"{statistics.fmean(r['prefill_gflops'] for r in records):.4g} prefill GFLOPs per request "
                    f"(per request: {path})")

    def _batches(self, requests: Sequence[Instance], key: Any) -> list[list[int]]:
        """Request indices grouped by ``key`` (same task, split, generation settings), in batches."""
        groups: dict[Any, list[int]] = {}
        for i, request in enumerate(requests):
            groups.setdefault(key(request.args), []).append(i)
        size = max(1, self.batch_size)
        return [idx[s : s + size] for idx in groups.values() for s in range(0, len(idx), size)]

    def generate_until(self, requests: list[Instance]) -> list[str]:
        from vtsched.core.generation import GenerationConfig

        out: list[str] = [""] * len(requests)
        batches = self._batches(requests, lambda a: (a[4], a[5], json.dumps(a[1], sort_keys=True, default=str)))
        bar = tqdm(total=len(requests), disable=self.rank != 0, desc="vtsched generate")
        for index in batches:
            args = [requests[i].args for i in index]
            contexts, gen_kwargs, doc_to_visual, doc_ids, tasks, splits = zip(*args)
            kwargs = dict(gen_kwargs[0] or {})
            until = kwargs.pop("until", None)
            until = [until] if isinstance(until, str) else list(until or [])
            sample = bool(kwargs.get("do_sample", False)) and float(kwargs.get("temperature", 0) or 0) > 0
            config = GenerationConfig(
                max_new_tokens=int(kwargs.get("max_new_tokens") or self.max_new_tokens), do_sample=sample,
                temperature=float(kwargs.get("temperature") or 1.0) if sample else 1.0,
                top_p=float(kwargs.get("top_p") or 1.0) if sample else 1.0,
            )
            images = [self._visual(doc_to_visual[k], doc_ids[k], tasks[k], splits[k]) for k in range(len(index))]
            batch = self.scheduler.prepare(images, [self._question(c) for c in contexts])
            timed = TimedEngine(self.scheduler.engine, self.scheduler.adapter.device.type == "cuda")
            start = time.perf_counter()
            plan = self._plan(batch)
            planning = time.perf_counter() - start
            answered = self.scheduler.answer(batch, plan, config, engine=timed)
            costs = self._batch_costs(plan, answered.generated.prefill.stats, planning + timed.seconds, len(index))
            for k, text in enumerate(answered.texts):
                for marker in until:
                    if marker and marker in text:
                        text = text.split(marker, 1)[0]
                out[index[k]] = text
                self._record("generate_until", tasks[k], doc_ids[k], costs, k)
                self.cache_hook.add_partial("generate_until", (contexts[k], gen_kwargs[k]), text)
            bar.update(len(index))
        bar.close()
        self._flush("generate_until", len(requests))
        return out

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        """Per request: the continuation's negative log-likelihood given image and context (summed over
        its tokens), and whether greedy decoding would produce it.

        lmms-eval scores ``multiple_choice`` by the *smallest* value (``np.argmin``: its own models
        return their loss, EvolvingLMMs-Lab/lmms-eval#370), so this returns ``-log p``, not ``log p``.
        """
        out: list[tuple[float, bool]] = [(0.0, False)] * len(requests)
        batches = self._batches(requests, lambda a: (a[4], a[5]))
        tokenizer = self.tokenizer
        bar = tqdm(total=len(requests), disable=self.rank != 0, desc="vtsched loglikelihood")
        for index in batches:
            args = [requests[i].args for i in index]
            contexts, targets, doc_to_visual, doc_ids, tasks, splits = zip(*args)
            continuations = [t if isinstance(t, str) else t(self.task_dict[tasks[k]][splits[k]][doc_ids[k]])
                             for k, t in enumerate(targets)]
            images = [self._visual(doc_to_visual[k], doc_ids[k], tasks[k], splits[k]) for k in range(len(index))]
            batch = self.scheduler.prepare(images, [self._question(c) for c in contexts])
            start = time.perf_counter()
            plan = self._plan(batch)
            tails = [torch.tensor(tokenizer(c, add_special_tokens=False)["input_ids"], dtype=torch.long)
                     for c in continuations]
            if any(len(t) == 0 for t in tails):
                raise ValueError("an empty continuation has no likelihood to score")
            prefill = self.scheduler.engine.prefill(batch, plan.schedule, plan.partition,
                                                    tail=[t.to(self.device) for t in tails], use_cache=False,
                                                    return_hidden=True)
            assert prefill.all_logits is not None and prefill.index is not None
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            costs = self._batch_costs(plan, prefill.stats, time.perf_counter() - start, len(index))
            for k, tail in enumerate(tails):
                length = batch.samples[k].length
                slots = prefill.slots(k, torch.arange(length - 1, length - 1 + len(tail)))
                logprobs = torch.log_softmax(prefill.all_logits[k, slots].float(), dim=-1)
                tail_ids = tail.to(logprobs.device)
                total = -float(logprobs.gather(1, tail_ids[:, None]).sum())
                greedy = bool((logprobs.argmax(-1) == tail_ids).all())
                out[index[k]] = (total, greedy)
                self._record("loglikelihood", tasks[k], doc_ids[k], costs, k)
                self.cache_hook.add_partial("loglikelihood", (contexts[k], continuations[k]), out[index[k]])
            bar.update(len(index))
        bar.close()
        self._flush("loglikelihood", len(requests))
        return _through_evaluator(out)  # type: ignore[return-value]

    def generate_until_multi_round(self, requests: list[Instance]) -> list[str]:
        raise NotImplementedError("vtsched answers single-round requests; multi-round tasks are not supported")


def _through_evaluator(scores: list[tuple[float, bool]]) -> list[Any]:
    """The scores in a form lmms-eval's evaluator keeps as they are.

    lmms-eval 0.7.3 passes every response through ``unwrap_generation_output``, which turns a
    ``(logprob, is_greedy)`` tuple into its string, so ``multiple_choice`` tasks fail to unpack it;
    a :class:`GenerationResult` whose ``text`` is the tuple passes unchanged. Plain tuples are
    returned where the evaluator keeps them (read ``.text`` when calling this directly).
    """
    from lmms_eval.api import instance

    unwrap = getattr(instance, "unwrap_generation_output", None)
    if unwrap is None or unwrap((0.0, True))[0] == (0.0, True):
        return list(scores)
    return [instance.GenerationResult(text=score) for score in scores]  # type: ignore[arg-type]


def _text(value: Any) -> Any:
    """lmms-eval parses ``k=v`` values into bool/int/float; vtsched's parameters take them as written."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value) if isinstance(value, (int, float)) else value
