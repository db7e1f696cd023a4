"""The host-agnostic ShotController against a real `lorafx serve` (tiny model, CPU): inline and
path modes end to end (EXR plate + matte + edited frame on disk -> train -> render -> result
EXRs here, bit-exact outside the matte), callbacks marshalled through `dispatch`, re-attaching
to a job by id, cancel, and the failure messages an artist sees (server down, wrong protocol
version, missing frames)."""

from __future__ import annotations

import os
import queue
import signal
import threading
import time

import msgpack
import numpy as np
import pytest
import zmq

from lorafx.errors import Cancelled, InvalidInput, VersionMismatch
from lorafx.host_plugins.common import controller as ctl
from lorafx.host_plugins.common.controller import PathMap, ServerUnavailable, ShotController, ShotSettings
from lorafx.server.media.io import read_frame, sequence_path, write_exr_atomic

FIRST, N, H, W = 1001, 9, 64, 96
LAST = FIRST + N - 1
BOX = (slice(16, 48), slice(24, 72))  # the matte rectangle (rows, columns)
FAST = dict(train_steps=3, render_steps=2, cfg=1.0, caption="a test scene")


def _smooth(rng, shift: int) -> np.ndarray:
    """A smooth scene-linear RGB image (bilinear upsampling of coarse noise), drifting by `shift`."""
    coarse = rng.random((6, 8, 3)).astype(np.float32) * 1.5
    ys, xs = np.linspace(0, 5, H), np.linspace(0, 7, W + N)
    y0, x0 = np.floor(ys).astype(int).clip(0, 4), np.floor(xs).astype(int).clip(0, 6)
    fy, fx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
    img = (coarse[y0][:, x0] * (1 - fy) * (1 - fx) + coarse[y0 + 1][:, x0] * fy * (1 - fx)
           + coarse[y0][:, x0 + 1] * (1 - fy) * fx + coarse[y0 + 1][:, x0 + 1] * fy * fx)
    return img[:, shift:shift + W]


def make_scene(root) -> dict:
    """Plate (RGBA half EXRs), matte (A-only EXRs), edited first frame, under `root`."""
    rng = np.random.default_rng(7)
    os.makedirs(root, exist_ok=True)
    plate_pat, matte_pat = str(root / "plate.####.exr"), str(root / "matte.####.exr")
    plate, matte = {}, {}
    for i in range(N):
        f = FIRST + i
        rgba = np.concatenate([_smooth(np.random.default_rng(7), i), np.ones((H, W, 1), np.float32)], -1)
        rgba[0, 0, :3] = [4.0, -0.01, 9.0]  # scene-linear values outside [0, 1] must survive
        plate[f] = rgba.astype(np.float16)
        m = np.zeros((H, W, 1), np.float16)
        m[BOX] = 1.0
        matte[f] = m
        write_exr_atomic(sequence_path(plate_pat, f), plate[f], ["R", "G", "B", "A"], pixel_type="half")
        write_exr_atomic(sequence_path(matte_pat, f), m, ["A"], pixel_type="half")
    edited = plate[FIRST].copy()
    edited[BOX][..., :3] = edited[BOX][..., :3][..., ::-1] * 0.5 + rng.random(3).astype(np.float16)
    edited_path = str(root / "edited.1001.exr")
    write_exr_atomic(edited_path, edited, ["R", "G", "B", "A"], pixel_type="half")
    return {"plate": plate, "matte": matte, "edited": edited, "plate_pat": plate_pat,
            "matte_pat": matte_pat, "edited_path": edited_path}


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    return make_scene(tmp_path_factory.mktemp("scene"))


@pytest.fixture
def server(tiny_server_process):
    return tiny_server_process[1]


