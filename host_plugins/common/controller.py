"""Host-agnostic driver of one lorafx shot, for the Nuke and Resolve layers (and any other host).

    ctl = ShotController("tcp://gpu01:5555", "sh010", 1001, 1049,
                         ShotSettings(train_steps=100, caption="a red car"),
                         dispatch=nuke.executeInMainThread, on_progress=..., on_state=...,
                         on_done=..., on_error=...)
    ctl.connect()                                   # ServerUnavailable / VersionMismatch: show it
    ctl.submit_shot("/cache/plate.####.exr", "/cache/matte.####.exr", "/cache/edit.1001.exr")
    ctl.train()                                     # job id, at once; progress comes via callbacks
    ...
    ctl.render(results_dir="/cache/results")        # on_done(JobOutcome(pattern=".../result.####.exr"))

Two ways to hand frames over (PROTOCOL.md §5):
- path mode (farms with shared storage): the server reads the sequences itself; only patterns
  travel (`path_map` translates mount points between this machine and the server);
- inline mode (a remote GPU box): EXRs are read here with OpenImageIO and uploaded; results are
  fetched as pixels and written back here as EXRs with the same frame numbers.

A background thread follows submitted jobs (events, with `job.status` polling as the source of
truth) and reports through the callbacks, each call passed through `dispatch(fn)` so a host can
run it on its UI thread. The thread survives a server restart: it keeps polling the job by id
until the server answers again (`reconnect_timeout_s`). Every network call has a timeout.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import zmq

from lorafx.errors import Cancelled, InvalidInput, LorafxError, NotFound, VersionMismatch, error_from_dict
from lorafx.protocol.client import Client, ClientTimeout
from lorafx.protocol.messages import DEFAULT_ENDPOINT, NAME_RE, PROTOCOL_VERSION, TERMINAL_STATES
from lorafx.server.media.io import (
    SequenceSpec,
    conform_to_window,
    find_channels,
    format_frame_ranges,
    read_frame,
    sequence_path,
    write_exr_atomic,
)

log = logging.getLogger("lorafx.host")

__all__ = [
    "ShotController", "ShotSettings", "JobOutcome", "PathMap", "ServerUnavailable", "QUALITY_PRESETS",
    "normalize_endpoint", "parse_frames", "validate_shot", "format_duration", "progress_text",
    "queued_text", "done_text", "error_text", "record_text", "describe_error",
]

MAX_FRAMES = 100_000
HALF_MAX = 65504.0


class ServerUnavailable(LorafxError):
    """The server could not be reached (down, wrong address, firewall, wrong CURVE keys)."""

    code = "unreachable"


# --------------------------------------------------------------------------------------------
# Settings


@dataclass(frozen=True)
class QualityPreset:
    label: str
    render_steps: int
    rank: int


# The same presets as the OFX plugin (host_plugins/ofx/src/plugin.cpp), so a shot looks the same
# whichever host submitted it.
QUALITY_PRESETS = {
    "draft": QualityPreset("Draft", 12, 8),
    "standard": QualityPreset("Standard", 30, 16),
    "final": QualityPreset("Final", 50, 32),
}


@dataclass
class ShotSettings:
    """What an artist sets on the node. `extra` goes to the server as shot settings (any key
    PROTOCOL.md §7 Settings lists, e.g. {"mask_mode": "dilate", "dilate": 8})."""

    train_steps: int = 100
    seed: int = 0
    quality: str = "standard"
    caption: str = ""
    colorspace: str | None = None
    render_steps: int | None = None  # None: the quality preset's
    cfg: float = 5.0
    shift: float = 5.0
    matte_channel: str = "A"
    extra: dict = field(default_factory=dict)

    @property
    def preset(self) -> QualityPreset:
        try:
            return QUALITY_PRESETS[self.quality.lower()]
        except KeyError:
            raise InvalidInput(f"unknown quality {self.quality!r}; choose "
                               f"{', '.join(p.label for p in QUALITY_PRESETS.values())}") from None

    def shot_settings(self) -> dict:
        out = dict(self.extra)
        if self.caption.strip():
            out["caption"] = self.caption.strip()
        return out

    def train_settings(self) -> dict:
        if self.train_steps < 1:
            raise InvalidInput(f"training steps must be at least 1, got {self.train_steps}")
        return {"steps": int(self.train_steps), "rank": self.preset.rank, "seed": int(self.seed)}

    def render_args(self) -> dict:
        steps = self.render_steps if self.render_steps is not None else self.preset.render_steps
        return {"seed": int(self.seed), "steps": int(steps), "cfg": float(self.cfg),
                "shift": float(self.shift), "caption": self.caption.strip() or None}


# --------------------------------------------------------------------------------------------
# Small helpers the host layers share


def normalize_endpoint(text: str) -> str:
    """What an artist types -> a ZeroMQ endpoint: "gpu01" -> tcp://gpu01:5555,
    "gpu01:6000" -> tcp://gpu01:6000; full endpoints (tcp://, ipc://) are kept."""
    text = (text or "").strip()
    if not text:
        return DEFAULT_ENDPOINT
    if "://" in text:
        return text
    if re.fullmatch(r"[^:/\s]+:\d+", text) or re.fullmatch(r"\[[0-9a-fA-F:]+\]:\d+", text):
        return "tcp://" + text
    if re.fullmatch(r"[^:/\s]+", text):
        return f"tcp://{text}:5555"
    return text  # left for zmq to reject with a message naming it


