"""OpenImageIO reading / sequence / atomic EXR writing."""

from __future__ import annotations

import os

import numpy as np
import OpenImageIO as oiio
import pytest

from lorafx.errors import InvalidInput
from lorafx.server.media import io as mio
from lorafx.server.media.io import (SequenceSpec, Window, check_finite, conform_to_window,
                                    read_frame, read_sequence, write_exr_atomic)


def _write_raw_exr(path, pixels, channels, fmt="half"):
    """Write with OIIO directly (not through the code under test)."""
    h, w, c = pixels.shape
    spec = oiio.ImageSpec(w, h, c, fmt)
    spec.channelnames = tuple(channels)
    out = oiio.ImageOutput.create(str(path))
    assert out.open(str(path), spec)
    assert out.write_image(np.ascontiguousarray(pixels, dtype=np.float32))
    assert out.close()


def test_read_frame_real_jpeg(bedroom_dir):
    fr = read_frame(bedroom_dir / "00000.jpg")
    assert fr.pixels.shape == (540, 960, 3) and fr.pixels.dtype == np.float32
    assert fr.channels == ("R", "G", "B")
    assert fr.pixel_type == "uint8"
    assert fr.display_window == Window(0, 0, 960, 540) == fr.data_window
    assert 0.0 <= fr.pixels.min() and fr.pixels.max() <= 1.0 and fr.pixels.std() > 0.05


@pytest.mark.parametrize("ext,fmt,bits,tol", [
    ("dpx", "uint16", 10, 1.0 / 1023), ("tif", "uint16", 16, 1.0 / 65535),
    ("tif", "float", 32, 0.0), ("png", "uint8", 8, 1.0 / 255),
])
def test_read_frame_other_formats(tmp_path, ext, fmt, bits, tol):
    px = np.random.default_rng(3).random((6, 8, 3)).astype(np.float32)
    path = str(tmp_path / f"f.{ext}")
    spec = oiio.ImageSpec(8, 6, 3, fmt)
    spec.attribute("oiio:BitsPerSample", bits)
    out = oiio.ImageOutput.create(path)
    assert out.open(path, spec) and out.write_image(px) and out.close()
    fr = read_frame(path)
    assert fr.channels == ("R", "G", "B") and fr.pixels.dtype == np.float32
    assert fr.pixel_type == fmt
    assert np.abs(fr.pixels - px).max() <= tol  # integer files are normalised to [0, 1]


def test_exr_windows_channels_and_attributes_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    px = rng.normal(0.5, 2.0, (20, 30, 5)).astype(np.float32)  # > 1 and < 0 values
    data, display = Window(-6, -4, 30, 20), Window(0, 0, 18, 12)  # negative-origin overscan
    path = write_exr_atomic(
        tmp_path / "a.exr", px, ("R", "G", "B", "A", "depth.Z"), data, display,
        {"shot": "sh010", "seed": 42, "cfg": 5.0, "lorafx/steps": 30, "vec": [1, 2.5, 3]},
        pixel_type=["half"] * 4 + ["float"])
    fr = read_frame(path)
    assert fr.data_window == data and fr.display_window == display
    assert fr.channel_types == ("half", "half", "half", "half", "float")
    assert fr.attributes["lorafx/shot"] == "sh010"
    assert fr.attributes["lorafx/seed"] == 42 and fr.attribute_types["lorafx/seed"] == "int"
    assert fr.attributes["lorafx/cfg"] == 5.0 and fr.attribute_types["lorafx/cfg"] == "float"
    assert fr.attributes["lorafx/steps"] == 30  # an existing prefix is not doubled
    assert tuple(fr.attributes["lorafx/vec"]) == (1.0, 2.5, 3.0)
    np.testing.assert_array_equal(fr.channel("depth.Z"), px[..., 4])  # float stays exact
    np.testing.assert_array_equal(fr.channel("R"), px[..., 0].astype(np.float16).astype(np.float32))
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp.exr")]


