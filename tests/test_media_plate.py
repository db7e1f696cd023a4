"""The plate layer and compositing on the real footage, converted to a scene-linear half EXR
plate (frames 1001-1049, overscan data window, RGBA + a depth channel, values > 1 and < 0) with
an animated soft roto matte stored in A with a per-frame auto-cropped data window."""

from __future__ import annotations

import numpy as np
import OpenImageIO as oiio
import pytest

from lorafx.errors import InvalidInput
from lorafx.server.masks.ops import bbox_mask
from lorafx.server.media.colour import ColourSettings, ColourTransform
from lorafx.server.media.composite import composite, feathered_alpha
from lorafx.server.media.io import Window, read_frame, write_exr_atomic
from lorafx.server.media.plate import (composite_window, display_frames, from_model_space,
                                       load_shot_inputs, make_contact_sheet, masks_to_plate,
                                       pick_matte_channel, to_model_space, write_result_sequence)
from lorafx.server.media.roi import resize_mask

FIRST, LAST = 1001, 1049
PAD = 8  # overscan on every side
DISPLAY = Window(0, 0, 960, 540)
DATA = Window(-PAD, -PAD, 960 + 2 * PAD, 540 + 2 * PAD)
CHANNELS = ("R", "G", "B", "A", "depth.Z")
EXPOSURE, OFFSET = 3.0, -0.01  # pushes the bright wall over 1.0 and the darks under 0


def _bits(a):
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


def _matte_at(i):
    """A soft ellipse drifting right over the bed (display-window coordinates)."""
    yy, xx = np.mgrid[:540, :960]
    d = ((xx - 330 - 4 * i) / 110.0) ** 2 + ((yy - 330) / 70.0) ** 2
    return np.clip((1.0 - d) * 6.0, 0.0, 1.0).astype(np.float32)  # soft edge, solid core


def _srgb_to_linear(v):
    return np.where(v <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4).astype(np.float32)


def _write_exr(path, px, channels, data, display):
    """Fixture writer: plain OIIO, uncompressed (fast on a shared 2-core machine)."""
    spec = oiio.ImageSpec(data.width, data.height, len(channels), "half")
    spec.channelnames = tuple(channels)
    spec.x, spec.y = data.x, data.y
    spec.full_x, spec.full_y, spec.full_width, spec.full_height = (
        display.x, display.y, display.width, display.height)
    spec.attribute("compression", "none")
    spec.attribute("lorafx/source", str(path))
    out = oiio.ImageOutput.create(str(path))
    assert out.open(str(path), spec) and out.write_image(np.ascontiguousarray(px)) and out.close()


