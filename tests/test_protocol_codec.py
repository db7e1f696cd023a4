"""Codec and message validation of the wire protocol (no sockets): bit-exact round trips,
limits enforced before allocation, malformed input -> ProtocolError only, and PROTOCOL.md
covering every type, field and code the code knows."""

from __future__ import annotations

import re
import tracemalloc
from pathlib import Path

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lorafx.errors import (
    ERRORS_BY_CODE,
    InvalidInput,
    ProtocolError,
    TooLarge,
    VersionMismatch,
)
from lorafx.protocol import codec
from lorafx.protocol import messages as m

H, W = 480, 832
PROTOCOL_MD = Path(m.__file__).with_name("PROTOCOL.md")


def _put_message(arrays, role="plate", first=1001):
    descs = [codec.inline_descriptor(a, frame=first + i, role=role, buf=i + 1)
             for i, a in enumerate(arrays)]
    header = m.request_header("shot.put_frames", 7, {"shot": "sh010", "role": role,
                                                     "frames": descs})
    return codec.encode(header, arrays)


def _on_the_wire(frames):
    """What the peer receives: independent byte buffers."""
    return [bytearray(f) for f in frames]


def test_f16_rgba_832x480_roundtrip_is_bit_exact_and_zero_copy():
    rng = np.random.default_rng(1)
    # Every 16-bit pattern is fair game, NaN payloads and infinities included.
    arrays = [rng.integers(0, 2**16, size=(H, W, 4), dtype=np.uint16).view(np.float16)
              for _ in range(3)]
    frames = _put_message(arrays)
    assert len(frames) == 4
    for a, f in zip(arrays, frames[1:]):  # encode hands out the array's own memory
        assert np.shares_memory(np.frombuffer(f, np.uint8), a)
    wire = _on_the_wire(frames)
    header, got = codec.decode(wire)
    assert sorted(got) == [1, 2, 3]
    for i, a in enumerate(arrays, start=1):
        assert got[i].dtype == np.float16 and got[i].shape == (H, W, 4)
        assert np.array_equal(got[i].view(np.uint16), a.view(np.uint16))
        # decode returns a view of the received buffer, not a copy
        assert np.shares_memory(got[i], np.frombuffer(wire[i], np.uint8))
    by_frame = codec.frames_by_number(header["body"], got)
    assert sorted(by_frame) == [1001, 1002, 1003]


@pytest.mark.parametrize("dtype,name", [(np.float32, "f32"), (np.uint8, "u8"),
                                        (np.uint16, "u16"), (np.float16, "f16")])
def test_every_wire_dtype_roundtrips(dtype, name):
    rng = np.random.default_rng(2)
    a = (rng.random((17, 31, 3)) * 200).astype(dtype)
    matte = (rng.random((17, 31)) * 200).astype(dtype)  # 2-D travels as (H, W, 1)
    frames = _put_message([a, matte])
    header, got = codec.decode(_on_the_wire(frames))
    assert header["body"]["frames"][0]["dtype"] == name
    assert np.array_equal(got[1], a) and got[1].dtype == a.dtype
    assert got[2].shape == (17, 31, 1) and np.array_equal(got[2][..., 0], matte)
    assert header["body"]["frames"][1]["channels"] == ["Y"]


def test_big_endian_and_strided_arrays_are_sent_little_endian_contiguous():
    a = np.arange(6 * 5 * 4, dtype=">f4").reshape(6, 5, 4)
    strided = np.arange(6 * 10 * 4, dtype=np.uint16).reshape(6, 10, 4)[:, ::2]
    frames = _put_message([a, strided])
    assert bytes(frames[1]) == a.astype("<f4").tobytes()
    _, got = codec.decode(_on_the_wire(frames))
    assert np.array_equal(got[1], a) and got[1].dtype == np.dtype("<f4")
    assert np.array_equal(got[2], strided)


def test_float64_is_refused_with_a_hint():
    with pytest.raises(InvalidInput, match="float16"):
        codec.wire_array(np.zeros((4, 4, 3)))


