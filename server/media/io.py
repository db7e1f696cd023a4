"""Frame and sequence I/O through OpenImageIO, and the atomic EXR writer.

Conventions
- Pixels are float32 numpy arrays (H, W, C) covering the **data window** only (what OIIO's
  `read_image` returns); the data window and display window are kept beside them as `Window`s in
  OIIO's image coordinates, so negative-origin overscan survives a read/write round trip.
- Channels are always looked up by name (`Frame.channel_index`): EXR read order may differ from
  the order the file was written in.
- Only subimage / part 0 of a multi-part file is read.
"""

from __future__ import annotations

import os
import re
import uuid
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import numpy as np
import OpenImageIO as oiio

from lorafx.errors import InvalidInput

__all__ = [
    "Window",
    "Frame",
    "SequenceSpec",
    "PlateSequence",
    "read_frame",
    "read_sequence",
    "write_exr_atomic",
    "check_finite",
    "find_channels",
    "conform_to_window",
    "format_frame_ranges",
    "sequence_path",
    "METADATA_PREFIX",
]

METADATA_PREFIX = "lorafx/"

# Attributes OIIO derives from the spec or the writer itself; copying them from a source file
# onto a new spec would be wrong (stale chunking) or rejected.
_NON_COPYABLE_ATTRIBUTES = {
    "oiio:subimages",
    "oiio:RowsPerChunk",
    "compression",
    "openexr:lineOrder",
    "oiio:ColorSpace",
    "oiio:BitsPerSample",
    "openexr:chunkCount",
    "openexr:version",
}


@dataclass(frozen=True)
class Window:
    """An integer pixel rectangle in image coordinates (OIIO x/y/width/height)."""

    x: int
    y: int
    width: int
    height: int

    @property
    def x_end(self) -> int:
        return self.x + self.width

    @property
    def y_end(self) -> int:
        return self.y + self.height

    @property
    def size(self) -> tuple[int, int]:
        return (self.width, self.height)

    def __str__(self) -> str:
        return f"{self.width}x{self.height}+{self.x}+{self.y}"


@dataclass
class Frame:
    """One image as read from disk."""

    pixels: np.ndarray  # float32 (H, W, C), the data window
    channels: tuple[str, ...]
    data_window: Window
    display_window: Window
    pixel_type: str  # OIIO type name of the file ("half", "float", "uint8", ...)
    channel_types: tuple[str, ...] = ()  # per channel, when the file stores mixed types
    attributes: dict = field(default_factory=dict)  # spec attributes: name -> value
    attribute_types: dict = field(default_factory=dict)  # name -> OIIO TypeDesc string
    path: str = ""

    def channel_index(self, name: str) -> int:
        return find_channels(self.channels, (name,), what=self.path or "frame")[0]

    def channel(self, name: str) -> np.ndarray:
        """One channel (H, W) by name, a view into `pixels`."""
        return self.pixels[..., self.channel_index(name)]

    def rgb_indices(self) -> tuple[int, int, int]:
        return tuple(find_channels(self.channels, ("R", "G", "B"), what=self.path or "frame"))

    @property
    def height(self) -> int:
        return self.pixels.shape[0]

    @property
    def width(self) -> int:
        return self.pixels.shape[1]


def find_channels(channels: Sequence[str], wanted: Iterable[str], what: str = "image") -> list[int]:
    """Indices of `wanted` channel names in `channels`. Exact names win; otherwise a
    case-insensitive match (some writers use lowercase "r,g,b"). Missing -> InvalidInput."""
    out = []
    lower = [c.lower() for c in channels]
    for name in wanted:
        if name in channels:
            out.append(list(channels).index(name))
        elif lower.count(name.lower()) == 1:
            out.append(lower.index(name.lower()))
        else:
            raise InvalidInput(
                f"{what}: no channel {name!r} (channels are {', '.join(channels) or 'none'})",
                channel=name, channels=list(channels),
            )
    return out


def _spec_window(spec) -> tuple[Window, Window]:
    data = Window(spec.x, spec.y, spec.width, spec.height)
    display = Window(spec.full_x, spec.full_y, spec.full_width, spec.full_height)
    return data, display


def read_windows(path: str | os.PathLike) -> tuple[Window, Window]:
    """(data window, display window) of an image, from its header alone (no pixels read)."""
    path = os.fspath(path)
    inp = oiio.ImageInput.open(path) if os.path.isfile(path) else None
    if inp is None:
        raise InvalidInput(f"cannot read {path}: {oiio.geterror() or 'no such file'}", path=path)
    try:
        return _spec_window(inp.spec())
    finally:
        inp.close()


