"""The pass layout of tddfa.render.layout: frame tiles stacked without gaps, UV atlases
below them, a new pass where GL's size limit would be crossed."""

from __future__ import annotations

import pytest

from tddfa.render.layout import plan_passes


def test_whole_frames_stay_one_block_with_atlases_below():
    """The GPU path copies a pass's frames in and out as one (B*H, W) block: a uv frame in
    the middle of a batch must not push the next frames down (it did: the frame after a uv
    frame came back with the atlas drawn over it on the H200)."""
    height, width = 100, 160
    whole = (0, 0, width, height)
    atlas = (3 * 32, 32)  # K = 3 slots of S = 32
    (plan,) = plan_passes((height, width), [whole] * 4, [None, atlas, None, atlas], 4096)
    assert [plan.tiles[f].dst for f in range(4)] == [(0, 0), (0, 100), (0, 200), (0, 300)]
    assert {f: a.origin for f, a in plan.atlases.items()} == {1: (0, 400), 3: (0, 432)}
    assert plan.height == 464 and plan.width == width


def test_a_new_pass_where_the_limit_is_reached():
    passes = plan_passes((100, 50), [(0, 0, 50, 100)] * 5, [None] * 5, 250)
    assert [p.frames for p in passes] == [(0, 1), (2, 3), (4,)]
    with pytest.raises(ValueError, match="GL limit"):
        plan_passes((300, 50), [(0, 0, 50, 300)], [None], 250)