def test_encode_checks_descriptors_match_arrays():
    a = np.zeros((4, 4, 4), np.float16)
    d = codec.inline_descriptor(a, frame=1, role="plate", buf=1)
    header = m.request_header("shot.put_frames", 1, {"shot": "s", "role": "plate",
                                                     "frames": [dict(d, shape=[4, 4, 3])]})
    with pytest.raises(ValueError, match="says"):
        codec.encode(header, [a])
    with pytest.raises(ValueError, match="not described"):
        codec.encode(m.request_header("health", 1, {}), [a])


def test_declared_size_over_limit_is_rejected_before_allocation():
    # A 10-byte buffer that claims to be 32768 x 32768 x 16 float32 (64 GiB).
    header = m.request_header("shot.put_frames", 1, {"shot": "s", "role": "plate", "frames": [
        {"frame": 1, "buf": 1, "dtype": "f32", "shape": [32768, 32768, 16]}]})
    wire = [msgpack.packb(header), b"0123456789"]
    tracemalloc.start()
    try:
        with pytest.raises(TooLarge) as ei:
            codec.decode(wire)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, f"decoder allocated {peak} bytes for a hostile shape"
    assert ei.value.code == "too_large" and ei.value.details["limit"] == "max_frame_bytes"
    assert ei.value.details["size"] == 32768 * 32768 * 16 * 4


def test_declared_size_must_match_the_buffer_exactly():
    a = np.zeros((8, 8, 4), np.float16)
    frames = _on_the_wire(_put_message([a]))
    with pytest.raises(ProtocolError, match="needs 512 bytes but buffer frame 1 has 511"):
        codec.decode([frames[0], frames[1][:-1]])
    with pytest.raises(ProtocolError, match="has 513"):
        codec.decode([frames[0], frames[1] + b"x"])


@pytest.mark.parametrize("sizes,limit", [
    ([10] + [1] * 9, "max_buffers"),
    ([300, 1], "max_header_bytes"),
    ([10, 2000], "max_frame_bytes"),
    ([10, 1000, 1000, 1000, 1000], "max_message_bytes"),
])
def test_message_limits_from_part_sizes(sizes, limit):
    limits = m.Limits(max_message_bytes=3500, max_frame_bytes=1500, max_header_bytes=256,
                      max_buffers=8)
    with pytest.raises(TooLarge) as ei:
        codec.check_sizes(sizes, limits)
    assert ei.value.details["limit"] == limit
    # ...and decode applies the same checks before unpacking anything
    with pytest.raises(TooLarge):
        codec.decode([b"\x00" * n for n in sizes], limits=limits)


def test_encode_refuses_what_the_peer_would_reject():
    limits = m.Limits(max_message_bytes=1 << 20, max_frame_bytes=1000, max_header_bytes=4096,
                      max_buffers=4)
    a = np.zeros((20, 20, 4), np.float16)  # 3200 bytes > max_frame_bytes
    d = codec.inline_descriptor(a, frame=1, role="plate", buf=1)
    header = m.request_header("shot.put_frames", 1, {"shot": "s", "role": "plate",
                                                     "frames": [d]})
    with pytest.raises(TooLarge, match="buffer 1"):
        codec.encode(header, [a], limits=limits)


@pytest.mark.parametrize("raw,pattern", [
    (b"", "empty"),
    (b"\xc1", "not a valid msgpack"),  # reserved byte
    (msgpack.packb({"v": 1}) + b"\x00", "not a valid msgpack"),  # trailing bytes
    (msgpack.packb([1, 2]), "must be a msgpack map"),
    (b"\x91" * 5000 + b"\x00", "not a valid msgpack"),  # nesting bomb
    (msgpack.packb({1: 2}), "not a valid msgpack"),  # non-str key
    (b"\x81\xa1v\xa2\xff\xfe", "not a valid msgpack"),  # invalid UTF-8
    (msgpack.packb({"v": 1, "x": msgpack.ExtType(3, b"abc")}), "ext"),
    (msgpack.packb({"type": "hello"}), "version"),
    (msgpack.packb({"v": "1", "type": "hello"}), "version"),
    (msgpack.packb({"v": 1, "type": 5}), "header.type"),
    (b"\xdd\xff\xff\xff\xff", "not a valid msgpack"),  # array claiming 4G items
])
def test_malformed_headers_raise_protocol_error(raw, pattern):
    with pytest.raises(ProtocolError, match=pattern):
        codec.decode([raw])


