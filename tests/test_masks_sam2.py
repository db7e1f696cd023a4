"""SAM2 click propagation. Random weights (no checkpoint in CI) at image_size 256: the masks
are meaningless, so these tests check structure (one mask per frame, both directions, shapes,
dtype) and the error paths, not quality."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from lorafx.errors import InvalidInput, NotFound
from lorafx.server.masks import sam2 as lsam2
from lorafx.server.media.io import Window, read_frame, read_sequence, write_exr_atomic

pytest.importorskip("sam2", reason="SAM2 not installed (see lorafx.server.masks.sam2.INSTALL_HINT)")


@pytest.fixture(scope="module")
def frames(bedroom_dir):
    return np.stack([read_frame(bedroom_dir / f"{i:05d}.jpg").pixels for i in (0, 12, 24)])


def test_propagates_forward_and_backward_from_a_middle_frame(frames):
    uint8 = (frames * 255).round().astype(np.uint8)  # 8-bit input is accepted as-is
    masks = lsam2.propagate_masks(uint8, points=[[300, 300], [700, 100]], labels=[1, 0],
                                  frame_index=1, image_size=256, random_weights_ok=True)
    # Random weights give arbitrary masks; what matters is one mask per frame at the frames'
    # resolution, frame 2 from the forward pass and frame 0 from the reverse pass
    # (propagate_masks raises if any frame was not visited).
    assert masks.shape == (3, 540, 960) and masks.dtype == bool


def test_missing_checkpoint_is_a_clear_error(frames, tmp_path):
    missing = tmp_path / "sam2.1_hiera_tiny.pt"
    with pytest.raises(NotFound, match=r"SAM2 checkpoint .*sam2\.1_hiera_tiny\.pt does not exist"):
        lsam2.propagate_masks(frames, [[10, 10]], [1], checkpoint_path=missing, image_size=256)
    with pytest.raises(InvalidInput, match="no SAM2 checkpoint given"):
        lsam2.propagate_masks(frames, [[10, 10]], [1], image_size=256)


def test_a_wrong_checkpoint_file_names_what_was_loaded(frames, tmp_path):
    bad = tmp_path / "not_a_checkpoint.pt"
    bad.write_bytes(b"garbage")
    with pytest.raises(InvalidInput, match=r"cannot build SAM2 .*not_a_checkpoint\.pt"):
        lsam2.propagate_masks(frames, [[10, 10]], [1], checkpoint_path=bad, image_size=256)


def test_click_validation(frames):
    kw = dict(image_size=256, random_weights_ok=True)
    with pytest.raises(InvalidInput, match="outside the 960x540 frame"):
        lsam2.propagate_masks(frames, [[960, 10]], [1], **kw)
    with pytest.raises(InvalidInput, match="at least one positive click"):
        lsam2.propagate_masks(frames, [[10, 10]], [0], **kw)
    with pytest.raises(InvalidInput, match="one label per click"):
        lsam2.propagate_masks(frames, [[10, 10], [20, 20]], [1], **kw)
    with pytest.raises(InvalidInput, match="frame index 3 is outside the 3 frames"):
        lsam2.propagate_masks(frames, [[10, 10]], [1], frame_index=3, **kw)


def test_sam2_not_installed_says_how_to_install(monkeypatch, frames):
    monkeypatch.setitem(sys.modules, "sam2.build_sam", None)  # makes the import fail
    with pytest.raises(InvalidInput, match="SAM2 is not installed.*SAM2_BUILD_CUDA=0"):
        lsam2.propagate_masks(frames, [[10, 10]], [1], image_size=256, random_weights_ok=True)


def test_matte_from_clicks_maps_plate_coordinates(tmp_path, monkeypatch):
    """Clicks in plate image coordinates (overscan plate) reach SAM2 at the right place of the
    shrunk frames, and the masks come back on the plate's data window. SAM2 itself is replaced
    by a stand-in that marks a disc around each positive click."""
    data, display = Window(-20, -10, 1040, 560), Window(0, 0, 1000, 540)
    for f in (1001, 1002):
        px = np.full((data.height, data.width, 3), 0.18, np.float32)
        write_exr_atomic(tmp_path / f"p.{f}.exr", px, "RGB", data, display)
    plate = read_sequence(str(tmp_path / "p.####.exr"), 1001, 1002)
    seen = {}

    def fake_propagate(frames, points, labels, frame_index, *args, **kwargs):
        seen.update(shape=frames.shape, index=frame_index)
        yy, xx = np.mgrid[:frames.shape[1], :frames.shape[2]]
        out = np.zeros(frames.shape[:3], bool)
        for (x, y), lab in zip(points, labels):
            if lab:
                out[:, (xx - x) ** 2 + (yy - y) ** 2 <= 25] = True
        return out

    monkeypatch.setattr(lsam2, "propagate_masks", fake_propagate)
    matte = lsam2.matte_from_clicks(plate, 1002, [[700, 300], [100, 500]], [1, 0], max_width=260)
    assert seen == {"shape": (2, 140, 260, 3), "index": 1}
    assert matte.shape == (2, 560, 1040) and matte.dtype == np.float32
    ys, xs = np.nonzero(matte[1])
    # The disc is centred on the click: plate (700, 300) is data-window index (720, 310).
    assert abs(xs.mean() - 720) < 3 and abs(ys.mean() - 310) < 3
    with pytest.raises(InvalidInput, match="outside the plate's data window"):
        lsam2.matte_from_clicks(plate, 1001, [[1030, 10]], [1])
