"""Model adapters (built-in plugin): the LLaVA-1.5 family first."""

from __future__ import annotations

from vtsched.core.hookspecs import hookimpl
from vtsched.core.adapters.base import DecoderParts, ModelAdapter
from vtsched.core.geometry import ModelGeometry
from vtsched.core.adapters.llava import LlavaAdapter

__all__ = ["ModelAdapter", "ModelGeometry", "DecoderParts", "LlavaAdapter"]


@hookimpl
def vtsched_register_adapters(register):
    register(LlavaAdapter)
