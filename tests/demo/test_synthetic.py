"""The procedural VQA set: deterministic, and every answer is what the pixels show."""

from __future__ import annotations

import json

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from vtsched.core.demo.synthetic import (
    BACKGROUNDS, MARK_SIZE, POSITIONS, QUESTIONS, SUBJECT_COLOURS, mark_origin, _stripe_colour, export, generate,
)


@given(st.integers(0, 10_000), st.integers(1, 4))
def test_generator_is_a_function_of_seed_and_index(seed, n):
    a = list(generate(seed, n))
    b = list(generate(seed, n + 2))[: len(a)]  # asking for more images changes none of the first ones
    assert [(s.id, s.question, s.answer, s.scene) for s in a] == [(s.id, s.question, s.answer, s.scene) for s in b]
    assert all(np.array_equal(np.asarray(x.image), np.asarray(y.image)) for x, y in zip(a, b))
    assert len(a) == n * len(QUESTIONS)


@given(st.integers(0, 10_000), st.integers(0, 50))
def test_answers_match_the_rendered_pixels(seed, index):
    sample = list(generate(seed, index + 1))[-1]
    scene, pixels, mask = sample.scene, np.asarray(sample.image), sample.subject_mask
    cx, cy = POSITIONS[scene["position"]]
    assert mask[cy, cx] and tuple(pixels[cy, cx]) == SUBJECT_COLOURS[scene["subject_colour"]]
    x0, y0 = mark_origin(scene["corner"])
    mx, my = x0 + MARK_SIZE // 2, y0 + MARK_SIZE // 2
    assert tuple(pixels[my, mx]) == SUBJECT_COLOURS[scene["mark_colour"]]
    assert (mx < 56) == ("left" in scene["corner"]) and (my < 56) == ("top" in scene["corner"])
    # background: row 28 misses the marks; column 12 or 100 misses the subject; stripes are rows 0-2 of every 8
    far_x = 12 if cx >= 56 else 100
    background = BACKGROUNDS[scene["background"]]
    assert not mask[28, far_x]
    assert tuple(pixels[28, far_x]) == background
    stripe_row = tuple(pixels[24, far_x])
    assert (stripe_row == _stripe_colour(background)) == (scene["pattern"] == "striped")
    assert scene["subject_colour"] != scene["mark_colour"]
    assert mask.sum() > 400  # a large subject


def test_export_writes_the_jsonl_format(tmp_path):
    path = export(generate(7, 2), tmp_path / "set")
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(records) == 2 * len(QUESTIONS)
    assert {r["tag"] for r in records} == {"subject", "non-subject"}
    assert all((tmp_path / "set" / r["image"]).exists() and (tmp_path / "set" / r["mask"]).exists() for r in records)
