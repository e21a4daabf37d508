"""Segmentation evaluation: every item under ``full`` and each case, scored by gIoU and cIoU.

What the ``segmentation`` evaluator (:mod:`vtsched_lisa.evaluator`) runs for
``vtsched eval --data segmentation:SPEC``, and what a script calls to evaluate a LISA loaded its
own way (``--clip`` elsewhere, bfloat16)::

    scheduler = lisa_scheduler(path, clip=clip, device="cuda", dtype=torch.bfloat16)
    cases = segmentation_cases(scheduler, ["prune", "parvts:drop_layer=2"], ["28"])
    report = evaluate_segmentation(scheduler, load_seg_items("reason_seg/val"), cases)
    print(format_table(report["rows"]))

Cases are built and checked before any item runs. Items run teacher-forced (LISA evaluates so);
SAM's image encoder runs once per image and every case reuses its embedding.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

__all__ = ["evaluate_segmentation", "format_table", "segmentation_cases"]


def segmentation_cases(scheduler: Any, policies: Sequence[str], budgets: Sequence[str],
                       partitioners: Sequence[str] | None = None) -> list[tuple[str, Any, Any, Any]]:
    """``(label, policy, partitioner, budget)`` for ``full`` and every policy x budget (x partitioner,
    for policies that need one), built and checked before any item runs; labels as ``vtsched eval``
    writes them (``prune@7``, ``prune@7 [lisa]``)."""
    from vtsched.core.app import parse_budgets, route_params
    from vtsched.core.tools.evaluate import parse_partitioner

    planner = scheduler.planner
    specs = ["full"] + [p for p in policies if p != "full"]
    parsed = parse_budgets(budgets)  # the request's budget words, read once
    cases: list[tuple[str, Any, Any, Any]] = []
    seen = set()
    for spec in specs:
        name, params = parse_partitioner(spec)
        for given in parsed:
            for part_spec in (partitioners or [None]):
                part_name, part_params = parse_partitioner(part_spec) if part_spec else (None, {})
                policy, routed = route_params(planner, name, part_name, params, part_params)
                budget = planner.budget_seen(policy, given)
                chosen = planner.default_partitioner(policy, part_name)
                part = scheduler.make_partitioner(chosen, routed) if (chosen and policy.needs_partition) else None
                label = spec + (f"@{budget}" if budget is not None else "")
                if part_spec and part is not None:
                    label += f" [{part_spec}]"
                if label not in seen:
                    seen.add(label)
                    cases.append((label, policy, part, budget))
    return cases


def evaluate_segmentation(scheduler: Any, items: list[Any], cases: list[tuple[str, Any, Any, Any]],
                          progress: bool = False) -> dict[str, Any]:
    """Every item under every case (:func:`segmentation_cases`), teacher-forced: rows of gIoU, cIoU
    (overall and by tag), times (LLM prefill, SAM encoder, SAM decoder) and visual tokens.

    SAM's image encoder runs once per image and every case reuses it, so its time is the same cost
    for every case: each row reports the mean over all encoder runs of the evaluation (and how many
    runs that case itself triggered), never zero for the cases that found the embedding cached."""
    from tqdm.auto import tqdm

    from vtsched_lisa.metrics import giou_ciou, intersection_union
    from vtsched_lisa.segment import LisaSegmenter

    segmenter = LisaSegmenter(scheduler)
    loaded = [item.load() for item in items]
    rows, per_item, all_encodes = [], [], []
    bar = tqdm(total=len(cases) * len(items), desc="segmentation eval", disable=not progress)
    for label, policy, part, budget in cases:
        pairs, by_tag = [], defaultdict(list)
        prefill, enc, dec, kept, flops, warnings = [], [], [], [], [], 0
        for item, (image, truth, ignore) in zip(items, loaded):
            result = segmenter.segment([image], [item.question], policy, partitioner=part, budget=budget)[0]
            pair = intersection_union(result.mask, truth, ignore)
            pairs.append(pair)
            by_tag[item.tag].append(pair)
            prefill.append(result.llm_prefill_s)
            if not result.sam_encoder_cached:
                enc.append(result.sam_encoder_s)
                all_encodes.append(result.sam_encoder_s)
            dec.append(result.sam_decoder_s)
            kept.append(result.visual_per_layer)
            flops.append(result.flops)
            warnings += result.warning is not None
            per_item.append({"case": label, "id": item.id, "tag": item.tag, "intersection": pair[0],
                             "union": pair[1], "warning": result.warning})
            bar.update()
        giou, ciou = giou_ciou(pairs)
        row: dict[str, Any] = {"case": label, "n": len(pairs), "giou": giou, "ciou": ciou}
        for tag in sorted(by_tag):
            row[f"giou[{tag}]"], row[f"ciou[{tag}]"] = giou_ciou(by_tag[tag])
        row.update({
            "llm_prefill_ms": 1e3 * statistics.mean(prefill),
            "sam_encoder_computed": len(enc), "sam_decoder_ms": 1e3 * statistics.mean(dec),
            "visual_tokens_per_layer": statistics.mean(kept), "prefill_gflops": statistics.mean(flops) / 1e9,
            "no_seg_warnings": warnings,
        })
        rows.append(row)
    bar.close()
    per_image = 1e3 * statistics.mean(all_encodes) if all_encodes else 0.0
    for row in rows:
        row["sam_encoder_ms"] = per_image  # paid once per image, whatever the case: the same in every row
    return {"rows": rows, "items": per_item}


def format_table(rows: list[dict[str, Any]]) -> str:
    """The rows as an aligned text table (one column per tag's gIoU)."""
    tags = sorted({k[5:-1] for r in rows for k in r if k.startswith("giou[")})
    head = ["case", "gIoU", "cIoU", *[f"gIoU {t}" for t in tags], "vis/layer", "GFLOPs", "LLM prefill ms",
            "SAM enc ms/image (run here)", "SAM dec ms"]
    lines = [head]
    for r in rows:
        lines.append([r["case"], f"{r['giou']:.3f}", f"{r['ciou']:.3f}", *[f"{r.get(f'giou[{t}]', float('nan')):.3f}"
                                                                          for t in tags],
                      f"{r['visual_tokens_per_layer']:.1f}", f"{r['prefill_gflops']:.3g}",
                      f"{r['llm_prefill_ms']:.1f}", f"{r['sam_encoder_ms']:.1f} ({r['sam_encoder_computed']})",
                      f"{r['sam_decoder_ms']:.1f}"])
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines)
