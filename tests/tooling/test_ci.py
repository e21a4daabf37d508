"""CI runs the README's test command, installing every plugin distribution, under the derandomized profile."""

from __future__ import annotations

import os
import re
from pathlib import Path

from hypothesis import settings

ROOT = Path(__file__).resolve().parents[2]


def test_ci_runs_the_readme_test_command_and_it_installs_every_plugin():
    """The README's second command is what CI runs, and it installs every distribution in plugins/."""
    readme = (ROOT / "README.md").read_text()
    command = next(line for line in readme.splitlines() if '-e ".[dev]"' in line and "pytest" in line)
    assert command in (ROOT / ".ci" / "run").read_text()
    for plugin in sorted((ROOT / "plugins").iterdir()):
        if (plugin / "pyproject.toml").exists():
            assert f"-e plugins/{plugin.name} " in command, f"{plugin.name} is not installed by the test command"


def test_ci_selects_the_derandomized_profile_and_the_default_explores():
    """.ci/run exports HYPOTHESIS_PROFILE=ci before the test command; without it, conftest loads "dev"."""
    run = (ROOT / ".ci" / "run").read_text()
    export = re.search(r"^export HYPOTHESIS_PROFILE=(\w+)$", run, re.M)
    assert export and export.group(1) == "ci", ".ci/run does not select hypothesis's ci profile"
    assert export.start() < run.index("-m pytest"), "the profile is exported after the tests run"
    assert settings.get_profile("ci").derandomize is True
    assert settings.get_profile("dev").derandomize is False
    assert settings.get_profile("dev").max_examples <= settings.get_profile("ci").max_examples
    expected = os.environ.get("HYPOTHESIS_PROFILE", "dev")
    assert settings.default.derandomize is settings.get_profile(expected).derandomize
