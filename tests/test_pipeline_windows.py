"""Shots longer than one model window (DESIGN.md §2): the window plan, the checks on window
settings, and the hand-over between windows on the real method code (tiny random Wan stack):
a later window is pinned to the frames it shares with what is already rendered, and those
frames are kept as first rendered."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from lorafx.errors import InvalidInput
from lorafx.server import pipeline
from lorafx.server.method.sampler import RenderSettings
from lorafx.server.pipeline import ShotSpec, plan_windows


@pytest.mark.parametrize("n,window,overlap", [(33, 17, 1), (33, 17, 5), (49, 17, 5), (97, 49, 5), (37, 17, 13),
                                              (21, 17, 5), (201, 49, 9), (13, 9, 5)])
def test_windows_cover_the_shot_and_share_the_asked_frames(n, window, overlap):
    spans = plan_windows(n, window, overlap)
    assert spans[0][0] == 0 and spans[-1][1] == n
    for a, b in spans:
        assert b - a <= window and (b - a - 1) % 4 == 0, (a, b)  # every window is a valid 4k+1 clip
    for (a0, b0), (a1, b1) in zip(spans, spans[1:]):
        shared = b0 - a1
        assert b1 > b0 and shared >= overlap, spans  # progress, and at least the asked hand-over
        if (a1, b1) != spans[-1]:
            assert shared == overlap, spans  # only the tail may share more
    assert plan_windows(17, 17, 5) == [(0, 17)]


@pytest.mark.parametrize("frames,overlap,named", [(20, 5, "window_frames"), (1, 1, "window_frames"),
                                                  (17, 0, "window_overlap"), (17, 14, "window_overlap"),
                                                  (9, 9, "window_overlap")])
def test_bad_window_settings_are_refused_with_the_setting_named(frames, overlap, named):
    # window_frames 1 used to loop forever planning windows; 20 failed only at render time
    with pytest.raises(InvalidInput, match=named) as e:
        ShotSpec(name="sh", first=1, last=40, plate="p.####.exr", matte="m.####.exr",
                 window_frames=frames, window_overlap=overlap)
    assert e.value.details["setting"] == named
    with pytest.raises(InvalidInput, match=named):
        plan_windows(40, frames, overlap)


def test_later_windows_are_pinned_to_the_frames_already_rendered(tiny_stack, monkeypatch):
    n, h, w = 13, 32, 32  # windows of 9 sharing 5 frames: (0, 9), (4, 13)
    g = torch.Generator().manual_seed(3)
    source = torch.rand(n, 3, h, w, generator=g) * 2 - 1
    keep = torch.ones(n, h, w)
    keep[:, 8:24, 8:24] = 0
    edited = source[0].flip(0)  # channel-swapped first frame
    spec = ShotSpec(name="sh", first=1001, last=1000 + n, plate="p.####.exr", matte="m.####.exr",
                    caption="a test", window_frames=9, window_overlap=5)
    shot = SimpleNamespace(spec=spec, source=source, keep=keep, num_frames=n, references={0: edited})

    calls = []
    real_render = pipeline.render

    def spy(stack, src, kp, first, settings, adapter, *, pinned=None, **kw):
        video = real_render(stack, src, kp, first, settings, adapter, pinned=pinned, **kw)
        calls.append({"frames": src.shape[0], "first": first.clone(), "pinned": pinned, "video": video})
        return video

    monkeypatch.setattr(pipeline, "render", spy)
    progress = []
    out = pipeline.render_shot(tiny_stack, shot, RenderSettings(steps=2, seed=5), None,
                               on_progress=lambda *a: progress.append(a))
    assert out.shape == (n, 3, h, w) and torch.isfinite(out).all()
    first, second = calls
    assert first["frames"] == 9 and first["pinned"] is None and torch.equal(first["first"], edited)
    # the second window starts on frame 4 and is pinned to frames 5..8: inside the roto hole as the
    # first window rendered them, outside it the plate itself
    hole = keep[0] < 0.5

    def assert_handover(frame, i):
        assert torch.equal(frame[:, hole], first["video"][i][:, hole])
        assert torch.equal(frame[:, ~hole], source[i][:, ~hole])

    assert second["frames"] == 9
    assert_handover(second["first"], 4)
    assert sorted(second["pinned"]) == [1, 2, 3, 4]
    for i, frame in second["pinned"].items():
        assert_handover(frame, 4 + i)
    # shared frames keep their first rendering; only the new frames come from the second window
    assert torch.equal(out[:9], first["video"]) and torch.equal(out[9:], second["video"][5:])
    assert [p[1] for p in progress] == [1, 2, 3, 4] and {p[2] for p in progress} == {4}


def test_pinned_frames_reach_the_condition_whole(tiny_stack):
    # what `pinned` means to the model: those frames are given in full (mask all keep)
    from lorafx.server.method.conditioning import build_condition

    source = torch.rand(9, 3, 16, 16) * 2 - 1
    keep = torch.ones(9, 16, 16)
    keep[:, 4:12, 4:12] = 0
    frame = torch.full((3, 16, 16), 0.25)
    cond = build_condition("masked", source, keep, edited_first=source[0], pinned={1: frame, 2: frame})
    assert torch.equal(cond.v_cond[1], frame) and cond.m_cond[1:3].eq(1).all()
    assert cond.m_cond[3, 4:12, 4:12].eq(0).all()  # unpinned frames keep the roto hole
