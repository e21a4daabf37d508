"""vtsched-lisa: LISA (LLaVA + SAM + ``[SEG]``) under any scheduling policy, and the ``lisa`` partitioner.

Registered through the ``vtsched`` entry-point group (``vtsched list`` shows it as plugin ``lisa``):
the ``lisa`` adapter (the engine runs LISA's LLaMA as it runs LLaVA-1.5's), the ``lisa``
partitioner (the mask LISA predicts for the question's object is the subject group), the
``segmentation`` evaluator (segmentation datasets in ``vtsched eval``: gIoU and cIoU per policy and
budget; ``vtsched eval --data segmentation:SPEC``), and the commands ``vtsched segment`` (one
image: mask PNG, overlay, what ran) and ``vtsched train-demo-lisa`` (trains the demo LISA shipped
in ``vtsched_lisa/demo``).
"""

from __future__ import annotations

from vtsched.core.hookspecs import hookimpl

from vtsched_lisa.adapter import LisaAdapter
from vtsched_lisa.checkpoint import load_lisa
from vtsched_lisa.demo_lisa import demo_lisa_path
from vtsched_lisa.metrics import giou_ciou, intersection_union
from vtsched_lisa.partitioner import LisaPartitioner
from vtsched_lisa.segment import LisaSegmenter, Segmentation, seg_state

__all__ = ["LisaAdapter", "LisaPartitioner", "LisaSegmenter", "Segmentation", "load_lisa", "seg_state",
           "giou_ciou", "intersection_union", "demo_lisa_path"]


@hookimpl
def vtsched_register_adapters(register):
    register(LisaAdapter)


@hookimpl
def vtsched_register_partitioners(register):
    register(LisaPartitioner)


@hookimpl
def vtsched_register_commands(register):
    from vtsched_lisa.commands import SegmentCommand, TrainDemoLisaCommand

    register(SegmentCommand)
    register(TrainDemoLisaCommand)


@hookimpl
def vtsched_register_evaluators(register):
    from vtsched_lisa.evaluator import SegmentationEvaluator

    register(SegmentationEvaluator)