def read_frame(path: str | os.PathLike) -> Frame:
    """Read one image (any format OIIO reads: EXR half/float, DPX, TIFF, PNG, JPEG...) as float32.

    Integer formats are normalised to [0, 1] by OIIO (uint8 255 -> 1.0); float data is returned
    as stored. Unreadable or missing file -> InvalidInput naming it."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise InvalidInput(f"cannot read {path}: no such file", path=path)
    inp = oiio.ImageInput.open(path)
    if inp is None:
        raise InvalidInput(f"cannot read {path}: {oiio.geterror() or 'unknown format'}", path=path)
    try:
        spec = inp.spec()
        if spec.deep:
            raise InvalidInput(f"cannot read {path}: deep images are not supported", path=path)
        pixels = inp.read_image(0, 0, 0, spec.nchannels, "float")
        if pixels is None:
            raise InvalidInput(f"cannot read {path}: {inp.geterror() or 'read failed'}", path=path)
    finally:
        inp.close()
    pixels = np.asarray(pixels, dtype=np.float32)
    if pixels.ndim == 2:  # single-channel reads may come back 2-D
        pixels = pixels[..., None]
    if pixels.ndim == 4:  # volume images: only 2-D images are supported
        raise InvalidInput(f"cannot read {path}: volume images (depth > 1) are not supported",
                           path=path)
    data, display = _spec_window(spec)
    attributes, attribute_types = {}, {}
    for p in spec.extra_attribs:
        attributes[p.name] = p.value
        attribute_types[p.name] = str(p.type)
    channel_types = tuple(str(t) for t in spec.channelformats) if spec.channelformats else ()
    pixel_type = str(spec.format)
    if channel_types and len(set(channel_types)) == 1:
        pixel_type = channel_types[0]
    return Frame(
        pixels=np.ascontiguousarray(pixels),
        channels=tuple(spec.channelnames),
        data_window=data,
        display_window=display,
        pixel_type=pixel_type,
        channel_types=channel_types,
        attributes=attributes,
        attribute_types=attribute_types,
        path=path,
    )


# ---------------------------------------------------------------------------------------------
# Sequences

_HASHES = re.compile(r"#+")
_PRINTF = re.compile(r"%(0?)(\d*)d")
_AT = re.compile(r"@+")


@dataclass(frozen=True)
class SequenceSpec:
    """A numbered file pattern and a frame range.

    Accepted frame tokens (exactly one per pattern):
    - `####` (Nuke style: the number of `#` is the zero padding, so `#` is unpadded),
    - `@@@@` (same rule as `#`),
    - `%04d` / `%d` (printf).
    Negative frame numbers are written as `-0001` (sign, then padding of the digits)."""

    pattern: str
    first: int
    last: int

    def __post_init__(self):
        if self.last < self.first:
            raise InvalidInput(f"frame range {self.first}-{self.last} is empty (last < first)",
                               first=self.first, last=self.last)
        self._parse()  # validate the pattern eagerly

    def _parse(self) -> tuple[str, str, int]:
        tokens = [(m, m.group(0).count("#")) for m in _HASHES.finditer(self.pattern)]
        tokens += [(m, m.group(0).count("@")) for m in _AT.finditer(self.pattern)]
        tokens += [(m, int(m.group(2) or 0)) for m in _PRINTF.finditer(self.pattern)]
        if len(tokens) != 1:
            raise InvalidInput(
                f"sequence pattern {self.pattern!r} must contain exactly one frame token "
                "(####, #, @@@@, %04d or %d)", pattern=self.pattern)
        m, padding = tokens[0]
        return self.pattern[: m.start()], self.pattern[m.end():], max(padding, 1)

    @property
    def padding(self) -> int:
        return self._parse()[2]

    def path(self, frame: int) -> str:
        head, tail, pad = self._parse()
        digits = f"{abs(frame):0{pad}d}"
        return f"{head}{'-' if frame < 0 else ''}{digits}{tail}"

    @property
    def frames(self) -> list[int]:
        return list(range(self.first, self.last + 1))

    def paths(self) -> list[str]:
        return [self.path(f) for f in self.frames]

    def missing(self) -> list[int]:
        return [f for f in self.frames if not os.path.isfile(self.path(f))]

    def __len__(self) -> int:
        return self.last - self.first + 1


def format_frame_ranges(frames: Sequence[int]) -> str:
    """[1001, 1002, 1003, 1007] -> '1001-1003, 1007' (for error messages)."""
    frames = sorted(frames)
    parts, start, prev = [], None, None
    for f in frames:
        if start is None:
            start = prev = f
        elif f == prev + 1:
            prev = f
        else:
            parts.append(f"{start}" if start == prev else f"{start}-{prev}")
            start = prev = f
    if start is not None:
        parts.append(f"{start}" if start == prev else f"{start}-{prev}")
    return ", ".join(parts)


@dataclass
class PlateSequence:
    """A read sequence. `pixels` is one (F, H, W, C) float32 array (the data window of every
    frame); `frames[i]` keeps each file's own metadata with `pixels` views into that array."""

    spec: SequenceSpec
    frame_numbers: list[int]
    pixels: np.ndarray
    channels: tuple[str, ...]
    data_window: Window
    display_window: Window
    pixel_type: str
    frames: list[Frame]

    def index_of(self, frame_number: int) -> int:
        try:
            return self.frame_numbers.index(frame_number)
        except ValueError:
            raise InvalidInput(
                f"frame {frame_number} is outside {self.spec.pattern} "
                f"{self.spec.first}-{self.spec.last}", frame=frame_number) from None


