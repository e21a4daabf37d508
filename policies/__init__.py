"""Built-in policies and fusion rules (registered through the same hooks as any plugin)."""

from __future__ import annotations

from vtsched.core.hookspecs import hookimpl

from .dart import DART, DartDuplication
from .fastv import FastV
from .framefusion import FrameFusion
from .full import Full
from .fusion_rules import AttentionFusion, FixedFusion, SizeFusion
from .non_subject_first import NonSubjectFirst
from .parvts import ParVTS
from .pdrop import PDrop
from .prune import Prune
from .search import Search
from .sparsevlm import SparseVLM, SparseVLMRaters
from .subject_first import SubjectFirst
from .schedule_file import FixedSchedule
from .visionzip import VisionZip
from .vtw import VTW

__all__ = [
    "Full", "Prune", "ParVTS", "SubjectFirst", "NonSubjectFirst", "FastV", "DART", "VTW", "PDrop", "VisionZip",
    "SparseVLM", "FixedSchedule", "Search", "FixedFusion", "SizeFusion", "AttentionFusion", "DartDuplication",
    "SparseVLMRaters", "FrameFusion",
]


@hookimpl
def vtsched_register_policies(register):
    for policy in (Full, Prune, ParVTS, SubjectFirst, NonSubjectFirst, FastV, DART, VTW, PDrop, VisionZip, SparseVLM,
                   Search, FixedSchedule, FrameFusion):
        register(policy)


@hookimpl
def vtsched_register_fusion_rules(register):
    for rule in (FixedFusion, SizeFusion, AttentionFusion):
        register(rule)


@hookimpl
def vtsched_register_rankers(register):
    register(DartDuplication)  # dart's; the engine's own rankers register from vtsched.core.events
    register(SparseVLMRaters)  # sparsevlm's
