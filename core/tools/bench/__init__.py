"""Measuring cost side by side: prefill time, time to first token, decode speed, memory, FLOPs.

Cases are interleaved within every repetition (rotating their order), after warm-up, so slow
drift of the machine hits every policy alike and ratios are fair. On CUDA, times come from
CUDA events with synchronisation; on CPU from ``time.perf_counter``. Medians and inter-quartile
ranges are reported, never a single run.

Reference cases measure the engine's own overhead: transformers' language model run directly on
the same input embeddings (the full prompt, and the prompt physically shortened to the kept
visual tokens of the smallest ``prune`` budget, at their original position ids), and
transformers' ``generate`` for decoding. They run in the same interleaved loop, and their
next-token logits (tokens, for ``generate``) are compared with the engine's, so a reference can
never silently time something else.

The package's modules: ``case`` (what a case is, parsing), ``measurement`` (timing the cases),
``reference`` (transformers' references), ``results`` (one case's timings), ``table`` (the report:
rows, printed table), ``clock`` (the clock). ``TimedEngine`` is :mod:`vtsched.core.app`'s, exported here too.
"""

from vtsched.core.app import TimedEngine
from vtsched.core.tools.bench.case import (
           Case,
           case_label,
           check_matched,
           expand_cases,
           parse_case,
           parse_component,
)
from vtsched.core.tools.bench.measurement import run_bench
from vtsched.core.tools.bench.results import CaseResult, ReferenceResult
from vtsched.core.tools.bench.table import BenchReport

__all__ = [
           "BenchReport",
           "Case",
           "CaseResult",
           "ReferenceResult",
           "TimedEngine",
           "case_label",
           "check_matched",
           "expand_cases",
           "parse_case",
           "parse_component",
           "run_bench",
]
