"""Statistics a reviewer asks of an accuracy table: intervals, paired tests, a hard subset.

- :func:`wilson`: the Wilson score interval of ``k`` correct out of ``n`` (95% by default); unlike
  the normal approximation it stays inside [0, 1] and is sensible at 0 or ``n`` correct.
- :func:`mcnemar`: McNemar's test of two cases answered on the same items, from the discordant
  pairs only (``b``: the reference right and the case wrong; ``c``: the other way round). Below
  :data:`EXACT_BELOW` discordant pairs the two-sided exact binomial test (``p = min(1, 2 P[X <=
  min(b, c)])``, ``X ~ Binomial(b + c, 1/2)``); from there the chi-square test with continuity
  correction, ``(|b - c| - 1)^2 / (b + c)`` on one degree of freedom.
- :func:`paired_rows`: those numbers added to ``vtsched eval``'s rows, each row paired with the
  reference case's row of the same split, item by item, and the accuracy on the items the
  ``hard`` case answers wrongly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["wilson", "mcnemar", "paired_rows", "EXACT_BELOW", "Z95"]

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile
EXACT_BELOW = 25  # discordant pairs below which McNemar's test is the exact binomial one


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``k / n`` (``(0, 1)`` when ``n`` is 0)."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z / denominator * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    low = 0.0 if k == 0 else max(0.0, centre - half)  # exact at the edges, where rounding would leave 1e-16
    high = 1.0 if k == n else min(1.0, centre + half)
    return low, high


def mcnemar(b: int, c: int) -> tuple[float, str]:
    """Two-sided p-value of McNemar's test for ``b`` and ``c`` discordant pairs, and the method:
    ``exact`` (binomial) below :data:`EXACT_BELOW` pairs, else ``chi2`` (continuity corrected)."""
    n = b + c
    if n == 0:
        return 1.0, "exact"
    if n < EXACT_BELOW:
        tail = sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2**n
        return min(1.0, 2 * tail), "exact"
    statistic = (abs(b - c) - 1) ** 2 / n
    return math.erfc(math.sqrt(statistic / 2)), "chi2"  # the chi-square(1) survival function


def paired_rows(rows: Sequence[dict[str, Any]], outcomes: dict[tuple[str, str], list[tuple[str, bool]]], *,
                paired_against: str = "full", hard: str | Mapping[str, str | None] | None = None,
                ) -> list[dict[str, Any]]:
    """``rows`` (one per case and split) with the interval, the paired test and the hard subset added.

    ``hard``: the case whose wrongly answered items make the hard subset, one for every row, or per
    row's case (a mapping; a case mapped to None gets no hard subset).

    ``outcomes[(case, split)]``: ``(item id, correct)`` in item order, the same order for every case
    (every case answers the same items), so the k-th outcome of two cases is the same item.
    """
    out = []
    for row in rows:
        mine = outcomes[(row["case"], row["split"])]
        k, n = sum(correct for _, correct in mine), len(mine)
        low, high = wilson(k, n)
        extra: dict[str, Any] = {"accuracy_ci_low": low, "accuracy_ci_high": high}
        extra |= {"paired_against": paired_against, "ref_right_case_wrong": None, "ref_wrong_case_right": None,
                  "mcnemar_p": None, "mcnemar_method": None}
        if (paired_against, row["split"]) in outcomes:  # else the reference did not run: nothing to pair
            reference = _same_items(outcomes[(paired_against, row["split"])], mine, paired_against)
            b = sum(r and not m for (_, r), (_, m) in zip(reference, mine))
            c = sum(m and not r for (_, r), (_, m) in zip(reference, mine))
            p, method = mcnemar(b, c)
            extra |= {"ref_right_case_wrong": b, "ref_wrong_case_right": c, "mcnemar_p": p, "mcnemar_method": method}
        reference_case = hard.get(row["case"]) if isinstance(hard, Mapping) else hard
        if reference_case is not None:
            wrong = [m for (_, r), (_, m) in zip(_same_items(outcomes.get((reference_case, row["split"]), []), mine,
                                                             reference_case), mine) if not r]
            extra |= {"hard_subset": reference_case, "hard_n": len(wrong),
                      "hard_accuracy": sum(wrong) / len(wrong) if wrong else None}
        elif hard is not None:
            extra |= {"hard_subset": None, "hard_n": None, "hard_accuracy": None}
        out.append({**row, **extra})
    return out


def _same_items(reference: list[tuple[str, bool]], mine: list[tuple[str, bool]], name: str) -> list[tuple[str, bool]]:
    if [i for i, _ in reference] != [i for i, _ in mine]:
        raise ValueError(f"case {name!r} did not answer the same items in the same order")
    return reference
