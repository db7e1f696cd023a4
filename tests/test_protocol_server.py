"""ProtocolServer + Client over real ZeroMQ TCP sockets on 127.0.0.1 (random ports).

A small in-memory app (FakeApp) registers a handler for every request type, so each typed
Client method is exercised end to end, and events come from real background "jobs"."""

from __future__ import annotations

import itertools
import socket
import threading
import time

import msgpack
import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lorafx.errors import (
    Busy,
    Cancelled,
    InvalidInput,
    LorafxError,
    NotFound,
    ProtocolError,
    TooLarge,
    Unauthorized,
    VersionMismatch,
)
from lorafx.protocol import Client, ClientTimeout, ProtocolServer, codec
from lorafx.protocol import messages as m

H, W = 480, 832
LOCAL = "tcp://127.0.0.1:*"


class FakeApp:
    """Just enough of a server app to drive every request type."""

    def __init__(self):
        self.server: ProtocolServer | None = None
        self.shots: dict[str, dict] = {}
        self.pixels: dict[tuple[str, str, int], np.ndarray | str] = {}
        self.jobs: dict[str, dict] = {}
        self.loras: dict[str, dict] = {}
        self.messages: list[tuple[str, int, int]] = []  # (type, n buffers, total bytes)
        self.calls = 0
        self._ids = itertools.count(1)
        self.lock = threading.Lock()

    def handlers(self) -> dict:
        return {t: getattr(self, t.replace(".", "_")) for t in m.REQUEST_TYPES
                if t not in ("subscribe", "unsubscribe")}

    def _record(self, req):
        with self.lock:
            self.calls += 1
            self.messages.append((req.type, len(req.arrays),
                                  sum(a.nbytes for a in req.arrays.values())))

    def _shot(self, name):
        if name not in self.shots:
            raise NotFound(f"no shot named {name!r}", shot=name)
        return self.shots[name]

    def hello(self, req):
        self._record(req)
        return {"model": "fake-wan", "model_resolution": [[832, 480], [480, 832]],
                "device": "cpu", "protocol_version": 99}  # must be overridden by the server

    def health(self, req):
        self._record(req)
        return {"queue_length": len(self.jobs), "current_job": None,
                "memory": {"rss_bytes": 1, "gpu_allocated_bytes": None,
                           "gpu_reserved_bytes": None, "gpu_total_bytes": None}}

    def shot_create(self, req):
        self._record(req)
        b = req.body
        if b["name"] in self.shots and not b["replace"]:
            raise InvalidInput(f"shot {b['name']!r} exists", shot=b["name"])
        self.shots[b["name"]] = {**b, "frames": {r: [] for r in m.ROLES}, "loras": [],
                                 "created_at": time.time()}
        return self.shots[b["name"]]

    def shot_get(self, req):
        self._record(req)
        return self._shot(req.body["name"])

    def shot_list(self, req):
        self._record(req)
        return {"shots": list(self.shots.values())}

    def shot_delete(self, req):
        self._record(req)
        self._shot(req.body["name"])
        del self.shots[req.body["name"]]
        return {"deleted": req.body["name"], "cancelled_jobs": []}

    def shot_put_frames(self, req):
        self._record(req)
        shot = self._shot(req.body["shot"])
        role = req.body["role"]
        stored = []
        for number, px in req.frames().items():
            if not shot["first"] <= number <= shot["last"]:
                raise InvalidInput(f"frame {number} is outside the shot", frame=number)
            self.pixels[(shot["name"], role, number)] = px if isinstance(px, str) else np.array(px)
            stored.append(number)
        shot["frames"][role] = sorted(set(shot["frames"][role]) | set(stored))
        return {"shot": shot["name"], "role": role, "stored": stored}

    def _job(self, kind, shot, steps=3, fail=None, delay=0.02):
        job_id = f"{kind}-{next(self._ids)}"
        rec = {"job": job_id, "kind": kind, "shot": shot, "state": "queued", "stage": None,
               "step": None, "total": steps, "loss": None, "eta_s": None, "message": None,
               "error": None, "created_at": time.time(), "started_at": None,
               "finished_at": None, "position": 0, "result": None, "cancel": False}
        self.jobs[job_id] = rec

        def run():
            time.sleep(delay * 5)  # give the client time to subscribe
            rec["state"] = "running"
            self.server.publish(job_id, {"event": "job_state", "state": "running"})
            for step in range(1, steps + 1):
                if rec["cancel"]:
                    rec["state"] = "cancelled"
                    self.server.publish(job_id, {"event": "job_state", "state": "cancelled"})
                    return
                time.sleep(delay)
                rec.update(step=step, loss=1.0 / step, stage=kind)
                self.server.publish(job_id, {"stage": kind, "step": step, "total": steps,
                                             "loss": 1.0 / step, "eta_s": delay * (steps - step)})
            if fail:
                rec.update(state="failed", error=fail)
                self.server.publish(job_id, {"event": "job_state", "state": "failed",
                                             "error": fail})
            else:
                rec.update(state="done", finished_at=time.time())
                self.server.publish(job_id, {"event": "job_state", "state": "done"})

        threading.Thread(target=run, daemon=True).start()
        return job_id

    def job_train(self, req):
        self._record(req)
        self._shot(req.body["shot"])
        fail = None
        if req.body["settings"].get("explode"):
            fail = {"code": "invalid_input", "message": "the matte is empty",
                    "details": {"frame": 1001}}
        steps = int(req.body["settings"].get("steps", 3))
        job = self._job("train", req.body["shot"], steps=steps, fail=fail)
        self.loras[req.body["lora"] or req.body["shot"]] = {
            "name": req.body["lora"] or req.body["shot"], "shot": req.body["shot"], "job": job,
            "hash": "0" * 64, "steps": steps, "size_bytes": 123, "created_at": time.time()}
        return {"job": job, "state": "queued", "position": 0}

    def job_render(self, req):
        self._record(req)
        shot = self._shot(req.body["shot"])
        edited = req.frames()
        first = shot["first"]
        if first not in edited and (shot["name"], "reference", first) not in self.pixels:
            raise InvalidInput("no edited first frame", field="body.frames")
        for number, px in edited.items():
            self.pixels[(shot["name"], "reference", number)] = np.array(px)
        # "render": every plate frame plus the edited first frame
        ref = self.pixels[(shot["name"], "reference", first)]
        for number in shot["frames"]["plate"]:
            self.pixels[(shot["name"], "result", number)] = (
                self.pixels[(shot["name"], "plate", number)] + ref).astype(np.float16)
        return {"job": self._job("render", shot["name"], steps=req.body["steps"]),
                "state": "queued", "position": 0}

    def job_mask(self, req):
        self._record(req)
        self._shot(req.body["shot"])
        return {"job": self._job("mask", req.body["shot"]), "state": "queued", "position": 0}

    def _get_job(self, job):
        if job not in self.jobs:
            raise NotFound(f"no job {job!r}", job=job)
        return {k: v for k, v in self.jobs[job].items() if k != "cancel"}

    def job_status(self, req):
        self._record(req)
        return self._get_job(req.body["job"])

    def job_cancel(self, req):
        self._record(req)
        self._get_job(req.body["job"])
        self.jobs[req.body["job"]]["cancel"] = True
        return self._get_job(req.body["job"])

    def job_list(self, req):
        self._record(req)
        return {"jobs": [self._get_job(j) for j in self.jobs]}

    def result_fetch(self, req):
        self._record(req)
        b = req.body
        shot = self._shot(b["shot"])
        numbers = [n for n in range(b["first"] or shot["first"], (b["last"] or shot["last"]) + 1)
                   if (shot["name"], "result", n) in self.pixels]
        if not numbers:
            raise NotFound("no render yet", shot=shot["name"])
        if b["mode"] == "paths":
            return {"shot": shot["name"], "job": "render-1", "frames": [
                codec.path_descriptor(f"/renders/{shot['name']}.{n:04d}.exr", frame=n,
                                      role="result") for n in numbers]}
        arrays = [self.pixels[(shot["name"], "result", n)].astype(m.DTYPES[b["dtype"]])
                  for n in numbers]
        descs = [codec.inline_descriptor(a, frame=n, role="result", buf=i + 1)
                 for i, (n, a) in enumerate(zip(numbers, arrays))]
        return {"shot": shot["name"], "job": "render-1", "frames": descs}, arrays

    def lora_list(self, req):
        self._record(req)
        return {"loras": [r for r in self.loras.values()
                          if req.body["shot"] in (None, r["shot"])]}

    def lora_delete(self, req):
        self._record(req)
        if req.body["name"] not in self.loras:
            raise NotFound(f"no LoRA {req.body['name']!r}", lora=req.body["name"])
        del self.loras[req.body["name"]]
        return {"deleted": req.body["name"]}


