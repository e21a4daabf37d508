"""``vtsched eval``: what scheduling does to answers.

Every sample is answered under every case (policy, budget, partitioner); ``full`` always runs
and is the reference. Per case: accuracy (normalised exact match), agreement with ``full``'s
answer, KL divergence of the first next-token distribution to ``full``'s, visual tokens per layer
and prefill FLOPs, overall and split by tag and question type.

Budgets differ in meaning between policies (``Policy.budget_counts``: the subject group entering
the LLM, the tokens kept after a drop layer, an average per layer), so every row says what its
budget counted (``budget_counts``) beside what ran, in the columns every results row shares
(:mod:`vtsched.core.cost`): the visual tokens entering the LLM (``visual_tokens_input``), every
visual token row a layer processed in every stream averaged over all layers
(``visual_tokens_per_layer``, the field's equivalent tokens), the prefill FLOPs with the method's
own scoring (``prefill_gflops``) and the measured prefill time per sample (``prefill_ms``: the
partitioner's call and the LLM's prefill; decoding excluded). Every row carries the
accuracy's 95% Wilson interval, McNemar's test against a reference case on the same items
(``full`` unless ``paired_against`` names another) and, with ``hard_subset``, the accuracy on the
items that case answers wrongly (:mod:`vtsched.core.tools.significance`).

The partitioner's own cost is reported beside the LLM's, never folded into it: its wall time per
sample (``part ms``: every ``partition`` call of the case, measured around the call) and, for a
partitioner that counts its own compute (a ``spent_flops()`` method returning the FLOPs it has
spent so far, like the SAM partitioner), its FLOPs per sample (``part GF``). A partitioner that
caches (SAM masks per image content) is charged what it spent in this run: the first case that
meets an image pays, later cases hit the cache.

Partitioners are named per case (:func:`cross_partitioners`, ``vtsched eval --partitioners``) as
``NAME[:PARAM=VALUE,...]``. A partitioner class with a ``dataset_param`` class attribute (the
``mask`` partitioner's ``masks``) gets the dataset's spec there when the user leaves it unset, so
``--partitioners mask`` finds the dataset's own masks.
"""

from __future__ import annotations

import json
import re
import statistics
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vtsched.core.app import TimedEngine
from vtsched.core.budget import Budget
from vtsched.core.calibration import next_token_kl
from vtsched.core.errors import InputError
from vtsched.core.generation import GenerationConfig
from vtsched.core.policy import budget_counts_of
from vtsched.core.scheduler import Scheduler
from vtsched.core.tools.bench import Case, case_label, parse_component

__all__ = [
    "EvalItem",
    "EvalReport",
    "Prediction",
    "case_label",
    "cross_partitioners",
    "evaluate",
    "hard_references",
    "load_items",
    "normalise",
    "parse_partitioner",
    "summarise",
    "with_hard_reference",
]

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
    partitioner_ms: float = 0.0  # the partitioner's wall time for this sample (its batch's share)
    partitioner_gflops: float = 0.0  # FLOPs the partitioner reported spending on this sample
    budget_counts: str = "input"  # what the case's budget counts (Policy.budget_counts)
    visual_tokens_input: float = 0.0  # visual tokens entering the LLM (its first layer, every stream)
    prefill_ms: float = 0.0  # measured: the partitioner's call and the LLM prefill, this sample's share
    match_target: float | None = None  # --match: the target on this sample
    budget_solved: int | None = None  # --match: the policy's own budget solved for it


