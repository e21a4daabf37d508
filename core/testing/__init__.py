"""Testing vtsched and its plugins: hypothesis strategies, tiny models and conformance kits.

Like transformers' model-tester mixins, these are public so that a plugin author tests a new
policy, partitioner or adapter against the same contracts the built-ins meet.
"""

from __future__ import annotations

from vtsched.core.testing.strategies import *  # noqa: F401,F403
from vtsched.core.testing.strategies import __all__ as _strategies_all

__all__ = list(_strategies_all)