@pytest.fixture
def app():
    fake = FakeApp()
    fake.server = ProtocolServer(LOCAL, fake.handlers()).start()
    yield fake
    fake.server.stop()


@pytest.fixture
def client(app):
    with Client(app.server.endpoint, timeout_s=5) as c:
        yield c


def _frames(n, first=1001, seed=0, shape=(H, W, 4)):
    rng = np.random.default_rng(seed)
    return {first + i: (rng.standard_normal(shape, dtype=np.float32) * 100).astype(np.float16)
            for i in range(n)}


def _bits(a):
    return np.ascontiguousarray(a).view(np.uint16)


def _raw_dealer(ctx, endpoint):
    s = ctx.socket(zmq.DEALER)
    s.linger = 0
    s.connect(endpoint)
    return s


def _recv(sock, timeout_s=5.0):
    assert sock.poll(int(timeout_s * 1000)), "no reply from the server"
    return codec.decode(sock.recv_multipart(), local="client")


def _free_port_endpoint():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


# --- requests and replies ---------------------------------------------------------------------

def test_hello_merges_app_fields_with_protocol_capabilities(client):
    info = client.hello(host="pytest")
    assert info["protocol_version"] == m.PROTOCOL_VERSION  # the app cannot override it
    assert info["model"] == "fake-wan" and info["device"] == "cpu"
    assert info["max_message_bytes"] == 2 * 2**30 and info["max_frame_bytes"] == 512 * 2**20
    assert info["max_header_bytes"] == 2**20 and info["max_buffers"] == 4096
    assert info["auth"] == "none" and "job.render" in info["request_types"]
    assert client.server_info == info


