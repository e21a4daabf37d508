"""Offline lmms-eval tasks over a ``vtsched eval`` dataset (the procedural VQA set by default).

``write_tasks(folder, data)`` saves the samples as a Hugging Face ``datasets`` dataset on disk
(``folder/data``, split ``test``: the same files ``vtsched eval --data hf:FOLDER/data:test`` reads)
and writes two lmms-eval tasks beside it, loaded with ``load_from_disk`` (no hub access):

- ``vtsched_<name>`` (``generate_until``): the question, answered in a few tokens, scored by
  vtsched's normalised exact match (``exact_match``), the metric ``vtsched eval`` reports;
- ``vtsched_<name>_mc`` (``multiple_choice``, through ``loglikelihood``): the answer among every
  value its question type can take (colours, shapes, corners, ...), scored by ``acc``.

Run them with ``lmms-eval --model vtsched ... --tasks vtsched_<name> --include_path FOLDER``.

    python -m vtsched_lmms_eval.tasks FOLDER --data synthetic:1:12 [--name synthetic]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["write_tasks", "CHOICES", "doc_to_visual", "doc_to_text", "process_results", "doc_to_choice",
           "doc_to_target_index", "main"]


def _choices() -> dict[str, list[str]]:
    from vtsched.core.demo import synthetic as s

    return {
        "subject_colour": list(s.SUBJECT_COLOURS), "mark_colour": list(s.SUBJECT_COLOURS),
        "subject_shape": list(s.SHAPES), "subject_position": list(s.POSITIONS),
        "background_colour": list(s.BACKGROUNDS), "background_pattern": list(s.PATTERNS),
        "mark_corner": list(s.CORNERS),
    }


CHOICES = _choices()  # question type of the procedural set -> every answer it can have

_GENERATE = """\
task: "{task}"
dataset_path: {data}
dataset_kwargs:
  load_from_disk: true
test_split: test
output_type: generate_until
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.doc_to_text
doc_to_target: "answer"
generation_kwargs:
  max_new_tokens: {max_new_tokens}
  temperature: 0
  do_sample: false
  until: ["\\n"]
process_results: !function utils.process_results
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
metadata:
  - version: 1.0
"""

_CHOICE = """\
task: "{task}_mc"
dataset_path: {data}
dataset_kwargs:
  load_from_disk: true
test_split: test
output_type: multiple_choice
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.doc_to_text
doc_to_target: !function utils.doc_to_target_index
doc_to_choice: !function utils.doc_to_choice
metric_list:
  - metric: acc
metadata:
  - version: 1.0
"""

_UTILS = '''"""Task functions of the vtsched tasks (written by vtsched_lmms_eval.tasks)."""
from vtsched_lmms_eval.tasks import doc_to_choice, doc_to_target_index, doc_to_text, doc_to_visual, process_results

__all__ = ["doc_to_visual", "doc_to_text", "process_results", "doc_to_choice", "doc_to_target_index"]
'''


# -- task functions (the task folder's utils.py re-exports these) -------------------------------
def doc_to_visual(doc: dict[str, Any]) -> list[Any]:
    return [doc["image"].convert("RGB")]


def doc_to_text(doc: dict[str, Any], lmms_eval_specific_kwargs: dict[str, Any] | None = None) -> str:
    """The question exactly as ``vtsched eval`` asks it (no pre- or post-prompt)."""
    return str(doc["question"])


def process_results(doc: dict[str, Any], results: Sequence[str]) -> dict[str, float]:
    """``exact_match``: vtsched's normalised exact match (lower case, no punctuation or articles)."""
    from vtsched.core.tools.evaluate import normalise

    return {"exact_match": float(normalise(results[0]) == normalise(str(doc["answer"])))}


def doc_to_choice(doc: dict[str, Any]) -> list[str]:
    choices = list(doc.get("choices") or CHOICES.get(str(doc.get("type")), []))
    if str(doc["answer"]) not in choices:
        choices.append(str(doc["answer"]))
    return choices


def doc_to_target_index(doc: dict[str, Any]) -> int:
    return doc_to_choice(doc).index(str(doc["answer"]))


# -- writing the tasks -------------------------------------------------------------------------
def write_tasks(folder: str | Path, data: str = "synthetic:1:12", *, name: str = "synthetic", limit: int | None = None,
                max_new_tokens: int = 4) -> Path:
    """Save ``data`` (anything ``vtsched eval --data`` reads) as an on-disk dataset and write the two
    task YAMLs and their ``utils.py`` into ``folder``; return ``folder``."""
    import datasets

    from vtsched.core.tools.evaluate import load_items

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    items = load_items(data, limit)
    features = datasets.Features({
        "id": datasets.Value("string"), "image": datasets.Image(), "question": datasets.Value("string"),
        "answer": datasets.Value("string"), "tag": datasets.Value("string"), "type": datasets.Value("string"),
    })
    table = {
        "id": [it.id for it in items], "image": [it.load() for it in items], "question": [it.question for it in items],
        "answer": [it.answer for it in items], "tag": [it.tag for it in items], "type": [it.type for it in items],
    }
    data_dir = (folder / "data").resolve()
    datasets.DatasetDict({"test": datasets.Dataset.from_dict(table, features=features)}).save_to_disk(str(data_dir))
    task = f"vtsched_{name}"
    (folder / f"{task}.yaml").write_text(_GENERATE.format(task=task, data=data_dir, max_new_tokens=max_new_tokens))
    (folder / f"{task}_mc.yaml").write_text(_CHOICE.format(task=task, data=data_dir))
    (folder / "utils.py").write_text(_UTILS)
    return folder


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vtsched_lmms_eval.tasks", description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", help="where the dataset and the task YAMLs go (lmms-eval's --include_path)")
    parser.add_argument("--data", default="synthetic:1:12", help="what `vtsched eval --data` takes")
    parser.add_argument("--name", default="synthetic", help="tasks are vtsched_NAME and vtsched_NAME_mc")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--max-new-tokens", type=int, default=4)
    args = parser.parse_args(argv)
    folder = write_tasks(args.folder, args.data, name=args.name, limit=args.limit, max_new_tokens=args.max_new_tokens)
    print(f"wrote tasks vtsched_{args.name} and vtsched_{args.name}_mc in {folder} "
          f"(lmms-eval --include_path {folder}); data: {folder / 'data'} (vtsched eval --data hf:{folder / 'data'}:test)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