def test_source_attributes_are_carried(tmp_path):
    spec_path = tmp_path / "src.exr"
    spec = oiio.ImageSpec(4, 4, 3, "half")
    spec.attribute("smpte:TimeCode", oiio.TypeDesc("timecode"), (0x01000000, 0))
    spec.attribute("framesPerSecond", oiio.TypeDesc("rational"), (24, 1))
    out = oiio.ImageOutput.create(str(spec_path))
    assert out.open(str(spec_path), spec) and out.write_image(np.zeros((4, 4, 3), np.float32))
    out.close()
    src = read_frame(spec_path)
    dst = read_frame(write_exr_atomic(
        tmp_path / "dst.exr", src.pixels, src.channels, metadata={"seed": 1},
        source_attributes=src.attributes, source_attribute_types=src.attribute_types))
    assert dst.attributes["framesPerSecond"] == src.attributes["framesPerSecond"]
    assert dst.attributes["smpte:TimeCode"] == src.attributes["smpte:TimeCode"]


def test_interrupted_write_never_leaves_a_partial_file(tmp_path, monkeypatch):
    target = tmp_path / "plate.1001.exr"
    write_exr_atomic(target, np.full((8, 8, 3), 0.25, np.float32), "RGB")
    before = target.read_bytes()

    def crash(*_):
        raise KeyboardInterrupt("power cut")

    monkeypatch.setattr(mio.os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        write_exr_atomic(target, np.full((8, 8, 3), 0.75, np.float32), "RGB")
    assert target.read_bytes() == before  # the old frame is intact
    assert sorted(os.listdir(tmp_path)) == ["plate.1001.exr"]  # no temp file left behind


def test_unaligned_pixels_are_written(tmp_path):
    # Pixels uploaded inline are views of ZeroMQ message frames, which are not always 4-byte
    # aligned; OIIO refused those ("buffer is wrong size") and 32x32 mattes failed to upload.
    raw = bytearray(32 * 48 * 4 + 1)
    pixels = np.frombuffer(memoryview(raw)[1:], dtype=np.float32).reshape(32, 48, 1)
    pixels[...] = np.linspace(0, 1, 32 * 48, dtype=np.float32).reshape(32, 48, 1)
    assert not pixels.flags.aligned
    path = mio.write_exr_atomic(tmp_path / "m.exr", pixels, ["A"], pixel_type="float")
    back = mio.read_frame(path)
    np.testing.assert_array_equal(back.pixels, pixels)
    assert mio.read_windows(path) == (Window(0, 0, 48, 32), Window(0, 0, 48, 32))


def test_write_refuses_values_beyond_half_and_bad_shapes(tmp_path):
    px = np.zeros((4, 4, 3), np.float32)
    px[2, 1, 0] = 1e6
    with pytest.raises(InvalidInput, match="half-float range"):
        write_exr_atomic(tmp_path / "x.exr", px, "RGB")
    write_exr_atomic(tmp_path / "x.exr", px, "RGB", pixel_type="float")  # float is fine
    with pytest.raises(InvalidInput, match="3 pixel channels but 4"):
        write_exr_atomic(tmp_path / "y.exr", px, "RGBA")
    with pytest.raises(InvalidInput, match="unsupported value type"):
        write_exr_atomic(tmp_path / "z.exr", px, "RGB", metadata={"bad": {"a": 1}},
                         pixel_type="float")
    assert not (tmp_path / "z.exr").exists()


@pytest.mark.parametrize("pattern,frame,name", [
    ("plate.####.exr", 7, "plate.0007.exr"), ("plate.%04d.exr", 7, "plate.0007.exr"),
    ("plate.#.exr", 7, "plate.7.exr"), ("plate.%d.exr", 1001, "plate.1001.exr"),
    ("plate.@@@.exr", 7, "plate.007.exr"), ("plate.####.exr", -3, "plate.-0003.exr"),
])
def test_sequence_patterns(pattern, frame, name):
    assert SequenceSpec(pattern, frame, frame).path(frame) == name


def test_sequence_pattern_needs_one_token():
    with pytest.raises(InvalidInput, match="exactly one frame token"):
        SequenceSpec("plate.exr", 1, 2)
    with pytest.raises(InvalidInput, match="exactly one frame token"):
        SequenceSpec("v####/plate.%04d.exr", 1, 2)


def _small_sequence(d, frames, shape=(6, 8), channels="RGB"):
    for f in frames:
        px = np.full(shape + (len(channels),), f / 10000.0, np.float32)
        _write_raw_exr(d / f"plate.{f:04d}.exr", px, channels)


def test_read_sequence_all_pattern_spellings_and_channel_order(tmp_path):
    _small_sequence(tmp_path, range(1001, 1004))
    # Frame 1003 stores its channels in another order: read_sequence must reorder by name.
    px = np.zeros((6, 8, 3), np.float32)
    px[..., 0], px[..., 2] = 0.3, 0.7  # B = 0.3, R = 0.7 in file order B, G, R
    _write_raw_exr(tmp_path / "plate.1003.exr", px, ("B", "G", "R"))
    for pattern in ("plate.####.exr", "plate.%04d.exr", "plate.#.exr"):
        seq = read_sequence(str(tmp_path / pattern), 1001, 1003)
        assert seq.pixels.shape == (3, 6, 8, 3) and seq.frame_numbers == [1001, 1002, 1003]
        assert seq.channels == ("R", "G", "B")
        assert np.allclose(seq.pixels[2, ..., 0], 0.7, atol=1e-3)
        assert np.allclose(seq.pixels[2, ..., 2], 0.3, atol=1e-3)
        assert seq.frames[1].pixels.base is not None  # frames are views of one block


def test_missing_frames_are_listed(tmp_path):
    _small_sequence(tmp_path, [1001, 1002, 1004, 1005, 1008])
    with pytest.raises(InvalidInput, match=r"4 of 9 frames missing: 1003, 1006-1007, 1009") as e:
        read_sequence(str(tmp_path / "plate.####.exr"), 1001, 1009)
    assert e.value.details["missing"] == [1003, 1006, 1007, 1009]


def test_unreadable_frame_is_named(tmp_path):
    _small_sequence(tmp_path, [1001, 1003])
    (tmp_path / "plate.1002.exr").write_bytes(b"not an exr at all" * 10)
    with pytest.raises(InvalidInput, match=r"plate\.1002\.exr"):
        read_sequence(str(tmp_path / "plate.####.exr"), 1001, 1003)


def test_mismatched_resolution_in_sequence(tmp_path):
    _small_sequence(tmp_path, [1001, 1002])
    _small_sequence(tmp_path, [1003], shape=(6, 9))
    with pytest.raises(InvalidInput, match=r"frame 1003 has resolution 9x6.*frame 1001 has 8x6"):
        read_sequence(str(tmp_path / "plate.####.exr"), 1001, 1003)


def test_check_finite_reports_count_and_first_location():
    a = np.zeros((3, 5, 7, 4), np.float32)
    a[1, 2, 3, 1] = np.nan
    a[2, 0, 0, 0] = np.inf
    with pytest.raises(InvalidInput, match=r"2 non-finite values.*frame 1002, x=13 y=22, channel G"):
        check_finite(a, "plate", channels="RGBA", frame_numbers=[1001, 1002, 1003], origin=(10, 20))
    check_finite(np.ones((4, 4)), "ok")  # finite: no error


def test_conform_to_window_places_a_tight_data_window():
    src = Window(2, 1, 3, 2)
    px = np.arange(6, dtype=np.float32).reshape(2, 3) + 1
    out = conform_to_window(px, src, Window(0, 0, 6, 4))
    assert out.shape == (4, 6) and out.sum() == px.sum()
    np.testing.assert_array_equal(out[1:3, 2:5], px)