def test_full_shot_cycle_with_frames_bit_exact(app, client):
    shot = client.create_shot("sh010", 1001, 1008, settings={"config": "masked"})
    assert shot["name"] == "sh010" and shot["settings"] == {"config": "masked"}
    plates = _frames(8)
    assert sorted(client.put_frames("sh010", "plate", plates)) == sorted(plates)
    for n, a in plates.items():
        assert np.array_equal(_bits(app.pixels[("sh010", "plate", n)]), _bits(a))
    mattes = {n: np.full((H, W), 0.5, np.float16) for n in plates}
    client.put_frames("sh010", "matte", mattes)
    assert app.pixels[("sh010", "matte", 1001)].shape == (H, W, 1)

    edited = _frames(1, seed=5)[1001]
    job = client.render("sh010", seed=42, steps=2, edited={1001: edited})
    assert app.jobs[job]["kind"] == "render"
    assert np.array_equal(_bits(app.pixels[("sh010", "reference", 1001)]), _bits(edited))
    final = client.wait(job, timeout=10)
    assert final["state"] == "done"
    results = client.fetch_results("sh010", chunk=3)
    assert sorted(results) == sorted(plates)
    for n in plates:
        expected = (plates[n] + edited).astype(np.float16)
        assert np.array_equal(_bits(results[n]), _bits(expected))
    paths = client.fetch_results("sh010", 1002, 1003, mode="paths")
    assert paths == {1002: "/renders/sh010.1002.exr", 1003: "/renders/sh010.1003.exr"}
    assert [s["name"] for s in client.list_shots()] == ["sh010"]
    assert client.get_shot("sh010")["frames"]["plate"] == sorted(plates)
    assert client.delete_shot("sh010")["deleted"] == "sh010"
    with pytest.raises(NotFound, match="sh010"):
        client.get_shot("sh010")


def test_paths_are_first_class(app, client):
    client.create_shot("sh020", 1, 3)
    stored = client.put_frames("sh020", "plate", {1: "/plates/sh020.####.exr",
                                                  2: "/plates/sh020.0002.exr"})
    assert stored == [1, 2]
    assert app.pixels[("sh020", "plate", 1)] == "/plates/sh020.####.exr"