@dataclass
class EvalReport:
    """Predictions of every case, summarised per case and split by :meth:`rows`.

    ``paired_against``: the case each row is paired with in McNemar's test (``full`` unless named);
    ``hard_subset``: what the user named as the hard subset's reference (None: none), and
    ``hard_references`` that reference resolved per case (:func:`hard_references`; empty: the
    named case for every row).
    """

    cases: list[str]
    predictions: list[Prediction] = field(default_factory=list)
    paired_against: str = "full"
    hard_subset: str | None = None
    hard_references: dict[str, str | None] = field(default_factory=dict)
    match: str | None = None  # what --match held equal (vtsched.core.tools.matching.MATCH_KINDS)

    def rows(self) -> list[dict[str, Any]]:
        from vtsched.core.tools.significance import paired_rows

        outcomes: dict[tuple[str, str], list[tuple[str, bool]]] = defaultdict(list)
        for p in self.predictions:
            for split in ("all", f"tag={p.tag}", f"type={p.type}"):
                outcomes[(p.case, split)].append((p.id, p.correct))
        rows = paired_rows(summarise(self.predictions, self.cases), outcomes,
                           paired_against=self.paired_against,
                           hard=(self.hard_references or self.hard_subset) if self.hard_subset is not None else None)
        if self.match is not None:
            from vtsched.core.tools.matching import achieved

            for row in rows:
                row["match"], row["match_achieved"] = self.match, achieved(self.match, row)
        return rows

    def table(self) -> str:
        """One line per case and split; ``budget`` what its budget counts, ``vis in`` the visual tokens
        entering the LLM, ``vis/layer`` every stream's visual tokens per layer averaged over all layers;
        ``GFLOPs`` is the LLM's prefill with the method's scoring, ``ms`` the measured prefill (the
        partitioner's call included), ``part ms`` / ``part GF`` the partitioner's own time and the FLOPs
        a partitioner reports spending (SAM's), per sample; ``target`` / ``achieved`` with ``--match``;
        ``95% CI`` the accuracy's Wilson interval, ``p`` McNemar's test against ``paired_against``,
        ``hard`` the accuracy on the items ``hard_subset`` answers wrongly (and how many)."""
        rows = self.rows()
        width = max([34, *(len(r["case"]) for r in rows)])
        header = (f"{'case':<{width}s} {'split':<24s} {'n':>5s} {'acc':>6s} {'95% CI':>11s} {'p':>6s} {'agree':>6s} "
                  f"{'KL':>8s} {'budget':>17s} {'vis in':>7s} {'vis/layer':>9s} {'GFLOPs':>8s} {'part ms':>8s} "
                  f"{'part GF':>8s} {'ms':>7s}" + (f" {'hard':>12s}" if self.hard_subset is not None else "")
                  + (f" {'target':>8s} {'achieved':>8s}" if self.match is not None else ""))
        lines = [header, "-" * len(header)]
        for r in rows:
            ci = f"{100 * r['accuracy_ci_low']:.1f}-{100 * r['accuracy_ci_high']:.1f}"
            p = "-" if r["mcnemar_p"] is None else f"{r['mcnemar_p']:.3f}"
            line = (f"{r['case']:<{width}s} {r['split']:<24s} {r['n']:>5d} {100 * r['accuracy']:>6.1f} {ci:>11s} "
                    f"{p:>6s} {100 * r['agreement']:>6.1f} {r['kl']:>8.4f} {r['budget_counts']:>17s} "
                    f"{r['visual_tokens_input']:>7.1f} {r['visual_tokens_per_layer']:>9.1f} "
                    f"{r['prefill_gflops']:>8.4f} {r['partitioner_ms']:>8.2f} {r['partitioner_gflops']:>8.4f} "
                    f"{r['prefill_ms']:>7.2f}")
            if self.hard_subset is not None:
                hard = "-" if r["hard_accuracy"] is None else f"{100 * r['hard_accuracy']:.1f}"
                line += f" {hard + ' of ' + str(r['hard_n']) if r['hard_n'] is not None else '-':>12s}"
            if self.match is not None:
                target = "-" if r["match_target"] is None else f"{r['match_target']:.4g}"
                line += f" {target:>8s} {r['match_achieved']:>8.4g}"
            lines.append(line)
        note = f"p: McNemar's test against {self.paired_against!r} on the same items"
        if self.match is not None:
            note += f"; budgets solved so every row meets its target ({self.match})"
        if self.hard_subset is not None:
            note += f"; hard: accuracy on the items {self.hard_subset!r} answers wrongly"
        return "\n".join([*lines, note])


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
                "budget_counts": mine[0].budget_counts,
                "accuracy": statistics.fmean(p.correct for p in mine),
                "agreement": statistics.fmean(p.agrees_with_full for p in mine),
                "kl": statistics.fmean(p.kl_to_full for p in mine),
                "visual_tokens_input": statistics.fmean(p.visual_tokens_input for p in mine),
                "visual_tokens_per_layer": statistics.fmean(p.visual_tokens_per_layer for p in mine),
                "prefill_gflops": statistics.fmean(p.prefill_gflops for p in mine),
                "prefill_ms": statistics.fmean(p.prefill_ms for p in mine),
                "partitioner_ms": statistics.fmean(p.partitioner_ms for p in mine),
                "partitioner_gflops": statistics.fmean(p.partitioner_gflops for p in mine),
                "match_target": _mean_or_none([p.match_target for p in mine]),
                "budget_solved": _mean_or_none([p.budget_solved for p in mine]),
            })
    return rows


