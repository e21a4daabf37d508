"""What every conformance kit shares: example counts, the registry, tiny models, and checks that
survive ``python -O``."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vtsched.core.testing import models
from vtsched.core.testing import strategies as strat

__all__ = ["Kit", "expect", "close", "component_name"]


def expect(condition: object, message: str) -> None:
    """``assert`` that survives ``python -O``: a conformance check must be able to fail."""
    if not condition:
        raise AssertionError(message)


def close(actual: torch.Tensor, expected: torch.Tensor, atol: float, rtol: float, what: str) -> None:
    torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol, msg=lambda m: f"{what}\n{m}")


def component_name(obj: Any) -> str:
    return getattr(obj, "name", None) or getattr(obj, "__name__", None) or type(obj).__name__


class Kit:
    """What every kit shares: how many examples, which registry, which tiny models."""

    examples: ClassVar[int] = 25
    model_examples: ClassVar[int] = 8
    settings_overrides: ClassVar[Mapping[str, Any]] = {}
    suppressed: ClassVar[tuple[HealthCheck, ...]] = ()  # health checks a kit's own drawing trips by design
    min_layers: ClassVar[int] = 1
    max_layers: ClassVar[int] = 3
    # Tiny models gain nothing from intra-op threads, and on a shared CPU more threads make every
    # small op wait for the others (10x slower under load); the previous count is restored after.
    torch_threads: ClassVar[int | None] = 1

    def registry(self) -> Any:
        """Fusion rules, partitioners and adapters by name (default: built-ins plus installed plugins)."""
        return models.default_registry()

    def model_shapes(self) -> st.SearchStrategy[Any]:
        """Hashable shapes of the tiny models ``build_tiny_model`` builds (default: tiny LLaVA)."""
        return strat.tiny_llava_shapes(min_layers=self.min_layers, max_layers=self.max_layers)

    def build_tiny_model(self, shape: Any, *, dtype: torch.dtype = torch.float64,
                         attn_implementation: str = "sdpa") -> tuple[torch.nn.Module, Any]:
        """``(model, processor)`` of ``shape`` with random weights, cached (default: tiny LLaVA)."""
        return strat.tiny_llava(shape, dtype, attn_implementation)

    def _run(self, test: Callable[..., None], *strategies: st.SearchStrategy[Any], model: bool = False) -> None:
        """Run ``test`` on drawn inputs under the active profile, capped at the kit's example count."""
        active = settings()
        limit = self.model_examples if model else self.examples
        options: dict[str, Any] = {
            "max_examples": max(1, min(limit, active.max_examples)),
            "deadline": None,
            "suppress_health_check": tuple({*active.suppress_health_check, HealthCheck.too_slow,
                                            HealthCheck.data_too_large, *self.suppressed}),
        }
        options.update(self.settings_overrides)
        threads = torch.get_num_threads()
        if self.torch_threads:
            torch.set_num_threads(self.torch_threads)
        try:
            given(*strategies)(settings(active, **options)(test))()
        finally:
            torch.set_num_threads(threads)
