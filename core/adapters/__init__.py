"""Model adapters (built-in plugin): the LLaVA-1.5 family first."""

from __future__ import annotations

from ..hookspecs import hookimpl
from .base import DecoderParts, ModelAdapter, ModelGeometry
from .llava import LlavaAdapter

__all__ = ["ModelAdapter", "ModelGeometry", "DecoderParts", "LlavaAdapter"]


@hookimpl
def vtsched_register_adapters(register):
    register(LlavaAdapter)
