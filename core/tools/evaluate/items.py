"""The items an evaluation answers: :class:`EvalItem`, data sets loaded by spec (:func:`load_items`),
and answers compared after :func:`normalise`."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vtsched.core.errors import InputError

__all__ = ["EvalItem", "load_items", "normalise"]

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