def parse_frames(text: str) -> list[int]:
    """"1001, 1025 1049" -> [1001, 1025, 1049] (sorted, unique; negative frames allowed)."""
    out = set()
    for token in re.split(r"[,;\s]+", (text or "").strip()):
        if not token:
            continue
        if not re.fullmatch(r"-?\d+", token):
            raise InvalidInput(f"'{token}' is not a frame number")
        out.add(int(token))
    return sorted(out)


def validate_shot(name: str, first: int, last: int, references: Sequence[int] = ()) -> None:
    """The checks the server would make, worded for an artist, before anything is rendered."""
    if not name:
        raise InvalidInput("set a Shot Name first")
    if not NAME_RE.fullmatch(name) or name in (".", ".."):
        raise InvalidInput(f"Shot Name '{name}' may only use letters, digits, '_', '.', '-' "
                           "(1-64 characters)")
    if last < first:
        raise InvalidInput(f"Last Frame ({last}) is before First Frame ({first})")
    if last - first + 1 > MAX_FRAMES:
        raise InvalidInput(f"the frame range is longer than {MAX_FRAMES} frames")
    for f in references:
        if not first <= f <= last:
            raise InvalidInput(f"reference frame {f} is outside {first}-{last}")
    if len(references) > 16:
        raise InvalidInput("at most 16 reference frames")


def format_duration(seconds: float | None) -> str:
    """80 -> "1m20s", 45 -> "45s", 7500 -> "2h05m"."""
    if seconds is None or not np.isfinite(seconds):
        return "?"
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


_STAGE_WORDS = {
    "upload": "uploading frame", "prepare": "preparing", "load": "loading", "encode": "encoding",
    "motion": "training step", "train": "training step", "appearance": "training (appearance) step",
    "render": "rendering step", "decode": "decoding", "composite": "compositing",
    "write": "writing frame", "mask": "masking frame", "fetch": "fetching frame",
}


def progress_text(stage: str | None, step: int | None, total: int | None,
                  loss: float | None = None, eta: float | None = None) -> str:
    """("motion", 40, 100, 0.0123, 80) -> "training step 40/100 loss 0.0123 ETA 1m20s"."""
    text = _STAGE_WORDS.get(stage or "", stage or "working")
    if step is not None and total:
        text += f" {step}/{total}"
    if loss is not None and np.isfinite(loss):
        text += f" loss {loss:.4g}"
    if eta is not None and eta > 0:
        text += f" ETA {format_duration(eta)}"
    return text


def queued_text(position: int | None) -> str:
    if not position:
        return "queued (next)"
    return f"queued ({position} ahead)"


def done_text(kind: str | None, record: Mapping | None) -> str:
    result = (record or {}).get("result") or {}
    if kind == "render":
        n = result.get("frames")
        return f"rendered {n} frames" if n is not None else "rendered"
    if kind == "train":
        if result.get("cached"):
            return "trained (the stored LoRA for these inputs and settings was reused)"
        steps = result.get("steps")
        loss = result.get("final_loss")
        text = f"trained {steps} steps" if steps is not None else "trained"
        if isinstance(loss, (int, float)) and np.isfinite(loss):
            text += f" (loss {loss:.4g})"
        return text
    return "done"


def error_text(message: str) -> str:
    return f"error: {message}"


def record_text(record: Mapping) -> str:
    """One status line for a JobRecord (PROTOCOL.md §7)."""
    state = record.get("state")
    if state == "queued":
        return queued_text(record.get("position"))
    if state == "running":
        if record.get("stage"):
            return progress_text(record.get("stage"), record.get("step"), record.get("total"),
                                 record.get("loss"), record.get("eta_s"))
        return "running"
    if state == "done":
        return done_text(record.get("kind"), record)
    if state == "failed":
        err = record.get("error") or {}
        return error_text(err.get("message") or "the job failed")
    if state == "cancelled":
        return "cancelled"
    return str(state)


def describe_error(exc: BaseException) -> str:
    """An exception -> a sentence for a message box."""
    if isinstance(exc, LorafxError):
        return exc.message or str(exc)
    return f"{type(exc).__name__}: {exc}"


# --------------------------------------------------------------------------------------------
# Paths between this machine and the server


class PathMap:
    """Prefix pairs (local, server) for farms where shared storage is mounted differently on
    the artist's machine and on the GPU server, e.g. [("Z:/shows", "/mnt/shows")]."""

    def __init__(self, pairs: Sequence[tuple[str, str]] = ()):
        self.pairs = [(self._norm(a), self._norm(b)) for a, b in pairs]

    @staticmethod
    def _norm(p: str) -> str:
        return os.fspath(p).replace("\\", "/")

    def to_server(self, path: str) -> str:
        p = self._norm(path)
        for local, server in self.pairs:
            if p == local or p.startswith(local.rstrip("/") + "/"):
                return server + p[len(local):]
        return os.fspath(path)

    def to_local(self, path: str) -> str:
        p = self._norm(path)
        for local, server in self.pairs:
            if p == server or p.startswith(server.rstrip("/") + "/"):
                return local + p[len(server):]
        return os.fspath(path)


