"""The request check every command goes through before any weights load or any work runs.

Three kinds of check live here, one place per concern:

- **argument types** (:func:`at_least`, :func:`within`): a number out of range (``--limit 0``,
  ``--scale -1``, ``--threshold -1``) is refused by the parser, in one line;
- **declared resources**: a command declares its output locations with :func:`add_output` and its
  device with :func:`add_device`; :func:`check_request`, which ``vtsched`` runs on every command
  line before the command itself, refuses an output location that cannot be written (a file in the
  way, no write permission; nothing is created until results are written, atomically) and a device
  that is not there (``--device cuda`` without a GPU);
- **the request against the model's config** (no weights): the policy, its fusion rule, the
  partitioner and the budget are the :class:`~vtsched.core.planner.Planner`'s check; here are the
  rest, which need the prompt: :func:`check_prompt_fits` (a prompt longer than the model's context)
  and the notes a run deserves (:func:`request_notes`, :func:`image_notes`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from vtsched.core.errors import InputError

__all__ = [
    "add_device",
    "add_output",
    "at_least",
    "check_adapter_options",
    "check_device",
    "check_prompt_fits",
    "check_request",
    "image_notes",
    "print_notes",
    "request_notes",
    "within",
]


# -- argument types ---------------------------------------------------------------------------
def at_least(minimum: float, kind: type = int) -> Callable[[str], Any]:
    """An argparse type: a number of ``kind`` that is at least ``minimum``."""
    noun = "a whole number" if kind is int else "a number"

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {noun}") from None
        if not value >= minimum:  # NaN fails it too
            raise argparse.ArgumentTypeError(f"{text} is below the minimum, {minimum:g}")
        return value

    parse.__name__ = f"{kind.__name__} >= {minimum:g}"
    return parse


def within(low: float, high: float, *, low_open: bool = False) -> Callable[[str], float]:
    """An argparse type: a number in ``[low, high]`` (``(low, high]`` with ``low_open``)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not (low < value if low_open else low <= value) or not value <= high:
            bracket = "(" if low_open else "["
            raise argparse.ArgumentTypeError(f"{text} is outside {bracket}{low:g}, {high:g}]")
        return value

    parse.__name__ = f"number in [{low:g}, {high:g}]"
    return parse


# -- declared resources ------------------------------------------------------------------------
def _declare(parser: argparse.ArgumentParser, key: str, entry: tuple[str, ...]) -> None:
    parser.set_defaults(**{key: [*(parser.get_default(key) or []), entry]})


def model_name(value: str) -> str:
    """``--model``'s type: a shipped demo model's name (``demo``, ``demo-phase1``) becomes its folder;
    a path or hub id passes through (:func:`vtsched.core.demo.shapes.resolve_model`)."""
    from vtsched.core.demo.shapes import resolve_model

    return str(resolve_model(value))


def add_output(parser: argparse.ArgumentParser, flag: str, kind: str, **kwargs: Any) -> None:
    """``parser.add_argument(flag, ...)`` for an output location (``kind``: ``"file"`` or ``"folder"``),
    which :func:`check_request` refuses before the command runs if it cannot be written."""
    action = parser.add_argument(flag, **kwargs)
    _declare(parser, "_vtsched_outputs", (action.dest, kind, flag))


def add_device(parser: argparse.ArgumentParser, flag: str = "--device", **kwargs: Any) -> None:
    """``parser.add_argument(flag, ...)`` for a device, which :func:`check_request` checks is there."""
    action = parser.add_argument(flag, **kwargs)
    _declare(parser, "_vtsched_devices", (action.dest, flag))


def check_request(args: argparse.Namespace) -> None:
    """What every command line gets before its command runs: devices there, output locations writable."""
    from vtsched.core.io import prepare_output

    for dest, flag in getattr(args, "_vtsched_devices", None) or ():
        value = getattr(args, dest, None)
        if value:
            setattr(args, dest, check_device(value, flag))
    for dest, kind, flag in getattr(args, "_vtsched_outputs", None) or ():
        value = getattr(args, dest, None)
        if value:
            prepare_output(value, kind, flag, create=False)


def check_device(text: str, what: str = "--device") -> str:
    """``text`` if torch can run on that device here, else one line saying what to use instead."""
    import torch

    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise InputError(f"{what} {text!r} is not a device; use cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"{what} {text}: no CUDA GPU is visible to torch here; use --device cpu")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise InputError(f"{what} {text}: only {count} CUDA device(s) are visible (cuda:0..cuda:{count - 1})")
    elif device.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise InputError(f"{what} {text}: no Apple GPU (MPS) is available here; use --device cpu")
    elif device.type != "cpu":
        raise InputError(f"{what} {text}: vtsched runs on cpu, cuda or mps, not {device.type}")
    return text


# -- the request against the model's config ------------------------------------------------------
def context_length(config: Any) -> int | None:
    """The language model's positions (``max_position_embeddings``), if the config says."""
    text = getattr(config, "text_config", None) or config
    value = getattr(text, "max_position_embeddings", None)
    return int(value) if isinstance(value, int) and value > 0 else None


def check_prompt_fits(config: Any, num_visual: int, questions: Sequence[str], what: str = "the question") -> None:
    """Refuse a prompt that cannot fit the model's context, from the config alone (no tokenizer).

    Every whitespace-separated word is at least one token, so ``words + visual tokens`` is a lower
    bound of the prompt's length; the adapter checks the exact length once the prompt is tokenized.
    """
    limit = context_length(config)
    if limit is None:
        return
    for i, question in enumerate(questions):
        words = len(question.split())
        if words + num_visual > limit:
            which = what if len(questions) == 1 else f"{what} {i + 1}"
            raise InputError(f"{which} has {words:,} words, at least {words + num_visual:,} tokens with the image's "
                             f"{num_visual} visual tokens; the model reads {limit:,} positions: shorten it")


def check_adapter_options(adapter: Any, options: dict[str, Any]) -> None:
    """Refuse ``--adapter-param`` names the model family's adapter does not take, before weights load."""
    import inspect

    if not options:
        return
    parameters = inspect.signature(adapter).parameters  # the class's: its __init__'s, self aside
    known = [n for n, p in parameters.items() if p.kind is p.KEYWORD_ONLY]
    unknown = sorted(set(options) - set(known))
    if unknown:
        takes = f"its options: {', '.join(known)}" if known else "it takes no options"
        raise InputError(f"adapter {adapter.name!r} has no option {', '.join(unknown)}; {takes}")


def request_notes(check: Any) -> list[str]:
    """Notes on a request the planner accepted but a user may not have meant."""
    notes = []
    if check.keep == 0:
        notes.append("budget 0 keeps no visual tokens in the subject group: "
                     "the answer is read without them (give a budget of at least 1 to keep some)")
    return notes


def image_notes(images: Iterable[Any], config: Any) -> list[str]:
    """A note for each image smaller than one patch of the vision tower: it is stretched to fit."""
    vision = getattr(config, "vision_config", None)
    patch = getattr(vision, "patch_size", None)
    if not isinstance(patch, int):
        return []
    notes = []
    for i, image in enumerate(images):
        width, height = getattr(image, "size", (patch, patch))
        if width < patch or height < patch:
            notes.append(f"image {i + 1} is {width}x{height} pixels, smaller than one {patch}x{patch} patch: "
                         "the processor stretches it, so there is little for the model to see")
    return notes


def print_notes(notes: Iterable[str]) -> None:
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
