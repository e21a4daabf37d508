"""Errors a user can act on.

Everything raised as :class:`VtschedError` is printed by the CLI as one line and exits non-zero;
anything else is a bug and keeps its traceback (shown with ``--traceback``).
"""

from __future__ import annotations

__all__ = ["VtschedError", "ScheduleError", "BudgetError", "PluginError", "InputError"]


class VtschedError(Exception):
    """Base class of every error whose message tells the user what to change."""


class ScheduleError(VtschedError):
    """A schedule that cannot be executed (unknown stream or group, layer out of range, ...)."""


class BudgetError(VtschedError):
    """A token budget outside what the image offers."""


class PluginError(VtschedError):
    """A plugin that failed to load, or two plugins claiming the same name."""


class InputError(VtschedError):
    """Bad user input: missing image, unreadable file, wrong model type."""