@pytest.fixture(scope="module")
def shot(bedroom_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("bedroom_exr")
    for i in range(LAST - FIRST + 1):
        src = read_frame(bedroom_dir / f"{i:05d}.jpg")
        lin = _srgb_to_linear(src.pixels) * EXPOSURE + OFFSET
        px = np.empty((DATA.height, DATA.width, len(CHANNELS)), np.float32)
        px[..., :3] = np.pad(lin, ((PAD, PAD), (PAD, PAD), (0, 0)), mode="edge")
        px[..., 3] = 1.0
        px[..., 4] = np.linspace(1.0, 50.0, DATA.width, dtype=np.float32)[None, :] + i * 1e-2
        _write_exr(d / f"plate.{FIRST + i}.exr", px, CHANNELS, DATA, DISPLAY)
        m = _matte_at(i)
        ys, xs = np.nonzero(m)
        # Auto-cropped data window, as roto renders often are: it moves every frame.
        box = Window(int(xs.min()), int(ys.min()), int(np.ptp(xs)) + 1, int(np.ptp(ys)) + 1)
        rgba = np.zeros((box.height, box.width, 4), np.float32)
        rgba[..., 0] = 0.5  # junk in R: the rule must take A
        rgba[..., 3] = m[box.y:box.y_end, box.x:box.x_end]
        _write_exr(d / f"matte.{FIRST + i}.exr", rgba, "RGBA", box, DISPLAY)
    return d


@pytest.fixture(scope="module")
def inputs(shot):
    return load_shot_inputs(str(shot / "plate.####.exr"), str(shot / "matte.%04d.exr"),
                            FIRST, LAST)


def test_load_shot_inputs_reads_the_real_plate(inputs):
    p = inputs.plate
    assert p.pixels.shape == (49, 556, 976, 5) and p.pixels.dtype == np.float32
    assert p.data_window == DATA and p.display_window == DISPLAY and p.channels == CHANNELS
    assert inputs.matte_channel == "A" and inputs.matte.shape == (49, 556, 976)
    # The auto-cropped matte landed at its display position inside the overscan plate.
    np.testing.assert_allclose(inputs.matte[7, PAD:-PAD, PAD:-PAD], _matte_at(7), atol=1e-3)
    assert inputs.matte[:, :PAD].max() == 0
    rgb = p.pixels[..., :3]
    assert rgb.max() > 2.0 and rgb.min() < 0.0  # the plate really is scene-linear


def test_pick_matte_channel_rule():
    assert pick_matte_channel(("R", "G", "B", "A")) == "A"
    assert pick_matte_channel(("Y",)) == "Y"
    assert pick_matte_channel(("mask", "other")) == "mask"
    assert pick_matte_channel(("R", "G", "B", "A"), "G") == "G"
    with pytest.raises(InvalidInput, match="no channel 'roto.A'"):
        pick_matte_channel(("R", "G", "B", "A"), "roto.A")


def test_whole_shot_round_trip_is_bit_exact_outside_the_matte(inputs, tmp_path):
    window = to_model_space(inputs, mask_mode="bbox")
    assert window.frames.shape == (49, 480, 832, 3) and window.frames.dtype == np.float32
    assert window.frames.min() >= 0.0 and window.frames.max() <= 1.0
    assert window.keep.shape == (49, 480, 832)
    np.testing.assert_array_equal(window.keep, 1.0 - bbox_mask(window.matte))
    np.testing.assert_array_equal(window.matte, resize_mask(inputs.matte, window.roi))
    # The bright wall is clipped for the model, and the clipping is reported.
    assert window.clip_stats.mode == "clip" and window.clip_stats.pixels > 0
    md = window.metadata()
    assert md["roi/x0"] == window.roi.x0 and "colour/clipped_above_fraction" in md

    # An "identity" render: the model returns what it was given.
    frames = composite_window(inputs, window, window.frames, feather_px=6)
    for k in (0, 24, 48):
        src, out = inputs.plate.frames[k], frames[k]
        assert out.data_window == DATA and out.display_window == DISPLAY
        assert out.channels == CHANNELS
        alpha = feathered_alpha(inputs.matte[k], 6)
        outside = alpha == 0
        np.testing.assert_array_equal(_bits(out.pixels)[outside], _bits(src.pixels)[outside])
        np.testing.assert_array_equal(_bits(out.pixels[..., 3:]), _bits(src.pixels[..., 3:]))
        # Inside the matte, unclipped plate values come back through OCIO + resampling.
        solid = (alpha == 1.0)[..., None] & (src.pixels[..., :3] < 0.9) & (src.pixels[..., :3] > 0.05)
        err = np.abs(out.pixels[..., :3] - src.pixels[..., :3])[solid]
        assert solid.sum() > 1000 and np.median(err) < 2e-3

    # On disk: the untouched pixels are the plate's own half values, bit for bit.
    some = [0, 24, 48]
    paths = write_result_sequence([frames[k] for k in some], str(tmp_path / "out.####.exr"),
                                  [FIRST + k for k in some], {**md, "seed": 7, "shot": "bedroom"})
    assert [p.rsplit("/", 1)[1] for p in paths] == ["out.1001.exr", "out.1025.exr", "out.1049.exr"]
    for k, path in zip(some, paths):
        back, src = read_frame(path), read_frame(inputs.plate.frames[k].path)
        assert back.data_window == DATA and back.display_window == DISPLAY
        assert back.channels == CHANNELS and back.pixel_type == "half"
        outside = feathered_alpha(inputs.matte[k], 6) == 0
        np.testing.assert_array_equal(_bits(back.pixels)[outside], _bits(src.pixels)[outside])
        assert back.attributes["lorafx/seed"] == 7 and back.attributes["lorafx/frame"] == FIRST + k
        assert back.attributes["lorafx/source"] == src.attributes["lorafx/source"]  # carried


def test_shaper_mode_brings_highlights_back(shot):
    frames = [FIRST, FIRST + 1, FIRST + 2]
    clip_in = load_shot_inputs(str(shot / "plate.####.exr"), str(shot / "matte.####.exr"),
                               FIRST, FIRST + 2)
    shaper_in = load_shot_inputs(str(shot / "plate.####.exr"), str(shot / "matte.####.exr"),
                                 FIRST, FIRST + 2, ColourSettings(highlight_mode="shaper"))
    for inp, limit in ((clip_in, 1.0), (shaper_in, None)):
        w = to_model_space(inp, frames)
        back = from_model_space(w.frames, w)
        roi = w.roi
        src = inp.plate.pixels[:, roi.y0:roi.y1, roi.x0:roi.x1, :3]
        hot = src > 1.5
        assert hot.sum() > 1000
        if limit is not None:
            assert back[hot].max() <= 1.0 + 1e-3  # clip mode: lost (and reported)
            assert w.clip_stats.above > 0
        else:
            assert w.clip_stats.above == 0 and w.return_cap == pytest.approx(src.max(), rel=1e-3)
            rel = np.abs(back[hot] - src[hot]) / src[hot]
            assert np.median(rel) < 0.02  # highlights come back (resampling blurs edges)


def test_composite_is_bit_exact_around_nan_inf_and_negative_plate_values(inputs):
    plate = inputs.plate.pixels[3].copy()
    plate[0, 0, 0], plate[1, 1, 1], plate[2, 2, 2] = np.nan, np.inf, -np.inf
    plate[5:9, 5:9, :3] = -0.25
    plate[10:14, 5:9, :3] = 40.0
    matte = inputs.matte[3]
    window = to_model_space(inputs, [FIRST + 3])
    rng = np.random.default_rng(0)
    rendered = rng.uniform(-1.0, 5.0, (window.roi.height, window.roi.width, 3)).astype(np.float32)
    out = composite(plate, rendered, window.roi, matte, feather_px=4, channels=CHANNELS)
    alpha = feathered_alpha(matte, 4)
    assert out.shape == plate.shape
    np.testing.assert_array_equal(_bits(out)[alpha == 0], _bits(plate)[alpha == 0])
    full = alpha == 1.0
    r_full = rendered[full[window.roi.y0:window.roi.y1, window.roi.x0:window.roi.x1]]
    np.testing.assert_array_equal(out[full][:, :3], r_full)
    np.testing.assert_array_equal(_bits(out[..., 3:]), _bits(plate[..., 3:]))
    # Soft edge: strictly between plate and render.
    soft = (alpha > 0.2) & (alpha < 0.8)
    assert soft.sum() > 50


def test_composite_refuses_a_matte_outside_the_roi(inputs):
    window = to_model_space(inputs, [FIRST])
    matte = inputs.matte[0].copy()
    matte[0:4, 0:4] = 1.0  # far from the ROI
    rendered = np.zeros((window.roi.height, window.roi.width, 3), np.float32)
    with pytest.raises(InvalidInput, match="outside the ROI"):
        composite(inputs.plate.pixels[0], rendered, window.roi, matte)
    with pytest.raises(InvalidInput, match="rendered ROI is 3x3"):
        composite(inputs.plate.pixels[0], np.zeros((3, 3, 3)), window.roi, inputs.matte[0])


def _matte_seq(d, frames, shape=(540, 960), value=None, channels="A"):
    for i, f in enumerate(frames):
        m = np.zeros(shape + (len(channels),), np.float32)
        if value is None:
            m[100:200, 100:300] = 1.0
        else:
            m[:] = value
        write_exr_atomic(d / f"m.{f}.exr", m, channels)
    return str(d / "m.####.exr")


def test_resolution_mismatch_names_both_sizes(shot, tmp_path):
    pattern = _matte_seq(tmp_path, range(FIRST, FIRST + 3), shape=(270, 480))
    with pytest.raises(InvalidInput, match=r"matte .* is 480x270 .* plate .* is 960x540"):
        load_shot_inputs(str(shot / "plate.####.exr"), pattern, FIRST, FIRST + 2)


def test_matte_dust_does_not_stretch_the_roi(shot, inputs):
    dusty = inputs.matte[:3].copy()
    dusty += 1e-4  # what a full-frame blur leaves behind
    inp = load_shot_inputs(str(shot / "plate.####.exr"), dusty, FIRST, FIRST + 2)
    np.testing.assert_array_equal(inp.matte == 0, inputs.matte[:3] == 0)
    assert to_model_space(inp).roi == to_model_space(inputs, [FIRST, FIRST + 1, FIRST + 2]).roi


def test_empty_and_full_mattes_are_refused(shot, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "full").mkdir()
    empty = _matte_seq(tmp_path / "empty", range(FIRST, FIRST + 3), value=0.2, channels="Y")
    with pytest.raises(InvalidInput, match="matte is empty over frames 1001-1003"):
        load_shot_inputs(str(shot / "plate.####.exr"), empty, FIRST, FIRST + 2)
    full = _matte_seq(tmp_path / "full", range(FIRST, FIRST + 3), value=1.0)
    with pytest.raises(InvalidInput, match="covers the whole frame"):
        load_shot_inputs(str(shot / "plate.####.exr"), full, FIRST, FIRST + 2)


def test_nan_in_plate_is_refused_with_file_and_location(shot, tmp_path):
    for f in range(FIRST, FIRST + 3):
        fr = read_frame(shot / f"plate.{f}.exr")
        px = fr.pixels.copy()
        if f == FIRST + 1:
            px[20, 30, 1] = np.nan
        _write_exr(tmp_path / f"p.{f}.exr", px, fr.channels, fr.data_window, fr.display_window)
    with pytest.raises(InvalidInput, match=r"p\.1002\.exr.*1 non-finite value.*x=22 y=12, channel G"):
        load_shot_inputs(str(tmp_path / "p.####.exr"), str(shot / "matte.####.exr"),
                         FIRST, FIRST + 2)


def test_reference_frame_in_srgb_png(shot, inputs, tmp_path):
    # The compositor's edited first frame, delivered as a 16-bit sRGB PNG of the display window.
    t = ColourTransform(ColourSettings())
    lin = inputs.plate.pixels[0, PAD:-PAD, PAD:-PAD, :3]
    srgb = np.clip(t.plate_to(lin, "sRGB Encoded Rec.709 (sRGB)"), 0, 1)
    buf = oiio.ImageBuf(np.ascontiguousarray(srgb))
    assert buf.write(str(tmp_path / "edit.png"), "uint16")
    inp = load_shot_inputs(str(shot / "plate.####.exr"), str(shot / "matte.####.exr"),
                           FIRST, FIRST + 2, references={FIRST: tmp_path / "edit.png"},
                           reference_space="sRGB Encoded Rec.709 (sRGB)")
    w = to_model_space(inp)
    ref = w.references[FIRST]
    assert ref.shape == (480, 832, 3)
    assert np.abs(ref - w.frames[0]).max() < 2e-3  # same picture, through PNG and back
    small = oiio.ImageBuf(np.ascontiguousarray(srgb[::2, ::2]))
    assert small.write(str(tmp_path / "small.png"), "uint16")
    with pytest.raises(InvalidInput, match=r"reference frame 1001 .* is 480x270 .* is 960x540"):
        load_shot_inputs(str(shot / "plate.####.exr"), str(shot / "matte.####.exr"),
                         FIRST, FIRST + 2, references={FIRST: tmp_path / "small.png"})


def test_contact_sheet(inputs, tmp_path):
    w = to_model_space(inputs, [FIRST, FIRST + 24])
    edited = w.frames[0].copy()
    edited[..., 0] = 1.0
    path = make_contact_sheet([[w.frames[0], edited, w.frames[1]], [w.frames[1], edited]],
                              ["source", "edited first frame", "result"], tmp_path / "sheet.png")
    img = read_frame(path)
    assert img.pixel_type == "uint8"
    assert img.pixels.shape == (2 * (480 + 28) + 3 * 8, 3 * 832 + 4 * 8, 3)
    label_band = img.pixels[8:8 + 28, 8:8 + 300]
    assert label_band.max() > 0.5  # the label text was drawn
    np.testing.assert_allclose(img.pixels[8 + 28 + 100, 8 + 832 + 8 + 100, 0], 1.0)


def test_display_frames_and_masks_back_to_the_plate(shot):
    """The no-matte route: plate -> display frames (what SAM2 sees) -> masks -> plate matte."""
    from lorafx.server.media.io import read_sequence

    plate = read_sequence(str(shot / "plate.####.exr"), FIRST, FIRST + 2)
    small = display_frames(plate, max_width=488)
    assert small.shape == (3, 278, 488, 3) and 0.0 <= small.min() and small.max() <= 1.0
    masks = np.zeros((3, 278, 488), bool)
    masks[:, 100:150, 200:260] = True
    matte = masks_to_plate(masks, plate)
    assert matte.shape == (3, 556, 976) and set(np.unique(matte)) == {0.0, 1.0}
    assert abs(matte[0].sum() / 4.0 - masks[0].sum()) < 0.05 * masks[0].sum()
    inp = load_shot_inputs(str(shot / "plate.####.exr"), matte, FIRST, FIRST + 2)
    assert inp.matte_channel == "array" and inp.matte.sum() == matte.sum()
