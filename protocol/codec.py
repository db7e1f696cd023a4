"""Message framing (PROTOCOL.md §2, §5, §6): header + raw pixel buffers <-> zmq frames.

`encode` never copies a C-contiguous little-endian array: the array's memory becomes the zmq
frame (send with ``copy=False``). `decode` returns numpy views over the received frames, so a
3 MiB plate frame is never copied between the socket and the handler. Every size a peer declares
is checked against the limits and against the real frame length before anything is built from
it; malformed input raises ProtocolError (or its subclasses), never anything else.
"""

from __future__ import annotations

from pathlib import PurePath
from typing import Any, Mapping, Sequence

import msgpack
import numpy as np

from lorafx.errors import ProtocolError, TooLarge

from .messages import (
    DEFAULT_CHANNELS,
    DEFAULT_LIMITS,
    DTYPES,
    MAX_CHANNELS,
    MAX_DIM,
    Limits,
    check_version,
    descriptor_nbytes,
    dtype_name,
)

FrameLike = Any  # bytes | bytearray | memoryview | zmq.Frame


def _pack_default(obj):
    # Handlers naturally return numpy scalars and paths; the wire wants plain msgpack types.
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, PurePath):
        return str(obj)
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    raise TypeError(f"cannot encode {type(obj).__name__} in a message header")


def pack_header(header: Mapping) -> bytes:
    return msgpack.packb(header, use_bin_type=True, default=_pack_default)


def wire_array(array: np.ndarray) -> np.ndarray:
    """The array as it travels: (H, W, C), a wire dtype, little-endian, C-contiguous.
    No copy when it already is (the common case), and cheap to call again on the result."""
    a = array if type(array) is np.ndarray else np.asarray(array)
    dtype_name(a.dtype)  # raises InvalidInput for float64 & co.
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3:
        raise ValueError(f"pixel arrays must be (H, W) or (H, W, C), got shape {a.shape}")
    order = a.dtype.byteorder  # "|" for u8, "=" native, "<" / ">" explicit
    if order == ">" or (order == "=" and not np.little_endian):
        a = a.astype(a.dtype.newbyteorder("<"))
    if not a.flags.c_contiguous:
        a = np.ascontiguousarray(a)
    return a


def inline_descriptor(array: np.ndarray, *, frame: int, role: str, buf: int,
                      channels: Sequence[str] | None = None,
                      colorspace: str | None = None) -> dict:
    """Descriptor for `array` sent as zmq frame `buf` (1 = first buffer after the header)."""
    a = wire_array(array)
    h, w, c = a.shape
    if channels is None:
        if c not in DEFAULT_CHANNELS:
            raise ValueError(f"channels must be named for {c}-channel frames")
        channels = DEFAULT_CHANNELS[c]
    if len(channels) != c:
        raise ValueError(f"{len(channels)} channel names for a {c}-channel frame")
    d = {"frame": int(frame), "role": role, "buf": int(buf), "dtype": dtype_name(a.dtype),
         "shape": [h, w, c], "channels": list(channels)}
    if colorspace is not None:
        d["colorspace"] = colorspace
    return d


def path_descriptor(path: str | PurePath, *, frame: int, role: str,
                    channels: Sequence[str] | None = None, colorspace: str | None = None) -> dict:
    d = {"frame": int(frame), "role": role, "path": str(path)}
    if channels is not None:
        d["channels"] = list(channels)
    if colorspace is not None:
        d["colorspace"] = colorspace
    return d


def _described(header: Mapping) -> list[tuple[int, dict]]:
    """(position, descriptor) for every inline descriptor in header.body.frames."""
    body = header.get("body")
    frames = body.get("frames") if isinstance(body, dict) else None
    if not isinstance(frames, list):
        return []
    return [(i, d) for i, d in enumerate(frames) if isinstance(d, dict) and "buf" in d]