def read_sequence(pattern: str, first: int, last: int,
                  data_window: Window | None = None) -> PlateSequence:
    """Read frames `first..last` of `pattern` into one (F, H, W, C) float32 array.

    Every frame must exist (InvalidInput lists the missing frame numbers), be readable, and share
    the first frame's display window and channel set (channels are matched by name, so a frame
    whose file stores them in another order is reordered). Data windows must match too, unless
    `data_window` is given: then every frame is placed onto it (zero outside its own data
    window), which is how auto-cropped renders such as roto mattes are read."""
    spec = SequenceSpec(pattern, first, last)
    missing = spec.missing()
    if missing:
        raise InvalidInput(
            f"{pattern}: {len(missing)} of {len(spec)} frames missing: "
            f"{format_frame_ranges(missing)}", pattern=pattern, missing=missing)
    frames: list[Frame] = []
    stack: np.ndarray | None = None
    ref: Frame | None = None
    for i, number in enumerate(spec.frames):
        fr = read_frame(spec.path(number))
        if data_window is not None and fr.data_window != data_window:
            fr.pixels = conform_to_window(fr.pixels, fr.data_window, data_window)
            fr.data_window = data_window
        if ref is None:
            ref = fr
            # One preallocated block: a 4K plate must not be held twice while stacking.
            stack = np.empty((len(spec),) + fr.pixels.shape, dtype=np.float32)
        else:
            if fr.display_window != ref.display_window:
                raise InvalidInput(
                    f"{pattern}: frame {number} has resolution {fr.display_window.width}x"
                    f"{fr.display_window.height} (display window {fr.display_window}) but frame "
                    f"{first} has {ref.display_window.width}x{ref.display_window.height} "
                    f"(display window {ref.display_window})",
                    frame=number, path=fr.path)
            if fr.data_window != ref.data_window:
                raise InvalidInput(
                    f"{pattern}: frame {number} has data window {fr.data_window} but frame "
                    f"{first} has {ref.data_window}; a plate needs one data window for the shot",
                    frame=number, path=fr.path)
            if set(fr.channels) != set(ref.channels) or len(fr.channels) != len(ref.channels):
                raise InvalidInput(
                    f"{pattern}: frame {number} has channels {','.join(fr.channels)} but frame "
                    f"{first} has {','.join(ref.channels)}", frame=number, path=fr.path)
            if fr.channels != ref.channels:
                order = [fr.channels.index(c) for c in ref.channels]
                fr.pixels = fr.pixels[..., order]
                fr.channels = ref.channels
        stack[i] = fr.pixels
        fr.pixels = stack[i]
        frames.append(fr)
    return PlateSequence(
        spec=spec, frame_numbers=spec.frames, pixels=stack, channels=ref.channels,
        data_window=ref.data_window, display_window=ref.display_window,
        pixel_type=ref.pixel_type, frames=frames)


