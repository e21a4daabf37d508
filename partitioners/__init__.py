"""Built-in partitioners (registered through the same hooks as any plugin)."""

from __future__ import annotations

from vtsched.core.hookspecs import hookimpl

from .attention import AttentionReceived
from .cls import ClsAttention
from .mask import MaskPartitioner
from .random import RandomTokens
from .uniform import UniformGrid
from .visionzip import VisionZipPartitioner

__all__ = ["AttentionReceived", "ClsAttention", "MaskPartitioner", "RandomTokens", "UniformGrid", "VisionZipPartitioner"]


@hookimpl
def vtsched_register_partitioners(register):
    for partitioner in (ClsAttention, AttentionReceived, MaskPartitioner, RandomTokens, UniformGrid, VisionZipPartitioner):
        register(partitioner)