def _mean_or_none(values: Sequence[float | int | None]) -> float | None:
    """The mean of the values present (``None`` when none is: a row that was not matched)."""
    present = [float(v) for v in values if v is not None]
    return statistics.fmean(present) if present else None


def load_items(spec: str, limit: int | None = None) -> list[EvalItem]:
    """Items from ``synthetic:SEED:IMAGES``, a JSONL file (+ image folder), or ``hf:PATH[:SPLIT]``
    (a Hugging Face ``datasets`` dataset saved on disk, with image/question/answer columns); the first
    ``limit`` of them (at least 1; ``None``: all)."""
    if limit is not None and limit < 1:
        raise InputError(f"limit must be at least 1 sample, not {limit}")
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
    return items[:limit] if limit is not None else items


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


def parse_partitioner(spec: str) -> tuple[str, dict[str, str]]:
    """``"NAME[:PARAM=VALUE,...]"`` -> ``(name, params)`` (:func:`~vtsched.core.tools.bench.parse_component`)."""
    return parse_component(spec, "partitioner")


def _with_dataset(registry: Any, name: str, params: dict[str, str], data: str | None) -> dict[str, str]:
    """``params``, plus the dataset's spec in the partitioner's ``dataset_param`` if it has one left unset."""
    param = getattr(registry.partitioner(name), "dataset_param", None)
    if data and param and param not in params:
        return {**params, param: data}
    return params


def cross_partitioners(planner: Any, cases: Sequence[Case], specs: Sequence[str], *,
                       data: str | None = None) -> list[Case]:
    """Every case whose policy needs a partition once per partitioner spec; the others once.

    Each partitioner is built and each request checked by the planner here, before weights load,
    so an unknown name, a bad parameter or a missing mask or checkpoint file is one line at once.
    """
    out: list[Case] = []
    for case in cases:
        policy = planner.policy(case.policy, dict(case.params))
        if not policy.needs_partition or case.policy.startswith("schedule:"):
            out.append(case)
            continue
        for spec in specs:
            name, params = parse_partitioner(spec)
            planner.check(policy, case.budget, name, _with_dataset(planner.registry, name, params, data))
            out.append(Case(case.policy, case.budget, case.params, spec))
    return out


def _prune_with(partitioner: str, budget: Budget | None) -> Case:
    return Case("prune", budget, (), partitioner)


def hard_references(hard: str, cases: Sequence[Case]) -> dict[str, str | None]:
    """Per case label, the case whose wrongly answered items make that row's hard subset.

    ``hard`` is either a case's label (``prune@7 [random]``: one reference for every row) or a
    partitioner's name (``downsample``, what ``--hard-subset`` alone means): then each row's reference
    is ``prune`` with that partitioner at the row's own budget (its target under ``--match``), the
    cheap reference at the same cost that VTC-Bench separates methods by; a row without a budget
    (``full``, ``vtw``) has no reference. :func:`with_hard_reference` adds the reference cases.
    Raises :class:`InputError` (one line) when the reference is not among ``cases``.
    """
    labels = list(dict.fromkeys(["full", *(case_label(c) for c in cases)]))
    if hard in labels:
        return dict.fromkeys(labels, hard)
    budgets = list(dict.fromkeys(c.budget for c in cases if c.budget is not None))
    missing = [case_label(_prune_with(hard, b)) for b in budgets if case_label(_prune_with(hard, b)) not in labels]
    if not budgets or missing:
        raise InputError(f"hard_subset: no case {hard!r} in this eval; cases: {', '.join(labels)} (name a case, "
                         f"or a partitioner whose prune case runs at every budget)")
    return {case_label(c): (case_label(_prune_with(hard, c.budget)) if c.budget is not None else None)
            for c in [Case("full"), *cases]}