def conform_to_window(pixels: np.ndarray, src: Window, dst: Window, fill: float = 0.0) -> np.ndarray:
    """Re-place an image whose array covers `src` (image coordinates) onto the `dst` window:
    the overlap is copied, the rest is `fill`. Used to bring a matte rendered with a tight
    (auto-cropped) data window onto the plate's data window."""
    if src == dst:
        return pixels
    out = np.full((dst.height, dst.width) + pixels.shape[2:], fill, dtype=pixels.dtype)
    x0, x1 = max(src.x, dst.x), min(src.x_end, dst.x_end)
    y0, y1 = max(src.y, dst.y), min(src.y_end, dst.y_end)
    if x1 > x0 and y1 > y0:
        out[y0 - dst.y:y1 - dst.y, x0 - dst.x:x1 - dst.x] = \
            pixels[y0 - src.y:y1 - src.y, x0 - src.x:x1 - src.x]
    return out


# ---------------------------------------------------------------------------------------------
# Validation


def check_finite(pixels: np.ndarray, what: str, *, channels: Sequence[str] | None = None,
                 frame_numbers: Sequence[int] | None = None,
                 origin: tuple[int, int] = (0, 0)) -> None:
    """Raise InvalidInput if `pixels` holds NaN or inf, with the count and the first location.

    `pixels` is (H, W[, C]) or (F, H, W[, C]); `frame_numbers` maps the first axis of a stack to
    frame numbers and `origin` (data window x, y) turns array indices into image coordinates."""
    arr = np.asarray(pixels)
    if not np.issubdtype(arr.dtype, np.floating):
        return
    stacked = frame_numbers is not None or arr.ndim == 4
    items = arr if stacked else arr[None]
    total, first = 0, None
    for i, item in enumerate(items):  # per frame: never a full-shot boolean temporary
        bad = ~np.isfinite(item)
        n = int(np.count_nonzero(bad))
        if n and first is None:
            loc = tuple(int(v) for v in np.argwhere(bad)[0])
            first = (i, loc, float(item[loc]))
        total += n
    if not total:
        return
    i, loc, value = first
    where = []
    if stacked:
        where.append(f"frame {frame_numbers[i] if frame_numbers is not None else i}")
    where.append(f"x={loc[1] + origin[0]} y={loc[0] + origin[1]}")
    if len(loc) > 2:
        where.append(f"channel {channels[loc[2]] if channels else loc[2]}")
    raise InvalidInput(
        f"{what}: {total} non-finite value{'s' if total != 1 else ''} (NaN/inf); first "
        f"{value} at {', '.join(where)}", count=total)


# ---------------------------------------------------------------------------------------------
# Writing


def _typed_attribute(spec, name: str, value) -> None:
    """Set an EXR attribute with an explicit type (bool -> int, numbers -> int/float,
    float sequences -> float[n])."""
    if isinstance(value, bool):
        spec.attribute(name, int(value))
    elif isinstance(value, (int, np.integer)):
        spec.attribute(name, int(value))
    elif isinstance(value, (float, np.floating)):
        spec.attribute(name, float(value))
    elif isinstance(value, str):
        spec.attribute(name, value)
    elif isinstance(value, (list, tuple)) and value and all(
            isinstance(v, (int, float, np.number)) and not isinstance(v, bool) for v in value):
        spec.attribute(name, oiio.TypeDesc(f"float[{len(value)}]"), tuple(float(v) for v in value))
    else:
        raise InvalidInput(
            f"metadata {name!r}: unsupported value type {type(value).__name__} "
            "(use str, int, float or a list of numbers)", key=name)


def _fsync_path(path: str, directory: bool = False) -> None:
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        if directory:  # some filesystems refuse opening a directory; the rename still happened
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not directory:
            raise
    finally:
        os.close(fd)


