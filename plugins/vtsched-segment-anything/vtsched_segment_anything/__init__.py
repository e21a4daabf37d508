"""vtsched-segment-anything: the ``sam`` partitioner, Meta's Segment Anything as a vtsched plugin.

Registered through the ``vtsched`` entry-point group (``vtsched list`` shows it as plugin
``segment-anything``). Importing this package stays light: segment-anything (and torchvision,
which it imports) load the first time a SAM partition is computed.
"""

from __future__ import annotations

from vtsched.core.hookspecs import hookimpl

from vtsched_segment_anything.checkpoint import SamVariant, load_sam, register_variant
from vtsched_segment_anything.partitioner import SamPartitioner, clear_caches

__all__ = ["SamPartitioner", "SamVariant", "load_sam", "register_variant", "clear_caches"]


@hookimpl
def vtsched_register_partitioners(register):
    register(SamPartitioner)