class UiThread:
    """Stands in for a host's UI thread: `dispatch` queues callbacks, `pump` runs them here."""

    def __init__(self):
        self.q: queue.Queue = queue.Queue()
        self.ident = threading.get_ident()
        self.calls: list[tuple] = []  # (callback name, args, thread id)
        self.dispatched = 0

    def dispatch(self, fn):
        self.dispatched += 1
        self.q.put(fn)

    def callbacks(self) -> dict:
        def rec(name):
            return lambda *a: self.calls.append((name, a, threading.get_ident()))
        return {k: rec(k) for k in ("on_progress", "on_state", "on_done", "on_error")}

    def pump_until(self, predicate, timeout: float) -> None:
        end = time.monotonic() + timeout
        while not predicate():
            left = end - time.monotonic()
            assert left > 0, f"timed out; last calls {self.calls[-5:]}"
            try:
                self.q.get(timeout=min(0.2, left))()
            except queue.Empty:
                pass

    def drain(self) -> None:
        while not self.q.empty():
            self.q.get()()

    def named(self, name):
        return [a for n, a, _ in self.calls if n == name]


def _assert_outside_matte_is_plate(pattern, scene):
    for f in range(FIRST, LAST + 1):
        out = read_frame(sequence_path(pattern, f))
        assert out.pixel_type == "half" and out.channels == ("R", "G", "B", "A")
        px = out.pixels.astype(np.float16)
        src = scene["plate"][f]
        outside = scene["matte"][f][..., 0] == 0
        assert np.array_equal(px[outside].view(np.uint16), src[outside].view(np.uint16)), f"frame {f}"
        assert not np.array_equal(px[BOX], src[BOX]), "the matte region must change"


def test_controller_inline_mode_train_render_results_written_locally_through_dispatch(server, scene, tmp_path):
    ui = UiThread()
    c = ShotController(server, "inline010", FIRST, LAST, ShotSettings(**FAST), dispatch=ui.dispatch,
                       host="pytest", client_name="lorafx-test", poll_s=0.3, **ui.callbacks())
    with c:
        info = c.connect()
        assert info["model"] == "tiny-random" and info["protocol_version"] == 1
        record = c.submit_shot(scene["plate_pat"], scene["matte_pat"], scene["edited_path"], path_mode=False)
        assert record["plate"] is None, "inline mode must upload, not send patterns"
        assert record["frames"]["plate"] == list(range(FIRST, LAST + 1))
        assert record["frames"]["matte"] == list(range(FIRST, LAST + 1))
        assert record["frames"]["reference"] == [FIRST]
        assert not ui.calls, "callbacks wait for the UI thread"
        ui.drain()
        uploads = [a for a in ui.named("on_progress") if a[0] == "upload"]
        assert uploads[-1][1:3] == (N, N)

        t0 = time.monotonic()
        train_job = c.train()
        assert time.monotonic() - t0 < 5, "train() must return the job id at once"
        ui.pump_until(lambda: ui.named("on_done") or ui.named("on_error"), 240)
        assert not ui.named("on_error"), ui.named("on_error")
        outcome = ui.named("on_done")[0][0]
        assert outcome.job == train_job and outcome.kind == "train"
        assert outcome.record["result"]["steps"] == 3
        steps = [a for a in ui.named("on_progress") if a[0] == "motion"]
        assert steps and steps[-1][1:3] == (3, 3) and steps[-1][3] is not None  # loss reported
        assert "trained 3 steps" in c.status_text

        render_job = c.render(results_dir=str(tmp_path / "results"))
        ui.pump_until(lambda: len(ui.named("on_done")) == 2 or ui.named("on_error"), 240)
        assert not ui.named("on_error"), ui.named("on_error")
        outcome = ui.named("on_done")[1][0]
        assert outcome.job == render_job and outcome.kind == "render"
        assert outcome.pattern == str(tmp_path / "results" / render_job / "result.####.exr")
        assert (outcome.first, outcome.last) == (FIRST, LAST)
        assert c.status_text == f"rendered {N} frames"
        _assert_outside_matte_is_plate(outcome.pattern, scene)
        # the edited first frame itself comes back inside the matte (past the 2 px feather)
        first = read_frame(sequence_path(outcome.pattern, FIRST)).pixels.astype(np.float16)
        inner = (slice(19, 45), slice(27, 69))
        assert np.array_equal(first[inner], scene["edited"][inner])
        # explicit fetch into another folder: same frame numbers, same pixels
        again = c.fetch_results(str(tmp_path / "again"), job=render_job)
        assert again == str(tmp_path / "again" / "result.####.exr")
        assert np.array_equal(read_frame(sequence_path(again, LAST)).pixels,
                              read_frame(sequence_path(outcome.pattern, LAST)).pixels)

    # Every callback ran on the "UI thread", none on the follower thread.
    ui.drain()
    assert ui.dispatched == len(ui.calls) and {t for _, _, t in ui.calls} == {ui.ident}
    states = [a[0] for a in ui.named("on_state")]
    assert "connected" in states and "running" in states and states.count("done") == 2

    # A host restarted after the render: a fresh controller re-attaches by job id alone.
    done = []
    with ShotController(server, "inline010", FIRST, LAST, on_done=done.append, poll_s=0.3) as later:
        later.follow(render_job, results_dir=str(tmp_path / "reattached"))
        outcome = later.wait(render_job, timeout=60)
    assert done == [outcome] and outcome.kind == "render"
    _assert_outside_matte_is_plate(outcome.pattern, scene)


