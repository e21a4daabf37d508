"""lmms-eval model ``vtsched``: run any vtsched policy under lmms-eval.

Registered through lmms-eval's ``lmms_eval.models`` entry points (its model registry v2), so

    lmms-eval --model vtsched --model_args pretrained=PATH,policy=parvts,budget=64,drop_layer=2 --tasks ...

answers every request through the vtsched engine. :func:`manifests` is the entry point;
:class:`vtsched_lmms_eval.model.VtschedLMM` the model; :mod:`vtsched_lmms_eval.tasks` writes an
offline lmms-eval task over vtsched's procedural VQA set (or any ``vtsched eval`` dataset).
"""

from __future__ import annotations

from typing import Any

__all__ = ["manifests", "MODEL_ID", "CLASS_PATH"]

MODEL_ID = "vtsched"
CLASS_PATH = "vtsched_lmms_eval.model.VtschedLMM"


def manifests() -> Any:
    """The ``lmms_eval.models`` entry point: one simple (non-chat) model, ``vtsched``."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_ID, simple_class_path=CLASS_PATH)
