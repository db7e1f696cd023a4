"""Region of interest: the box rule, orientation, plate clamping, resampling."""

from __future__ import annotations

import numpy as np
import pytest

from lorafx.errors import InvalidInput
from lorafx.server.media.roi import (LANDSCAPE, PORTRAIT, Roi, compute_roi, crop, crop_resize,
                                     matte_bbox, resize_mask, uncrop_resize)


def _matte(shape, *boxes):
    m = np.zeros(shape, np.float32)
    for f, y0, y1, x0, x1 in boxes:
        m[f, y0:y1, x0:x1] = 1.0
    return m


def _covers(roi, bbox):
    x0, y0, x1, y1 = bbox
    return roi.x0 <= x0 and roi.y0 <= y0 and roi.x1 >= x1 and roi.y1 >= y1


def test_roi_is_the_padded_union_over_the_window_at_model_aspect():
    # 4K plate, the object moves: frame 0 on the left, frame 2 on the right.
    m = _matte((3, 2160, 4096), (0, 1000, 1200, 1500, 1700), (2, 1050, 1250, 2200, 2400))
    roi = compute_roi(m)
    assert matte_bbox(m) == (1500, 1000, 2400, 1250)
    assert roi.model_size == LANDSCAPE
    assert abs(roi.width / roi.height - 832 / 480) < 0.01
    assert roi.inside(4096, 2160)
    # 25% context on each side of the union bbox (900 x 250 -> pad 225 x 62.5).
    assert _covers(roi, (1500 - 225, 1000 - 62, 2400 + 225, 1250 + 62))


def test_min_context_and_never_upscale():
    m = _matte((1, 2160, 4096), (0, 1000, 1010, 2000, 2010))  # 10 px object
    roi = compute_roi(m)
    assert roi.size == (832, 480)  # not a 74 px box blown up 11x
    assert _covers(roi, (2000 - 32, 1000 - 32, 2010 + 32, 1010 + 32))
    tight = compute_roi(m, never_upscale=False)
    assert tight.width < 200 and _covers(tight, (1968, 968, 2042, 1042))


def test_orientation_follows_the_matte_then_the_plate():
    tall = _matte((1, 2160, 3840), (0, 200, 2000, 1800, 2200))
    assert compute_roi(tall).model_size == PORTRAIT
    wide = _matte((1, 2160, 3840), (0, 1000, 1400, 500, 3000))
    assert compute_roi(wide).model_size == LANDSCAPE
    square = _matte((1, 3000, 2000), (0, 1400, 1500, 950, 1050))
    assert compute_roi(square).model_size == PORTRAIT  # a portrait plate


def test_roi_clamped_to_the_plate_shrinks_context_before_leaving_it():
    # A 960x540 plate, a big matte near the edge: the box slides inside the plate.
    m = _matte((2, 540, 960), (0, 380, 530, 700, 950), (1, 300, 500, 650, 900))
    roi = compute_roi(m)
    assert roi.inside(960, 540) and _covers(roi, matte_bbox(m))
    assert abs(roi.width / roi.height - 832 / 480) < 0.01


def test_roi_past_a_small_plate_is_padded_by_edge_repeat():
    m = _matte((1, 100, 100), (0, 5, 95, 5, 95))  # square plate, matte nearly everywhere
    roi = compute_roi(m)
    assert not roi.inside(100, 100) and _covers(roi, (5, 5, 95, 95))
    frames = np.random.default_rng(0).random((1, 100, 100, 3)).astype(np.float32)
    c = crop(frames, roi)
    assert c.shape == (1, roi.height, roi.width, 3)
    np.testing.assert_array_equal(c[0, :, 0], c[0, :, -roi.x0])  # repeated left edge column
    out = crop_resize(frames, roi)
    assert out.shape == (1, roi.model_size[1], roi.model_size[0], 3)


def test_empty_matte_has_no_roi():
    with pytest.raises(InvalidInput, match="empty"):
        compute_roi(np.zeros((2, 50, 50)))


def test_downscale_is_antialiased_and_round_trip_shapes():
    # A one-pixel checkerboard shrunk 2.3x must become flat grey, not moire.
    yy, xx = np.mgrid[:1104, :1914]
    board = ((yy + xx) % 2).astype(np.float32)
    frames = np.repeat(board[None, ..., None], 3, axis=3)
    roi = Roi(0, 0, 1914, 1104, LANDSCAPE)
    small = crop_resize(frames, roi)
    assert small.shape == (1, 480, 832, 3)
    assert abs(small.mean() - 0.5) < 0.01 and small.std() < 0.05
    back = uncrop_resize(small, roi)
    assert back.shape == (1, 1104, 1914, 3)


def test_resize_mask_is_binary_and_keeps_area():
    m = np.zeros((2, 1080, 1920), np.float32)
    yy, xx = np.mgrid[:1080, :1920]
    m[0][((xx - 900) / 300.0) ** 2 + ((yy - 500) / 200.0) ** 2 < 1] = 1
    roi = Roi(0, 0, 1920, 1080, LANDSCAPE)
    small = resize_mask(m, roi, size=(832, 468))
    assert set(np.unique(small)) <= {0.0, 1.0}
    assert small.shape == (2, 468, 832) and small[1].sum() == 0
    ratio = small[0].mean() / m[0].mean()
    assert abs(ratio - 1.0) < 0.02
