"""Built-in partitioners (registered through the same hooks as any plugin)."""

from __future__ import annotations

from vtsched.core.hookspecs import hookimpl

from .attention import AttentionReceived
from .cdpruner import CDPruner
from .cls import ClsAttention
from .divprune import DivPrune
from .downsample import Downsample
from .mask import MaskPartitioner
from .random import RandomTokens
from .temporal import TemporalRedundancy
from .uniform import UniformGrid
from .vidcom2 import VidCom2
from .visionzip import VisionZipPartitioner
from .vispruner import VisPruner

__all__ = ["AttentionReceived", "CDPruner", "ClsAttention", "DivPrune", "Downsample", "MaskPartitioner", "RandomTokens",
           "UniformGrid", "VisPruner", "VisionZipPartitioner", "TemporalRedundancy", "VidCom2"]


@hookimpl
def vtsched_register_partitioners(register):
    for partitioner in (ClsAttention, AttentionReceived, CDPruner, DivPrune, Downsample, MaskPartitioner, RandomTokens,
                        UniformGrid, VisionZipPartitioner, VisPruner, TemporalRedundancy, VidCom2):
        register(partitioner)