def encode(header: Mapping, arrays: Sequence[np.ndarray] | Mapping[int, np.ndarray] = (),
           *, limits: Limits = DEFAULT_LIMITS) -> list:
    """Header + arrays -> zmq frames ``[header_bytes, buf1, ...]`` for send_multipart.

    ``arrays[i]`` becomes zmq frame ``i + 1`` (or pass ``{buf: array}``); each must be described
    by exactly one inline descriptor in ``header["body"]["frames"]`` whose dtype and shape match
    (build them with `inline_descriptor`). Limits are checked so we never send what the peer
    must reject. Buffers are returned as memoryviews of the arrays: no pixel is copied.
    """
    if isinstance(arrays, Mapping):
        if sorted(arrays) != list(range(1, len(arrays) + 1)):
            raise ValueError(f"buffer indices must be 1..{len(arrays)}, got {sorted(arrays)}")
        arrays = [arrays[i] for i in range(1, len(arrays) + 1)]
    wire = [wire_array(a) for a in arrays]
    if len(wire) > limits.max_buffers:
        raise TooLarge(f"{len(wire)} buffers in one message; the limit is {limits.max_buffers}",
                       limit="max_buffers", size=len(wire), max=limits.max_buffers)
    seen: set[int] = set()
    for pos, d in _described(header):
        buf = d.get("buf")
        if not isinstance(buf, int) or not 1 <= buf <= len(wire) or buf in seen:
            raise ValueError(f"body.frames[{pos}].buf={buf!r}: must name one of the "
                             f"{len(wire)} attached arrays, once")
        seen.add(buf)
        a = wire[buf - 1]
        if d.get("dtype") != dtype_name(a.dtype) or list(d.get("shape", ())) != list(a.shape):
            raise ValueError(f"body.frames[{pos}] says {d.get('dtype')} {d.get('shape')} but "
                             f"array {buf} is {dtype_name(a.dtype)} {list(a.shape)}")
    if len(seen) != len(wire):
        missing = sorted(set(range(1, len(wire) + 1)) - seen)
        raise ValueError(f"arrays {missing} are not described in body.frames")
    head = pack_header(header)
    if len(head) > limits.max_header_bytes:
        raise TooLarge(f"header is {len(head)} bytes; the limit is {limits.max_header_bytes}",
                       limit="max_header_bytes", size=len(head), max=limits.max_header_bytes)
    total = len(head)
    for i, a in enumerate(wire, start=1):
        if a.nbytes > limits.max_frame_bytes:
            raise TooLarge(f"buffer {i} is {a.nbytes} bytes; the limit is "
                           f"{limits.max_frame_bytes}", limit="max_frame_bytes", size=a.nbytes,
                           max=limits.max_frame_bytes)
        total += a.nbytes
    if total > limits.max_message_bytes:
        raise TooLarge(f"message is {total} bytes; the limit is {limits.max_message_bytes}",
                       limit="max_message_bytes", size=total, max=limits.max_message_bytes)
    return [head, *(memoryview(a).cast("B") for a in wire)]


def _buffer(frame: FrameLike) -> memoryview:
    buf = getattr(frame, "buffer", None)  # zmq.Frame (received with copy=False)
    mv = memoryview(buf if buf is not None else frame)
    if mv.ndim != 1 or mv.itemsize != 1:
        mv = mv.cast("B")
    return mv


class PartBudget:
    """Message-level limits checked part by part as a multipart message is read (header
    first), so a receiver can stop keeping parts the moment a limit is crossed."""

    def __init__(self, limits: Limits = DEFAULT_LIMITS):
        self.limits = limits
        self.count = 0
        self.total = 0

    def add(self, size: int) -> None:
        lim, index = self.limits, self.count
        self.count += 1
        self.total += size
        if index == 0 and size > lim.max_header_bytes:
            raise TooLarge(f"header is {size} bytes; the limit is {lim.max_header_bytes}",
                           limit="max_header_bytes", size=size, max=lim.max_header_bytes)
        if index > lim.max_buffers:
            raise TooLarge(f"more than {lim.max_buffers} buffer frames in one message",
                           limit="max_buffers", size=index, max=lim.max_buffers)
        if index > 0 and size > lim.max_frame_bytes:
            raise TooLarge(f"buffer frame {index} is {size} bytes; the limit is "
                           f"{lim.max_frame_bytes}", limit="max_frame_bytes", size=size,
                           max=lim.max_frame_bytes)
        if self.total > lim.max_message_bytes:
            raise TooLarge(f"message is over {lim.max_message_bytes} bytes (at least "
                           f"{self.total})", limit="max_message_bytes", size=self.total,
                           max=lim.max_message_bytes)


def check_sizes(sizes: Sequence[int], limits: Limits = DEFAULT_LIMITS) -> None:
    """Message-level limits from part sizes alone (header first). Raises TooLarge."""
    if not sizes:
        raise ProtocolError("empty message: frame 0 (the header) is missing")
    if len(sizes) - 1 > limits.max_buffers:  # before walking a huge part list
        raise TooLarge(f"{len(sizes) - 1} buffer frames; the limit is {limits.max_buffers}",
                       limit="max_buffers", size=len(sizes) - 1, max=limits.max_buffers)
    budget = PartBudget(limits)
    for n in sizes:
        budget.add(n)


def _ext_rejected(code, data):
    raise ProtocolError(f"msgpack ext type {code} is not allowed in headers")


