"""What one case's and one reference's measurements are: the timings of every measured run, and their
median and inter-quartile range."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

from vtsched.core.tools.bench.case import Case

__all__ = ["CaseResult", "ReferenceResult", "iqr_ms", "median_ms"]


@dataclass
class CaseResult:
    case: Case
    prefill_s: list[float] = field(default_factory=list)
    decode_s: list[float] = field(default_factory=list)  # seconds for `decode_tokens` steps
    peak_bytes: list[int] = field(default_factory=list)
    kv_cache_bytes: int = 0
    costs: dict[str, float] = field(default_factory=dict)  # the cost columns (vtsched.core.cost.RunCosts.row)
    budget_counts: str = "input"  # what the case's budget counts (Policy.budget_counts)
    match: str | None = None  # what --match held equal (vtsched.core.tools.matching.MATCH_KINDS)
    match_target: float | None = None  # the target's value on the benchmark's samples (mean)
    budget_solved: int | None = None  # the policy's own budget solved for the target (None: not matched)

    @property
    def flops(self) -> float:
        """Prefill FLOPs, the method's scoring included (0 before a measured run)."""
        return 1e9 * self.costs.get("prefill_gflops", 0.0)

    @property
    def prefill_ms(self) -> float:
        return median_ms(self.prefill_s)

    @property
    def prefill_iqr_ms(self) -> float:
        return iqr_ms(self.prefill_s)

    def decode_ms_per_token(self, tokens: int) -> float | None:
        return median_ms(self.decode_s) / tokens if self.decode_s and tokens else None


def median_ms(seconds: Sequence[float]) -> float:
    """Median of timings in seconds, in ms (NaN when nothing was timed)."""
    return 1e3 * statistics.median(seconds) if seconds else float("nan")


def iqr_ms(seconds: Sequence[float]) -> float:
    """Interquartile range of timings in seconds, in ms (0 with fewer than two)."""
    if len(seconds) < 2:
        return 0.0
    q = statistics.quantiles(seconds, n=4)
    return 1e3 * (q[2] - q[0])


@dataclass
class ReferenceResult:
    """A transformers reference timed in the same loop as the cases, and the engine case it checks.

    Attributes:
        name: what ran (``"forward"``: the language model on the full prompt, ``"forward-shortened"``:
            on the kept tokens of ``case``; ``"generate"``: decoding).
        case: label of the engine case it is compared with.
        seconds: per measured repetition: the forward's time, or ``generate``'s time per decoded token.
        agreement: ``forward``: max |difference| of next-token logits to the engine's;
            ``generate``: fraction of generated tokens equal to the engine's greedy tokens.
    """

    name: str
    case: str
    seconds: list[float] = field(default_factory=list)
    agreement: float | None = None

    @property
    def decoding(self) -> bool:
        return self.name == "generate"

    @property
    def ms(self) -> float:
        return median_ms(self.seconds)

    @property
    def iqr_ms(self) -> float:
        return iqr_ms(self.seconds)