def test_version_mismatch_names_both_versions():
    raw = msgpack.packb({"v": 2, "type": "hello", "id": 1, "body": {}})
    with pytest.raises(VersionMismatch) as ei:
        codec.decode([raw], local="server")
    assert "v1" in str(ei.value) and "v2" in str(ei.value)
    assert ei.value.details == {"server_version": 1, "client_version": 2}
    assert ei.value.code == "version_mismatch"
    with pytest.raises(VersionMismatch, match="server speaks v2, this client speaks v1"):
        codec.decode([raw], local="client")


@pytest.mark.parametrize("descs,nbuf,pattern", [
    ([], 1, r"buffer frames \[1\] are not described"),
    ([{"frame": 1, "buf": 1, "dtype": "f16", "shape": [1, 1, 1]}] * 2, 1, "described twice"),
    ([{"frame": 1, "buf": 2, "dtype": "f16", "shape": [1, 1, 1]}], 1, "names no buffer"),
    ([{"frame": 1, "buf": 1, "dtype": "f64", "shape": [1, 1, 1]}], 1, "dtype"),
    ([{"frame": 1, "buf": 1, "dtype": "f16", "shape": [1, 1]}], 1, "shape"),
    ([{"frame": 1, "buf": 1, "dtype": "f16", "shape": [1, -1, 1]}], 1, r"shape\[1\]"),
    ([{"frame": 1, "buf": True, "dtype": "f16", "shape": [1, 1, 1]}], 1, "buf"),
])
def test_buffers_must_be_described_exactly_once(descs, nbuf, pattern):
    header = m.request_header("shot.put_frames", 1, {"shot": "s", "role": "plate",
                                                     "frames": descs})
    with pytest.raises(ProtocolError, match=pattern):
        codec.decode([msgpack.packb(header)] + [b"\x00\x00"] * nbuf)


# --- property-based fuzzing of the decoder ----------------------------------------------------

FUZZ_LIMITS = m.Limits(max_message_bytes=1 << 16, max_frame_bytes=1 << 14,
                       max_header_bytes=1 << 12, max_buffers=8)
_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**64 - 1), st.floats(),
                     st.text(max_size=12), st.binary(max_size=12))
_values = st.recursive(_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=20)


def _valid_frames():
    a = np.arange(4 * 5 * 4, dtype=np.float16).reshape(4, 5, 4)
    b = np.arange(4 * 5, dtype=np.uint8).reshape(4, 5)
    return [bytes(f) for f in _put_message([a, b])]


@st.composite
def malformed_messages(draw):
    kind = draw(st.sampled_from(["random", "mutated", "fields", "truncated"]))
    if kind == "random":
        return draw(st.lists(st.binary(max_size=300), min_size=0, max_size=10))
    frames = _valid_frames()
    if kind == "truncated":
        i = draw(st.integers(0, len(frames) - 1))
        cut = draw(st.integers(0, max(0, len(frames[i]) - 1)))
        frames[i] = frames[i][:cut]
        return frames
    if kind == "mutated":
        i = draw(st.integers(0, len(frames) - 1))
        data = bytearray(frames[i])
        for _ in range(draw(st.integers(1, 4))):
            if data:
                data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        frames[i] = bytes(data)
        if draw(st.booleans()):
            frames = draw(st.permutations(frames))
        return frames
    # "fields": a well-formed msgpack header with hostile values in a descriptor
    header = msgpack.unpackb(frames[0])
    d = header["body"]["frames"][draw(st.integers(0, 1))]
    d[draw(st.sampled_from(["buf", "dtype", "shape", "frame", "channels", "role"]))] = draw(
        st.one_of(_values, st.lists(st.integers(-2**40, 2**40), min_size=3, max_size=3)))
    if draw(st.booleans()):
        header[draw(st.sampled_from(["v", "type", "id", "body"]))] = draw(_values)
    return [msgpack.packb(header)] + frames[1:draw(st.integers(1, 4))]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(malformed_messages())
