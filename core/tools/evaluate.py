"""``vtsched eval``: what scheduling does to answers.

Every sample is answered under every case (policy, budget); ``full`` always runs and is the
reference. Per case: accuracy (normalised exact match), agreement with ``full``'s answer,
KL divergence of the first next-token distribution to ``full``'s, visual tokens per layer and
prefill FLOPs, overall and split by tag and question type.
"""

from __future__ import annotations

import json
import re
import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vtsched.core.tools.bench import Case
from vtsched.core.budget import Budget
from vtsched.core.cost import prefill_flops
from vtsched.core.errors import InputError
from vtsched.core.generation import GenerationConfig, generate
from vtsched.core.scheduler import Scheduler
from vtsched.core.tools.search import next_token_kl

__all__ = ["EvalItem", "Prediction", "EvalReport", "normalise", "load_items", "evaluate", "summarise"]

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = re.compile(r"[^\w\s-]")


def normalise(text: str) -> str:
    """Lower case, no punctuation (hyphens kept), no articles, single spaces."""
    text = _PUNCTUATION.sub(" ", text.lower())
    return " ".join(_ARTICLES.sub(" ", text).split())


@dataclass
class EvalItem:
    id: str
    image: Any  # a PIL image, or a path loaded when needed
    question: str
    answer: str
    tag: str = "all"
    type: str = "all"

    def load(self) -> Any:
        if isinstance(self.image, (str, Path)):
            from vtsched.core.io import load_image

            return load_image(self.image)
        return self.image


@dataclass
class Prediction:
    case: str
    id: str
    tag: str
    type: str
    answer: str
    prediction: str
    correct: bool
    agrees_with_full: bool
    kl_to_full: float
    visual_tokens_per_layer: float
    prefill_gflops: float


@dataclass
class EvalReport:
    cases: list[str]
    predictions: list[Prediction] = field(default_factory=list)

    def rows(self) -> list[dict[str, Any]]:
        return summarise(self.predictions, self.cases)

    def table(self) -> str:
        rows = self.rows()
        header = f"{'case':<34s} {'split':<24s} {'n':>5s} {'acc':>6s} {'agree':>6s} {'KL':>8s} {'vis/layer':>9s} {'GFLOPs':>8s}"
        lines = [header, "-" * len(header)]
        for r in rows:
            lines.append(f"{r['case']:<34s} {r['split']:<24s} {r['n']:>5d} {100 * r['accuracy']:>6.1f} "
                         f"{100 * r['agreement']:>6.1f} {r['kl']:>8.4f} {r['visual_tokens_per_layer']:>9.1f} "
                         f"{r['prefill_gflops']:>8.4f}")
        return "\n".join(lines)


def summarise(predictions: Sequence[Prediction], cases: Sequence[str]) -> list[dict[str, Any]]:
    """One row per case and split (``all``, ``tag=...``, ``type=...``), in case order."""
    groups: dict[tuple[str, str], list[Prediction]] = defaultdict(list)
    for p in predictions:
        for split in ("all", f"tag={p.tag}", f"type={p.type}"):
            groups[(p.case, split)].append(p)
    rows = []
    for case in cases:
        splits = sorted({s for c, s in groups if c == case}, key=lambda s: (s != "all", not s.startswith("tag"), s))
        for split in splits:
            mine = groups[(case, split)]
            rows.append({
                "case": case, "split": split, "n": len(mine),
                "accuracy": statistics.fmean(p.correct for p in mine),
                "agreement": statistics.fmean(p.agrees_with_full for p in mine),
                "kl": statistics.fmean(p.kl_to_full for p in mine),
                "visual_tokens_per_layer": statistics.fmean(p.visual_tokens_per_layer for p in mine),
                "prefill_gflops": statistics.fmean(p.prefill_gflops for p in mine),
            })
    return rows