def with_hard_reference(registry: Any, cases: Sequence[Case], hard: str | None) -> list[Case]:
    """``cases``, plus ``prune`` with partitioner ``hard`` at each budget when ``hard`` names a
    partitioner (not a case) and that case is not already there: the hard subset's references."""
    out = list(cases)
    if hard is None or hard in {case_label(c) for c in cases} or hard not in registry.names("partitioner"):
        return out
    have = {case_label(c) for c in cases}
    for budget in dict.fromkeys(c.budget for c in cases if c.budget is not None):
        reference = _prune_with(hard, budget)
        if case_label(reference) not in have:
            out.append(reference)
            have.add(case_label(reference))
    return out


class _Timed:
    """A partitioner seen through a stopwatch: what eval hands the planner to charge partition time.

    Duck-types the partitioner surface the planner and scheduler use (``partition``, ``name``,
    ``describe``, ``params``, ``group_names``); ``spent_flops`` of the wrapped partitioner, if any,
    is read around each call.
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name = inner.name
        self.seconds = 0.0
        self.flops = 0.0

    def partition(self, batch: Any, budget: Budget) -> Any:
        spent = getattr(self.inner, "spent_flops", None)
        before = float(spent()) if callable(spent) else 0.0
        start = time.perf_counter()
        try:
            return self.inner.partition(batch, budget)
        finally:
            self.seconds += time.perf_counter() - start
            if callable(spent):
                self.flops += float(spent()) - before

    def take(self) -> tuple[float, float]:
        """Seconds and FLOPs spent since the last ``take``."""
        spent = (self.seconds, self.flops)
        self.seconds = self.flops = 0.0
        return spent

    def describe(self) -> str:
        return str(self.inner.describe())

    def params(self) -> dict[str, Any]:
        return dict(self.inner.params())

    def group_names(self) -> tuple[str, ...]:
        return tuple(self.inner.group_names())

    def selection_flops(self, num_visual: int, keep: int, geometry: Any) -> float:
        return float(self.inner.selection_flops(num_visual, keep, geometry)) if hasattr(
            self.inner, "selection_flops") else 0.0


def _partitioner_for(scheduler: Scheduler, case: Case, policy: Any, data: str | None) -> _Timed | None:
    """The case's partitioner (the named one, else the policy's default), timed; None without a partition."""
    if not policy.needs_partition or getattr(policy, "groups", None) is not None:
        return None
    name: str | None
    if case.partitioner:
        name, params = parse_partitioner(case.partitioner)
        params = _with_dataset(scheduler.planner.registry, name, params, data)
    else:
        name, params = scheduler.planner.default_partitioner(policy), {}  # the planner's own default rule
        if name is None:
            return None
    return _Timed(scheduler.make_partitioner(name, params))


def evaluate(
    scheduler: Scheduler,
    items: Sequence[EvalItem],
    cases: Sequence[Case],
    *,
    batch_size: int = 8,
    max_new_tokens: int = 4,
    progress: bool = True,
    data: str | None = None,
    paired_against: str = "full",
    hard_subset: str | None = None,
    match: str | None = None,
) -> EvalReport:
    """Answer ``items`` under every case (``full`` first, as the reference).

    ``data``: the dataset's spec, handed to partitioners that read the dataset themselves (the
    ``mask`` partitioner's masks) when their parameter is unset. ``paired_against`` and
    ``hard_subset`` name cases by label (:func:`case_label`; :class:`EvalReport`). ``match``
    (``--match``, :mod:`vtsched.core.tools.matching`): each case's budget is a target, and its
    policy's own budget is solved for it per sample; samples that solve differently run apart.
    """
    from tqdm.auto import tqdm
    from vtsched.core.tools.matching import Matcher

    cases = [Case("full")] + [c for c in cases if c.policy != "full"]
    labels = [case_label(c) for c in cases]
    built = []
    for c in cases:
        policy = scheduler.make_policy(c.policy, dict(c.params))
        built.append((c, policy, _partitioner_for(scheduler, c, policy, data)))
    config = GenerationConfig(max_new_tokens=max_new_tokens)
    if paired_against not in labels:
        raise InputError(f"paired_against: no case {paired_against!r} in this eval; cases: {', '.join(labels)}")
    report = EvalReport(labels, paired_against=paired_against, hard_subset=hard_subset, match=match,
                        hard_references=hard_references(hard_subset, cases) if hard_subset is not None else {})
    matcher = Matcher(scheduler.planner, match) if match is not None else None
    bar = tqdm(total=len(items) * len(cases), desc="eval", disable=not progress)
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        batch = scheduler.prepare([it.load() for it in chunk], [it.question for it in chunk])
        reference: _Answered | None = None
        for (case, policy, partitioner), label in zip(built, labels):
            answered = _answer_case(scheduler, batch, case, policy, partitioner, config, matcher)
            if reference is None:  # the first case is full
                reference = answered
            kl = next_token_kl(reference.logits, answered.logits)
            counts = budget_counts_of(policy, scheduler.registry)
            for i, item in enumerate(chunk):
                text, costs = answered.texts[i], answered.costs[i]
                report.predictions.append(Prediction(
                    label, item.id, item.tag, item.type, item.answer, text,
                    normalise(text) == normalise(item.answer),
                    normalise(text) == normalise(reference.texts[i]),
                    float(kl[i]), costs["visual_tokens_per_layer"], costs["prefill_gflops"],
                    answered.partitioner_ms[i], answered.partitioner_gflops[i], counts, costs["visual_tokens_input"],
                    answered.prefill_ms[i], answered.targets[i], answered.solved[i],
                ))
            bar.update(len(chunk))
    bar.close()
    return report


@dataclass
class _Answered:
    """One case's answers to a batch, per sample in batch order (however the samples were planned)."""

    texts: list[str]
    logits: Any  # (batch, vocab) next-token logits
    costs: list[dict[str, float]]  # the cost columns (vtsched.core.cost.RunCosts.row)
    prefill_ms: list[float]
    partitioner_ms: list[float]
    partitioner_gflops: list[float]
    targets: list[float | None]
    solved: list[int | None]