def test_uploads_are_split_under_the_servers_limits():
    small = m.Limits(max_message_bytes=8 * 2**20, max_frame_bytes=4 * 2**20,
                     max_header_bytes=64 * 2**10, max_buffers=3)
    fake = FakeApp()
    fake.server = ProtocolServer(LOCAL, fake.handlers(), limits=small).start()
    try:
        with Client(fake.server.endpoint, timeout_s=5, batch_bytes=1 << 30) as c:
            c.create_shot("s", 1, 10)
            mattes = {n: np.zeros((480, 832, 1), np.float16) for n in range(1, 11)}  # 0.76 MiB
            assert sorted(c.put_frames("s", "matte", mattes)) == list(range(1, 11))
            puts = [(n, size) for t, n, size in fake.messages if t == "shot.put_frames"]
            assert len(puts) == 4  # 3 + 3 + 3 + 1 frames: max_buffers, learnt from hello
            assert all(n <= 3 and size <= small.max_message_bytes for n, size in puts)
            big = {1: np.zeros((2000, 2000, 1), np.float16)}  # 7.6 MiB > max_frame_bytes
            with pytest.raises(TooLarge, match="per frame"):
                c.put_frames("s", "plate", big)
    finally:
        fake.server.stop()


def test_handler_errors_become_their_codes_and_the_server_keeps_serving(app, client, caplog):
    with pytest.raises(NotFound) as ei:
        client.status("nope-1")
    assert ei.value.code == "not_found" and ei.value.details == {"job": "nope-1"}
    client.create_shot("s", 1, 2)
    with pytest.raises(InvalidInput, match="exists"):
        client.create_shot("s", 1, 2)

    def boom(req):
        raise RuntimeError("kaboom")

    app.server.register("lora.list", boom)
    with pytest.raises(LorafxError) as ei:
        client.list_loras()
    assert ei.value.code == "internal" and "RuntimeError: kaboom" in str(ei.value)
    assert "kaboom" in caplog.text  # logged with its traceback
    assert client.health()["protocol"]["errors"] >= 3


def test_client_validates_before_sending():
    # A dead endpoint: the error must come from local validation, not a timeout.
    with Client(_free_port_endpoint(), timeout_s=0.2) as c:
        with pytest.raises(InvalidInput, match="body.name"):
            c.create_shot("bad name", 1, 2)
        with pytest.raises(ProtocolError, match="body.steps"):
            c.render("s", steps="many")


def test_jobs_train_mask_cancel_list_loras_health(app, client):
    client.create_shot("s", 1, 5)
    seen = []
    job = client.train("s", {"steps": 4})
    rec = client.wait(job, on_progress=seen.append, timeout=10)
    assert rec["state"] == "done"
    steps = [ev["step"] for ev in seen if ev["event"] == "progress"]
    assert steps == [1, 2, 3, 4], seen
    assert all(ev["job"] == job for ev in seen)
    assert [lr["name"] for lr in client.list_loras("s")] == ["s"]
    assert client.delete_lora("s") == {"deleted": "s"}
    with pytest.raises(NotFound):
        client.delete_lora("s")

    failing = client.train("s", {"explode": True})
    with pytest.raises(InvalidInput, match="matte is empty") as ei:
        client.wait(failing, timeout=10)
    assert ei.value.details == {"frame": 1001}

    long_job = client.mask("s", 1, [[10, 20]], [[30, 40]], mode="dilate", dilate=8)
    assert client.cancel(long_job)["job"] == long_job
    with pytest.raises(Cancelled):
        client.wait(long_job, timeout=10)
    assert {j["job"] for j in client.list_jobs()} == {job, failing, long_job}
    health = client.health()
    assert health["queue_length"] == 3 and health["uptime_s"] >= 0
    assert health["protocol"]["clients"] >= 1


