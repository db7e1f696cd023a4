"""Protocol constants and per-type body validation (PROTOCOL.md §3-§8).

Everything here is pure: functions take decoded msgpack values and return normalised copies
(defaults filled in) or raise. The split between the two error classes is deliberate:

- ``ProtocolError``: the message is malformed (missing/unknown field, wrong msgpack type) --
  a client bug;
- ``InvalidInput``: the message is well-formed but a value is unacceptable (out of range,
  bad shot name) -- a user mistake the host can show as-is.

Both name the offending field as a dotted path in ``details["field"]``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

from lorafx.errors import InvalidInput, ProtocolError

PROTOCOL_VERSION = 1
DEFAULT_ENDPOINT = "tcp://127.0.0.1:5555"

GiB = 1 << 30
MiB = 1 << 20


@dataclass(frozen=True)
class Limits:
    """Size limits of PROTOCOL.md §6. Both ends check them before allocating anything."""

    max_message_bytes: int = 2 * GiB
    max_frame_bytes: int = 512 * MiB
    max_header_bytes: int = 1 * MiB
    max_buffers: int = 4096

    def __post_init__(self):
        for name in ("max_message_bytes", "max_frame_bytes", "max_header_bytes", "max_buffers"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"Limits.{name} must be a positive int, got {value!r}")

    @property
    def max_part_bytes(self) -> int:
        """The largest single zmq frame allowed (for ZMQ_MAXMSGSIZE, which is per frame)."""
        return max(self.max_frame_bytes, self.max_header_bytes)

    def to_dict(self) -> dict:
        return {
            "max_message_bytes": self.max_message_bytes,
            "max_frame_bytes": self.max_frame_bytes,
            "max_header_bytes": self.max_header_bytes,
            "max_buffers": self.max_buffers,
        }


DEFAULT_LIMITS = Limits()

# --- message kinds ----------------------------------------------------------------------------

REQUEST = "request"  # not a wire value: requests carry their own type name
REPLY = "reply"
EVENT = "event"

HELLO = "hello"
SHOT_CREATE = "shot.create"
SHOT_PUT_FRAMES = "shot.put_frames"
SHOT_GET = "shot.get"
SHOT_LIST = "shot.list"
SHOT_DELETE = "shot.delete"
JOB_TRAIN = "job.train"
JOB_RENDER = "job.render"
JOB_MASK = "job.mask"
JOB_STATUS = "job.status"
JOB_CANCEL = "job.cancel"
JOB_LIST = "job.list"
SUBSCRIBE = "subscribe"
UNSUBSCRIBE = "unsubscribe"
RESULT_FETCH = "result.fetch"
LORA_LIST = "lora.list"
LORA_DELETE = "lora.delete"
HEALTH = "health"

EVENT_PROGRESS = "progress"
EVENT_JOB_STATE = "job_state"
EVENT_LOG = "log"
EVENT_TYPES = (EVENT_PROGRESS, EVENT_JOB_STATE, EVENT_LOG)
# Every event body carries all of these keys (nil when not applicable), so a C++ client can
# read them without existence checks.
EVENT_BODY_KEYS = ("job", "stage", "step", "total", "loss", "eta_s", "state", "message",
                   "level", "error")
LOG_LEVELS = ("debug", "info", "warning", "error")

ROLE_PLATE = "plate"
ROLE_MATTE = "matte"
ROLE_REFERENCE = "reference"
ROLE_RESULT = "result"
ROLES = (ROLE_PLATE, ROLE_MATTE, ROLE_REFERENCE, ROLE_RESULT)
UPLOAD_ROLES = (ROLE_PLATE, ROLE_MATTE, ROLE_REFERENCE)

# Wire dtype name -> numpy dtype. Always little-endian on the wire.
DTYPES: dict[str, np.dtype] = {
    "f16": np.dtype("<f2"),
    "f32": np.dtype("<f4"),
    "u8": np.dtype("u1"),
    "u16": np.dtype("<u2"),
}

DEFAULT_CHANNELS = {1: ("Y",), 3: ("R", "G", "B"), 4: ("R", "G", "B", "A")}
MAX_DIM = 32768
MAX_CHANNELS = 16

JOB_KINDS = ("train", "render", "mask")
JOB_STATES = ("queued", "running", "done", "failed", "cancelled")
TERMINAL_STATES = ("done", "failed", "cancelled")
CONFIGS = ("i2v", "none", "all", "masked", "appearance")
MASK_MODES = ("bbox", "dilate", "tight")
FETCH_MODES = ("buffers", "paths")
WILDCARD = "*"

MAX_SHOT_FRAMES = 100_000
MAX_SUBSCRIPTIONS = 1024
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
INT63_MAX = 2**63 - 1
UINT64_MAX = 2**64 - 1

NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
JOB_ID_RE = re.compile(r"[A-Za-z0-9_.:-]{1,128}")


# --- validator building blocks ----------------------------------------------------------------
# A validator is fn(value, field_path) -> normalised value. Wrong msgpack type -> ProtocolError,
# unacceptable value -> InvalidInput; both carry the dotted field path.

Validator = Callable[[Any, str], Any]


def _type_error(path: str, expected: str, value: Any) -> ProtocolError:
    return ProtocolError(f"{path}: expected {expected}, got {type(value).__name__}",
                         field=path, expected=expected)


def _value_error(path: str, message: str, value: Any = None, **details) -> InvalidInput:
    shown = value if isinstance(value, (int, float, bool, type(None))) else repr(value)[:80]
    return InvalidInput(f"{path}: {message}", field=path, value=shown, **details)


def Int(lo: int, hi: int) -> Validator:
    def check(value, path):
        if not isinstance(value, int) or isinstance(value, bool):
            raise _type_error(path, "int", value)
        if not lo <= value <= hi:
            raise _value_error(path, f"must be in [{lo}, {hi}], got {value}", value,
                               limit=[lo, hi])
        return int(value)
    return check


def Float(lo: float, hi: float) -> Validator:
    def check(value, path):
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise _type_error(path, "float", value)
        value = float(value)
        if not math.isfinite(value) or not lo <= value <= hi:
            raise _value_error(path, f"must be a finite number in [{lo}, {hi}], got {value}",
                               value, limit=[lo, hi])
        return value
    return check


def Bool() -> Validator:
    def check(value, path):
        if not isinstance(value, bool):
            raise _type_error(path, "bool", value)
        return value
    return check


def Str(lo: int = 0, hi: int = 4096, *, pattern: re.Pattern | None = None,
        choices: tuple[str, ...] | None = None, what: str = "") -> Validator:
    def check(value, path):
        if not isinstance(value, str):
            raise _type_error(path, "str", value)
        if choices is not None:
            if value not in choices:
                raise _value_error(path, f"must be one of {', '.join(choices)}; got {value!r}",
                                   value, choices=list(choices))
            return value
        if not lo <= len(value) <= hi:
            raise _value_error(path, f"length must be in [{lo}, {hi}], got {len(value)}", value,
                               limit=[lo, hi])
        if pattern is not None and not pattern.fullmatch(value):
            raise _value_error(path, f"{what or 'value'} {value!r} must match "
                                     f"{pattern.pattern}", value, pattern=pattern.pattern)
        return value
    return check


def Nullable(inner: Validator) -> Validator:
    def check(value, path):
        return None if value is None else inner(value, path)
    return check


def List(item: Validator, lo: int, hi: int) -> Validator:
    def check(value, path):
        if not isinstance(value, (list, tuple)):
            raise _type_error(path, "list", value)
        if not lo <= len(value) <= hi:
            raise _value_error(path, f"must have {lo} to {hi} items, got {len(value)}",
                               len(value), limit=[lo, hi])
        return [item(v, f"{path}[{i}]") for i, v in enumerate(value)]
    return check


def _name(value, path):
    value = Str(1, 64, pattern=NAME_RE, what="name")(value, path)
    if value in (".", ".."):
        raise _value_error(path, f"name {value!r} is reserved", value)
    return value


ShotName = LoraName = _name
JobId = Str(1, 128, pattern=JOB_ID_RE, what="job id")
Frame = Int(INT32_MIN, INT32_MAX)
PathStr = Str(1, 4096)


def _job_or_wildcard(value, path):
    if value == WILDCARD:
        return value
    return JobId(value, path)


def _settings_value(value, path, depth):
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _value_error(path, "must be finite", value)
        return value
    if isinstance(value, str):
        return Str(0, 4096)(value, path)
    if depth >= 4:
        raise _value_error(path, "settings nest at most 4 levels deep", None)
    if isinstance(value, (list, tuple)):
        if len(value) > 4096:
            raise _value_error(path, f"at most 4096 items, got {len(value)}", len(value))
        return [_settings_value(v, f"{path}[{i}]", depth + 1) for i, v in enumerate(value)]
    if isinstance(value, dict):
        return _settings_map(value, path, depth + 1)
    raise _type_error(path, "nil, bool, int, float, str, list or map", value)


def _settings_map(value, path, depth=0):
    if not isinstance(value, dict):
        raise _type_error(path, "map", value)
    if len(value) > 256:
        raise _value_error(path, f"at most 256 keys, got {len(value)}", len(value))
    out = {}
    for k, v in value.items():
        if not isinstance(k, str) or not 1 <= len(k) <= 64:
            raise ProtocolError(f"{path}: keys must be str of 1 to 64 characters, got {k!r}"[:200],
                                field=path)
        out[k] = _settings_value(v, f"{path}.{k}", depth)
    return out


def Settings(value, path):
    return _settings_map(value, path)


def _point(value, path):
    pt = List(Float(-1e6, 1e6), 2, 2)(value, path)
    return [pt[0], pt[1]]


# --- frame descriptors (PROTOCOL.md §5) -------------------------------------------------------

_DESCRIPTOR_KEYS = frozenset(("frame", "role", "buf", "dtype", "shape", "channels", "path",
                              "colorspace"))


def descriptor_nbytes(dtype: str, shape: list[int]) -> int:
    """Exact byte size of a described buffer (Python ints: no overflow on hostile shapes)."""
    n = DTYPES[dtype].itemsize
    for dim in shape:
        n *= dim
    return n


def validate_descriptor(d: Any, path: str, *, default_role: str | None = None,
                        roles: tuple[str, ...] = ROLES, max_buffer_index: int | None = None
                        ) -> dict:
    """Validate one frame descriptor; returns a normalised copy (role and channels filled in).

    Only the descriptor's own consistency is checked here; that `buf` names a real zmq frame of
    the right size is the codec's job (it has the frames).
    """
    if not isinstance(d, dict):
        raise _type_error(path, "map (frame descriptor)", d)
    unknown = set(d) - _DESCRIPTOR_KEYS
    if unknown:
        name = sorted(map(str, unknown))[0]
        raise ProtocolError(f"{path}: unknown descriptor field {name!r}", field=f"{path}.{name}")
    if "frame" not in d:
        raise ProtocolError(f"{path}.frame: required", field=f"{path}.frame")
    out = {"frame": Frame(d["frame"], f"{path}.frame")}
    role = d.get("role", default_role)
    if role is None:
        raise ProtocolError(f"{path}.role: required", field=f"{path}.role")
    out["role"] = Str(choices=roles)(role, f"{path}.role")
    has_buf, has_path = "buf" in d, "path" in d
    if has_buf == has_path:
        raise ProtocolError(f"{path}: exactly one of 'buf' (inline) or 'path' is required",
                            field=path)
    if has_buf:
        for key in ("dtype", "shape"):
            if key not in d:
                raise ProtocolError(f"{path}.{key}: required with 'buf'", field=f"{path}.{key}")
        hi = max_buffer_index if max_buffer_index is not None else INT32_MAX
        buf = d["buf"]
        if not isinstance(buf, int) or isinstance(buf, bool):
            raise _type_error(f"{path}.buf", "int", buf)
        if not 1 <= buf <= hi:
            raise ProtocolError(f"{path}.buf: {buf} names no buffer frame (message has "
                                f"{hi} buffer frames; frame 0 is the header)",
                                field=f"{path}.buf", value=buf)
        out["buf"] = buf
        dtype = d["dtype"]
        if not isinstance(dtype, str):
            raise _type_error(f"{path}.dtype", "str", dtype)
        if dtype not in DTYPES:
            raise ProtocolError(f"{path}.dtype: must be one of {', '.join(DTYPES)}; got "
                                f"{dtype[:16]!r}", field=f"{path}.dtype")
        out["dtype"] = dtype
        shape = d["shape"]
        if not isinstance(shape, (list, tuple)) or len(shape) != 3:
            raise ProtocolError(f"{path}.shape: expected [H, W, C]", field=f"{path}.shape")
        for i, (dim, hi) in enumerate(zip(shape, (MAX_DIM, MAX_DIM, MAX_CHANNELS))):
            if not isinstance(dim, int) or isinstance(dim, bool) or not 1 <= dim <= hi:
                raise ProtocolError(f"{path}.shape[{i}]: must be an int in [1, {hi}], got "
                                    f"{str(dim)[:24]}", field=f"{path}.shape[{i}]")
        out["shape"] = [int(x) for x in shape]
        channels = d.get("channels")
        n = out["shape"][2]
        if channels is None:
            if n not in DEFAULT_CHANNELS:
                raise ProtocolError(f"{path}.channels: required for {n} channels",
                                    field=f"{path}.channels")
            channels = list(DEFAULT_CHANNELS[n])
        channels = List(Str(1, 32), 1, MAX_CHANNELS)(channels, f"{path}.channels")
        if len(channels) != n or len(set(channels)) != n:
            raise ProtocolError(f"{path}.channels: need {n} unique names to match shape, got "
                                f"{channels}", field=f"{path}.channels")
        out["channels"] = channels
    else:
        for key in ("dtype", "shape"):
            if key in d:
                raise ProtocolError(f"{path}.{key}: not allowed with 'path'",
                                    field=f"{path}.{key}")
        out["path"] = PathStr(d["path"], f"{path}.path")
        if d.get("channels") is not None:
            out["channels"] = List(Str(1, 32), 1, MAX_CHANNELS)(d["channels"],
                                                                 f"{path}.channels")
    if d.get("colorspace") is not None:
        out["colorspace"] = Str(1, 128)(d["colorspace"], f"{path}.colorspace")
    return out


def Descriptors(lo: int, hi: int, roles: tuple[str, ...]) -> Validator:
    def check(value, path):
        items = List(lambda v, p: v, lo, hi)(value, path)
        return [validate_descriptor(d, f"{path}[{i}]", roles=roles) for i, d in enumerate(items)]
    return check


# --- request schemas (PROTOCOL.md §7) ---------------------------------------------------------

_REQUIRED = object()


@dataclass(frozen=True)
class Field:
    check: Validator
    default: Any = _REQUIRED

    @property
    def required(self) -> bool:
        return self.default is _REQUIRED


def _f(check, default=_REQUIRED):
    return Field(check, default)


NullFrame = Nullable(Frame)
_EMPTY_LIST: tuple = ()  # defaults are copied on use, never shared

REQUEST_SCHEMAS: dict[str, dict[str, Field]] = {
    HELLO: {
        "client": _f(Str(1, 128)),
        "client_version": _f(Str(0, 64), ""),
        "host": _f(Str(0, 128), ""),
    },
    SHOT_CREATE: {
        "name": _f(ShotName),
        "first": _f(Frame),
        "last": _f(Frame),
        "colorspace": _f(Nullable(Str(1, 128)), None),
        "settings": _f(Settings, {}),
        "plate": _f(Nullable(PathStr), None),
        "matte": _f(Nullable(PathStr), None),
        "matte_channel": _f(Str(1, 32), "A"),
        "replace": _f(Bool(), False),
    },
    SHOT_PUT_FRAMES: {
        "shot": _f(ShotName),
        "role": _f(Str(choices=UPLOAD_ROLES)),
        # Descriptors are checked in the cross-field rule below (they inherit the body role).
        "frames": _f(List(lambda v, p: v, 1, DEFAULT_LIMITS.max_buffers)),
    },
    SHOT_GET: {"name": _f(ShotName)},
    SHOT_LIST: {},
    SHOT_DELETE: {"name": _f(ShotName), "delete_loras": _f(Bool(), False)},
    JOB_TRAIN: {
        "shot": _f(ShotName),
        "settings": _f(Settings, {}),
        "lora": _f(Nullable(LoraName), None),
        "resume": _f(Bool(), True),
    },
    JOB_RENDER: {
        "shot": _f(ShotName),
        "seed": _f(Int(0, UINT64_MAX), 0),
        "steps": _f(Int(1, 1000), 30),
        "cfg": _f(Float(0.0, 100.0), 5.0),
        "shift": _f(Float(0.0, 100.0), 5.0),
        "sampler": _f(Str(1, 32), "euler"),
        "lora": _f(Nullable(LoraName), None),
        "first": _f(NullFrame, None),
        "last": _f(NullFrame, None),
        "caption": _f(Nullable(Str(0, 4096)), None),
        "frames": _f(Descriptors(0, 16, (ROLE_REFERENCE,)), _EMPTY_LIST),
        "settings": _f(Settings, {}),
    },
    JOB_MASK: {
        "shot": _f(ShotName),
        "frame": _f(Frame),
        "positive": _f(List(_point, 1, 64)),
        "negative": _f(List(_point, 0, 64), _EMPTY_LIST),
        "mode": _f(Str(choices=MASK_MODES), "bbox"),
        "dilate": _f(Int(0, 1024), 0),
        "first": _f(NullFrame, None),
        "last": _f(NullFrame, None),
    },
    JOB_STATUS: {"job": _f(JobId)},
    JOB_CANCEL: {"job": _f(JobId)},
    JOB_LIST: {
        "shot": _f(Nullable(ShotName), None),
        "states": _f(List(Str(choices=JOB_STATES), 0, len(JOB_STATES)), _EMPTY_LIST),
        "limit": _f(Int(1, 10000), 1000),
    },
    SUBSCRIBE: {"job": _f(_job_or_wildcard)},
    UNSUBSCRIBE: {"job": _f(_job_or_wildcard)},
    RESULT_FETCH: {
        "shot": _f(ShotName),
        "first": _f(NullFrame, None),
        "last": _f(NullFrame, None),
        "mode": _f(Str(choices=FETCH_MODES), "buffers"),
        "dtype": _f(Str(choices=("f16", "f32")), "f16"),
        "channels": _f(List(Str(1, 32), 0, MAX_CHANNELS), _EMPTY_LIST),
        "job": _f(Nullable(JobId), None),
    },
    LORA_LIST: {"shot": _f(Nullable(ShotName), None)},
    LORA_DELETE: {"name": _f(LoraName)},
    HEALTH: {},
}

REQUEST_TYPES: tuple[str, ...] = tuple(REQUEST_SCHEMAS)


def _check_range(body: dict, path: str, lo_key="first", hi_key="last"):
    lo, hi = body.get(lo_key), body.get(hi_key)
    if lo is not None and hi is not None and hi < lo:
        raise _value_error(f"{path}.{hi_key}", f"must be >= {lo_key} ({lo}), got {hi}", hi)


def _cross_shot_create(body, path):
    _check_range(body, path)
    count = body["last"] - body["first"] + 1
    if count > MAX_SHOT_FRAMES:
        raise _value_error(f"{path}.last", f"a shot has at most {MAX_SHOT_FRAMES} frames, this "
                                           f"range has {count}", count, limit=MAX_SHOT_FRAMES)


def _unique_frames(frames, path):
    seen = set()
    for i, d in enumerate(frames):
        if d["frame"] in seen:
            raise _value_error(f"{path}.frames[{i}].frame",
                               f"frame {d['frame']} appears twice in one batch", d["frame"])
        seen.add(d["frame"])


def _cross_put_frames(body, path):
    role = body["role"]
    frames = []
    for i, d in enumerate(body["frames"]):
        p = f"{path}.frames[{i}]"
        d = validate_descriptor(d, p, default_role=role, roles=UPLOAD_ROLES)
        if d["role"] != role:
            raise _value_error(f"{p}.role", f"batch role is {role!r}; every frame of one "
                                            f"shot.put_frames must have it", d["role"])
        frames.append(d)
    body["frames"] = frames
    _unique_frames(frames, path)


def _cross_render(body, path):
    _check_range(body, path)
    _unique_frames(body["frames"], path)


_CROSS_FIELD: dict[str, Callable[[dict, str], None]] = {
    SHOT_CREATE: _cross_shot_create,
    SHOT_PUT_FRAMES: _cross_put_frames,
    JOB_RENDER: _cross_render,
    JOB_MASK: lambda b, p: _check_range(b, p),
    RESULT_FETCH: lambda b, p: _check_range(b, p),
}


def validate_body(type_: str, body: Any, path: str = "body") -> dict:
    """Validate a request body of `type_`; returns a normalised copy with defaults filled."""
    schema = REQUEST_SCHEMAS.get(type_)
    if schema is None:
        raise ProtocolError(f"unknown request type {str(type_)[:64]!r}", field="type",
                            type=str(type_)[:64])
    if not isinstance(body, dict):
        raise _type_error(path, "map", body)
    unknown = [k for k in body if k not in schema]
    if unknown:
        name = str(unknown[0])[:64]
        raise ProtocolError(f"{path}.{name}: unknown field for {type_} (known: "
                            f"{', '.join(schema) or 'none'})", field=f"{path}.{name}")
    out = {}
    for name, spec in schema.items():
        if name in body:
            out[name] = spec.check(body[name], f"{path}.{name}")
        elif spec.required:
            raise ProtocolError(f"{path}.{name}: required by {type_}", field=f"{path}.{name}")
        else:
            default = spec.default
            out[name] = list(default) if isinstance(default, tuple) else (
                dict(default) if isinstance(default, dict) else default)
    cross = _CROSS_FIELD.get(type_)
    if cross is not None:
        cross(out, path)
    return out


# --- envelopes --------------------------------------------------------------------------------

def check_version(header: Mapping, *, local: str) -> None:
    """Raise VersionMismatch unless header['v'] is ours. `local` is "server" or "client": the
    side doing the check, so the message says who speaks what."""
    from lorafx.errors import VersionMismatch

    v = header.get("v")
    if not isinstance(v, int) or isinstance(v, bool):
        raise ProtocolError("header.v: protocol version (int) required", field="header.v")
    if v != PROTOCOL_VERSION:
        if local == "server":
            server_v, client_v = PROTOCOL_VERSION, v
            msg = (f"protocol version mismatch: this server speaks v{server_v}, the client sent "
                   f"v{client_v}")
        else:
            server_v, client_v = v, PROTOCOL_VERSION
            msg = (f"protocol version mismatch: the server speaks v{server_v}, this client "
                   f"speaks v{client_v}")
        raise VersionMismatch(msg, server_version=server_v, client_version=client_v)


def validate_request_id(value: Any) -> int | str:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise _type_error("header.id", "int or str", value)
    if isinstance(value, int) and not 0 <= value <= INT63_MAX:
        raise ProtocolError(f"header.id: int ids must be in [0, 2^63-1], got {value}",
                            field="header.id")
    if isinstance(value, str) and not 1 <= len(value) <= 128:
        raise ProtocolError("header.id: str ids must have 1 to 128 characters",
                            field="header.id")
    return value


def validate_request_header(header: Mapping) -> tuple[str, int | str, dict]:
    """Envelope of a request (version already checked): returns (type, id, raw body)."""
    if "id" not in header:
        raise ProtocolError("header.id: required", field="header.id")
    rid = validate_request_id(header["id"])
    type_ = header.get("type")
    if not isinstance(type_, str):
        raise _type_error("header.type", "str", type_)
    if type_ not in REQUEST_SCHEMAS:
        raise ProtocolError(f"unknown request type {type_[:64]!r}", field="header.type",
                            type=type_[:64])
    body = header.get("body")
    if not isinstance(body, dict):
        raise _type_error("header.body", "map", body)
    return type_, rid, body


def request_header(type_: str, rid: int | str, body: dict) -> dict:
    return {"v": PROTOCOL_VERSION, "type": type_, "id": rid, "body": body}


def reply_header(rid: int | str | None, body: dict | None = None,
                 error: dict | None = None) -> dict:
    if error is not None:
        return {"v": PROTOCOL_VERSION, "type": REPLY, "re": rid, "ok": False, "error": error}
    return {"v": PROTOCOL_VERSION, "type": REPLY, "re": rid, "ok": True, "body": body or {}}


def error_dict(code: str, message: str, details: dict | None = None) -> dict:
    return {"code": code, "message": message, "details": details or {}}


def validate_reply_header(header: Mapping) -> tuple[Any, bool, dict]:
    """Envelope of a reply (version already checked): returns (re, ok, body-or-error)."""
    ok = header.get("ok")
    if not isinstance(ok, bool):
        raise _type_error("header.ok", "bool", ok)
    if ok:
        body = header.get("body", {})
        if not isinstance(body, dict):
            raise _type_error("header.body", "map", body)
        return header.get("re"), True, body
    err = header.get("error")
    if not isinstance(err, dict) or not isinstance(err.get("code"), str):
        raise ProtocolError("header.error: {code, message, details} map required",
                            field="header.error")
    return header.get("re"), False, err


def event_header(event: str, seq: int, body: Mapping) -> dict:
    """A complete event header: every EVENT_BODY_KEYS key present (nil where unused)."""
    if event not in EVENT_TYPES:
        raise ValueError(f"event must be one of {EVENT_TYPES}, got {event!r}")
    full = {k: None for k in EVENT_BODY_KEYS}
    full.update(body)
    if not isinstance(full["job"], str):
        raise ValueError(f"event body needs a str 'job', got {full['job']!r}")
    return {"v": PROTOCOL_VERSION, "type": EVENT, "event": event, "seq": seq, "body": full}


# numpy dtype -> wire name, for both byte orders (the codec swaps big-endian input); a dict
# lookup on the dtype object because this runs for every frame sent.
_WIRE_NAME_BY_DTYPE = {np.dtype(s).newbyteorder(order): name
                       for name, s in (("f16", "<f2"), ("f32", "<f4"), ("u8", "u1"),
                                       ("u16", "<u2"))
                       for order in ("<", ">")}


def dtype_name(dtype: np.dtype) -> str:
    """numpy dtype -> wire name, or InvalidInput naming the accepted ones."""
    name = _WIRE_NAME_BY_DTYPE.get(dtype)
    if name is None:
        name = _WIRE_NAME_BY_DTYPE.get(np.dtype(dtype))
    if name is None:
        raise InvalidInput(f"pixel dtype {np.dtype(dtype).name} is not sent on the wire; use "
                           f"float16, float32, uint8 or uint16 (e.g. .astype(np.float16))",
                           dtype=str(np.dtype(dtype)))
    return name
