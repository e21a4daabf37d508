"""Events between layers: the engine hands each event the run, and the event changes its live streams.

What an event does is its own class's :meth:`~vtsched.core.events.Event.apply`
(:mod:`vtsched.core.events`, one module per kind); the engine only calls it, in schedule order, with
the event's place ``at`` in the schedule (the key of the readings its probes left in ``run.readings``).
"""

from __future__ import annotations

from vtsched.core.engine.run import PrefillRun

__all__ = ["apply_events"]


def apply_events(run: PrefillRun, layer: int) -> None:
    """Apply the schedule's events at ``layer`` to ``run.streams``, in order."""
    for at, event in enumerate(run.schedule.events):
        if event.layer == layer:
            event.apply(run, at)
