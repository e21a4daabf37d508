"""``vtsched show`` sheets for a sweep's report: the items its cells disagree on most
(:func:`chosen_items`), each drawn under every policy of the sweep (:func:`sweep_sheets`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from vtsched.core.tools.results_report.reading import Results

__all__ = ["chosen_items", "sweep_sheets"]


def chosen_items(cells: Sequence[dict[str, Any]], count: int) -> list[str]:
    """The ``count`` item ids the cells disagree on most (most distinct answers; then fewest correct), in order."""
    answers: dict[str, list[tuple[str, bool]]] = {}
    for cell in cells:
        for item, prediction, correct in cell.get("predictions", []):
            answers.setdefault(str(item), []).append((str(prediction).strip().lower(), bool(correct)))
    ranked = sorted(answers, key=lambda i: (-len({p for p, _ in answers[i]}), sum(c for _, c in answers[i])))
    return ranked[:count]


def sweep_sheets(results: Results, count: int, device: str = "cpu", registry: Any = None,
                 load: Callable[[str], Any] | None = None) -> list[tuple[str, bytes]]:
    """``(caption, sheet PNG)`` for the chosen items of a sweep, each under every policy of its cells."""
    from vtsched.core.tools.evaluate import load_items
    from vtsched.core.tools.show import show

    if count <= 0 or not results.cells:
        return []
    sheets = []
    schedulers: dict[str, Any] = {}
    items_by_data: dict[str, dict[str, Any]] = {}
    for item_id in chosen_items(results.cells, count):
        for cell in results.cells:
            spec = cell["spec"]
            if item_id not in {str(p[0]) for p in cell.get("predictions", [])} or spec["policy"] == "full":
                continue
            if spec["dataset"] not in items_by_data:
                items_by_data[spec["dataset"]] = {i.id: i for i in load_items(spec["dataset"])}
            item = items_by_data[spec["dataset"]].get(item_id)
            if item is None:
                continue
            model = str(spec["model"])
            if model not in schedulers:
                schedulers[model] = (load or _loader(device, registry))(model)
            drawn = show(schedulers[model], item.load(), item.question, spec["policy"], budget=spec.get("budget"),
                         policy_params=spec.get("params") or {}, partitioner=spec.get("partitioner"),
                         partitioner_params=spec.get("partitioner_params") or {})
            caption = (f"{item_id} ({cell.get('label')}): {item.question} — expected {item.answer!r}, "
                       f"answered {drawn.data['answer'].strip()!r}")
            sheets.append((caption, drawn.sheet_png()))
    return sheets


def _loader(device: str, registry: Any) -> Callable[[str], Any]:
    def load(model: str) -> Any:
        from vtsched.core.app import load_scheduler

        return load_scheduler(None if model == "demo" else model, registry, device)

    return load