def test_controller_path_mode_sends_patterns_through_path_map_and_locates_results(server, scene, tmp_path):
    # The artist's machine sees the shared storage as `mount`; the server sees it as `shared`.
    shared = tmp_path / "shared"
    shared.mkdir()
    for f in range(FIRST, LAST + 1):
        for pat in (scene["plate_pat"], scene["matte_pat"]):
            src = sequence_path(pat, f)
            os.link(src, shared / os.path.basename(src))
    os.link(scene["edited_path"], shared / "edited.1001.exr")
    mount = tmp_path / "mount"
    mount.symlink_to(shared)
    c = ShotController(server, "path010", FIRST, LAST, ShotSettings(**FAST), path_mode=True,
                       path_map=PathMap([(str(mount), str(shared))]), poll_s=0.3)
    with c:
        record = c.submit_shot(str(mount / "plate.####.exr"), str(mount / "matte.####.exr"),
                               str(mount / "edited.1001.exr"))
        assert record["plate"] == str(shared / "plate.####.exr"), "the server gets its own paths"
        assert record["matte"] == str(shared / "matte.####.exr")
        assert record["frames"]["plate"] == [], "path mode must not upload plate pixels"
        c.wait(c.train(), timeout=240)
        job = c.render()
        outcome = c.wait(job, timeout=240)
        assert outcome.pattern.endswith(os.path.join(job, "result.####.exr"))
        assert os.path.isfile(sequence_path(outcome.pattern, FIRST)), "the server's own file"
        assert c.fetch_results(job=job) == outcome.pattern
    _assert_outside_matte_is_plate(outcome.pattern, scene)


def test_negative_frame_numbers_round_trip_inline_and_through_the_servers_own_files(server, scene, tmp_path):
    """Frames -4..4 (a pre-roll before 0): uploaded, stored, rendered and fetched under their own
    numbers, written as name.-0004.exr like every other sequence tool (not name.-004.exr)."""
    first, last = -4, -4 + N - 1
    src = tmp_path / "negative"
    src.mkdir()
    for k in range(N):
        for name in ("plate", "matte"):
            os.link(sequence_path(scene[f"{name}_pat"], FIRST + k), sequence_path(str(src / f"{name}.####.exr"), first + k))
    os.link(scene["edited_path"], src / "edited.-0004.exr")
    assert (src / "plate.-0004.exr").is_file() and (src / "plate.0004.exr").is_file()
    with ShotController(server, "preroll010", first, last, ShotSettings(**FAST), poll_s=0.3) as c:
        record = c.submit_shot(str(src / "plate.####.exr"), str(src / "matte.####.exr"),
                               str(src / "edited.-0004.exr"), path_mode=False)
        assert record["frames"]["plate"] == list(range(first, last + 1))
        c.wait(c.train(), timeout=240)
        outcome = c.wait(c.render(results_dir=str(tmp_path / "results")), timeout=240)
    assert (outcome.first, outcome.last) == (first, last)
    written = sorted(p.name for p in (tmp_path / "results").rglob("result.*.exr"))
    assert written[:2] == ["result.-0001.exr", "result.-0002.exr"] and "result.0004.exr" in written, written
    for k in range(N):
        out = read_frame(sequence_path(outcome.pattern, first + k)).pixels.astype(np.float16)
        outside = scene["matte"][FIRST + k][..., 0] == 0
        assert np.array_equal(out[outside].view(np.uint16), scene["plate"][FIRST + k][outside].view(np.uint16))