def test_decoder_fuzz_raises_protocol_error_or_returns_consistent_views(frames):
    try:
        header, arrays = codec.decode(frames, limits=FUZZ_LIMITS)
    except ProtocolError:  # TooLarge and VersionMismatch are ProtocolErrors too
        return
    assert isinstance(header, dict)
    for buf, arr in arrays.items():
        assert arr.nbytes == len(frames[buf])
        assert arr.ndim == 3


# --- message validation -----------------------------------------------------------------------

@pytest.mark.parametrize("name", ["sh010", "A.b-c_9", "x" * 64])
def test_valid_shot_names(name):
    assert m.validate_body("shot.get", {"name": name}) == {"name": name}


@pytest.mark.parametrize("name", ["", "x" * 65, "a b", "../etc", "..", ".", "sh/010", "é"])
def test_invalid_shot_names_are_invalid_input_naming_the_field(name):
    with pytest.raises(InvalidInput) as ei:
        m.validate_body("shot.create", {"name": name, "first": 1, "last": 2})
    assert ei.value.details["field"] == "body.name"


def test_missing_unknown_and_wrongly_typed_fields_are_protocol_errors():
    with pytest.raises(ProtocolError, match=r"body\.shot: required by job\.render"):
        m.validate_body("job.render", {})
    with pytest.raises(ProtocolError, match=r"body\.sed: unknown field") as ei:
        m.validate_body("job.render", {"shot": "s", "sed": 3})
    assert ei.value.details["field"] == "body.sed"
    with pytest.raises(ProtocolError, match=r"body\.steps: expected int, got str"):
        m.validate_body("job.render", {"shot": "s", "steps": "30"})
    with pytest.raises(ProtocolError, match="expected int, got bool"):
        m.validate_body("job.render", {"shot": "s", "seed": True})
    with pytest.raises(ProtocolError, match="unknown request type"):
        m.validate_body("job.explode", {})


def test_render_defaults_and_value_limits():
    body = m.validate_body("job.render", {"shot": "s", "cfg": 7})
    assert body["seed"] == 0 and body["steps"] == 30 and body["cfg"] == 7.0
    assert body["shift"] == 5.0 and body["sampler"] == "euler" and body["frames"] == []
    for field, value in [("steps", 0), ("steps", 1001), ("cfg", float("nan")), ("seed", -1),
                         ("seed", 2**64)]:
        with pytest.raises(InvalidInput) as ei:
            m.validate_body("job.render", {"shot": "s", field: value})
        assert ei.value.details["field"] == f"body.{field}"
    with pytest.raises(InvalidInput, match=r"body\.last: must be >= first"):
        m.validate_body("job.render", {"shot": "s", "first": 10, "last": 9})
    with pytest.raises(InvalidInput, match=r"frames\[0\]\.role"):
        m.validate_body("job.render", {"shot": "s", "frames": [
            {"frame": 1, "role": "plate", "path": "/x.exr"}]})


def test_shot_create_range_rules():
    ok = m.validate_body("shot.create", {"name": "s", "first": 1001, "last": 1049})
    assert ok["colorspace"] is None and ok["settings"] == {} and ok["replace"] is False
    with pytest.raises(InvalidInput, match="last"):
        m.validate_body("shot.create", {"name": "s", "first": 1001, "last": 1000})
    with pytest.raises(InvalidInput, match="at most 100000 frames"):
        m.validate_body("shot.create", {"name": "s", "first": 0, "last": 100000})


