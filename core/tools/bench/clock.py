"""Clocks: CUDA events with synchronisation on CUDA, ``time.perf_counter`` on CPU; and an engine whose
prefills are timed while it answers (``eval``, ``sweep``)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["Clock", "TimedEngine"]


class TimedEngine:
    """An engine with the seconds spent in ``prefill`` added up (``extend`` passes through): how ``eval``
    and ``sweep`` measure ``prefill_ms`` while answering (CUDA synchronised around each prefill)."""

    def __init__(self, engine: Any, cuda: bool) -> None:
        self.engine, self.cuda, self.seconds = engine, cuda, 0.0

    def prefill(self, *args: Any, **kwargs: Any) -> Any:
        if self.cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = self.engine.prefill(*args, **kwargs)
        if self.cuda:
            torch.cuda.synchronize()
        self.seconds += time.perf_counter() - start
        return out

    def extend(self, *args: Any, **kwargs: Any) -> Any:
        return self.engine.extend(*args, **kwargs)


class Clock:
    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def __call__(self, fn: Callable[[], Any]) -> tuple[Any, float]:
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            out = fn()
            end.record()
            torch.cuda.synchronize()
            return out, start.elapsed_time(end) / 1e3
        t0 = time.perf_counter()
        out = fn()
        return out, time.perf_counter() - t0
