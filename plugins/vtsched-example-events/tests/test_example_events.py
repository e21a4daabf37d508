"""plugins/vtsched-example-events: a ranker and an event core does not know, installed through the
``vtsched`` entry point like a third party's plugin, used by the plugin's own policy, held to the kits."""

from __future__ import annotations

import pytest

vtsched_example_events = pytest.importorskip(
    "vtsched_example_events", reason="install the plugin: pip install -e plugins/vtsched-example-events")

from vtsched.core.registry import build_registry, make_plugin_manager  # noqa: E402
from vtsched.core.testing import EventConformance, PolicyConformance, RankerConformance  # noqa: E402
from vtsched_example_events import Dampen, KeyNorm, KeyNormPrune  # noqa: E402

REGISTRY = build_registry(make_plugin_manager(load_entrypoints=True))


def test_registered_through_the_entry_point_with_no_core_edit():
    assert REGISTRY.plugin_of("ranker", "key_norm") == "example-events"
    assert REGISTRY.plugin_of("event", "dampen") == "example-events"
    assert REGISTRY.plugin_of("policy", "keynorm-prune") == "example-events"


class _FromEntryPoints:
    def registry(self):
        return REGISTRY


class TestKeyNormRanker(_FromEntryPoints, RankerConformance):
    ranker_class = KeyNorm


class TestDampenEvent(_FromEntryPoints, EventConformance):
    event_class = Dampen


class TestKeyNormPrunePolicy(_FromEntryPoints, PolicyConformance):
    policy_class = KeyNormPrune
    policy_params = {"drop_layer": 1, "factor": 0.5}


def test_the_policy_runs_from_the_command_line_and_saves_a_schedule_that_runs_again(tmp_path, capsys):
    from vtsched.core.cli import main

    saved = tmp_path / "s.json"
    assert main(["explain", "--shape", "demo", "--policy", "keynorm-prune", "--budget", "7",
                 "-p", "factor=0.5", "--json", str(saved)]) == 0
    text = capsys.readouterr().out
    assert "dampen non_subject in main by 0.5" in text and "by key_norm" in text
    assert '"dampen": "vtsched_example_events"' in saved.read_text()
    assert main(["run", "--image", "docs/images/demo-shapes.png", "--question", "What colour is the small square?",
                 "--schedule", str(saved)]) == 0
    assert "visual tokens/layer" in capsys.readouterr().out