def write_exr_atomic(
    path: str | os.PathLike,
    pixels: np.ndarray,
    channels: Sequence[str],
    data_window: Window | None = None,
    display_window: Window | None = None,
    metadata: Mapping | None = None,
    compression: str = "zip",
    pixel_type: str | Sequence[str] = "half",
    *,
    source_attributes: Mapping | None = None,
    source_attribute_types: Mapping | None = None,
) -> str:
    """Write an EXR so that readers only ever see a complete file.

    The image goes to a temporary file in the destination directory, is fsynced, then
    `os.replace`d over `path` (atomic on POSIX), and the directory is fsynced. An interrupted
    write leaves at most a stray `.<name>.<id>.tmp.exr`, never a half-written `path`.

    - `data_window` defaults to (0, 0, W, H); `display_window` defaults to the data window.
    - `metadata` keys get the `lorafx/` prefix; values become typed attributes (string, int,
      float, float[n]).
    - `pixel_type`: "half" or "float", or one per channel (keep a float depth channel float).
      Finite values beyond the half range (|v| > 65504) raise instead of silently becoming inf.
    - `source_attributes` (+ their OIIO type strings from `Frame.attribute_types`) are copied
      as-is, e.g. the plate's timecode and framesPerSecond.
    """
    path = os.fspath(path)
    pixels = np.asarray(pixels)
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    if pixels.ndim != 3:
        raise InvalidInput(f"{path}: pixels must be (H, W, C), got shape {pixels.shape}")
    h, w, c = pixels.shape
    channels = tuple(channels)
    if len(channels) != c:
        raise InvalidInput(f"{path}: {c} pixel channels but {len(channels)} channel names "
                           f"({','.join(channels)})")
    if len(set(channels)) != len(channels):
        raise InvalidInput(f"{path}: duplicate channel names {','.join(channels)}")
    data_window = data_window or Window(0, 0, w, h)
    display_window = display_window or data_window
    if data_window.size != (w, h):
        raise InvalidInput(f"{path}: pixels are {w}x{h} but the data window is "
                           f"{data_window.width}x{data_window.height}")
    types = [pixel_type] * c if isinstance(pixel_type, str) else list(pixel_type)
    if len(types) != c or any(t not in ("half", "float") for t in types):
        raise InvalidInput(f"{path}: pixel_type must be 'half'/'float' or one per channel, "
                           f"got {pixel_type!r}")
    # aligned too: OIIO refuses unaligned buffers ("buffer is wrong size"), and pixels that
    # arrived inline over ZeroMQ are views of message frames, not always 4-byte aligned
    pixels = np.require(pixels, dtype=np.float32, requirements=("C", "A"))
    half_idx = [i for i, t in enumerate(types) if t == "half"]
    if half_idx:
        sub = pixels[..., half_idx] if len(half_idx) != c else pixels
        over = np.isfinite(sub) & (np.abs(sub) > 65504.0)
        if over.any():
            loc = np.argwhere(over)[0]
            raise InvalidInput(
                f"{path}: {int(over.sum())} value(s) exceed the half-float range (first "
                f"{float(sub[tuple(loc)])} at x={loc[1] + data_window.x} "
                f"y={loc[0] + data_window.y}); write those channels as 'float'")

    spec = oiio.ImageSpec(w, h, c, types[0])
    if len(set(types)) > 1:
        spec.channelformats = tuple(oiio.TypeDesc(t) for t in types)
    spec.channelnames = channels
    spec.x, spec.y = data_window.x, data_window.y
    spec.full_x, spec.full_y = display_window.x, display_window.y
    spec.full_width, spec.full_height = display_window.width, display_window.height
    for name, value in (source_attributes or {}).items():
        if name in _NON_COPYABLE_ATTRIBUTES:
            continue
        typ = (source_attribute_types or {}).get(name)
        try:
            if typ:
                spec.attribute(name, oiio.TypeDesc(typ), value)
            else:
                _typed_attribute(spec, name, value)
        except (InvalidInput, TypeError, ValueError, RuntimeError):
            continue  # a source attribute OIIO cannot carry is dropped, not fatal
    spec.attribute("compression", compression)
    for key, value in (metadata or {}).items():
        name = key if key.startswith(METADATA_PREFIX) else METADATA_PREFIX + key
        _typed_attribute(spec, name, value)

    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{uuid.uuid4().hex[:12]}.tmp.exr")
    try:
        out = oiio.ImageOutput.create(tmp)
        if out is None:
            raise InvalidInput(f"cannot write {path}: {oiio.geterror()}")
        if not out.open(tmp, spec):
            raise InvalidInput(f"cannot write {path}: {out.geterror()}")
        written = out.write_image(pixels)
        error = out.geterror()
        closed = out.close()  # flushes the last chunks: its failure is a failed write too
        if not written or not closed:
            raise InvalidInput(f"cannot write {path}: {error or out.geterror() or 'write failed'}")
        _fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_path(directory, directory=True)
    return path


def sequence_path(pattern: str, frame: int) -> str:
    """The file name of `frame` in `pattern` (same token rules as SequenceSpec)."""
    return SequenceSpec(pattern, frame, frame).path(frame)

