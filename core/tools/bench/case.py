"""What a bench case is: a policy configuration at one budget, parsed from the command line's words.

``parse_case`` reads one ``--policies`` entry, ``expand_cases`` crosses them with the budgets and has the
planner check each before any weights load, ``check_matched`` refuses a ``--match`` no budget can meet.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from vtsched.core.app import budget_for, parse_budget, parse_budgets
from vtsched.core.budget import Budget
from vtsched.core.errors import InputError

__all__ = ["Case", "case_label", "check_matched", "expand_cases", "parse_case", "parse_component"]


@dataclass(frozen=True)
class Case:
    """One policy configuration: policy name, budget, parameters, partitioner.

    ``budget`` is a :class:`~vtsched.core.budget.Budget`, read from the user's words once where the case
    is made (:func:`parse_case`, :func:`expand_cases`); a case written in Python may give the words
    (``Case("prune", "7")``), read here. Labels show the budget as written (``prune@11%``).
    """

    policy: str
    budget: Budget | None = None
    params: tuple[tuple[str, Any], ...] = ()
    partitioner: str | None = None

    def __post_init__(self) -> None:
        if self.budget is not None and not isinstance(self.budget, Budget):
            object.__setattr__(self, "budget", parse_budget(self.budget))

    @property
    def label(self) -> str:
        args = ",".join(f"{k}={v}" for k, v in self.params)
        name = f"{self.policy}({args})" if args else self.policy
        return f"{name}@{self.budget.text}" if self.budget is not None else name


def parse_component(spec: str, kind: str = "policy") -> tuple[str, dict[str, str]]:
    """``"NAME[:PARAM=VALUE,...]"`` -> ``(name, params)``; only the first ``:`` splits, so a value
    may hold colons (``mask:masks=synthetic:1:40``), not commas. A pair without ``=`` is one line."""
    name, _, rest = spec.partition(":")
    params: dict[str, str] = {}
    for pair in (p for p in rest.split(",") if p.strip()):
        key, sep, value = pair.partition("=")
        if not sep:
            raise InputError(f"{kind} {spec!r}: expected NAME:PARAM=VALUE,..., got {pair!r}")
        params[key.strip()] = value.strip()
    return name.strip(), params


def parse_case(text: str, budget: str | Budget | None = None) -> Case:
    """``"parvts:drop_layer=2,fusion=fixed"`` -> Case (budget given separately); ``schedule:PATH`` as is.

    ``POLICY[:PARAMS]+PARTITIONER[:PARAMS]`` names the case's partitioner too (``prune+divprune``: DivPrune
    selecting before the LLM), so one command compares pre-LLM selection methods side by side."""
    if text.startswith("schedule:"):
        return Case(text.strip(), parse_budget(budget))
    policy, plus, partitioner = text.partition("+")
    if plus and not partitioner.strip():
        raise InputError(f"policy {text!r}: expected POLICY+PARTITIONER after '+'")
    name, params = parse_component(policy, "policy")
    return Case(name, parse_budget(budget), tuple(params.items()), partitioner.strip() or None)


def case_label(case: Case) -> str:
    """The case's label, with its partitioner when one was named: ``prune@7 [mask]``."""
    return f"{case.label} [{case.partitioner}]" if case.partitioner else case.label


def expand_cases(planner: Any, specs: Sequence[str], budgets: Sequence[str | Budget], *,
                 keep_full: bool) -> list[Case]:
    """Cases for ``specs`` x ``budgets``, each checked by the planner before any weights load.

    ``full`` comes first when ``keep_full``; a policy a budget does not change runs once; a saved
    schedule runs at the budget its file records (else the last budget).
    """
    parsed = parse_budgets(budgets)  # the budgets' words, read once
    cases = [Case("full")] if keep_full else []
    for spec in specs:
        case = parse_case(spec)
        policy = planner.policy(case.policy, dict(case.params))  # refuse bad names/params early
        if case.policy == "full":
            continue
        part_name, part_params = parse_component(case.partitioner, "partitioner") if case.partitioner else (None, {})
        if part_name is not None and not policy.needs_partition:
            raise InputError(f"policy {case.policy!r} takes no partitioner ({spec!r})")
        if case.policy.startswith("schedule:"):
            budget = budget_for(policy, None, parsed[-1])
            planner.check(policy, budget)
            cases.append(Case(case.policy, budget))
        elif not policy.uses_budget:
            planner.check(policy, None)
            cases.append(case)
        else:
            for b in parsed:
                planner.check(policy, b, part_name, part_params)
            cases += [Case(case.policy, b, case.params, case.partitioner) for b in parsed]
    return cases


def check_matched(planner: Any, cases: Sequence[Case], kind: str) -> None:
    """Refuse, before weights load, a case whose policy no budget lets meet its ``--match`` target, on an
    image of the model's nominal visual tokens and no text (text lengths are known once a prompt is
    prepared). For ``flops`` the figures in the refusal leave the text's FLOPs out, so they are below
    the results' ``prefill_gflops`` (0.066 against 0.110 for ``prune@31`` on the demo model): the
    message says so rather than quote them as the results' unit."""
    from vtsched.core.tools.matching import Matcher, MatchError, SampleText

    matcher = Matcher(planner, kind)
    nominal = SampleText(planner.geometry.num_visual, 0, 0)
    for case in cases:
        if case.budget is None:
            continue
        policy = planner.policy(case.policy, dict(case.params))
        partitioner = planner.partitioner(*parse_component(case.partitioner, "partitioner")) if case.partitioner else None
        try:
            matcher.solve(policy, partitioner, case.budget, nominal, case_label(case))
        except MatchError as refusal:
            if kind != "flops":
                raise
            raise MatchError(f"{refusal} (GFLOPs of the image's {nominal.num_visual} visual tokens without the "
                             f"prompt's text, checked before the weights load)") from None
