"""Matte operations: the reference bbox rule, dilate, feather, noisy, training-mask modes."""

from __future__ import annotations

import numpy as np
import pytest

from lorafx.errors import InvalidInput
from lorafx.server.masks.ops import (bbox_mask, derive_training_mask, dilate, feather, noisy,
                                     parse_mask_mode, tight, to_keep)


def _disc(shape, cy, cx, r):
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    return ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r).astype(np.float32)


def test_bbox_one_grown_rectangle_per_component_small_ones_dropped():
    m = np.zeros((2, 200, 300), np.float32)
    m[0, 50:90, 40:140] = 1  # 100 x 40 -> grown by 10 / 4 px per side
    m[0, 120:160, 200:220] = _disc((40, 20), 20, 10, 9)[:, :]  # a round blob
    m[0, 10:15, 250:255] = 1  # 5 x 5 = 25 px^2 < 50: speckle, dropped
    m[1, 100:110, 100:110] = 1  # frame 2 has its own box: no union over time
    out = bbox_mask(m)
    assert out.dtype == np.float32 and out.shape == m.shape
    ys, xs = np.nonzero(out[0, :100, :150])
    assert (ys.min(), ys.max() + 1, xs.min(), xs.max() + 1) == (46, 94, 30, 150)
    assert out[0, 10:15, 250:255].sum() == 0
    blob = out[0, 100:, 180:]
    ys, xs = np.nonzero(blob)
    assert blob[ys.min():ys.max() + 1, xs.min():xs.max() + 1].all()  # filled rectangle
    assert out[1, 50:90, 40:140].sum() == 0  # frame 1's box is not in frame 2
    assert out[1, 99:111, 99:111].sum() == 12 * 12  # 10 px grown by 1 px each side


def test_bbox_clamps_at_the_frame_edge():
    m = np.zeros((100, 100), np.float32)
    m[0:30, 80:100] = 1
    out = bbox_mask(m)
    assert out[0:33, 78:100].all() and out.sum() == 33 * 22


def test_dilate_is_a_disc_of_the_given_radius():
    m = np.zeros((101, 101), np.float32)
    m[50, 50] = 1
    out = dilate(m, 10)
    assert out[50, 40] == 1 and out[50, 39] == 0 and out[57, 57] == 1 and out[58, 58] == 0
    assert dilate(m, 0).sum() == 1
    with pytest.raises(InvalidInput):
        dilate(m, -1)


def test_feather_is_inward_and_exact_outside():
    m = _disc((200, 200), 100, 100, 60)
    m[0:20, 0:200] = 1  # a band touching the frame border
    a = feather(m, 8)
    assert np.all(a[m == 0] == 0)  # never grows outside the matte
    assert np.all(a <= m) and a.max() == 1.0
    yy, xx = np.mgrid[:200, :200]
    deep = (yy - 100) ** 2 + (xx - 100) ** 2 <= (60 - 9) ** 2
    np.testing.assert_array_equal(a[deep], 1.0)  # >= feather_px inside: the matte itself
    edge = (m > 0) & ~deep & (yy > 40)
    assert 0 < a[edge].min() < 0.1 and a[edge].max() <= 1.0
    assert np.all(a[0, 30:170] == 1.0)  # the frame border is not a matte edge
    np.testing.assert_array_equal(feather(m, 0), m)


def test_tight_and_modes():
    m = np.zeros((3, 64, 64), np.float32)
    m[:, 20:40, 20:30] = 0.7
    np.testing.assert_array_equal(derive_training_mask(m, "tight"), tight(m))
    assert tight(m).max() == 1.0 and set(np.unique(tight(m))) == {0.0, 1.0}
    assert derive_training_mask(m, "dilate:3").sum() > tight(m).sum()
    assert derive_training_mask(m, "bbox").sum() > tight(m).sum()
    assert parse_mask_mode("dilate:12") == ("dilate", 12)
    for bad in ("box", "dilate:", "dilate:-2", "dilate:x"):
        with pytest.raises(InvalidInput, match="mask mode"):
            derive_training_mask(m, bad)


def test_noisy_perturbs_only_near_the_boundary_and_is_deterministic():
    m = _disc((128, 128), 64, 64, 40)
    a, b, c = noisy(m, 1, 4.0), noisy(m, 1, 4.0), noisy(m, 2, 4.0)
    np.testing.assert_array_equal(a, b)
    assert (a != c).any() and (a != m).any()
    yy, xx = np.mgrid[:128, :128]
    r = np.hypot(yy - 64, xx - 64)
    changed = a != m
    assert r[changed].min() > 40 - 6 and r[changed].max() < 40 + 6


def test_to_keep_forces_frame_one():
    change = np.ones((3, 4, 4), np.float32)
    keep = to_keep(change)
    assert keep[0].min() == 1.0 and keep[1:].max() == 0.0
    assert to_keep(change, first_frame_keep=False)[0].max() == 0.0
