"""Token budgets: how many visual tokens a policy keeps, per sample.

A budget is either a count (``64``: 64 of this image's visual tokens) or a ratio (``0.111`` or
``11.1%``: that share, rounded to the nearest token). What the number counts depends on the policy,
which declares it (``Policy.budget_counts``, :data:`vtsched.core.policy.BUDGET_COUNTS`):

- ``input``: the subject group chosen before the LLM, the tokens that stay to the last layer
  (``prune``, ``parvts``, ``subject-first``, ``non-subject-first``, ``visionzip``: policies on a
  partition; ``parvts`` runs the other groups through the first K layers besides);
- ``after_drop``: the tokens kept after the drop layer K, all of them having run the first K layers
  (``fastv``, ``dart``);
- ``average_per_layer``: the visual tokens per layer averaged over all layers (``pdrop``);
- ``none``: no budget (``full``, ``vtw``).

So the same budget is a different cost under each. What actually ran is reported separately and
beside it: the visual tokens entering the LLM and their average per layer (the engine's
statistics), and the prefill FLOPs.
"""

from __future__ import annotations

import re
from decimal import Decimal
from dataclasses import dataclass, field

from vtsched.core.errors import BudgetError

__all__ = ["Budget"]


@dataclass(frozen=True, slots=True)
class Budget:
    """A visual-token budget: exactly one of ``count`` or ``ratio`` is set.

    ``spelling`` is the text it was read from (:meth:`parse`), kept so that labels show the budget as
    the user wrote it (``prune@11%``); it takes no part in equality: ``Budget.parse("11%") ==
    Budget.parse("0.11")``. :attr:`text` is that spelling, else the exact form ``str`` writes.
    """

    count: int | None = None
    ratio: float | None = None
    spelling: str | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if (self.count is None) == (self.ratio is None):
            raise BudgetError("a budget is either a token count or a ratio, not both or neither")
        if self.count is not None and self.count < 0:
            raise BudgetError(f"budget {self.count} is negative; give a token count >= 0")
        if self.ratio is not None and not 0.0 <= self.ratio <= 1.0:
            raise BudgetError(f"budget ratio {self.ratio} is outside [0, 1]")

    @classmethod
    def parse(cls, text: str | int | float | Budget) -> Budget:
        """Read ``"64"``, ``"0.25"`` or ``"25%"`` (or pass a Budget through)."""
        if isinstance(text, Budget):
            return text
        if isinstance(text, bool):
            raise BudgetError(f"budget {text!r} is not a number")
        if isinstance(text, int):
            return cls(count=text)
        if isinstance(text, float):
            return cls(ratio=text) if text <= 1.0 else cls(count=_whole(text))
        raw = str(text).strip()
        if m := re.fullmatch(r"([0-9]*\.?[0-9]+)\s*%", raw):
            return cls(ratio=float(m.group(1)) / 100.0, spelling=raw)
        if re.fullmatch(r"[0-9]+", raw):
            return cls(count=int(raw), spelling=raw)
        if re.fullmatch(r"[0-9]*\.[0-9]+", raw):
            value = float(raw)
            return cls(ratio=value, spelling=raw) if value <= 1.0 else cls(count=_whole(value), spelling=raw)
        raise BudgetError(f"budget {text!r} is not a token count (64), a ratio (0.11) or a percentage (11%)")

    @property
    def text(self) -> str:
        """The budget as the user wrote it (``11%``), else as :meth:`__str__` writes it."""
        return self.spelling if self.spelling is not None else str(self)

    def resolve(self, num_visual: int) -> int:
        """The number of tokens this budget keeps out of ``num_visual``."""
        if self.count is not None:
            if self.count > num_visual:
                raise BudgetError(
                    f"budget {self.count} exceeds the {num_visual} visual tokens of this image; "
                    f"use at most {num_visual} or a ratio"
                )
            return self.count
        assert self.ratio is not None
        return int(round(self.ratio * num_visual))

    def __str__(self) -> str:
        """Exact and parseable: ``Budget.parse(str(b)) == b`` (saved schedules and calibration rely on it)."""
        if self.count is not None:
            return str(self.count)
        assert self.ratio is not None
        # the shortest digits that read back to the same float, written positionally (1e-05 -> 0.00001)
        return format(Decimal(repr(float(self.ratio))), "f")


def _whole(value: float) -> int:
    if value != int(value):
        raise BudgetError(f"budget {value} is neither a whole token count nor a ratio <= 1")
    return int(value)
