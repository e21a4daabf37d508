"""Built-in policies and fusion rules (registered through the same hooks as any plugin)."""

from __future__ import annotations

from vtsched.core.hookspecs import hookimpl

from .fastv import FastV
from .full import Full
from .fusion_rules import AttentionFusion, FixedFusion, SizeFusion
from .non_subject_first import NonSubjectFirst
from .parvts import ParVTS
from .pdrop import PDrop
from .prune import Prune
from .search import Search
from .subject_first import SubjectFirst
from .schedule_file import FixedSchedule
from .visionzip import VisionZip
from .vtw import VTW

__all__ = [
    "Full", "Prune", "ParVTS", "SubjectFirst", "NonSubjectFirst", "FastV", "VTW", "PDrop", "VisionZip",
    "FixedSchedule", "Search", "FixedFusion", "SizeFusion", "AttentionFusion",
]


@hookimpl
def vtsched_register_policies(register):
    for policy in (Full, Prune, ParVTS, SubjectFirst, NonSubjectFirst, FastV, VTW, PDrop, VisionZip, Search, FixedSchedule):
        register(policy)


@hookimpl
def vtsched_register_fusion_rules(register):
    for rule in (FixedFusion, SizeFusion, AttentionFusion):
        register(rule)
