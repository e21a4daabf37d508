"""Testing vtsched and its plugins: hypothesis strategies, tiny models and conformance kits.

Like transformers' model-tester mixins, these are public so that a plugin author tests a new
policy, partitioner, fusion rule or adapter against the same contracts the built-ins meet:
subclass :class:`PolicyConformance`, :class:`PartitionerConformance`,
:class:`FusionRuleConformance`, :class:`AdapterConformance` or :class:`EventConformance` in a
pytest file (see :mod:`vtsched.core.testing.conformance`).
"""

from __future__ import annotations

from vtsched.core.testing.strategies import *  # noqa: F403
from vtsched.core.testing.strategies import __all__ as _strategies_all
from vtsched.core.testing.models import (
    bound_scheduler, default_registry, model_greedy_tokens, model_logits, processor_inputs, shortened_logits,
)
from vtsched.core.testing.conformance import (
    AdapterConformance, FusionRuleConformance, PartitionerConformance, PolicyConformance,
)
from vtsched.core.testing.conformance import EventConformance, RankerConformance

__all__ = [
    *_strategies_all,
    "bound_scheduler", "default_registry", "model_greedy_tokens", "model_logits", "processor_inputs",
    "shortened_logits",
    "AdapterConformance", "FusionRuleConformance", "PartitionerConformance", "PolicyConformance",
    "EventConformance", "RankerConformance",
]
