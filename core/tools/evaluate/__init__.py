"""``vtsched eval``: what scheduling does to answers.

Every sample is answered under every case (policy, budget, partitioner); ``full`` always runs
and is the reference. Per case: accuracy (normalised exact match), agreement with ``full``'s
answer, KL divergence of the first next-token distribution to ``full``'s, visual tokens per layer
and prefill FLOPs, overall and split by tag and question type.

Budgets differ in meaning between policies (``Policy.budget_counts``: the subject group entering
the LLM, the tokens kept after a drop layer, an average per layer), so every row says what its
budget counted (``budget_counts``) beside what ran, in the columns every results row shares
(:mod:`vtsched.core.cost`): the visual tokens entering the LLM (``visual_tokens_input``), every
visual token row a layer processed in every stream averaged over all layers
(``visual_tokens_per_layer``, the field's equivalent tokens), the prefill FLOPs with the method's
own scoring (``prefill_gflops``) and the measured prefill time per sample (``prefill_ms``: the
partitioner's call and the LLM's prefill; decoding excluded). Every row carries the
accuracy's 95% Wilson interval, McNemar's test against a reference case on the same items
(``full`` unless ``paired_against`` names another) and, with ``hard_subset``, the accuracy on the
items that case answers wrongly (:mod:`vtsched.core.tools.significance`).

The partitioner's own cost is reported beside the LLM's, never folded into it: its wall time per
sample (``part ms``: every ``partition`` call of the case, measured around the call) and, for a
partitioner that counts its own compute (a ``spent_flops()`` method returning the FLOPs it has
spent so far, like the SAM partitioner), its FLOPs per sample (``part GF``). A partitioner that
caches (SAM masks per image content) is charged what it spent in this run: the first case that
meets an image pays, later cases hit the cache.

Partitioners are named per case (:func:`cross_partitioners`, ``vtsched eval --partitioners``) as
``NAME[:PARAM=VALUE,...]``. A partitioner class with a ``dataset_param`` class attribute (the
``mask`` partitioner's ``masks``) gets the dataset's spec there when the user leaves it unset, so
``--partitioners mask`` finds the dataset's own masks.

The package's modules: ``items`` (:class:`EvalItem`, loading data sets, :func:`normalise`), ``cases``
(partitioners crossed with the cases, the hard subset's references), ``run`` (:func:`evaluate`:
answering the items under every case), ``summary`` (:class:`Prediction`, :class:`EvalReport`: rows,
statistics, the table).
"""

from vtsched.core.tools.bench import case_label
from vtsched.core.tools.evaluate.cases import (
    cross_partitioners,
    dataset_params,
    hard_references,
    parse_partitioner,
    with_hard_reference,
)
from vtsched.core.tools.evaluate.items import EvalItem, load_items, normalise
from vtsched.core.tools.evaluate.run import evaluate
from vtsched.core.tools.evaluate.summary import EvalReport, Prediction, summarise

__all__ = [
    "EvalItem",
    "EvalReport",
    "Prediction",
    "case_label",
    "cross_partitioners",
    "dataset_params",
    "evaluate",
    "hard_references",
    "load_items",
    "normalise",
    "parse_partitioner",
    "summarise",
    "with_hard_reference",
]