def test_slow_handler_does_not_block_other_clients(app):
    release = threading.Event()

    def slow(req):
        release.wait(10)
        return {"job": "slow-1", "state": "queued", "position": 0}

    app.server.register("job.train", slow)
    with Client(app.server.endpoint, timeout_s=5) as a, \
            Client(app.server.endpoint, timeout_s=5) as b:
        result = {}
        t = threading.Thread(target=lambda: result.setdefault("job", a.train("s")))
        t.start()
        time.sleep(0.1)
        t0 = time.monotonic()
        assert b.health()["queue_length"] == 0
        assert time.monotonic() - t0 < 1.0
        assert "job" not in result  # the slow one is still waiting
        release.set()
        t.join(5)
        assert result["job"] == "slow-1"


def test_busy_when_the_handler_pool_is_saturated():
    release = threading.Event()

    def slow(req):
        release.wait(10)
        return {}

    server = ProtocolServer(LOCAL, {"health": slow}, workers=1, max_pending=1).start()
    try:
        with Client(server.endpoint, timeout_s=5) as a, Client(server.endpoint, timeout_s=5) as b:
            t = threading.Thread(target=a.health)
            t.start()
            time.sleep(0.2)
            with pytest.raises(Busy) as ei:
                b.health()
            assert ei.value.details["retry_after_s"] > 0
            release.set()
            t.join(5)
            assert b.health()["uptime_s"] >= 0
    finally:
        release.set()
        server.stop()


# --- malformed input, limits, versions --------------------------------------------------------

def test_version_mismatch_reply_names_both_versions(app):
    ctx = zmq.Context()
    try:
        s = _raw_dealer(ctx, app.server.endpoint)
        s.send(msgpack.packb({"v": 2, "type": "hello", "id": 77, "body": {"future": True}}))
        header, _ = _recv(s)
        assert header["re"] == 77 and header["ok"] is False and header["v"] == 1
        err = header["error"]
        assert err["code"] == "version_mismatch"
        assert err["details"] == {"server_version": 1, "client_version": 2}
        assert "v1" in err["message"] and "v2" in err["message"]
        s.close()
    finally:
        ctx.term()


def test_client_raises_version_mismatch_when_the_server_speaks_another_version():
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.linger = 0
    router.bind(LOCAL)
    endpoint = router.getsockopt_string(zmq.LAST_ENDPOINT)

    def future_server():
        if router.poll(5000):
            ident, head = router.recv_multipart()
            rid = msgpack.unpackb(head)["id"]
            router.send_multipart([ident, msgpack.packb(
                {"v": 2, "type": "reply", "re": rid, "ok": True, "body": {}})])

    t = threading.Thread(target=future_server)
    t.start()
    try:
        with Client(endpoint, timeout_s=5) as c:
            with pytest.raises(VersionMismatch) as ei:
                c.health()
        assert "server speaks v2" in str(ei.value) and "client speaks v1" in str(ei.value)
        assert ei.value.details == {"server_version": 2, "client_version": 1}
    finally:
        t.join(5)
        router.close(0)
        ctx.term()


@pytest.mark.parametrize("frames,code,re", [
    ([b"\xc1"], "protocol_error", None),
    ([msgpack.packb({"v": 1, "type": "job.explode", "id": 3, "body": {}})], "protocol_error", 3),
    ([msgpack.packb({"v": 1, "type": "health", "id": 4})], "protocol_error", 4),
    ([msgpack.packb({"v": 1, "type": "job.render", "id": "r5", "body": {"shot": "s",
                                                                        "sed": 1}})],
     "protocol_error", "r5"),
    ([msgpack.packb({"v": 1, "type": "job.render", "id": 6, "body": {"shot": "a b"}})],
     "invalid_input", 6),
    ([msgpack.packb({"v": 1, "type": "shot.put_frames", "id": 7, "body": {
        "shot": "s", "role": "plate", "frames": [
            {"frame": 1, "buf": 1, "dtype": "f16", "shape": [4, 4, 4]}]}}), b"short"],
     "protocol_error", 7),
    ([msgpack.packb({"v": 1, "type": "shot.put_frames", "id": 8, "body": {
        "shot": "s", "role": "plate", "frames": [
            {"frame": 1, "buf": 1, "dtype": "f32", "shape": [32768, 32768, 16]}]}}), b"tiny"],
     "too_large", 8),
])
def test_malformed_requests_get_error_replies(app, frames, code, re):
    ctx = zmq.Context()
    try:
        s = _raw_dealer(ctx, app.server.endpoint)
        s.send_multipart(frames)
        header, _ = _recv(s)
        assert header["ok"] is False and header["error"]["code"] == code, header
        assert header["re"] == re
        s.close()
    finally:
        ctx.term()
    assert app.calls == 0  # nothing malformed ever reached a handler


