"""The tested set: constraints.txt pins every distribution installed here, at the version installed.

The README's commands install with ``-c constraints.txt``; when a distribution is installed that the
lock does not name, or at another version, the lock is stale (or this environment drifted from it)
and the next fresh install may resolve something nobody tested. ``python3 .ci/lock`` regenerates it.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import re
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "constraints.txt"
# the installer itself, which the venv brings (setuptools is locked: packages depend on it)
TOOLING = {"pip"}


def _lock_script():
    loader = importlib.machinery.SourceFileLoader("vtsched_ci_lock", str(ROOT / ".ci" / "lock"))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


lock = _lock_script()


def locked_versions(text: str) -> dict[str, str]:
    pins = {}
    for line in text.splitlines():
        if re.match(r"^[A-Za-z0-9_.-]+==", line):
            name, version = line.split(";")[0].strip().split("==")
            pins[lock.canonical(name)] = version
    return pins


def project_distributions() -> set[str]:
    """vtsched and the plugin distributions in plugins/ (installed editable, never locked)."""
    names = {"vtsched"}
    for pyproject in (ROOT / "plugins").glob("*/pyproject.toml"):
        names.add(lock.canonical(re.search(r'^name = "([^"]+)"', pyproject.read_text(), re.M).group(1)))
    return names


def test_every_installed_distribution_is_locked_at_its_installed_version():
    pins = locked_versions(LOCK.read_text())
    skip = TOOLING | project_distributions()
    problems = []
    for dist in metadata.distributions():
        name = lock.canonical(dist.metadata["Name"])
        if name in skip:
            continue
        if name not in pins:
            problems.append(f"{name} {dist.version} is installed but not in constraints.txt")
        elif pins[name] != dist.version:
            problems.append(f"{name} is installed at {dist.version}, constraints.txt pins {pins[name]}")
    assert not problems, ("the environment differs from the tested set; regenerate the lock with "
                          "`python3 .ci/lock` (docs/installation.md), or reinstall with -c constraints.txt:\n"
                          + "\n".join(sorted(set(problems))))


def test_the_lock_keeps_its_deliberate_pins_as_inputs():
    text = LOCK.read_text()
    assert text.count(lock.MARK) == 1, "constraints.txt lost the marker line that .ci/lock regenerates below"
    inputs, generated = text.split(lock.MARK)
    assert {"torch", "torchvision", "lmms-eval"} <= lock.pinned_names(inputs)
    assert not lock.pinned_names(inputs) & lock.pinned_names(generated), "a deliberate pin is repeated below"
    for line in inputs.splitlines():  # every deliberate pin says why, on the comment line above it
        if "==" in line:
            above = inputs.splitlines()[inputs.splitlines().index(line) - 1]
            assert above.startswith("# "), f"the deliberate pin {line} has no comment saying why"
    assert len(lock.pinned_names(generated)) > 50


def test_every_readme_install_reads_the_lock():
    readme = (ROOT / "README.md").read_text()
    installs = [line for line in readme.splitlines() if "pip install" in line]
    assert len(installs) >= 2 and all("-c constraints.txt" in line for line in installs), installs