def unpack_header(data: FrameLike, limits: Limits = DEFAULT_LIMITS) -> dict:
    mv = _buffer(data)
    if len(mv) > limits.max_header_bytes:
        raise TooLarge(f"header is {len(mv)} bytes; the limit is {limits.max_header_bytes}",
                       limit="max_header_bytes", size=len(mv), max=limits.max_header_bytes)
    if len(mv) == 0:
        raise ProtocolError("header frame is empty (expected a msgpack map)")
    try:
        # unpackb caps every declared str/array/map length at len(mv) (already <= the header
        # limit), so a hostile length prefix cannot make msgpack allocate more than that.
        # max_ext_len=0 rejects every ext type, timestamps included.
        header = msgpack.unpackb(mv, raw=False, strict_map_key=True, use_list=True,
                                 ext_hook=_ext_rejected, max_ext_len=0)
    except ProtocolError:
        raise
    except Exception as e:  # ExtraData, UnicodeDecodeError, ValueError, recursion...
        raise ProtocolError(f"header is not a valid msgpack object: {type(e).__name__}: "
                            f"{str(e)[:120]}") from None
    if not isinstance(header, dict):
        raise ProtocolError(f"header must be a msgpack map, got {type(header).__name__}")
    return header


def decode(frames: Sequence[FrameLike], *, limits: Limits = DEFAULT_LIMITS,
           local: str = "server") -> tuple[dict, dict[int, np.ndarray]]:
    """zmq frames -> (header, {buf: array view}).

    Order of checks: part count and sizes, header unpack, protocol version (before anything
    else in the header, so a v2 peer gets version_mismatch and not a confusing field error),
    then every inline descriptor's declared size against the limits and the real frame length.
    `local` ("server"/"client") only words the version-mismatch message.
    """
    views = [_buffer(f) for f in frames]
    check_sizes([len(v) for v in views], limits)
    header = unpack_header(views[0], limits)
    check_version(header, local=local)
    if not isinstance(header.get("type"), str):
        raise ProtocolError("header.type: str required", field="header.type")
    nbuf = len(views) - 1
    body = header.get("body")
    listed = body.get("frames") if isinstance(body, dict) else None
    if isinstance(listed, list) and len(listed) > limits.max_buffers:
        raise TooLarge(f"body.frames has {len(listed)} entries; the limit is "
                       f"{limits.max_buffers}", limit="max_buffers", size=len(listed),
                       max=limits.max_buffers)
    arrays: dict[int, np.ndarray] = {}
    for pos, d in _described(header):
        path = f"body.frames[{pos}]"
        buf, dtype, shape = _inline_geometry(d, path, nbuf)
        if buf in arrays:
            raise ProtocolError(f"{path}.buf: buffer frame {buf} is described twice",
                                field=f"{path}.buf")
        nbytes = descriptor_nbytes(dtype, shape)
        if nbytes > limits.max_frame_bytes:
            raise TooLarge(f"{path}: declares {nbytes} bytes; the limit is "
                           f"{limits.max_frame_bytes}", limit="max_frame_bytes", size=nbytes,
                           max=limits.max_frame_bytes, field=f"{path}.shape")
        actual = len(views[buf])
        if nbytes != actual:
            raise ProtocolError(f"{path}: {dtype} {shape} needs {nbytes} bytes but buffer frame "
                                f"{buf} has {actual}", field=f"{path}.shape", declared=nbytes,
                                actual=actual)
        arrays[buf] = np.frombuffer(views[buf], dtype=DTYPES[dtype]).reshape(shape)
    if len(arrays) != nbuf:
        missing = [i for i in range(1, nbuf + 1) if i not in arrays][:8]
        raise ProtocolError(f"buffer frames {missing} are not described by any body.frames "
                            f"entry with 'buf'", field="body.frames")
    return header, arrays


def _inline_geometry(d: dict, path: str, nbuf: int) -> tuple[int, str, list[int]]:
    buf, dtype, shape = d.get("buf"), d.get("dtype"), d.get("shape")
    if not isinstance(buf, int) or isinstance(buf, bool) or not 1 <= buf <= nbuf:
        raise ProtocolError(f"{path}.buf: {str(buf)[:24]} names no buffer frame (this message "
                            f"has {nbuf}; frame 0 is the header)", field=f"{path}.buf")
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise ProtocolError(f"{path}.dtype: must be one of {', '.join(DTYPES)}",
                            field=f"{path}.dtype")
    if not isinstance(shape, list) or len(shape) != 3:
        raise ProtocolError(f"{path}.shape: expected [H, W, C]", field=f"{path}.shape")
    for i, (dim, hi) in enumerate(zip(shape, (MAX_DIM, MAX_DIM, MAX_CHANNELS))):
        if not isinstance(dim, int) or isinstance(dim, bool) or not 1 <= dim <= hi:
            raise ProtocolError(f"{path}.shape[{i}]: must be an int in [1, {hi}]",
                                field=f"{path}.shape[{i}]")
    return buf, dtype, shape


def frames_by_number(body: Mapping, arrays: Mapping[int, np.ndarray]
                     ) -> dict[int, np.ndarray | str]:
    """{plate frame number: array view (inline) or path str} from a decoded body's frames."""
    out: dict[int, np.ndarray | str] = {}
    for d in body.get("frames", ()):
        out[d["frame"]] = arrays[d["buf"]] if "buf" in d else d["path"]
    return out