def test_controller_cancel_stops_a_running_training(server, scene):
    ui = UiThread()
    c = ShotController(server, "cancel010", FIRST, LAST, ShotSettings(**{**FAST, "train_steps": 100000}),
                       dispatch=ui.dispatch, poll_s=0.2, **ui.callbacks())
    with c:
        c.submit_shot({f: p for f, p in scene["plate"].items()}, scene["matte"], scene["edited"])
        job = c.train()
        ui.pump_until(lambda: any(a[0] == "motion" for a in ui.named("on_progress")), 120)
        t0 = time.monotonic()
        assert c.cancel() == [job]
        ui.pump_until(lambda: ("cancelled", "cancelled") in ui.named("on_state"), 20)
        assert time.monotonic() - t0 < 15
        with pytest.raises(Cancelled):
            c.wait(job, timeout=1)
        assert c.cancel() == [], "nothing left to cancel"
    ui.drain()
    assert not ui.named("on_error") and not ui.named("on_done")
    assert {t for _, _, t in ui.calls} == {ui.ident}


def test_controller_follower_rides_out_an_unresponsive_server(tiny_server_process, scene):
    # The server stops answering mid-job (frozen here; to a client the same as a restart or a
    # network outage: requests time out). The follower says so, keeps the job id, and reports
    # the job's end normally once the server answers again.
    proc, endpoint = tiny_server_process
    ui = UiThread()
    c = ShotController(endpoint, "outage010", FIRST, LAST, ShotSettings(**{**FAST, "train_steps": 20}),
                       dispatch=ui.dispatch, poll_s=0.3, timeout_s=2.0, **ui.callbacks())
    with c:
        c.submit_shot(scene["plate_pat"], scene["matte_pat"], scene["edited_path"])
        job = c.train()
        proc.send_signal(signal.SIGSTOP)
        try:
            ui.pump_until(lambda: any(a[0] == "reconnecting" for a in ui.named("on_state")), 20)
        finally:
            proc.send_signal(signal.SIGCONT)
        ui.pump_until(lambda: ui.named("on_done") or ui.named("on_error"), 180)
    assert not ui.named("on_error"), ui.named("on_error")
    assert ui.named("on_done")[0][0].job == job and ui.named("on_done")[0][0].record["result"]["steps"] == 20
    states = [a[0] for a in ui.named("on_state")]
    assert states.index("reconnecting") < states.index("reconnected") < states.index("done")


