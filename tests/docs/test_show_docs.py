"""docs/looking-at-a-schedule.md runs, and the figures it shows are the ones its blocks just drew.

The page's python blocks are executed like the tutorials (:func:`tests.docs.test_docs.run_blocks`), from
the repository root, so they write the figures into ``docs/images/show/``; every image the page
shows must have been written by this run (not a stale copy) and must decode to something not
blank, and nothing under ``docs/images/show/`` but its ``.gitignore`` is tracked by git.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time

import numpy as np
import pytest

from tests.docs.test_docs import DOCS, ROOT, run_blocks

PAGE = DOCS / "looking-at-a-schedule.md"
FIGURES = DOCS / "images" / "show"


def test_page_draws_the_figures_it_shows(monkeypatch):
    from PIL import Image

    from vtsched.core.demo import demo_model_path

    if demo_model_path() is None:
        pytest.skip("the shipped demo model is not installed")
    monkeypatch.chdir(ROOT)
    started = time.time() - 1
    module = run_blocks(PAGE, monkeypatch)
    shown = re.findall(r'<img src="\.\./images/show/([^"]+)"', PAGE.read_text())
    assert {path.split("/")[0] for path in shown} == {"parvts", "prune", "fastv"}
    for path in shown:
        file = FIGURES / path
        assert file.is_file(), f"the page shows {path}, which its blocks did not write"
        assert file.stat().st_mtime >= started, f"{path} was not drawn by this run"
        with Image.open(file) as png:
            png.load()
            assert np.asarray(png.convert("L")).std() > 5, f"{path} is blank"
    # what the page says the figures show
    assert module.parvts.data["answer"].strip() == "yellow" and module.prune.data["answer"].strip() != "yellow"
    assert "looking-at-a-schedule.md" in (ROOT / "mkdocs.yml").read_text()


def test_generated_figures_are_not_committed():
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    tracked = subprocess.run(["git", "ls-files", str(FIGURES)], cwd=ROOT, capture_output=True, text=True).stdout.split()
    assert tracked == ["docs/images/show/.gitignore"], tracked
