"""The event and ranker kits under their first, documented path.

They live in :mod:`vtsched.core.testing.conformance.events` beside the other kits; this module keeps
``from vtsched.core.testing.event_conformance import EventConformance`` (the path the API pages and
tutorials named) working for plugin authors' tests.
"""

from __future__ import annotations

from vtsched.core.testing.conformance.events import EventConformance, RankerConformance

__all__ = ["EventConformance", "RankerConformance"]