def load_items(spec: str, limit: int | None = None) -> list[EvalItem]:
    """Items from ``synthetic:SEED:IMAGES``, a JSONL file (+ image folder), or ``hf:PATH[:SPLIT]``
    (a Hugging Face ``datasets`` dataset saved on disk, with image/question/answer columns)."""
    if spec.startswith("synthetic:"):
        from vtsched.core.demo.synthetic import generate

        try:
            _, seed, images = spec.split(":")
            samples = generate(int(seed), int(images))
        except ValueError:
            raise InputError(f"synthetic data is 'synthetic:SEED:IMAGES', not {spec!r}") from None
        items = [EvalItem(s.id, s.image, s.question, s.answer, s.tag, s.type) for s in samples]
    elif spec.startswith("hf:"):
        items = _hf_items(spec[3:])
    else:
        items = _jsonl_items(Path(spec))
    if not items:
        raise InputError(f"the dataset {spec!r} has no samples")
    return items[:limit] if limit else items


def _jsonl_items(path: Path) -> list[EvalItem]:
    from vtsched.core.io import read_text

    if path.is_dir():
        path = path / "data.jsonl"
    items = []
    for number, line in enumerate(read_text(path, "dataset").splitlines(), 1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
            items.append(EvalItem(str(r.get("id", number)), path.parent / r["image"], r["question"], str(r["answer"]),
                                  str(r.get("tag", "all")), str(r.get("type", "all"))))
        except (json.JSONDecodeError, KeyError, TypeError):
            raise InputError(f"{path}:{number}: expected JSON with 'image', 'question' and 'answer'") from None
    return items


def _hf_items(spec: str) -> list[EvalItem]:
    try:
        import datasets
    except ImportError:
        raise InputError("hf: datasets need the 'datasets' package (pip install datasets)") from None
    path, _, split = spec.partition(":")
    try:
        data = datasets.load_from_disk(path)
    except (FileNotFoundError, ValueError) as exc:
        raise InputError(f"cannot load the dataset at {path!r}: {exc}") from None
    if isinstance(data, datasets.DatasetDict):
        data = data[split or next(iter(data))]
    return [EvalItem(str(r.get("id", i)), r["image"], r["question"], str(r["answer"]), str(r.get("tag", "all")),
                     str(r.get("type", "all"))) for i, r in enumerate(data)]


def evaluate(
    scheduler: Scheduler,
    items: Sequence[EvalItem],
    cases: Sequence[Case],
    *,
    batch_size: int = 8,
    max_new_tokens: int = 4,
    progress: bool = True,
) -> EvalReport:
    from tqdm.auto import tqdm

    cases = [Case("full")] + [c for c in cases if c.policy != "full"]
    labels = [c.label for c in cases]
    built = [(c, scheduler.make_policy(c.policy, dict(c.params)),
              scheduler.make_partitioner(c.partitioner) if c.partitioner else None) for c in cases]
    config = GenerationConfig(max_new_tokens=max_new_tokens, stop_token_ids=scheduler.adapter.stop_token_ids())
    geometry = scheduler.adapter.geometry
    report = EvalReport(labels)
    bar = tqdm(total=len(items) * len(cases), desc="eval", disable=not progress)
    stop = set(config.stop_token_ids)
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        batch = scheduler.prepare([it.load() for it in chunk], [it.question for it in chunk])
        reference_logits: Any = None
        reference_answers: list[str] | None = None
        for case, policy, partitioner in built:
            budget = Budget.parse(case.budget) if case.budget is not None else None
            plan = scheduler.plan(batch, policy, partitioner, budget)
            out = generate(scheduler.engine, batch, plan.schedule, plan.partition, config)
            answers = [scheduler.adapter.decode_text([t for t in toks if t not in stop]) for toks in out.tokens]
            logits = out.prefill.logits
            if reference_logits is None or reference_answers is None:  # the first case is full
                reference_logits, reference_answers = logits, answers
            kl = next_token_kl(reference_logits, logits)
            visual = out.prefill.stats.visual_per_layer(geometry.num_layers, plan.schedule.survivor)
            flops = prefill_flops(out.prefill.stats, geometry)
            for i, item in enumerate(chunk):
                report.predictions.append(Prediction(
                    case.label, item.id, item.tag, item.type, item.answer, answers[i],
                    normalise(answers[i]) == normalise(item.answer),
                    normalise(answers[i]) == normalise(reference_answers[i]),
                    float(kl[i]), float(visual[i]), float(flops[i]) / 1e9,
                ))
            bar.update(len(chunk))
    bar.close()
    return report
