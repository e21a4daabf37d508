"""The application layer: what every application of vtsched does with a user's request.

The CLI, the tools (bench, eval, sweep, report) and the plugins (lmms-eval, LISA) all use these, and
a Python script can too:

- :mod:`~vtsched.core.app.request`: the :class:`Request` built once from the user's words (the
  budget parsed there, :func:`parse_budget`, :func:`parse_budgets`), checked against a model before weights load
  (:func:`check_request`: ``-p`` routing, the saved schedule's budget fallback);
- :mod:`~vtsched.core.app.models`: the registry, a model's config and planner (no weights), a loaded
  scheduler (the shipped demo model by default);
- :mod:`~vtsched.core.app.runs`: running a request (:func:`run`) with the prefill timed, the cost row of a run,
  a schedule saved with what reproduces it.

It sits above the front door (scheduler, planner) and the demo data, and below every application:
nothing here imports the CLI, the tools or the testing kit.
"""

from vtsched.core.app.models import (
    config_and_source,
    load_scheduler,
    model_config,
    planner_for_config,
    planner_for_model,
    registry,
)
from vtsched.core.app.request import (
    DEFAULT_BUDGET,
    CheckedRequest,
    Request,
    budget_for,
    check_request,
    parse_budget,
    parse_budgets,
    route_params,
)
from vtsched.core.app.runs import (
    TimedEngine,
    answer_timed,
    cost_row,
    run,
    run_costs,
    run_request,
    with_run_meta,
)

__all__ = [
    "DEFAULT_BUDGET",
    "CheckedRequest",
    "Request",
    "TimedEngine",
    "answer_timed",
    "budget_for",
    "check_request",
    "config_and_source",
    "cost_row",
    "load_scheduler",
    "model_config",
    "parse_budget",
    "parse_budgets",
    "planner_for_config",
    "planner_for_model",
    "registry",
    "route_params",
    "run",
    "run_costs",
    "run_request",
    "with_run_meta",
]
