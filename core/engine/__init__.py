"""The engine: the only code that does sequence surgery (rows, positions, masks, KV cache)."""

from __future__ import annotations

from vtsched.core.engine.engine import DecodeState, Engine, Prefill

__all__ = ["Engine", "Prefill", "DecodeState"]