def _answer_case(scheduler: Scheduler, batch: Any, case: Case, policy: Any, partitioner: Any,
                 config: GenerationConfig, matcher: Any) -> _Answered:
    """Plan and answer ``batch`` under one case: as one batch, or, when ``matcher`` solves different
    budgets for its samples, one sub-batch per solved budget (the planner takes one budget a batch)."""
    import torch
    from vtsched.core.tools.matching import split_by_budget

    size = len(batch)
    budget = case.budget
    targets: list[float | None] = [None] * size
    solved: list[int | None] = [None] * size
    if matcher is not None and budget is not None:
        solved_budgets, solved_targets = matcher.solve_batch(policy, partitioner, budget, batch, case_label(case))
        solved, targets = list(solved_budgets), list(solved_targets)
    out = _Answered([""] * size, None, [{}] * size, [0.0] * size, [0.0] * size, [0.0] * size, targets, solved)
    logits: list[Any] = [None] * size
    timed = TimedEngine(scheduler.engine, scheduler.adapter.device.type == "cuda")
    for index, count in split_by_budget(solved):
        sub = batch if len(index) == size else batch.select(index)
        plan = scheduler.plan(sub, policy, partitioner, Budget(count=count) if count is not None else budget)
        seconds, part_flops = partitioner.take() if partitioner is not None else (0.0, 0.0)
        timed.seconds = 0.0
        answered = scheduler.answer(sub, plan, config, engine=timed)
        for k, i in enumerate(index):
            assert answered.costs is not None  # Scheduler.answer computes them
            out.texts[i], out.costs[i], logits[i] = (answered.texts[k], answered.costs.row(k),
                                                     answered.generated.prefill.logits[k])
            out.partitioner_ms[i] = 1e3 * seconds / len(index)
            out.partitioner_gflops[i] = part_flops / len(index) / 1e9
            out.prefill_ms[i] = 1e3 * (seconds + timed.seconds) / len(index)
    out.logits = torch.stack(logits)
    return out
