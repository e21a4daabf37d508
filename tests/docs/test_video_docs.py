"""docs/video.md runs: every python block, in order, as the tutorials do."""

from __future__ import annotations

from tests.docs.test_docs import DOCS, run_blocks


def test_video_page_runs(monkeypatch):
    run_blocks(DOCS / "video.md", monkeypatch)
