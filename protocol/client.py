"""Python client of the lorafx protocol (PROTOCOL.md), for host plugins, scripts and tests.

    with Client("tcp://127.0.0.1:5555", timeout_s=10) as c:
        c.create_shot("sh010", 1001, 1049)
        c.put_frames("sh010", "plate", {1001: rgba_half, ...})  # or {1001: "/shows/plate.1001.exr"}
        c.put_frames("sh010", "matte", {1001: matte, ...})
        job = c.train("sh010", {"steps": 100})
        c.wait(job, on_progress=lambda ev: print(ev["step"], ev["total"], ev["loss"]))
        job = c.render("sh010", seed=1, edited={1001: edited_rgba})
        c.wait(job)
        frames = c.fetch_results("sh010")  # {frame: (H, W, C) array}

Every call has a timeout (poller, never a bare blocking receive) and raises `ClientTimeout`
naming the endpoint. After a timeout the socket is recreated, so a restarted server is picked up
by the next call; late replies to abandoned requests are recognised by id and dropped. Events
that arrive while waiting for a reply are queued for `iter_events`/`wait`. Server errors are
raised as the lorafx.errors class of their code. One Client is meant for one thread at a time
(calls are serialised by a lock).
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections import deque
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import zmq

from lorafx.errors import Cancelled, LorafxError, ProtocolError, TooLarge, error_from_dict

from . import codec
from .keys import ClientCurveConfig
from .messages import (
    DEFAULT_ENDPOINT,
    DEFAULT_LIMITS,
    EVENT,
    EVENT_JOB_STATE,
    HEALTH,
    HELLO,
    JOB_CANCEL,
    JOB_LIST,
    JOB_MASK,
    JOB_RENDER,
    JOB_STATUS,
    JOB_TRAIN,
    LORA_DELETE,
    LORA_LIST,
    REPLY,
    RESULT_FETCH,
    ROLE_REFERENCE,
    ROLE_RESULT,
    SHOT_CREATE,
    SHOT_DELETE,
    SHOT_GET,
    SHOT_LIST,
    SHOT_PUT_FRAMES,
    SUBSCRIBE,
    TERMINAL_STATES,
    UNSUBSCRIBE,
    WILDCARD,
    Limits,
    MiB,
    request_header,
    validate_body,
    validate_descriptor,
    validate_reply_header,
)

import lorafx

FrameSource = Any  # np.ndarray (H, W[, C]) or a path (str / os.PathLike) on shared storage


class ClientTimeout(LorafxError, TimeoutError):
    """No connection to, or no reply from, the server in time. Client-side only (never on the
    wire); also a builtin TimeoutError."""

    code = "timeout"


class Client:
    """A DEALER connection to a lorafx server. See the module docstring."""

    def __init__(self, endpoint: str = DEFAULT_ENDPOINT, timeout_s: float = 30.0,
                 curve: ClientCurveConfig | None = None, *, limits: Limits = DEFAULT_LIMITS,
                 name: str = "lorafx-python", batch_bytes: int = 16 * MiB,
                 max_in_flight: int = 4, context: zmq.Context | None = None):
        if timeout_s <= 0:
            raise ValueError("timeout_s must be > 0")
        self.endpoint = endpoint
        self.timeout_s = float(timeout_s)
        self.curve = curve
        self.limits = limits
        self.name = name
        self.batch_bytes = int(batch_bytes)
        self.max_in_flight = max(1, int(max_in_flight))
        self.server_info: dict | None = None  # the last hello reply
        self._own_ctx = context is None
        self._ctx = context or zmq.Context()
        self._sock: zmq.Socket | None = None
        self._poller = zmq.Poller()
        self._ids = itertools.count(1)
        self._inflight: dict[int, str] = {}  # id -> request type, in send order
        self._replies: dict[int, tuple[dict, dict]] = {}
        self._events: deque[dict] = deque(maxlen=10_000)
        self._subscriptions: set[str] = set()
        self._lock = threading.RLock()

    # --- lifecycle ----------------------------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            self._reset_socket()
            if self._own_ctx and not self._ctx.closed:
                self._ctx.term()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- generic request ----------------------------------------------------------------------

    def request(self, type_: str, body: Mapping | None = None, arrays: Sequence = (),
                timeout: float | None = None) -> tuple[dict, dict[int, np.ndarray]]:
        """Send one request and wait for its reply: (reply body, {buf: array}). The body is
        validated locally first, so mistakes fail fast with the same error the server would
        give."""
        with self._lock:
            deadline = time.monotonic() + (self.timeout_s if timeout is None else timeout)
            rid = self._send(type_, dict(body or {}), arrays, deadline)
            return self._await(rid, deadline)

    # --- typed requests -----------------------------------------------------------------------

    def hello(self, host: str = "") -> dict:
        """Handshake: the server's capabilities (also kept in `server_info`)."""
        body, _ = self.request(HELLO, {"client": self.name, "client_version": lorafx.__version__,
                                       "host": host})
        self.server_info = body
        return body

    def create_shot(self, name: str, first: int, last: int, *, colorspace: str | None = None,
                    settings: Mapping | None = None, plate: str | None = None,
                    matte: str | None = None, matte_channel: str = "A",
                    replace: bool = False) -> dict:
        body, _ = self.request(SHOT_CREATE, {
            "name": name, "first": first, "last": last, "colorspace": colorspace,
            "settings": dict(settings or {}), "plate": _opt_path(plate),
            "matte": _opt_path(matte), "matte_channel": matte_channel, "replace": replace})
        return body

    def get_shot(self, name: str) -> dict:
        return self.request(SHOT_GET, {"name": name})[0]

    def list_shots(self) -> list[dict]:
        return self.request(SHOT_LIST)[0]["shots"]

    def delete_shot(self, name: str, delete_loras: bool = False) -> dict:
        return self.request(SHOT_DELETE, {"name": name, "delete_loras": delete_loras})[0]

    def put_frames(self, shot: str, role: str, frames: Mapping[int, FrameSource], *,
                   channels: Sequence[str] | None = None, colorspace: str | None = None,
                   timeout: float | None = None) -> list[int]:
        """Upload frames of one role ("plate", "matte", "reference"): {frame number: array or
        path}. Arrays are (H, W) or (H, W, C) float16/float32/uint8/uint16, top row first.
        Split into messages of up to `batch_bytes` of pixels (and under the server's limits),
        `max_in_flight` of them outstanding at once (fewer, larger messages cost less CPU per
        byte than one per frame); arrays are sent without copying. Returns the frame numbers
        the server stored."""
        limits = self._effective_limits()
        # Room for the header inside the message limit; the header of a full batch is small
        # (~100 bytes per frame), far below max_header_bytes.
        per_message = min(self.batch_bytes, limits.max_message_bytes - limits.max_header_bytes)
        batches: list[list[tuple[int, FrameSource, int]]] = [[]]
        batch_bytes = 0
        for number, src in sorted(frames.items()):
            if isinstance(src, (str, os.PathLike)):
                src, size = os.fspath(src), 0
            else:
                src = codec.wire_array(src)  # no copy for contiguous little-endian arrays
                size = src.nbytes
                if size > limits.max_frame_bytes:
                    raise TooLarge(f"frame {number} is {size} bytes; the server accepts at "
                                   f"most {limits.max_frame_bytes} per frame",
                                   limit="max_frame_bytes", size=size,
                                   max=limits.max_frame_bytes, frame=number)
            current = batches[-1]
            if current and (batch_bytes + size > per_message or len(current) >= limits.max_buffers):
                batches.append(current := [])
                batch_bytes = 0
            current.append((number, src, size))
            batch_bytes += size

        def build(batch):
            descs, arrays = [], []
            for number, src, _ in batch:
                if isinstance(src, str):
                    descs.append(codec.path_descriptor(src, frame=number, role=role,
                                                       channels=channels,
                                                       colorspace=colorspace))
                else:
                    arrays.append(src)
                    descs.append(codec.inline_descriptor(src, frame=number, role=role,
                                                         buf=len(arrays), channels=channels,
                                                         colorspace=colorspace))
            return {"shot": shot, "role": role, "frames": descs}, arrays

        stored: list[int] = []
        requests = (build(b) for b in batches if b)
        for body, _ in self._pipeline(SHOT_PUT_FRAMES, requests, timeout):
            stored.extend(body.get("stored", ()))
        return stored

    def train(self, shot: str, settings: Mapping | None = None, *, lora: str | None = None,
              resume: bool = True) -> str:
        """Queue LoRA training for the shot; returns the job id."""
        return self.request(JOB_TRAIN, {"shot": shot, "settings": dict(settings or {}),
                                        "lora": lora, "resume": resume})[0]["job"]

    def render(self, shot: str, *, seed: int = 0, steps: int = 30, cfg: float = 5.0,
               shift: float = 5.0, sampler: str = "euler", lora: str | None = None,
               first: int | None = None, last: int | None = None, caption: str | None = None,
               edited: Mapping[int, FrameSource] | None = None,
               settings: Mapping | None = None) -> str:
        """Queue a render; `edited` = {frame: array or path} of edited frames (the edited first
        frame), sent inline with the request. Returns the job id."""
        descs, arrays = [], []
        for number, src in sorted((edited or {}).items()):
            if isinstance(src, (str, os.PathLike)):
                descs.append(codec.path_descriptor(src, frame=number, role=ROLE_REFERENCE))
            else:
                arrays.append(codec.wire_array(src))
                descs.append(codec.inline_descriptor(arrays[-1], frame=number,
                                                     role=ROLE_REFERENCE, buf=len(arrays)))
        body = {"shot": shot, "seed": seed, "steps": steps, "cfg": cfg, "shift": shift,
                "sampler": sampler, "lora": lora, "first": first, "last": last,
                "caption": caption, "frames": descs, "settings": dict(settings or {})}
        return self.request(JOB_RENDER, body, arrays)[0]["job"]

    def mask(self, shot: str, frame: int, positive: Sequence[Sequence[float]],
             negative: Sequence[Sequence[float]] = (), *, mode: str = "bbox", dilate: int = 0,
             first: int | None = None, last: int | None = None) -> str:
        """Queue SAM2 matte propagation from clicks (plate pixels, origin top-left, y down)."""
        return self.request(JOB_MASK, {
            "shot": shot, "frame": frame, "positive": [list(p) for p in positive],
            "negative": [list(p) for p in negative], "mode": mode, "dilate": dilate,
            "first": first, "last": last})[0]["job"]

    def status(self, job: str) -> dict:
        return self.request(JOB_STATUS, {"job": job})[0]

    def cancel(self, job: str) -> dict:
        return self.request(JOB_CANCEL, {"job": job})[0]

    def list_jobs(self, shot: str | None = None, states: Sequence[str] = (),
                  limit: int = 1000) -> list[dict]:
        return self.request(JOB_LIST, {"shot": shot, "states": list(states),
                                       "limit": limit})[0]["jobs"]

    def list_loras(self, shot: str | None = None) -> list[dict]:
        return self.request(LORA_LIST, {"shot": shot})[0]["loras"]

    def delete_lora(self, name: str) -> dict:
        return self.request(LORA_DELETE, {"name": name})[0]

    def health(self) -> dict:
        return self.request(HEALTH)[0]

    def subscribe(self, job: str = WILDCARD) -> list[str]:
        """Receive events of `job` ("*": every job) on this connection."""
        with self._lock:
            subscribed = self.request(SUBSCRIBE, {"job": job})[0]["subscribed"]
            self._subscriptions.add(job)
            return subscribed

    def unsubscribe(self, job: str = WILDCARD) -> list[str]:
        with self._lock:
            if job == WILDCARD:
                self._subscriptions.clear()
            else:
                self._subscriptions.discard(job)
            return self.request(UNSUBSCRIBE, {"job": job})[0]["subscribed"]

    def fetch_results(self, shot: str, first: int | None = None, last: int | None = None, *,
                      mode: str = "buffers", dtype: str = "f16", channels: Sequence[str] = (),
                      job: str | None = None, chunk: int = 8,
                      timeout: float | None = None) -> dict[int, np.ndarray | str]:
        """Rendered frames {frame: (H, W, C) array} (mode "buffers") or {frame: path} (mode
        "paths"), fetched `chunk` frames per message, pipelined."""
        if first is None or last is None:
            rec = self.get_shot(shot)
            first = rec["first"] if first is None else first
            last = rec["last"] if last is None else last
        chunk = max(1, int(chunk))
        while True:
            ranges = [(a, min(a + chunk - 1, last)) for a in range(first, last + 1, chunk)]
            bodies = (({"shot": shot, "first": a, "last": b, "mode": mode, "dtype": dtype,
                        "channels": list(channels), "job": job}, []) for a, b in ranges)
            out: dict[int, np.ndarray | str] = {}
            try:
                for body, arrays in self._pipeline(RESULT_FETCH, bodies, timeout):
                    listed = body.get("frames", [])
                    for i, d in enumerate(listed):
                        d = validate_descriptor(d, f"body.frames[{i}]", roles=(ROLE_RESULT,),
                                                max_buffer_index=len(arrays))
                        out[d["frame"]] = arrays[d["buf"]] if "buf" in d else d["path"]
                return out
            except TooLarge as e:
                fits = e.details.get("max_frames")
                if not isinstance(fits, int) or not 1 <= fits < chunk:
                    raise
                chunk = fits  # the server told us how many frames fit in one message

    # --- events -------------------------------------------------------------------------------

    def iter_events(self, job: str = WILDCARD, timeout: float | None = None) -> Iterator[dict]:
        """Yield events ({"event", "seq", "job", "stage", "step", "total", "loss", "eta_s",
        "state", "message", "level", "error"}) for `job` ("*": all), queued ones first. Stops
        when none arrived for `timeout` seconds (default: the client timeout). Subscribe first.
        Events of other jobs stay queued."""
        idle = self.timeout_s if timeout is None else timeout
        while True:
            ev = self._pop_event(job)
            if ev is not None:
                yield ev
                continue
            deadline = time.monotonic() + idle
            while ev is None:
                with self._lock:
                    if not self._pump(deadline):
                        return
                ev = self._pop_event(job)
            yield ev

    def wait(self, job: str, on_progress: Callable[[dict], None] | None = None,
             timeout: float | None = None, poll_s: float = 5.0) -> dict:
        """Block until `job` ends; returns its final JobRecord. Calls on_progress(event) for
        each event. Raises the job's error if it failed, Cancelled if cancelled, ClientTimeout
        after `timeout` seconds (default: no limit). Events are a hint, `job.status` the truth:
        when no event arrived for `poll_s` the status is polled (and the subscription renewed,
        in case the server restarted)."""
        end = None if timeout is None else time.monotonic() + timeout
        was_subscribed = job in self._subscriptions
        self.subscribe(job)
        try:
            rec = self.status(job)
            while rec["state"] not in TERMINAL_STATES:
                wait_s = poll_s if end is None else max(0.0, min(poll_s, end - time.monotonic()))
                for ev in self.iter_events(job, timeout=wait_s):
                    if on_progress is not None:
                        on_progress(ev)
                    if ev["event"] == EVENT_JOB_STATE and ev.get("state") in TERMINAL_STATES:
                        break
                    if end is not None and time.monotonic() > end:
                        break
                if end is not None and time.monotonic() >= end:
                    rec = self.status(job)
                    if rec["state"] in TERMINAL_STATES:
                        break
                    raise ClientTimeout(f"job {job} on {self.endpoint} did not finish within "
                                        f"{timeout:.1f}s (state {rec['state']})", job=job,
                                        endpoint=self.endpoint)
                self.subscribe(job)  # idempotent; renews it after a server restart
                rec = self.status(job)
        finally:
            if not was_subscribed:
                try:
                    self.unsubscribe(job)
                except LorafxError:
                    pass
        if rec["state"] == "failed":
            raise error_from_dict(rec.get("error") or {"code": "internal", "message":
                                                       f"job {job} failed", "details": {}})
        if rec["state"] == "cancelled":
            raise Cancelled(f"job {job} was cancelled", job=job)
        return rec

    # --- plumbing -----------------------------------------------------------------------------

    def _effective_limits(self) -> Limits:
        if self.server_info is None:
            self.hello()
        info = self.server_info
        keys = ("max_message_bytes", "max_frame_bytes", "max_header_bytes", "max_buffers")
        try:
            return Limits(**{k: min(getattr(self.limits, k), int(info[k])) for k in keys})
        except (KeyError, TypeError, ValueError):
            return self.limits

    def _socket(self) -> zmq.Socket:
        if self._sock is not None:
            return self._sock
        s = self._ctx.socket(zmq.DEALER)
        s.linger = 0
        s.setsockopt(zmq.IMMEDIATE, 1)  # a send to a dead server fails fast, not queues
        s.setsockopt(zmq.MAXMSGSIZE, self.limits.max_part_bytes)
        s.setsockopt(zmq.RECONNECT_IVL, 100)
        s.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
        try:
            if self.curve is not None:
                self.curve.apply(s)
            s.connect(self.endpoint)
        except (zmq.ZMQError, LorafxError) as e:
            s.close(0)  # a half-made socket left open would block close() forever
            raise ProtocolError(f"cannot connect to {self.endpoint!r}: {e}", endpoint=self.endpoint) from e
        self._sock = s
        self._poller = zmq.Poller()
        self._poller.register(s, zmq.POLLIN)
        if self._subscriptions:
            self._resubscribe()
        return s

    def _resubscribe(self) -> None:
        # A fresh socket is a fresh connection: the server forgot our subscriptions.
        deadline = time.monotonic() + self.timeout_s
        for job in sorted(self._subscriptions):
            self._await(self._send(SUBSCRIBE, {"job": job}, (), deadline), deadline)

    def _reset_socket(self) -> None:
        if self._sock is not None:
            self._sock.close(0)
            self._sock = None
        self._inflight.clear()
        self._replies.clear()

    def _send(self, type_: str, body: dict, arrays: Sequence, deadline: float) -> int:
        validate_body(type_, body)
        rid = next(self._ids)
        frames = codec.encode(request_header(type_, rid, body), arrays, limits=self.limits)
        sock = self._socket()
        while True:
            try:
                sock.send_multipart(frames, zmq.NOBLOCK, copy=False)
                break
            except zmq.Again:
                left = deadline - time.monotonic()
                if left <= 0 or not sock.poll(int(left * 1000) + 1, zmq.POLLOUT):
                    if time.monotonic() < deadline:
                        continue
                    self._reset_socket()
                    raise ClientTimeout(
                        f"could not reach the lorafx server at {self.endpoint} to send "
                        f"{type_!r} (no connection within the timeout; is the server running, "
                        f"and are the CURVE keys right?)", endpoint=self.endpoint, type=type_)
        self._inflight[rid] = type_
        return rid

    def _await(self, rid: int, deadline: float) -> tuple[dict, dict[int, np.ndarray]]:
        while rid not in self._replies:
            if not self._pump(deadline):
                type_ = self._inflight.get(rid, "request")
                self._reset_socket()  # abandon it; a later reply is dropped as stale
                raise ClientTimeout(
                    f"no reply from the lorafx server at {self.endpoint} to {type_!r} "
                    f"(request {rid}) within the timeout; is the server running, and are the "
                    f"CURVE keys right?", endpoint=self.endpoint, type=type_, request=rid)
        self._inflight.pop(rid, None)
        header, arrays = self._replies.pop(rid)
        _, ok, payload = validate_reply_header(header)
        if not ok:
            raise error_from_dict(payload)
        return payload, arrays

    def _pump(self, deadline: float) -> bool:
        """Read and route one incoming message; False when none came before `deadline`."""
        sock = self._socket()
        left = deadline - time.monotonic()
        if left <= 0 or not self._poller.poll(max(0, int(left * 1000))):
            return False
        frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
        try:
            header, arrays = codec.decode(frames, limits=self.limits, local="client")
        except LorafxError:
            self._fail_oldest()
            raise
        kind = header.get("type")
        if kind == EVENT:
            body = header.get("body") if isinstance(header.get("body"), dict) else {}
            self._events.append({**body, "event": header.get("event"), "seq": header.get("seq")})
        elif kind == REPLY:
            re = header.get("re")
            if re in self._inflight:
                self._replies[re] = (header, arrays)
            elif re is None and header.get("ok") is False and self._inflight:
                # The server could not read a request id: blame our oldest request.
                self._replies[next(iter(self._inflight))] = (header, arrays)
            # else: a stale reply to a request we abandoned -- drop it
        else:
            raise ProtocolError(f"unexpected message type {str(kind)[:32]!r} from "
                                f"{self.endpoint}")
        return True

    def _fail_oldest(self) -> None:
        # An undecodable message (e.g. another protocol version) answers some request of ours;
        # forget the oldest so it is not waited on again.
        if self._inflight:
            self._inflight.pop(next(iter(self._inflight)))

    def _pop_event(self, job: str) -> dict | None:
        for i, ev in enumerate(self._events):
            if job == WILDCARD or ev.get("job") == job:
                del self._events[i]
                return ev
        return None

    def _pipeline(self, type_: str, requests, timeout: float | None):
        """Send (body, arrays) requests keeping up to max_in_flight outstanding; yield replies
        in order. On error the rest are abandoned (their late replies are dropped)."""
        window: deque[int] = deque()
        per_call = self.timeout_s if timeout is None else timeout
        with self._lock:
            try:
                for body, arrays in requests:
                    if len(window) >= self.max_in_flight:
                        yield self._await(window.popleft(), time.monotonic() + per_call)
                    window.append(self._send(type_, body, arrays, time.monotonic() + per_call))
                while window:
                    yield self._await(window.popleft(), time.monotonic() + per_call)
            finally:
                for rid in window:
                    self._inflight.pop(rid, None)
                    self._replies.pop(rid, None)


def _opt_path(p):
    return None if p is None else os.fspath(p)