def test_put_frames_descriptors_inherit_and_must_match_the_batch_role():
    d = {"frame": 1001, "buf": 1, "dtype": "f16", "shape": [2, 2, 4]}
    body = m.validate_body("shot.put_frames", {"shot": "s", "role": "matte", "frames": [d]})
    assert body["frames"][0]["role"] == "matte"
    assert body["frames"][0]["channels"] == ["R", "G", "B", "A"]
    with pytest.raises(InvalidInput, match="batch role is 'matte'"):
        m.validate_body("shot.put_frames", {"shot": "s", "role": "matte",
                                            "frames": [dict(d, role="plate")]})
    with pytest.raises(InvalidInput, match="appears twice"):
        m.validate_body("shot.put_frames", {"shot": "s", "role": "plate",
                                            "frames": [d, dict(d, buf=2)]})
    with pytest.raises(ProtocolError, match="exactly one of 'buf'"):
        m.validate_body("shot.put_frames", {"shot": "s", "role": "plate", "frames": [
            dict(d, path="/a.exr")]})
    with pytest.raises(ProtocolError, match="not allowed with 'path'"):
        m.validate_body("shot.put_frames", {"shot": "s", "role": "plate", "frames": [
            {"frame": 1, "path": "/a.exr", "dtype": "f16"}]})
    with pytest.raises(ProtocolError, match="channels: need 4 unique"):
        m.validate_body("shot.put_frames", {"shot": "s", "role": "plate", "frames": [
            dict(d, channels=["R", "R", "G", "B"])]})
    with pytest.raises(ProtocolError, match="channels: required for 2 channels"):
        m.validate_body("shot.put_frames", {"shot": "s", "role": "plate", "frames": [
            dict(d, shape=[2, 2, 2])]})


def test_settings_shape_is_bounded():
    ok = {"config": "masked", "steps": 100, "lr": 1e-4, "window": {"frames": 9, "ids": [1, 2]}}
    assert m.validate_body("job.train", {"shot": "s", "settings": ok})["settings"] == ok
    four = {"a": {"b": {"c": {"d": [1]}}}}  # four containers inside the settings map: fine
    assert m.validate_body("job.train", {"shot": "s", "settings": four})["settings"] == four
    deep = {"a": {"b": {"c": {"d": {"e": [1]}}}}}
    with pytest.raises(InvalidInput, match="4 levels"):
        m.validate_body("job.train", {"shot": "s", "settings": deep})
    with pytest.raises(InvalidInput, match="finite"):
        m.validate_body("job.train", {"shot": "s", "settings": {"lr": float("inf")}})


def test_mask_points_and_subscribe_wildcard():
    body = m.validate_body("job.mask", {"shot": "s", "frame": 1001, "positive": [[10, 20.5]]})
    assert body["positive"] == [[10.0, 20.5]] and body["negative"] == [] and body["mode"] == "bbox"
    with pytest.raises(InvalidInput, match="1 to 64 items"):
        m.validate_body("job.mask", {"shot": "s", "frame": 1, "positive": []})
    with pytest.raises(InvalidInput, match=r"positive\[0\]"):
        m.validate_body("job.mask", {"shot": "s", "frame": 1, "positive": [[1, 2, 3]]})
    assert m.validate_body("subscribe", {"job": "*"}) == {"job": "*"}
    with pytest.raises(InvalidInput):
        m.validate_body("subscribe", {"job": "a job"})


def test_event_header_always_carries_every_body_key():
    h = m.event_header("progress", 3, {"job": "j1", "step": 2, "total": 10})
    assert set(h["body"]) == set(m.EVENT_BODY_KEYS) and h["body"]["loss"] is None
    assert h["v"] == 1 and h["type"] == "event" and h["seq"] == 3
    with pytest.raises(ValueError):
        m.event_header("explosion", 1, {"job": "j1"})


# --- the spec covers the code -----------------------------------------------------------------

def _section(text: str, type_: str) -> str:
    start = text.index(f"### `{type_}`")
    end = text.find("\n### ", start + 1)
    return text[start:end if end > 0 else None]


def test_protocol_md_documents_every_type_field_code_and_event_key():
    text = PROTOCOL_MD.read_text()
    for type_, schema in m.REQUEST_SCHEMAS.items():
        heading = "subscribe" if type_ == "unsubscribe" else type_  # one section for both
        section = _section(text, heading)
        for field in schema:
            assert re.search(rf"`{re.escape(field)}[:`]", section), (type_, field)
    for code in ERRORS_BY_CODE:
        assert f"`{code}`" in text, code
    for key in m.EVENT_BODY_KEYS:
        assert f"`{key}:" in text, key
    for role in m.ROLES:
        assert f'`"{role}"`' in text, role
    for name in m.DTYPES:
        assert f'`"{name}"`' in text, name
    assert f"protocol, version {m.PROTOCOL_VERSION}" in text
    assert str(m.DEFAULT_LIMITS.max_message_bytes) in text