def test_message_limits_are_enforced_live_and_oversized_frames_drop_the_connection():
    small = m.Limits(max_message_bytes=64 * 1024, max_frame_bytes=32 * 1024,
                     max_header_bytes=4096, max_buffers=4)
    server = ProtocolServer(LOCAL, limits=small).start()
    ctx = zmq.Context()
    try:
        s = _raw_dealer(ctx, server.endpoint)
        head = msgpack.packb(m.request_header("health", 1, {}))
        s.send_multipart([head] + [b"x" * 30000] * 3)  # 90 KB > max_message_bytes
        header, _ = _recv(s)
        assert header["error"]["code"] == "too_large" and header["re"] == 1  # id still read
        assert header["error"]["details"]["limit"] == "max_message_bytes"
        s.send_multipart([b"\x00" * 5000])  # a header over max_header_bytes: no id to read
        header, _ = _recv(s)
        assert header["error"]["details"]["limit"] == "max_header_bytes" and header["re"] is None
        s.send_multipart([head] + [b"x"] * 5)  # more buffers than max_buffers
        assert _recv(s)[0]["error"]["details"]["limit"] == "max_buffers"
        # One part over ZMQ_MAXMSGSIZE: libzmq drops the connection before allocating it.
        s.send_multipart([head, b"x" * (64 * 1024)])
        assert not s.poll(500)
        with Client(server.endpoint, timeout_s=5) as c:  # the server is fine
            assert c.health()["protocol"]["errors"] == 3
        s.close()
    finally:
        ctx.term()
        server.stop()


FUZZ_LIMITS = m.Limits(max_message_bytes=256 * 1024, max_frame_bytes=64 * 1024,
                       max_header_bytes=16 * 1024, max_buffers=6)


@pytest.fixture(scope="module")
def fuzz_target():
    server = ProtocolServer(LOCAL, {"shot.put_frames": lambda req: {
        "shot": req.body["shot"], "role": req.body["role"], "stored": []}},
        limits=FUZZ_LIMITS).start()
    ctx = zmq.Context()
    sock = _raw_dealer(ctx, server.endpoint)
    yield server, sock
    sock.close()
    ctx.term()
    server.stop()


_json = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**64 - 1), st.floats(),
              st.text(max_size=10), st.binary(max_size=10)),
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=16)


@st.composite
def hostile_messages(draw):
    kind = draw(st.sampled_from(["bytes", "msgpack", "envelope", "frames"]))
    bufs = draw(st.lists(st.binary(max_size=2048), max_size=8))
    if kind == "bytes":
        return [draw(st.binary(max_size=512))] + bufs
    if kind == "msgpack":
        return [msgpack.packb(draw(_json))] + bufs
    header = {"v": draw(st.sampled_from([1, 1, 1, 0, 2, "1", None])),
              "type": draw(st.sampled_from(list(m.REQUEST_TYPES) + ["", "x" * 300, 5])),
              "id": draw(st.one_of(st.integers(-5, 2**64 - 1), st.text(max_size=200), _json)),
              "body": draw(st.dictionaries(st.sampled_from(
                  ["shot", "role", "frames", "name", "job", "first", "last", "seed", "zz"]),
                  _json, max_size=4))}
    if kind == "frames":
        header["type"], header["v"] = "shot.put_frames", 1
        header["body"] = {"shot": "s", "role": "plate", "frames": [
            {"frame": draw(st.integers(-2**40, 2**40)),
             "buf": draw(st.integers(-1, 9)),
             "dtype": draw(st.sampled_from(["f16", "f32", "u8", "u16", "f64", ""])),
             "shape": draw(st.lists(st.integers(-3, 2**33), min_size=2, max_size=4))}
            for _ in range(draw(st.integers(0, 4)))]}
    return [msgpack.packb(header)] + bufs


