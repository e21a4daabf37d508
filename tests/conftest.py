from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, settings

# Two hypothesis profiles, chosen by HYPOTHESIS_PROFILE (docs/installation.md):
# - "ci" (.ci/run exports it): derandomized, the same examples on every run, so CI never fails on a
#   draw nobody changed; no deadline (tiny models on a shared CPU vary in speed).
# - "dev" (the default, the README's command run locally): randomized, so each local run explores
#   examples CI has not tried; fewer examples per test so the local suite stays about as fast. A failure
#   prints its reproduction blob and is replayed first from .hypothesis/ on the next run.
_SLOW = [HealthCheck.too_slow, HealthCheck.data_too_large]
settings.register_profile("ci", derandomize=True, deadline=None, max_examples=50, print_blob=True,
                          suppress_health_check=_SLOW)
settings.register_profile("dev", derandomize=False, deadline=None, max_examples=30, print_blob=True,
                          suppress_health_check=_SLOW)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    if not torch.cuda.is_available():
        for item in items:
            if "cuda" in item.keywords:
                item.add_marker(skip)
