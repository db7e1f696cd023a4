"""Conditions and latent masks, checked against diffusers' own pipeline and hand-built cases."""

import pytest
import torch

from lorafx.errors import InvalidInput
from lorafx.server.method.conditioning import (build_condition, downsample_keep, fold_mask,
                                               latent_frame_keep)
from lorafx.server.method.encode import encode_condition

F, H, W = 9, 64, 64


def _video(seed=0, frames=F):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(frames, 3, H, W, generator=g) * 2 - 1


def _keep_with_matte(rows, cols, frames=range(1, F)):
    keep = torch.ones(F, H, W)
    for f in frames:
        keep[f, rows[0]:rows[1], cols[0]:cols[1]] = 0
    return keep


def test_i2v_condition_equals_diffusers_prepare_latents(tiny_stack):
    """The stock `i2v` condition must be diffusers' WanImageToVideoPipeline condition, to the last element."""
    source = _video()
    ours = encode_condition(tiny_stack, build_condition("i2v", source))
    _, theirs = tiny_stack.pipe.prepare_latents(source[0][None], 1, 16, H, W, F, torch.float32,
                                                tiny_stack.device, torch.Generator().manual_seed(0))
    assert ours.shape == theirs.shape == (1, 20, 3, H // 8, W // 8)
    assert torch.equal(ours, theirs)


def test_masked_mask_covers_exactly_one_latent_cell():
    keep = _keep_with_matte((8, 16), (16, 24))  # exactly latent cell (1, 2) on frames 2..F
    for mode in ("nearest", "minpool"):
        m = fold_mask(build_condition("masked", _video(), keep).m_cond, (8, 8), mode)
        assert m.shape == (1, 4, 3, 8, 8)
        assert torch.all(m[:, :, 0] == 1), "latent frame 0 is frame 1, always keep"
        expected = torch.ones(1, 4, 2, 8, 8)
        expected[..., 1, 2] = 0
        assert torch.equal(m[:, :, 1:], expected), mode


def test_matte_touching_cell_boundary_nearest_vs_minpool():
    # Matte rows 9..15, cols 17..23: inside cell (1, 2) but not on its top-left sample pixel (8, 16).
    keep = _keep_with_matte((9, 16), (17, 24))
    cond = build_condition("masked", _video(), keep)
    near = fold_mask(cond.m_cond, (8, 8), "nearest")
    minp = fold_mask(cond.m_cond, (8, 8), "minpool")
    assert torch.all(near[:, :, 1:, 1, 2] == 1), "point sampling misses a matte that avoids the sample pixel"
    assert torch.all(minp[:, :, 1:, 1, 2] == 0), "minpool marks any touched cell as generate"
    # A matte whose last row is the first pixel row of the next cell: row 16 is cell 2's sample row.
    keep = _keep_with_matte((8, 17), (16, 24))
    near = fold_mask(build_condition("masked", _video(), keep).m_cond, (8, 8), "nearest")
    assert torch.all(near[:, :, 1:, 2, 2] == 0) and torch.all(near[:, :, 1:, 1, 2] == 0)
    assert near[:, :, 1:].sum() == 4 * 2 * 62


def test_mask_channel_layout_matches_diffusers_grouping():
    # Only pixel frame 5 has an edit: channel c of latent frame t>=1 is pixel frame 4(t-1)+1+c -> t=2, c=0.
    keep = _keep_with_matte((0, 64), (0, 32), frames=[5])
    m = fold_mask(build_condition("masked", _video(), keep).m_cond, (8, 8))
    holes = (m[0] == 0).nonzero()[:, :2].unique(dim=0).tolist()
    assert holes == [[0, 2]]
    assert latent_frame_keep(downsample_keep(keep[None], (8, 8)))[0, 0, 2, :, :4].sum() == 0


def test_masked_condition_empties_edit_region_and_keeps_first_frame():
    source, keep = _video(), _keep_with_matte((8, 16), (16, 24))
    edited = torch.full((3, H, W), 0.25)
    cond = build_condition("masked", source, keep, edited_first=edited)
    assert torch.equal(cond.v_cond[0], edited)
    assert torch.equal(cond.m_cond[0], torch.ones(H, W))
    assert torch.all(cond.v_cond[1:, :, 8:16, 16:24] == 0)
    assert torch.equal(cond.v_cond[1:, :, :8], source[1:, :, :8])
    assert torch.equal(cond.v_target, source)


@pytest.mark.parametrize("config,expect_first,expect_rest", [
    ("i2v", 1.0, 0.0), ("none", 0.0, 0.0), ("all", 1.0, 1.0)])
def test_simple_configs_masks(config, expect_first, expect_rest):
    cond = build_condition(config, _video())
    assert torch.all(cond.m_cond[0] == expect_first) and torch.all(cond.m_cond[1:] == expect_rest)


def test_appearance_is_one_frame_sample():
    source, keep = _video(), _keep_with_matte((8, 16), (16, 24))
    painted = torch.zeros(3, H, W)
    cond = build_condition("appearance", source, keep, painted=painted, frame_index=4)
    assert cond.v_cond.shape == (1, 3, H, W) and torch.equal(cond.v_target[0], painted)
    assert torch.all(cond.v_cond[0, :, 8:16, 16:24] == 0)
    assert torch.equal(cond.m_cond[0], keep[4]), "appearance keeps the frame's keep mask, not all ones"


@pytest.mark.parametrize("build,needle", [
    (lambda: build_condition("masked", _video(frames=8), torch.ones(8, H, W)), r"4k\+1"),
    (lambda: build_condition("masked", _video(), torch.ones(F - 1, H, W)), "frames"),
    (lambda: build_condition("masked", _video(), torch.ones(F, H, W // 2)), "32x64"),
    (lambda: build_condition("masked", _video(), torch.ones(F, H, W)), "empty"),
    (lambda: build_condition("masked", _video(), torch.zeros(F, H, W)), "covers every pixel"),
    (lambda: build_condition("masked", _video().index_fill_(0, torch.tensor([3]), float("nan")),
                             _keep_with_matte((8, 16), (16, 24))), "NaN"),
    (lambda: build_condition("i2v", _video(), edited_first=torch.zeros(3, 32, 32)), "edited first frame"),
    (lambda: build_condition("sideways", _video()), "unknown configuration"),
    (lambda: build_condition("i2v", torch.zeros(F, 3, 60, 64)), "divisible by 16"),
])
def test_bad_input_is_named(build, needle):
    with pytest.raises(InvalidInput, match=needle):
        build()
