"""The ``search-k`` tool's drop-layer search, under its documented path.

The search moved to :mod:`vtsched.core.calibration` because the scheduler calibrates with it and
must not import a tool; this module keeps ``vtsched.core.tools.search`` (documented in the API
pages before the move, imported by plugins' and users' scripts) working.
"""

from __future__ import annotations

from vtsched.core.calibration import (
    Calibrated, SearchResult, calibrate, load_calibration, next_token_kl, search_drop_layer,
)

__all__ = ["SearchResult", "Calibrated", "calibrate", "search_drop_layer", "next_token_kl", "load_calibration"]
