"""The transport half of the lorafx server: a ZeroMQ ROUTER speaking PROTOCOL.md.

The application registers one handler per request type and never touches sockets:

    def put_frames(req: Request):
        for number, pixels in req.frames().items(): ...
        return {"shot": req.body["shot"], "role": req.body["role"], "stored": [...]}

    server = ProtocolServer("tcp://127.0.0.1:5555", {"shot.put_frames": put_frames}).start()
    server.publish(job_id, {"event": "progress", "stage": "train", "step": 3, "total": 100})

Threads: one I/O thread owns the ROUTER socket (zmq sockets are not thread-safe). Handlers run
in a small pool so one slow upload does not block other clients. Pool threads and `publish`
hand their outgoing messages to the I/O thread through one inproc PUSH socket guarded by a lock.
Bodies are validated (messages.validate_body) before a handler sees them, so handlers get
well-typed bodies with defaults filled in.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping
from urllib.parse import urlsplit

import numpy as np
import zmq

import lorafx
from lorafx.errors import Busy, InvalidInput, LorafxError, ProtocolError, TooLarge, Unauthorized

from . import codec
from .keys import CurveConfig
from .messages import (
    CONFIGS,
    DEFAULT_ENDPOINT,
    DEFAULT_LIMITS,
    DTYPES,
    EVENT_PROGRESS,
    HEALTH,
    HELLO,
    MAX_SUBSCRIPTIONS,
    PROTOCOL_VERSION,
    REQUEST_TYPES,
    ROLES,
    SUBSCRIBE,
    UNSUBSCRIBE,
    WILDCARD,
    Limits,
    error_dict,
    event_header,
    reply_header,
    validate_body,
    validate_request_header,
    validate_request_id,
)

log = logging.getLogger("lorafx.protocol.server")

LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}
_REPLY, _EVENT, _STOP = b"R", b"E", b"S"
_OUTBOX_TTL_S = 30.0  # a reply a client does not read for this long is dropped


@dataclass
class Request:
    """One validated request as a handler sees it."""

    type: str
    id: int | str
    body: dict
    arrays: dict[int, np.ndarray] = field(default_factory=dict)  # buf index -> read-only view
    peer: bytes = b""  # opaque connection identity (stable for one connection)
    header: dict = field(default_factory=dict)

    def frames(self) -> dict[int, np.ndarray | str]:
        """{plate frame number: pixel view or path} of the body's frame descriptors. Views are
        over the received message: copy (np.array) what you keep beyond the handler call."""
        return codec.frames_by_number(self.body, self.arrays)


Handler = Callable[[Request], Any]  # returns body | (body, arrays) | None


def _loopback_only(endpoint: str) -> bool:
    if endpoint.startswith(("ipc://", "inproc://")):
        return True
    if not endpoint.startswith("tcp://"):
        return False
    host = urlsplit(endpoint).hostname or ""
    return host in LOOPBACK_HOSTS or host.strip("[]") in LOOPBACK_HOSTS


def _split_result(result: Any) -> tuple[dict, list | dict]:
    if result is None:
        return {}, []
    if isinstance(result, tuple) and len(result) == 2:
        body, arrays = result
        return (body or {}), (arrays or [])
    if isinstance(result, Mapping):
        return dict(result), []
    raise TypeError(f"handler returned {type(result).__name__}; expected a body dict or "
                    f"(body, arrays)")


class ProtocolServer:
    """ZeroMQ ROUTER front end. See module docstring.

    handlers: request type -> callable(Request) -> body | (body, arrays). `hello` and `health`
    work without one (the server fills protocol fields; an app handler adds its own fields);
    `subscribe`/`unsubscribe` are handled here. Any other type without a handler is answered
    with protocol_error.
    """

    def __init__(self, endpoint: str = DEFAULT_ENDPOINT,
                 handlers: Mapping[str, Handler] | None = None, *,
                 curve: CurveConfig | None = None, limits: Limits = DEFAULT_LIMITS,
                 workers: int = 4, max_pending: int = 64,
                 allow_insecure: bool = False):
        if curve is None and not allow_insecure and not _loopback_only(endpoint):
            raise Unauthorized(f"refusing to serve {endpoint} without CURVE keys: plain mode is "
                               f"loopback-only (configure keys, or bind 127.0.0.1)",
                               endpoint=endpoint)
        self._requested_endpoint = endpoint
        self.endpoint: str | None = None  # the bound endpoint (real port), set by start()
        self.limits = limits
        self.curve = curve
        self._handlers: dict[str, Handler] = {}
        for type_, fn in (handlers or {}).items():
            self.register(type_, fn)
        self._workers = workers
        self._max_pending = max_pending
        self._ctx: zmq.Context | None = None
        self._auth = None
        self._pool: ThreadPoolExecutor | None = None
        self._io_thread: threading.Thread | None = None
        self._ctl_push: zmq.Socket | None = None
        self._ctl_lock = threading.Lock()
        self._ctl_endpoint = f"inproc://lorafx-protocol-ctl-{id(self):x}"
        self._pending = 0
        self._pending_lock = threading.Lock()
        self._seq = itertools.count(1)
        self._seq_lock = threading.Lock()
        self._started_at = time.monotonic()
        # I/O-thread state (never touched elsewhere):
        self._subs: dict[bytes, set[str]] = {}
        self._peers: dict[bytes, float] = {}
        self._outbox: list[tuple[bytes, list, float]] = []
        self._stats = {"requests": 0, "errors": 0, "events_sent": 0, "events_dropped": 0,
                       "replies_dropped": 0}
        self._ready = threading.Event()
        self._io_error: BaseException | None = None

    # --- public API ---------------------------------------------------------------------------

    def register(self, type_: str, handler: Handler) -> None:
        if type_ not in REQUEST_TYPES:
            raise ValueError(f"unknown request type {type_!r}; known: {', '.join(REQUEST_TYPES)}")
        if type_ in (SUBSCRIBE, UNSUBSCRIBE):
            raise ValueError(f"{type_} is handled by the protocol server itself")
        self._handlers[type_] = handler

    def start(self) -> "ProtocolServer":
        if self._io_thread is not None:
            raise RuntimeError("ProtocolServer already started")
        self._ctx = zmq.Context()
        router = self._ctx.socket(zmq.ROUTER)
        try:
            router.linger = 0
            router.setsockopt(zmq.ROUTER_MANDATORY, 1)  # unknown peer -> error, not silence
            router.setsockopt(zmq.MAXMSGSIZE, self.limits.max_part_bytes)
            router.sndhwm = router.rcvhwm = 1000
            if self.curve is not None:
                from zmq.auth.thread import ThreadAuthenticator

                self._auth = ThreadAuthenticator(self._ctx, log=log)
                self._auth.start()
                self._auth.configure_curve(domain="*", location=str(self.curve.clients_dir))
                self.curve.apply(router)
            router.bind(self._requested_endpoint)
            self.endpoint = router.getsockopt_string(zmq.LAST_ENDPOINT)
            ctl_pull = self._ctx.socket(zmq.PULL)
            ctl_pull.linger = 0
            ctl_pull.rcvhwm = 0
            ctl_pull.bind(self._ctl_endpoint)
            push = self._ctx.socket(zmq.PUSH)
            push.linger = 0
            push.sndhwm = 0  # never block a handler thread on the I/O thread
            push.connect(self._ctl_endpoint)
        except Exception:
            router.close(0)
            self._shutdown_context()
            raise
        self._ctl_push = push
        self._pool = ThreadPoolExecutor(max_workers=self._workers,
                                        thread_name_prefix="lorafx-proto-handler")
        self._started_at = time.monotonic()
        self._io_thread = threading.Thread(target=self._io_main, args=(router, ctl_pull),
                                           name="lorafx-proto-io", daemon=True)
        self._io_thread.start()
        self._ready.wait(5.0)
        log.info("lorafx protocol v%d serving %s (auth: %s)", PROTOCOL_VERSION, self.endpoint,
                 "curve" if self.curve else "none")
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving: the I/O thread closes the socket, running handlers get `timeout`
        seconds to finish (their replies are dropped), then the context is terminated."""
        if self._io_thread is None:
            return
        self._to_io([_STOP])
        self._io_thread.join(timeout)
        if self._io_thread.is_alive():
            log.error("protocol I/O thread did not stop within %.1fs", timeout)
        pool, self._pool = self._pool, None
        if pool is not None:
            waiter = threading.Thread(target=pool.shutdown,
                                      kwargs={"wait": True, "cancel_futures": True}, daemon=True)
            waiter.start()
            waiter.join(timeout)
            if waiter.is_alive():
                log.warning("handlers still running after %.1fs; their replies are dropped",
                            timeout)
        with self._ctl_lock:
            if self._ctl_push is not None:
                self._ctl_push.close(0)
                self._ctl_push = None
        self._shutdown_context()
        self._io_thread = None
        log.info("lorafx protocol server on %s stopped", self.endpoint)

    def publish(self, job_id: str, event_body: Mapping, event: str | None = None) -> None:
        """Send an event to every connection subscribed to `job_id` or "*". Thread-safe,
        never blocks on slow clients (events to a client whose queue is full are dropped).

        The event kind is `event`, else event_body["event"], else "progress". Body keys are
        PROTOCOL.md §8's (job, stage, step, total, loss, eta_s, state, message, level, error).
        """
        body = dict(event_body)
        kind = event or body.pop("event", None) or EVENT_PROGRESS
        body.pop("event", None)
        body["job"] = job_id
        with self._seq_lock:
            seq = next(self._seq)
        head = codec.pack_header(event_header(kind, seq, body))
        self._to_io([_EVENT, job_id.encode("utf-8"), head])

    @property
    def running(self) -> bool:
        return self._io_thread is not None and self._io_thread.is_alive()

    def capabilities(self) -> dict:
        """The protocol-owned fields of the hello reply."""
        return {
            "protocol_version": PROTOCOL_VERSION,
            **self.limits.to_dict(),
            "auth": "curve" if self.curve is not None else "none",
            "dtypes": list(DTYPES),
            "roles": list(ROLES),
            "request_types": [t for t in REQUEST_TYPES
                              if t in self._handlers or t in (HELLO, HEALTH, SUBSCRIBE,
                                                              UNSUBSCRIBE)],
        }

    def stats(self) -> dict:
        now = time.monotonic()
        clients = sum(1 for t in list(self._peers.values()) if now - t < 300.0)
        return {"clients": clients, **dict(self._stats)}

    def __enter__(self) -> "ProtocolServer":
        return self.start() if self._io_thread is None else self

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- plumbing -----------------------------------------------------------------------------

    def _shutdown_context(self) -> None:
        if self._auth is not None:
            try:
                self._auth.stop()
            except Exception:  # the authenticator thread may already be gone
                log.debug("stopping the ZAP authenticator failed", exc_info=True)
            self._auth = None
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None

    def _to_io(self, frames: list) -> None:
        with self._ctl_lock:
            if self._ctl_push is None:
                return  # stopped: nothing to deliver to
            try:
                # Never block: the queue is unbounded (sndhwm 0), so Again means the I/O thread
                # has gone (stop() closed its end) and nothing can be delivered. A blocking send
                # here would hold _ctl_lock forever and deadlock stop().
                self._ctl_push.send_multipart(frames, zmq.NOBLOCK, copy=False)
            except (zmq.Again, zmq.ContextTerminated):
                log.debug("protocol I/O thread gone; dropped a %r message", bytes(frames[0])[:8])

    def _io_main(self, router: zmq.Socket, ctl: zmq.Socket) -> None:
        poller = zmq.Poller()
        poller.register(router, zmq.POLLIN)
        poller.register(ctl, zmq.POLLIN)
        self._ready.set()
        try:
            running = True
            while running:
                ready = dict(poller.poll(10 if self._outbox else 500))
                if ctl in ready:
                    running = self._drain_ctl(router, ctl)
                if running and router in ready:
                    # Bounded batch so control traffic (replies, events) is never starved.
                    for _ in range(64):
                        try:
                            self._receive_one(router)
                        except zmq.Again:
                            break
                if self._outbox:
                    self._flush_outbox(router)
        except Exception as e:  # a bug here must be loud: the server stops answering
            self._io_error = e
            log.exception("protocol I/O thread crashed")
        finally:
            router.close(0)
            ctl.close(0)

    def _drain_ctl(self, router: zmq.Socket, ctl: zmq.Socket) -> bool:
        for _ in range(256):
            try:
                parts = ctl.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return True
            kind = parts[0].bytes
            if kind == _STOP:
                return False
            if kind == _REPLY:
                self._send_reply(router, parts[1].bytes, parts[2:])
            elif kind == _EVENT:
                self._fan_out(router, parts[1].bytes.decode("utf-8"), parts[2])
        return True

    def _send_reply(self, router, ident: bytes, frames: list) -> None:
        try:
            router.send_multipart([ident, *frames], zmq.NOBLOCK, copy=False)
        except zmq.Again:  # the client's queue is full: keep it and retry
            self._outbox.append((ident, frames, time.monotonic()))
        except zmq.ZMQError as e:
            self._forget(ident)  # the client is gone (EHOSTUNREACH): nobody to answer
            if e.errno != zmq.EHOSTUNREACH:
                log.warning("dropping a reply: %s", e)

    def _flush_outbox(self, router) -> None:
        now, pending, self._outbox = time.monotonic(), self._outbox, []
        for ident, frames, t0 in pending:
            if now - t0 > _OUTBOX_TTL_S:
                self._stats["replies_dropped"] += 1
                log.warning("dropping a reply a client has not read for %.0fs", _OUTBOX_TTL_S)
                continue
            try:
                router.send_multipart([ident, *frames], zmq.NOBLOCK, copy=False)
            except zmq.Again:
                self._outbox.append((ident, frames, t0))
            except zmq.ZMQError as e:
                self._forget(ident)
                if e.errno != zmq.EHOSTUNREACH:
                    log.warning("dropping a reply: %s", e)

    def _fan_out(self, router, job: str, head) -> None:
        for ident, jobs in list(self._subs.items()):
            if job not in jobs and WILDCARD not in jobs:
                continue
            try:
                router.send_multipart([ident, head], zmq.NOBLOCK, copy=False)
                self._stats["events_sent"] += 1
            except zmq.Again:
                self._stats["events_dropped"] += 1  # slow reader: events are best-effort
            except zmq.ZMQError as e:
                self._forget(ident)
                if e.errno != zmq.EHOSTUNREACH:
                    log.warning("dropping an event: %s", e)

    def _forget(self, ident: bytes) -> None:
        self._subs.pop(ident, None)
        self._peers.pop(ident, None)

    def _receive_one(self, router: zmq.Socket) -> None:
        """Read one multipart message, enforcing the message-level limits as parts are read,
        then answer it or dispatch it. Never raises for anything a client sent."""
        ident_frame = router.recv(zmq.NOBLOCK, copy=False)
        ident = ident_frame.bytes
        more = ident_frame.more
        parts: list[zmq.Frame] = []
        budget = codec.PartBudget(self.limits)
        error: LorafxError | None = None
        while more:
            frame = router.recv(copy=False)
            more = frame.more
            if error is not None:
                continue  # drain the rest of a rejected message without keeping it
            parts.append(frame)
            try:
                budget.add(len(frame))
            except LorafxError as e:
                # Keep only a header within its limit, to read the request id for the reply.
                error = e
                parts = parts[:1] if budget.count > 1 else []
        if error is None and not parts:
            error = ProtocolError("empty message: frame 0 (the header) is missing")
        now = time.monotonic()
        self._peers[ident] = now
        if len(self._peers) > 4096:  # reconnects mint new identities: forget idle ones
            self._peers = {k: t for k, t in self._peers.items() if now - t < 300.0}
        self._stats["requests"] += 1
        rid = None
        try:
            if error is not None:
                rid = _salvage_id(parts, self.limits) if parts else None
                raise error
            try:
                header, arrays = codec.decode(parts, limits=self.limits, local="server")
                type_, rid, raw_body = validate_request_header(header)
            except LorafxError:
                rid = _salvage_id(parts, self.limits)  # so the error reply can be matched
                raise
            if type_ in (SUBSCRIBE, UNSUBSCRIBE):
                body = validate_body(type_, raw_body)
                self._reply(router, ident, rid, self._subscription(ident, type_, body["job"]))
                return
            handler = self._handlers.get(type_)
            if handler is None and type_ not in (HELLO, HEALTH):
                raise ProtocolError(f"request type {type_!r} is not served by this server",
                                    type=type_, field="header.type")
            with self._pending_lock:
                if self._pending >= self._max_pending:
                    raise Busy(f"{self._pending} requests are already being handled; retry "
                               f"shortly", retry_after_s=1.0)
                self._pending += 1
            req = Request(type_, rid, raw_body, arrays, ident, header)
            try:
                self._pool.submit(self._work, handler, req)
            except RuntimeError:  # the pool is shutting down
                with self._pending_lock:
                    self._pending -= 1
                raise Busy("the server is shutting down", retry_after_s=5.0) from None
        except LorafxError as e:
            self._stats["errors"] += 1
            self._send_reply(router, ident, _error_frames(rid, e.to_dict(), self.limits))
        except Exception as e:  # a bug of ours: answer `internal`, keep serving everyone else
            self._stats["errors"] += 1
            log.exception("failed to process a request from a client")
            self._send_reply(router, ident, _error_frames(rid, error_dict(
                "internal", f"internal server error: {type(e).__name__}: {e}",
                {"exception": type(e).__name__}), self.limits))

    def _reply(self, router, ident: bytes, rid, body: dict) -> None:
        self._send_reply(router, ident, codec.encode(reply_header(rid, body), limits=self.limits))

    def _subscription(self, ident: bytes, type_: str, job: str) -> dict:
        subs = self._subs.setdefault(ident, set())
        if type_ == SUBSCRIBE:
            if job not in subs and len(subs) >= MAX_SUBSCRIPTIONS:
                raise InvalidInput(f"at most {MAX_SUBSCRIPTIONS} subscriptions per connection",
                                   field="body.job", limit=MAX_SUBSCRIPTIONS)
            subs.add(job)
        elif job == WILDCARD:
            subs.clear()
        else:
            subs.discard(job)
        if not subs:
            self._subs.pop(ident, None)
        return {"subscribed": sorted(subs)}

    def _work(self, handler: Handler | None, req: Request) -> None:
        """Runs in the pool: validate, call the handler, encode the reply, hand it to I/O."""
        try:
            try:
                req.body = validate_body(req.type, req.body)
                if handler is not None:
                    body, arrays = _split_result(handler(req))
                else:
                    body, arrays = {}, []
                body = self._decorate(req.type, body)
                frames = codec.encode(reply_header(req.id, body), arrays, limits=self.limits)
            except LorafxError as e:
                self._stats["errors"] += 1
                frames = _error_frames(req.id, e.to_dict(), self.limits)
            except Exception as e:
                self._stats["errors"] += 1
                log.exception("handler for %s (request %r) failed", req.type, req.id)
                frames = _error_frames(req.id, error_dict(
                    "internal", f"internal server error in {req.type}: {type(e).__name__}: {e}",
                    {"exception": type(e).__name__}), self.limits)
            self._to_io([_REPLY, req.peer, *frames])
        except Exception:
            log.exception("could not deliver the reply to %s (request %r)", req.type, req.id)
        finally:
            with self._pending_lock:
                self._pending -= 1

    def _decorate(self, type_: str, body: dict) -> dict:
        """Protocol-owned fields of hello/health: the server's word beats the handler's."""
        if type_ == HELLO:
            defaults = {"server_version": lorafx.__version__, "model": "", "model_resolution": [],
                        "device": "", "configs": list(CONFIGS)}
            return {**defaults, **body, **self.capabilities()}
        if type_ == HEALTH:
            defaults = {"queue_length": 0, "current_job": None, "memory": {}}
            return {**defaults, **body,
                    "uptime_s": round(time.monotonic() - self._started_at, 3),
                    "protocol": self.stats()}
        return body


def _salvage_id(parts: list, limits: Limits):
    """Best-effort request id of a message that may fail to decode, so its error reply can
    still be matched (`re`). None when there is no readable id."""
    try:
        header = codec.unpack_header(parts[0], limits)
        return validate_request_id(header.get("id"))
    except Exception:
        return None


def _error_frames(rid, error: dict, limits: Limits) -> list:
    try:
        return codec.encode(reply_header(rid, error=error), limits=limits)
    except (TypeError, ValueError, TooLarge):  # details that do not pack: send them as text
        safe = {k: str(v)[:200] for k, v in (error.get("details") or {}).items()}
        return codec.encode(reply_header(rid, error=error_dict(
            str(error.get("code", "internal")), str(error.get("message", ""))[:4000], safe)),
            limits=limits)