class TcpRelay:
    """A TCP forwarder between the controller and the server that can be cut and restored: a
    network outage while the server keeps working (SIGSTOP cannot show that: it freezes the job)."""

    def __init__(self, upstream_port: int):
        import socket

        self.upstream = ("127.0.0.1", upstream_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"tcp://127.0.0.1:{self.listener.getsockname()[1]}"
        self.is_cut = False
        self.conns: list = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        import socket

        while True:
            try:
                down, _ = self.listener.accept()
            except OSError:
                return
            if self.is_cut:
                down.close()  # refused while cut: zmq keeps retrying
                continue
            up = socket.create_connection(self.upstream)
            with self.lock:
                self.conns += [down, up]
            for a, b in ((down, up), (up, down)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src, dst):
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.close()
            except OSError:
                pass

    def cut(self):
        import socket

        self.is_cut = True
        with self.lock:
            conns, self.conns = self.conns, []
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def restore(self):
        self.is_cut = False

    def close(self):
        self.cut()
        self.listener.close()


def test_controller_reports_back_before_done_when_the_job_ended_during_an_outage(tiny_server_process, scene):
    # The network drops mid-job and the job finishes while the controller cannot see the server.
    # When the link returns, the artist must read "back" and then "done", in that order, with the
    # finished job's record (CI caught the follower reporting "done" first).
    from lorafx.protocol.client import Client

    _, endpoint = tiny_server_process
    relay = TcpRelay(int(endpoint.rsplit(":", 1)[1]))
    ui = UiThread()
    c = ShotController(relay.endpoint, "outage020", FIRST, LAST, ShotSettings(**{**FAST, "train_steps": 12}),
                       dispatch=ui.dispatch, poll_s=0.3, timeout_s=2.0, **ui.callbacks())
    try:
        with c, Client(endpoint, timeout_s=10) as direct:
            c.submit_shot(scene["plate_pat"], scene["matte_pat"], scene["edited_path"])
            job = c.train()
            relay.cut()
            ui.pump_until(lambda: any(a[0] == "reconnecting" for a in ui.named("on_state")), 30)
            end = time.monotonic() + 180
            while direct.status(job)["state"] not in ("done", "failed", "cancelled"):
                assert time.monotonic() < end, "the job never finished on the server"
                time.sleep(0.2)
            assert not ui.named("on_done")  # the controller has not seen it yet: the link is down
            relay.restore()
            ui.pump_until(lambda: ui.named("on_done") or ui.named("on_error"), 60)
            ui.drain()
    finally:
        relay.close()
    assert not ui.named("on_error"), ui.named("on_error")
    assert ui.named("on_done")[0][0].job == job and ui.named("on_done")[0][0].record["result"]["steps"] == 12
    states = [a[0] for a in ui.named("on_state")]
    assert states.index("reconnecting") < states.index("reconnected") < states.index("done"), states


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_controller_server_down_gives_a_clear_error_without_hanging(scene):
    endpoint = f"tcp://127.0.0.1:{_free_port()}"
    c = ShotController(endpoint, "down010", FIRST, LAST, connect_timeout_s=1.0)
    with c:
        t0 = time.monotonic()
        with pytest.raises(ServerUnavailable, match="Cannot reach the lorafx server") as e:
            c.connect()
        assert endpoint in str(e.value) and time.monotonic() - t0 < 4
        t0 = time.monotonic()
        with pytest.raises(ServerUnavailable):  # submitting connects first, with the same message
            c.submit_shot(scene["plate_pat"], scene["matte_pat"], scene["edited_path"])
        assert time.monotonic() - t0 < 4
    with pytest.raises(ServerUnavailable, match="not a valid server address"):
        ShotController("tcp://no port here", "x", FIRST, LAST, connect_timeout_s=1.0).connect()


def test_controller_follower_reports_lost_server_then_gives_up(tmp_path):
    # A job followed while the server is gone: "reconnecting" at once, an error after
    # reconnect_timeout_s -- never a silent hang.
    ui = UiThread()
    c = ShotController(f"tcp://127.0.0.1:{_free_port()}", "gone010", FIRST, LAST, dispatch=ui.dispatch,
                       poll_s=0.2, timeout_s=1.0, reconnect_timeout_s=1.5, **ui.callbacks())
    with c:
        c.follow("job-from-before-the-restart", "render")
        ui.pump_until(lambda: ui.named("on_error"), 20)
        with pytest.raises(ServerUnavailable, match="has not answered"):
            c.wait("job-from-before-the-restart", timeout=1)
    assert ui.named("on_state")[0][0] == "reconnecting"
    assert ui.named("on_error")[0][0] == "unreachable"


def test_controller_other_protocol_version_is_named_in_the_error():
    # A stand-in server that answers every request as protocol version 2.
    ctx = zmq.Context.instance()
    router = ctx.socket(zmq.ROUTER)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            if router.poll(100):
                ident, header = router.recv_multipart()[:2]
                rid = msgpack.unpackb(header)["id"]
                router.send_multipart([ident, msgpack.packb(
                    {"v": 2, "type": "reply", "re": rid, "ok": True, "body": {}})])

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        with pytest.raises(VersionMismatch, match="protocol version 2; this plugin speaks version 1"):
            ShotController(f"tcp://127.0.0.1:{port}", "v2", FIRST, LAST, connect_timeout_s=5).connect()
    finally:
        stop.set()
        t.join(2)
        router.close(0)


def test_controller_rejects_bad_input_before_touching_the_server(scene, tmp_path):
    # No server at this address: each of these must fail on its own check, not on connecting.
    dead = f"tcp://127.0.0.1:{_free_port()}"
    gappy = tmp_path / "gappy"
    gappy.mkdir()
    for f in range(FIRST, LAST + 1):
        if f not in (1004, 1005):
            os.link(sequence_path(scene["plate_pat"], f), gappy / f"plate.{f:04d}.exr")
    with ShotController(dead, "bad010", FIRST, LAST, connect_timeout_s=1) as c:
        with pytest.raises(InvalidInput, match=r"plate frames 1004-1005 are missing"):
            c.submit_shot(str(gappy / "plate.####.exr"), scene["matte_pat"], scene["edited_path"],
                          path_mode=True)
        c.shot = "no spaces please"
        with pytest.raises(InvalidInput, match="may only use letters"):
            c.submit_shot(scene["plate_pat"], scene["matte_pat"], scene["edited_path"])
        c.shot, c.last = "bad010", FIRST - 1
        with pytest.raises(InvalidInput, match="before First Frame"):
            c.submit_shot(scene["plate_pat"], scene["matte_pat"], scene["edited_path"])
        c.last = LAST
        with pytest.raises(InvalidInput, match="reference frame 2000 is outside"):
            c.submit_shot(scene["plate_pat"], scene["matte_pat"], scene["edited_path"],
                          painted={2000: scene["edited_path"]})
        with pytest.raises(InvalidInput, match="path mode sends sequence patterns"):
            c.submit_shot(scene["plate"], scene["matte_pat"], scene["edited_path"], path_mode=True)


def test_status_text_helpers():
    assert ctl.queued_text(2) == "queued (2 ahead)" and ctl.queued_text(0) == "queued (next)"
    assert ctl.progress_text("motion", 40, 100, 0.0123, 80) == "training step 40/100 loss 0.0123 ETA 1m20s"
    assert ctl.progress_text("render", 3, 30, None, 9.6) == "rendering step 3/30 ETA 10s"
    assert ctl.format_duration(7500) == "2h05m" and ctl.format_duration(None) == "?"
    assert ctl.done_text("render", {"result": {"frames": 17}}) == "rendered 17 frames"
    assert ctl.done_text("train", {"result": {"steps": 100, "final_loss": 0.5}}) == "trained 100 steps (loss 0.5)"
    assert ctl.error_text("no matte") == "error: no matte"
    assert ctl.record_text({"state": "queued", "position": 3}) == "queued (3 ahead)"
    assert ctl.record_text({"state": "failed", "error": {"message": "boom"}}) == "error: boom"
    assert ctl.record_text({"state": "running", "stage": "write", "step": 4, "total": 9}) == "writing frame 4/9"
    assert ctl.normalize_endpoint("gpu01") == "tcp://gpu01:5555"
    assert ctl.normalize_endpoint("gpu01:6000") == "tcp://gpu01:6000"
    assert ctl.normalize_endpoint("ipc:///tmp/x") == "ipc:///tmp/x"
    assert ctl.parse_frames("1025, 1001 1001;-3") == [-3, 1001, 1025]
    with pytest.raises(InvalidInput, match="'10x' is not a frame number"):
        ctl.parse_frames("1001,10x")
    pm = PathMap([("Z:\\shows", "/mnt/shows")])
    assert pm.to_server("Z:\\shows\\sh010\\plate.####.exr") == "/mnt/shows/sh010/plate.####.exr"
    assert pm.to_local("/mnt/shows/sh010/result.1001.exr") == "Z:/shows/sh010/result.1001.exr"
    assert pm.to_server("/elsewhere/x.exr") == "/elsewhere/x.exr"


def test_wire_pixels_replace_non_finite_values_and_keep_half():
    px = np.ones((4, 4, 4), np.float16)
    px[1, 1, 0], px[2, 2, 1] = np.nan, np.inf
    out, bad = ctl._wire_colour(px, 1001)
    assert bad == 2 and out.dtype == np.float16 and np.isfinite(out).all()
    assert out[1, 1, 0] == 0 and out[2, 2, 1] == np.float16(65504)
    matte, bad = ctl._wire_matte(np.ones((4, 4), np.float32), 1001)
    assert bad == 0 and matte.shape == (4, 4, 1) and matte.dtype == np.float16
    with pytest.raises(InvalidInput, match="RGB"):
        ctl._wire_colour(np.ones((4, 4, 2), np.float32), 1001)
