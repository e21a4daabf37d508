"""Model adapters (built-in plugin): LLaVA-1.5, LLaVA-NeXT, Qwen2-VL and Qwen2.5-VL."""

from __future__ import annotations

from vtsched.core.hookspecs import hookimpl
from vtsched.core.adapters.base import ModelAdapter
from vtsched.core.engine.parts import DecoderParts
from vtsched.core.geometry import ModelGeometry
from vtsched.core.adapters.llava import LlavaAdapter
from vtsched.core.adapters.llava_next import LlavaNextAdapter
from vtsched.core.adapters.qwen2_vl import Qwen2_5_VLAdapter, Qwen2VLAdapter

__all__ = [
    "ModelAdapter", "ModelGeometry", "DecoderParts", "LlavaAdapter", "LlavaNextAdapter", "Qwen2VLAdapter",
    "Qwen2_5_VLAdapter",
]


@hookimpl
def vtsched_register_adapters(register):
    for adapter in (LlavaAdapter, LlavaNextAdapter, Qwen2VLAdapter, Qwen2_5_VLAdapter):
        register(adapter)