# --------------------------------------------------------------------------------------------
# Jobs


@dataclass
class JobOutcome:
    """A finished job, as `on_done` receives it. For renders `pattern` is the local result
    sequence (`.../result.####.exr`) when results were fetched or located."""

    job: str
    kind: str | None
    record: dict
    pattern: str | None = None
    first: int | None = None
    last: int | None = None

    @property
    def text(self) -> str:
        return done_text(self.kind, self.record)


@dataclass
class _Watch:
    job: str
    kind: str | None
    results_dir: str | None = None
    path_mode: bool = False
    state: str | None = None
    state_text: str | None = None
    progress: tuple | None = None
    finished: threading.Event = field(default_factory=threading.Event)
    outcome: JobOutcome | None = None
    error: LorafxError | None = None


class ShotController:
    """One shot on one server, driven by a host layer. See the module docstring.

    Callbacks (all optional, all invoked through `dispatch`):
    - on_progress(stage, step, total, loss, eta_s)
    - on_state(state, message): "connected", "uploading", "uploaded", "queued", "running",
      "done", "failed", "cancelled", "cancelling", "reconnecting", "reconnected", "warning"
    - on_done(JobOutcome)
    - on_error(code, message)
    """

    def __init__(self, endpoint: str = DEFAULT_ENDPOINT, shot: str = "", first: int = 1001,
                 last: int = 1001, settings: ShotSettings | None = None, *,
                 path_mode: bool = False, path_map: PathMap | Sequence[tuple[str, str]] = (),
                 dispatch: Callable[[Callable[[], None]], Any] | None = None,
                 on_progress: Callable | None = None, on_state: Callable | None = None,
                 on_done: Callable | None = None, on_error: Callable | None = None,
                 host: str = "", client_name: str = "lorafx-host", curve=None,
                 connect_timeout_s: float = 5.0, timeout_s: float = 30.0,
                 upload_timeout_s: float = 300.0, poll_s: float = 1.0,
                 reconnect_timeout_s: float = 300.0, results_dir: str | None = None,
                 upload_batch_bytes: int = 256 * 1024 * 1024):
        self.endpoint = normalize_endpoint(endpoint)
        self.shot = shot
        self.first, self.last = int(first), int(last)
        self.settings = settings or ShotSettings()
        self.path_mode = path_mode
        self.path_map = path_map if isinstance(path_map, PathMap) else PathMap(path_map)
        self.dispatch = dispatch or (lambda fn: fn())
        self.on_progress, self.on_state, self.on_done, self.on_error = on_progress, on_state, on_done, on_error
        self.host = host
        self.client_name = client_name
        self.curve = curve
        self.connect_timeout_s = connect_timeout_s
        self.timeout_s = timeout_s
        self.upload_timeout_s = upload_timeout_s
        self.poll_s = poll_s
        self.reconnect_timeout_s = reconnect_timeout_s
        self.results_dir = results_dir
        self.upload_batch_bytes = upload_batch_bytes
        self.server_info: dict | None = None
        self.status_text = "idle"
        self._result_dtype = "f16"  # results are fetched in the plate's own precision
        self._client: Client | None = None
        self._client_endpoint: str | None = None
        self._client_lock = threading.RLock()
        self._watched: dict[str, _Watch] = {}
        self._watch_lock = threading.Lock()
        self._watch_changed = threading.Event()
        self._stop = threading.Event()
        self._upload_cancel = threading.Event()
        self._follower: threading.Thread | None = None

    # ---------------------------------------------------------------------------- lifecycle

    def close(self) -> None:
        """Stop following jobs (they keep running on the server) and close the connection."""
        self._stop.set()
        self._watch_changed.set()
        if self._follower is not None:
            self._follower.join(self.timeout_s + self.poll_s + 5)
            self._follower = None
        with self._client_lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    def __enter__(self) -> "ShotController":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---------------------------------------------------------------------------- connection

    def _new_client(self, timeout_s: float) -> Client:
        return Client(self.endpoint, timeout_s=timeout_s, curve=self.curve, name=self.client_name)

    def _conn(self) -> Client:
        """The request connection (host threads); re-made when the endpoint knob changed."""
        with self._client_lock:
            self.endpoint = normalize_endpoint(self.endpoint)
            if self._client is None or self._client_endpoint != self.endpoint:
                if self._client is not None:
                    self._client.close()
                    self._client = None
                _check_endpoint(self.endpoint)
                self._client = self._new_client(self.timeout_s)
                self._client_endpoint = self.endpoint
                self.server_info = None
            return self._client

    def connect(self) -> dict:
        """Handshake (hello). Raises ServerUnavailable or VersionMismatch with a message for the
        artist; returns the server's capabilities."""
        with self._client_lock:
            c = self._conn()  # ServerUnavailable for an address zmq rejects
            try:
                info = c.request("hello", {"client": self.client_name, "client_version": _version(),
                                           "host": self.host[:128]}, timeout=self.connect_timeout_s)[0]
            except ClientTimeout:
                raise ServerUnavailable(
                    f"Cannot reach the lorafx server at {self.endpoint}: no answer within "
                    f"{self.connect_timeout_s:g}s. Check that `lorafx serve` is running on that "
                    f"machine, that the address and port are right and that no firewall blocks "
                    f"it (and the CURVE keys, if the server uses them).",
                    endpoint=self.endpoint) from None
            except VersionMismatch as e:
                server_v = e.details.get("server_version", "?")
                self._drop_client()
                raise VersionMismatch(
                    f"The lorafx server at {self.endpoint} speaks protocol version {server_v}; "
                    f"this plugin speaks version {PROTOCOL_VERSION}. Install matching versions "
                    f"of the plugin and the server.", server_version=server_v,
                    client_version=PROTOCOL_VERSION, endpoint=self.endpoint) from None
            if info.get("protocol_version") not in (None, PROTOCOL_VERSION):
                raise VersionMismatch(
                    f"The lorafx server at {self.endpoint} reports protocol version "
                    f"{info.get('protocol_version')}; this plugin speaks version {PROTOCOL_VERSION}.",
                    server_version=info.get("protocol_version"), client_version=PROTOCOL_VERSION)
            c.server_info = info
            self.server_info = info
        self._state("connected", f"connected to {info.get('model', 'lorafx')} on "
                                 f"{info.get('device', self.endpoint)}")
        return info

    def _drop_client(self) -> None:
        with self._client_lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    def _connected(self) -> Client:
        if self.server_info is None or self._client_endpoint != normalize_endpoint(self.endpoint):
            self.connect()
        return self._conn()

    def _call(self, fn: Callable[[Client], Any]) -> Any:
        """One request on the host connection, a timeout worded for the artist."""
        c = self._connected()
        try:
            return fn(c)
        except ClientTimeout as e:
            self.server_info = None  # say hello again next time
            raise ServerUnavailable(f"the lorafx server at {self.endpoint} stopped answering "
                                    f"({e.message})", endpoint=self.endpoint) from None

    # ---------------------------------------------------------------------------- submitting

    def check(self, references: Sequence[int] = ()) -> None:
        validate_shot(self.shot, self.first, self.last, references)
        self.settings.preset  # noqa: B018 -- raises on an unknown quality

    def submit_shot(self, plate, matte, edited_first, painted: Mapping[int, Any] | None = None,
                    path_mode: bool | None = None) -> dict:
        """Create (replace) the shot on the server and hand it the plate, the matte, the edited
        first frame and any further painted frames {frame: path or array}.

        plate / matte: a sequence pattern (`/x/plate.####.exr`, `%04d`) or {frame: path or
        (H, W, C) array}. Path mode sends patterns (shared storage); inline mode reads the EXRs
        here and uploads them. Blocking (run it off the UI thread); `cancel()` stops it between
        batches with Cancelled. Returns the server's ShotRecord."""
        path_mode = self.path_mode if path_mode is None else bool(path_mode)
        painted = dict(painted or {})
        references = {self.first: edited_first, **{int(f): v for f, v in painted.items()}}
        self.check(sorted(references))
        self._upload_cancel.clear()
        s = self.settings
        if path_mode:
            for role, src in (("plate", plate), ("matte", matte)):
                if not isinstance(src, (str, os.PathLike)):
                    raise InvalidInput(f"path mode sends sequence patterns: give the {role} as a "
                                       f"pattern such as /shows/x/{role}.####.exr")
                self._check_sequence(role, os.path.abspath(os.fspath(src)))
            self._state("uploading", "creating the shot (shared storage)")
            self._call(lambda c: self._server_paths(lambda: c.create_shot(
                self.shot, self.first, self.last, colorspace=s.colorspace,
                settings=s.shot_settings(), plate=self._server_path(plate),
                matte=self._server_path(matte), matte_channel=s.matte_channel,
                replace=True)))
            self._result_dtype = "f16"
        else:
            plate_frames = self._frames_of("plate", plate)  # all present, before anything is sent
            matte_frames = self._frames_of("matte", matte)
            self._call(lambda c: c.create_shot(self.shot, self.first, self.last,
                                               colorspace=s.colorspace, settings=s.shot_settings(),
                                               replace=True))
            self._result_dtype = self._upload_role("plate", plate_frames, matte=False)
            self._upload_role("matte", matte_frames, matte=True)
        refs_inline, refs_paths = {}, {}
        for f, src in sorted(references.items()):
            if isinstance(src, (str, os.PathLike)):
                path = os.fspath(src)
                if not os.path.isfile(path):
                    raise InvalidInput(f"edited frame {f}: {path} not found")
                if path_mode:
                    refs_paths[f] = self._server_path(path)
                else:
                    refs_inline[f] = self._colour_pixels(read_frame(path), f)[0]
            else:
                refs_inline[f] = _wire_colour(np.asarray(src), f)[0]
        if refs_paths:
            self._call(lambda c: self._server_paths(lambda: c.put_frames(self.shot, "reference",
                                                                         refs_paths)))
        if refs_inline:
            self._call(lambda c: c.put_frames(self.shot, "reference", refs_inline,
                                              timeout=self.upload_timeout_s))
        record = self._call(lambda c: c.get_shot(self.shot))
        self._state("uploaded", f"shot {self.shot} {self.first}-{self.last} is on the server")
        return record

    def _server_path(self, path) -> str:
        return self.path_map.to_server(os.path.abspath(os.fspath(path)))

    def _check_sequence(self, role: str, pattern: str) -> None:
        # Path mode: catch a cache that was not written (or a wrong pattern) here, where the
        # message can name the frames, instead of as a job failure on the server.
        missing = SequenceSpec(pattern, self.first, self.last).missing()
        if missing:
            raise InvalidInput(f"{role} frames {format_frame_ranges(missing)} are missing: "
                               f"{sequence_path(pattern, missing[0])} does not exist")

    def _server_paths(self, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except NotFound as e:
            path = e.details.get("path", "")
            raise NotFound(
                f"the server cannot read {path or 'the shared files'} ({e.message}). Path mode "
                f"needs storage the server sees under the same path (or a path mapping); turn "
                f"path mode off to upload the frames instead.", **e.details) from None

    def _frames_of(self, role: str, src) -> dict:
        if isinstance(src, (str, os.PathLike)):
            spec = SequenceSpec(os.fspath(src), self.first, self.last)
            missing = spec.missing()
            if missing:
                raise InvalidInput(f"{role} frames {format_frame_ranges(missing)} are missing: "
                                   f"{spec.path(missing[0])} does not exist")
            return {f: spec.path(f) for f in spec.frames}
        frames = {int(f): v for f, v in dict(src).items()}
        missing = [f for f in range(self.first, self.last + 1) if f not in frames]
        if missing:
            raise InvalidInput(f"{role} frames {format_frame_ranges(missing)} are missing")
        return frames

    def _upload_role(self, role: str, frames: dict, *, matte: bool) -> str:
        """Read (if paths) and upload one role in batches of about upload_batch_bytes, so a long
        4K plate is never all in memory. Returns the dtype sent ("f16"/"f32")."""
        numbers = [f for f in sorted(frames) if self.first <= f <= self.last]
        total, done, started = len(numbers), 0, time.monotonic()
        dtype_sent, sanitized = "f16", 0
        batch, batch_bytes = {}, 0

        def flush():
            nonlocal batch, batch_bytes
            if batch:
                self._call(lambda c: c.put_frames(self.shot, role, batch, timeout=self.upload_timeout_s))
            batch, batch_bytes = {}, 0

        for f in numbers:
            if self._upload_cancel.is_set():
                raise Cancelled("upload cancelled: nothing was trained")
            item = frames[f]
            if matte:
                px, bad = self._matte_pixels(read_frame(item), f) if isinstance(item, (str, os.PathLike)) \
                    else _wire_matte(np.asarray(item), f)
            else:
                px, bad = self._colour_pixels(read_frame(item), f) if isinstance(item, (str, os.PathLike)) \
                    else _wire_colour(np.asarray(item), f)
                if px.dtype == np.float32:
                    dtype_sent = "f32"
            sanitized += bad
            batch[f] = px
            batch_bytes += px.nbytes
            done += 1
            if batch_bytes >= self.upload_batch_bytes:
                flush()
            elapsed = time.monotonic() - started
            eta = elapsed / done * (total - done) if done else None
            self._progress("upload", done, total, None, eta)
        flush()
        if sanitized:
            self._state("warning", f"{sanitized} NaN/inf {role} values were replaced for upload "
                                   "(NaN -> 0, inf -> +-65504)")
        return dtype_sent

    @staticmethod
    def _colour_pixels(fr, frame: int) -> tuple[np.ndarray, int]:
        idx = list(fr.rgb_indices())
        try:
            idx += find_channels(fr.channels, ("A",))
        except InvalidInput:
            pass  # no alpha: RGB is enough
        px = conform_to_window(fr.pixels[..., idx], fr.data_window, fr.display_window)
        dtype = np.float16 if fr.pixel_type == "half" else np.float32
        return _wire_colour(px.astype(dtype), frame)

    def _matte_pixels(self, fr, frame: int) -> tuple[np.ndarray, int]:
        name = self.settings.matte_channel
        try:
            i = fr.channel_index(name)
        except InvalidInput:
            if len(fr.channels) != 1:
                raise InvalidInput(f"matte frame {frame} ({fr.path}) has no channel {name!r} "
                                   f"(channels: {', '.join(fr.channels)})") from None
            i = 0  # a single-channel matte file (Y, or whatever it is called)
        px = conform_to_window(fr.pixels[..., i:i + 1], fr.data_window, fr.display_window)
        return _wire_matte(px, frame)

    # ---------------------------------------------------------------------------- jobs

    def train(self, settings: Mapping | None = None, *, lora: str | None = None,
              resume: bool = True) -> str:
        """Queue training of the shot's LoRA; returns the job id at once and follows it."""
        merged = {**self.settings.train_settings(), **dict(settings or {})}
        job = self._call(lambda c: c.train(self.shot, merged, lora=lora, resume=resume))
        self.follow(job, "train")
        return job

    def render(self, *, last: int | None = None, edited: Mapping[int, Any] | None = None,
               results_dir: str | None = None, settings: Mapping | None = None, **overrides) -> str:
        """Queue a render of the shot (the edited first frame was sent by submit_shot, or give
        `edited`); returns the job id at once. When it is done the results are fetched (inline
        mode: into `results_dir`/<job>/, default the controller's `results_dir`) or located
        (path mode) and on_done gets their local pattern."""
        args = {**self.settings.render_args(), **overrides}
        job = self._call(lambda c: c.render(self.shot, last=last, edited=edited,
                                            settings=settings, **args))
        self.follow(job, "render", results_dir=results_dir or self.results_dir)
        return job

    def follow(self, job: str, kind: str | None = None, *, results_dir: str | None = None) -> None:
        """Follow a job by id: one just submitted, or one from before a host or server restart
        (the host keeps the id); its state comes from job.status, so nothing is lost."""
        with self._watch_lock:
            if job not in self._watched:
                self._watched[job] = _Watch(job, kind, results_dir or self.results_dir,
                                            path_mode=self.path_mode)
        self._watch_changed.set()
        self._ensure_follower()

    def jobs(self) -> list[str]:
        with self._watch_lock:
            return list(self._watched)

    def wait(self, job: str, timeout: float | None = None) -> JobOutcome:
        """Block until the followed job ends (for scripts and tests; hosts use on_done). Raises
        the job's error, Cancelled, or ClientTimeout after `timeout` seconds."""
        with self._watch_lock:
            w = self._watched.get(job)
        if w is None:
            self.follow(job)
            with self._watch_lock:
                w = self._watched[job]
        if not w.finished.wait(timeout):
            raise ClientTimeout(f"job {job} did not finish within {timeout:g}s", job=job)
        if w.error is not None:
            raise w.error
        return w.outcome

    def cancel(self) -> list[str]:
        """Stop an upload in progress and cancel the followed jobs on the server. Uses its own
        short-lived connection so it is never stuck behind an upload. Returns the job ids."""
        self._upload_cancel.set()
        with self._watch_lock:
            jobs = [j for j, w in self._watched.items() if not w.finished.is_set()]
        if not jobs:
            return []
        self._state("cancelling", "cancelling...")
        c = self._new_client(self.connect_timeout_s)
        try:
            for job in jobs:
                try:
                    c.cancel(job)
                except NotFound:
                    pass  # gone from the server: nothing to cancel
        except ClientTimeout:
            raise ServerUnavailable(f"could not reach the lorafx server at {self.endpoint} to "
                                    f"cancel {', '.join(jobs)}", endpoint=self.endpoint) from None
        finally:
            c.close()
        self._watch_changed.set()  # let the follower see the new state promptly
        return jobs

    def status(self) -> list[dict]:
        """Re-query every followed job (e.g. for a Refresh button)."""
        return [self._call(lambda c, j=j: c.status(j)) for j in self.jobs()]

    # ---------------------------------------------------------------------------- results

    def fetch_results(self, dest_dir: str | None = None, *, job: str | None = None,
                      path_mode: bool | None = None, chunk: int = 8) -> str:
        """The rendered sequence as a local pattern `.../result.####.exr`.

        Inline mode: fetch the pixels in chunks and write EXRs into `dest_dir` with the shot's
        frame numbers. Path mode: the server's own files (through the path map), checked to be
        visible here; nothing is copied. `job`: the render job (default: the latest)."""
        path_mode = self.path_mode if path_mode is None else path_mode
        return self._call(lambda c: self._fetch(c, dest_dir, job, path_mode, chunk))[0]

    def _fetch(self, c: Client, dest_dir: str | None, job: str | None, path_mode: bool,
               chunk: int = 8) -> tuple[str, int, int]:
        if path_mode:
            paths = self._server_paths(lambda: c.fetch_results(self.shot, mode="paths", job=job))
            local = {f: self.path_map.to_local(p) for f, p in paths.items()}
            missing = [f for f, p in local.items() if not os.path.isfile(p)]
            if missing:
                raise NotFound(f"the server wrote its results to {paths[missing[0]]}, which this "
                               f"machine cannot see as {local[missing[0]]}: set a path mapping "
                               f"or turn path mode off to fetch the pixels")
            first, last = min(local), max(local)
            return _pattern_of(local[first], first), first, last
        if not dest_dir:
            raise InvalidInput("no folder to write the results into")
        rec = c.get_shot(self.shot)
        first, last = rec["first"], rec["last"]
        pattern = os.path.join(os.fspath(dest_dir), "result.####.exr")
        written: list[int] = []
        started = time.monotonic()
        for a in range(first, last + 1, max(1, chunk)):
            b = min(a + chunk - 1, last)
            try:
                frames = c.fetch_results(self.shot, a, b, mode="buffers", dtype=self._result_dtype,
                                         job=job, chunk=chunk, timeout=self.upload_timeout_s)
            except NotFound:
                if job is not None or written:
                    continue  # a sub-range render: frames past its end are not there
                raise
            for f, px in sorted(frames.items()):
                channels = _channel_names(px)
                write_exr_atomic(sequence_path(pattern, f), px, channels,
                                 pixel_type="half" if px.dtype == np.float16 else "float",
                                 metadata={"shot": self.shot, "frame": int(f),
                                           **({"job": job} if job else {})})
                written.append(f)
                n = len(written)
                self._progress("fetch", n, last - first + 1, None,
                               (time.monotonic() - started) / n * (last - first + 1 - n))
        if not written:
            raise NotFound(f"shot {self.shot} has no rendered frames to fetch")
        return pattern, min(written), max(written)

    # ---------------------------------------------------------------------------- callbacks

    def _emit(self, cb: Callable | None, *args) -> None:
        if cb is None:
            return

        def call():
            try:
                cb(*args)
            except Exception:  # a host callback bug must not kill the follower
                log.exception("lorafx host callback %r failed", cb)

        try:
            self.dispatch(call)
        except Exception:
            log.exception("lorafx dispatch failed")

    def _progress(self, stage, step, total, loss, eta) -> None:
        self.status_text = progress_text(stage, step, total, loss, eta)
        self._emit(self.on_progress, stage, step, total, loss, eta)

    def _state(self, state: str, message: str) -> None:
        self.status_text = message
        self._emit(self.on_state, state, message)

    def _error(self, code: str, message: str) -> None:
        self.status_text = error_text(message)
        self._emit(self.on_error, code, message)

    # ---------------------------------------------------------------------------- follower

    def _ensure_follower(self) -> None:
        if self._follower is None or not self._follower.is_alive():
            self._stop.clear()
            self._follower = threading.Thread(target=self._follow_loop, name="lorafx-follow",
                                              daemon=True)
            self._follower.start()

    def _follow_loop(self) -> None:
        client: Client | None = None
        outage_since: float | None = None
        try:
            while not self._stop.is_set():
                with self._watch_lock:
                    watched = {j: w for j, w in self._watched.items() if not w.finished.is_set()}
                if not watched:
                    self._watch_changed.wait(0.5)
                    self._watch_changed.clear()
                    continue
                self._watch_changed.clear()
                try:
                    if client is None or client.endpoint != self.endpoint:
                        if client is not None:
                            client.close()
                            client = None
                        _check_endpoint(self.endpoint)
                        client = self._new_client(min(self.timeout_s, max(2.0, self.poll_s * 5)))
                    for job in watched:
                        client.subscribe(job)  # idempotent; renews it after a server restart
                    if outage_since is not None:
                        # Said before anything the answers report (the job may have ended
                        # during the outage), so the host never shows "done" then "back".
                        outage_since = None
                        self._state("reconnected", f"the server at {self.endpoint} is back")
                    deadline = time.monotonic() + self.poll_s
                    for ev in client.iter_events("*", timeout=self.poll_s):
                        w = watched.get(ev.get("job"))
                        if w is not None and self._on_event(w, ev):
                            break
                        if self._stop.is_set() or self._watch_changed.is_set() \
                                or time.monotonic() >= deadline:
                            break
                    for job, w in watched.items():
                        try:
                            rec = client.status(job)
                        except NotFound as e:
                            self._finish_error(w, NotFound(
                                f"the server no longer knows job {job} ({e.message})", job=job))
                            continue
                        self._on_record(client, w, rec)
                        if w.finished.is_set():
                            try:
                                client.unsubscribe(job)
                            except LorafxError:
                                pass  # best effort: a stale subscription only costs events
                except ClientTimeout:
                    now = time.monotonic()
                    if outage_since is None:
                        outage_since = now
                        self._state("reconnecting", f"lost the server at {self.endpoint}; "
                                                    "retrying (the job keeps its id)...")
                    elif now - outage_since > self.reconnect_timeout_s:
                        for w in watched.values():
                            self._finish_error(w, ServerUnavailable(
                                f"the lorafx server at {self.endpoint} has not answered for "
                                f"{format_duration(now - outage_since)}; job {w.job} may still "
                                f"run there (Refresh to look again)", job=w.job))
                        outage_since = None
                    self._stop.wait(min(1.0, self.poll_s))
                except LorafxError as e:
                    for w in watched.values():
                        self._finish_error(w, e)
        except Exception as e:  # never die silently: the host would wait forever
            log.exception("lorafx follower crashed")
            with self._watch_lock:
                pending = [w for w in self._watched.values() if not w.finished.is_set()]
            for w in pending:
                self._finish_error(w, LorafxError(f"internal error following the job: {e}"))
        finally:
            if client is not None:
                client.close()

    def _on_event(self, w: _Watch, ev: dict) -> bool:
        """Handle one event; True when the job reached a terminal state (poll it now)."""
        kind = ev.get("event")
        if kind == "progress":
            key = (ev.get("stage"), ev.get("step"))
            if key != w.progress:
                w.progress = key
                self._set_running(w)
                self._progress(ev.get("stage"), ev.get("step"), ev.get("total"), ev.get("loss"),
                               ev.get("eta_s"))
        elif kind == "job_state":
            if ev.get("state") in TERMINAL_STATES:
                return True
            if ev.get("state") == "running":
                self._set_running(w)
        return False

    def _set_running(self, w: _Watch) -> None:
        if w.state != "running":
            w.state = "running"
            self._state("running", f"{w.kind or 'job'} running")

    def _on_record(self, client: Client, w: _Watch, rec: dict) -> None:
        w.kind = w.kind or rec.get("kind")
        state = rec.get("state")
        if state == "queued":
            text = queued_text(rec.get("position"))
            if (state, text) != (w.state, w.state_text):
                w.state, w.state_text = state, text
                self._state("queued", text)
        elif state == "running":
            self._set_running(w)
            key = (rec.get("stage"), rec.get("step"))
            if rec.get("step") is not None and key != w.progress:
                w.progress = key
                self._progress(rec.get("stage"), rec.get("step"), rec.get("total"), rec.get("loss"),
                               rec.get("eta_s"))
        elif state == "done":
            outcome = JobOutcome(w.job, w.kind, rec)
            result = rec.get("result") or {}
            outcome.first, outcome.last = result.get("first"), result.get("last")
            if w.kind == "render" and (w.path_mode or w.results_dir):
                try:
                    dest = None if w.path_mode else os.path.join(w.results_dir, w.job)
                    outcome.pattern, outcome.first, outcome.last = self._fetch(
                        client, dest, w.job, w.path_mode)
                except LorafxError as e:
                    self._finish_error(w, e)
                    return
            w.state, w.outcome = "done", outcome
            self._state("done", done_text(w.kind, rec))
            self._emit(self.on_done, outcome)
            self._finish(w)
        elif state == "failed":
            self._finish_error(w, error_from_dict(rec.get("error") or {
                "code": "internal", "message": f"job {w.job} failed", "details": {}}))
        elif state == "cancelled":
            w.state, w.error = "cancelled", Cancelled(f"job {w.job} was cancelled", job=w.job)
            self._state("cancelled", "cancelled")
            self._finish(w)

    def _finish_error(self, w: _Watch, err: LorafxError) -> None:
        w.state, w.error = "failed", err
        self._state("failed", error_text(err.message or str(err)))
        self._error(err.code, err.message or str(err))
        self._finish(w)

    def _finish(self, w: _Watch) -> None:
        w.finished.set()


# --------------------------------------------------------------------------------------------
# Pixels for the wire


def _check_endpoint(endpoint: str) -> None:
    """Raise ServerUnavailable for an address zmq cannot connect to. Done on a throwaway socket
    that is always closed: a Client whose connect() raised would keep its half-made socket and
    block its context's term() (and so Client.close()) forever."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    try:
        sock.connect(endpoint)
    except zmq.ZMQError as e:
        raise ServerUnavailable(f"'{endpoint}' is not a valid server address (expected "
                                f"tcp://host:port): {e}", endpoint=endpoint) from None
    finally:
        sock.close(0)
        ctx.term()


def _version() -> str:
    import lorafx

    return lorafx.__version__


def _sanitize(px: np.ndarray) -> tuple[np.ndarray, int]:
    """NaN -> 0, +-inf -> +-65504: the server rejects non-finite pixels (PROTOCOL.md §7)."""
    n = int((~np.isfinite(px)).sum())
    if n == 0:
        return px, 0
    return np.nan_to_num(px, nan=0.0, posinf=HALF_MAX, neginf=-HALF_MAX), n


def _wire_colour(px: np.ndarray, frame: int) -> tuple[np.ndarray, int]:
    if px.ndim != 3 or px.shape[-1] not in (3, 4):
        raise InvalidInput(f"frame {frame}: expected an (H, W, 3|4) RGB(A) image, got shape {px.shape}")
    if px.dtype not in (np.float16, np.float32):
        px = px.astype(np.float32)
    px, bad = _sanitize(px)
    return np.ascontiguousarray(px), bad


def _wire_matte(px: np.ndarray, frame: int) -> tuple[np.ndarray, int]:
    if px.ndim == 2:
        px = px[..., None]
    if px.ndim != 3:
        raise InvalidInput(f"matte frame {frame}: expected an (H, W) or (H, W, C) image, got {px.shape}")
    px = px[..., :1]
    if px.dtype not in (np.float16, np.float32):
        px = px.astype(np.float32)
    px, bad = _sanitize(px)
    return np.ascontiguousarray(px.astype(np.float16)), bad  # a matte needs no more than half


def _channel_names(px: np.ndarray) -> list[str]:
    c = px.shape[-1] if px.ndim == 3 else 1
    return {1: ["A"], 3: ["R", "G", "B"], 4: ["R", "G", "B", "A"]}.get(c, [f"C{i}" for i in range(c)])


def _pattern_of(path: str, frame: int) -> str:
    """'/x/result.1001.exr', 1001 -> '/x/result.####.exr' (the padding the file uses)."""
    d, name = os.path.split(path)
    sign = "-" if frame < 0 else ""
    m = re.search(rf"{re.escape(sign)}0*{abs(frame)}(?=\D*$)", name)
    if not m:
        return path
    digits = len(m.group(0)) - len(sign)
    return os.path.join(d, name[:m.start()] + "#" * digits + name[m.end():])

