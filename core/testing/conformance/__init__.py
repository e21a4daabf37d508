"""Conformance kits: the checks every policy, partitioner, fusion rule, model adapter, event kind and
ranker must pass; one module per kind (``policy``, ``partitioner``, ``fusion_rule``, ``adapter``,
``events``), the shared base in ``kit``.

Like transformers' ``ModelTesterMixin``, each kit is a plain class of pytest tests. Subclass it
in your own test file and name the component in a class attribute; pytest collects the
subclass (its name starts with ``Test``) and runs every check on your component::

    # tests/test_my_plugin.py
    from vtsched.core.testing import FusionRuleConformance, PartitionerConformance, PolicyConformance
    from my_plugin import MyPartitioner, MyPolicy, MyRule

    class TestMyPolicy(PolicyConformance):
        policy_class = MyPolicy
        policy_params = {"drop_layer": 1}  # keep layer parameters inside the tiny models
        min_layers = 1                      # geometries and tiny models: min_layers..max_layers layers

    class TestMyPartitioner(PartitionerConformance):
        partitioner_class = MyPartitioner

    class TestMyRule(FusionRuleConformance):
        fusion_rule_class = MyRule

Every kit's first test reads the class alone (:mod:`vtsched.core.contracts`, what registration
checks); the others run the component, on drawn vocabulary values and on tiny random float64
models, against references computed without it (transformers' own forward and generate, the
same inputs one sample at a time, recomputation without a cache). A failure raises
``AssertionError`` naming the component and what broke; hypothesis prints the input.

Inputs are drawn by overridable methods (``geometries()``, ``group_sets()``, ``budgets()``,
``model_shapes()``, ``prompt_batches()`` ...). Narrow one where your component's domain is
smaller than what the kit draws (e.g. the budgets a multi-stage policy can reach); never widen
a refusal into a pass. Properties run under the active hypothesis profile with at most
``examples`` (vocabulary checks) or ``model_examples`` (checks that run a model) examples each;
``settings_overrides`` passes any other hypothesis setting; checks run with ``torch_threads``
intra-op threads (default 1, restored afterwards).
"""

from __future__ import annotations

from vtsched.core.testing.conformance.adapter import AdapterConformance
from vtsched.core.testing.conformance.events import EventConformance, RankerConformance
from vtsched.core.testing.conformance.fusion_rule import FusionRuleConformance
from vtsched.core.testing.conformance.partitioner import PartitionerConformance
from vtsched.core.testing.conformance.policy import PolicyConformance

__all__ = [
    "PolicyConformance", "PartitionerConformance", "FusionRuleConformance", "AdapterConformance", "EventConformance",
    "RankerConformance",
]