@settings(max_examples=120, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(frames=hostile_messages())
def test_live_server_fuzz_always_answers_and_never_dies(fuzz_target, frames):
    server, sock = fuzz_target
    sock.send_multipart(frames)
    # Every hostile message is within the transport limits, so a reply is owed.
    assert sock.poll(5000), f"no reply to {frames[:1]!r}"
    parts = sock.recv_multipart()
    header, _ = codec.decode(parts, local="client")  # replies are always well-formed
    assert header["type"] == "reply" and isinstance(header["ok"], bool)
    if not header["ok"]:
        assert header["error"]["code"] in (
            "protocol_error", "invalid_input", "too_large", "version_mismatch"), header
    assert server.running


def test_server_answers_a_valid_hello_after_the_fuzz(fuzz_target):
    server, _ = fuzz_target
    with Client(server.endpoint, timeout_s=5) as c:
        assert c.hello()["protocol_version"] == 1
    assert server.running


# --- events -----------------------------------------------------------------------------------

def test_events_reach_subscribed_clients_only(app):
    ep = app.server.endpoint
    with Client(ep, timeout_s=5) as a, Client(ep, timeout_s=5) as b, \
            Client(ep, timeout_s=5) as star, Client(ep, timeout_s=5) as none:
        assert a.subscribe("job-a") == ["job-a"]
        b.subscribe("job-b")
        star.subscribe("*")
        none.health()  # connected, but not subscribed

        def burst(job, n):
            for i in range(n):
                app.server.publish(job, {"stage": "train", "step": i + 1, "total": n})

        threads = [threading.Thread(target=burst, args=("job-a", 20)),
                   threading.Thread(target=burst, args=("job-c", 5))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        got_a = list(a.iter_events(timeout=0.3))
        assert [e["step"] for e in got_a] == list(range(1, 21))
        assert {e["job"] for e in got_a} == {"job-a"}
        assert all(e["seq"] > 0 and e["event"] == "progress" for e in got_a)
        got_star = list(star.iter_events(timeout=0.3))
        assert len(got_star) == 25 and {e["job"] for e in got_star} == {"job-a", "job-c"}
        assert list(b.iter_events(timeout=0.3)) == []
        assert list(none.iter_events(timeout=0.3)) == []

        assert a.unsubscribe("job-a") == []
        app.server.publish("job-a", {"event": "log", "level": "info", "message": "hi"})
        assert list(a.iter_events(timeout=0.3)) == []
        (ev,) = list(star.iter_events(timeout=0.3))
        assert ev["event"] == "log" and ev["message"] == "hi" and ev["level"] == "info"


def test_events_between_replies_are_queued_not_lost(app, client):
    client.subscribe("j1")
    for i in range(5):
        app.server.publish("j1", {"step": i, "total": 5})
    time.sleep(0.1)
    assert client.health()["uptime_s"] >= 0  # the events arrive before this reply
    events = list(client.iter_events("j1", timeout=0.2))
    assert [e["step"] for e in events] == [0, 1, 2, 3, 4]
    assert [e["seq"] for e in events] == sorted(e["seq"] for e in events)


# --- timeouts, restarts, shutdown -------------------------------------------------------------

def test_client_timeout_against_a_dead_endpoint_is_fast_and_clear():
    endpoint = _free_port_endpoint()
    with Client(endpoint, timeout_s=0.3) as c:
        t0 = time.monotonic()
        with pytest.raises(ClientTimeout) as ei:
            c.hello()
        elapsed = time.monotonic() - t0
    assert elapsed < 1.5
    assert endpoint in str(ei.value) and isinstance(ei.value, TimeoutError)
    assert ei.value.details["endpoint"] == endpoint


def test_client_timeout_when_the_server_never_answers():
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)  # accepts connections, never replies
    router.linger = 0
    router.bind(LOCAL)
    endpoint = router.getsockopt_string(zmq.LAST_ENDPOINT)
    try:
        with Client(endpoint, timeout_s=0.3) as c:
            with pytest.raises(ClientTimeout, match=f"no reply .*{endpoint}.*'health'"):
                c.health()
    finally:
        router.close(0)
        ctx.term()


def test_stale_reply_after_a_timeout_is_not_mistaken_for_the_next_one(app):
    def slow_status(req):
        time.sleep(0.6)
        return {"job": req.body["job"], "state": "done"}

    app.server.register("job.status", slow_status)
    with Client(app.server.endpoint, timeout_s=0.3) as c:
        with pytest.raises(ClientTimeout):
            c.status("slow-1")
        time.sleep(0.5)  # the stale reply is sent meanwhile (to the abandoned socket)
        c.timeout_s = 5
        assert c.status("next-2")["job"] == "next-2"


def test_replies_to_abandoned_pipelined_requests_are_dropped(app, client):
    client.create_shot("s", 1, 10)
    client.batch_bytes = 1  # one frame per message: 12 messages, up to 16 in flight
    frames = {n: np.zeros((8, 8, 4), np.float16) for n in range(0, 12)}  # frame 0 is outside
    with pytest.raises(InvalidInput, match="frame 0 is outside"):
        client.put_frames("s", "plate", frames)
    # The other 11 replies are still coming on this socket; none may answer the next call.
    for _ in range(3):
        assert client.get_shot("s")["name"] == "s"
    assert client.list_loras() == []
    assert not client._inflight and not client._replies  # nothing abandoned is kept


def test_server_restart_does_not_wedge_the_client():
    fake = FakeApp()
    fake.server = ProtocolServer(LOCAL, fake.handlers()).start()
    endpoint = fake.server.endpoint
    with Client(endpoint, timeout_s=0.5) as c:
        c.subscribe("*")
        assert c.health()["uptime_s"] >= 0
        fake.server.stop()
        with pytest.raises(ClientTimeout):
            c.health()
        fake.server = ProtocolServer(endpoint, fake.handlers()).start()  # same port
        try:
            c.timeout_s = 5
            assert c.health()["uptime_s"] < 5
            # The new socket subscribed again, so events flow without user action.
            fake.server.publish("j9", {"step": 1, "total": 1})
            (ev,) = list(c.iter_events(timeout=1.0))
            assert ev["job"] == "j9"
        finally:
            fake.server.stop()


def test_stop_is_clean_and_idempotent():
    server = ProtocolServer(LOCAL).start()
    endpoint = server.endpoint
    io_thread = server._io_thread
    assert io_thread.is_alive()
    server.stop()
    server.stop()
    assert not server.running and not io_thread.is_alive()
    # The port is free again.
    again = ProtocolServer(endpoint).start()
    try:
        with Client(again.endpoint, timeout_s=5) as c:
            assert c.hello()["protocol_version"] == 1
    finally:
        again.stop()


def test_plain_mode_is_loopback_only():
    for endpoint in ("tcp://0.0.0.0:5555", "tcp://*:5555", "tcp://10.1.2.3:5555"):
        with pytest.raises(Unauthorized, match="CURVE"):
            ProtocolServer(endpoint)
    ProtocolServer("tcp://0.0.0.0:5555", allow_insecure=True)  # explicit opt-out: allowed
    ProtocolServer("tcp://[::1]:5555")
    ProtocolServer("ipc:///tmp/lorafx-test.sock")


def test_stop_does_not_deadlock_when_a_handler_replies_after_the_io_thread_has_gone():
    """A handler still running at stop() used to block forever sending its reply to the closed
    I/O thread while holding the lock stop() needs next: stop() never returned."""
    entered, release = threading.Event(), threading.Event()

    def slow(req):
        entered.set()
        release.wait(10)
        return {"job": "late-1", "state": "queued", "position": 0}

    server = ProtocolServer(LOCAL, {"job.train": slow}).start()
    io_thread = server._io_thread
    client = Client(server.endpoint, timeout_s=3)
    caller = threading.Thread(target=lambda: pytest.raises(Exception, client.train, "s"), daemon=True)
    caller.start()
    assert entered.wait(5)
    stopper = threading.Thread(target=server.stop, kwargs={"timeout": 2.0}, daemon=True)
    stopper.start()
    io_thread.join(5)
    assert not io_thread.is_alive()
    release.set()  # the handler now replies into a server whose I/O thread is gone
    stopper.join(10)
    assert not stopper.is_alive(), "ProtocolServer.stop() deadlocked"
    assert not server.running
    caller.join(10)
    client.close()
