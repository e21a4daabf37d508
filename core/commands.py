"""Commands: what a plugin adds to the ``vtsched`` command line.

A plugin that brings a whole workflow (segmentation with LISA, an evaluation harness) registers a
:class:`Command` through the ``vtsched_register_commands`` hook, and ``vtsched NAME`` runs it
beside the built-in commands, with the same one-line errors (raise
:class:`~vtsched.core.errors.VtschedError`) and the same ``--no-plugins`` / ``--traceback`` flags.
"""

from __future__ import annotations

import argparse
from abc import ABC, abstractmethod
from typing import ClassVar

__all__ = ["Command"]


class Command(ABC):
    """A ``vtsched`` subcommand provided by a plugin.

    Class attributes: ``name`` (the subcommand), ``help`` (one line for ``vtsched --help``).
    """

    name: ClassVar[str]
    help: ClassVar[str] = ""

    @classmethod
    @abstractmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Add the command's arguments (``--no-plugins`` and ``--traceback`` are added for you)."""

    @classmethod
    @abstractmethod
    def run(cls, args: argparse.Namespace) -> int:
        """Run it; return the exit status. Raise ``VtschedError`` for a user error (one line, exit 2)."""
