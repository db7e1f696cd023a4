"""The OpenFX plug-in, loaded by the test OFX host, against a STAND-IN server: the real
lorafx.protocol ProtocolServer (transport, framing, body validation) with small in-memory
handlers for hello / shot.create / shot.put_frames / job.train / job.render / job.status /
job.cancel / job.list / result.fetch. The stand-in makes every behaviour the plug-in must cope
with cheap and deterministic: a "render" is a known function of the uploaded frames, jobs step
on a timer, the server can be stopped and restarted (keeping or losing its state), and
result.fetch caps the frames per reply (too_large with max_frames) to force chunking.

tests/test_ofx_serve.py runs the same plug-in against a real `lorafx serve`."""

from __future__ import annotations

import itertools
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from lorafx.errors import InvalidInput, NotFound, TooLarge
from lorafx.protocol.server import ProtocolServer

from test_ofx_build import OfxHost, ofx, ofx_host, read_raw, write_raw  # noqa: F401

GENERAL = "OfxImageEffectContextGeneral"
FILTER = "OfxImageEffectContextFilter"
W, H = 40, 24
FIRST, LAST = 1001, 1006  # the edit's range
CLIP_FIRST, CLIP_LAST = 1000, 1007  # the Source clip is longer than the edit


# --- the stand-in server ----------------------------------------------------------------------


def stand_in_render(plate: np.ndarray, matte: np.ndarray | None, edited: np.ndarray) -> np.ndarray:
    """The stand-in's "render" of one frame: the edited frame's colours inside the matte,
    brightened so it differs from the edited frame too, the plate outside. f16 RGBA."""
    p = plate.astype(np.float32)
    e = edited.astype(np.float32)
    m = np.ones(p.shape[:2] + (1,), np.float32) if matte is None else matte.astype(np.float32)[..., :1]
    out = p * (1 - m) + (e * 0.5 + 0.25) * m
    out[..., 3:] = p[..., 3:] if p.shape[-1] == 4 else 1.0
    return out.astype(np.float16)


class StandIn:
    """State + job runner + ProtocolServer handlers. `stop()`/`start()` emulate a restart that
    keeps the state (a durable server); a fresh StandIn on the same endpoint is one that lost it."""

    def __init__(self, step_s: float = 0.01, max_fetch_frames: int = 4):
        self.step_s = step_s
        self.max_fetch_frames = max_fetch_frames
        self.shots: dict[str, dict] = {}
        self.jobs: dict[str, dict] = {}
        self.queue: list[str] = []
        self.requests: list[tuple[str, dict]] = []
        self.lock = threading.RLock()
        self.running = threading.Event()  # cleared while "down": jobs do not progress
        self.ids = itertools.count(1)
        self.server: ProtocolServer | None = None
        self.endpoint: str | None = None
        self._stop = threading.Event()
        self._worker = threading.Thread(target=self._run, daemon=True)
        self._worker.start()

    # lifecycle
    def start(self, endpoint: str = "tcp://127.0.0.1:0") -> "StandIn":
        handlers = {
            "hello": lambda r: {"model": "stand-in", "server_version": "stand-in", "device": "cpu"},
            "shot.create": self.h_shot_create, "shot.put_frames": self.h_put_frames,
            "shot.get": self.h_shot_get, "job.train": self.h_train, "job.render": self.h_render,
            "job.status": self.h_status, "job.cancel": self.h_cancel, "job.list": self.h_list,
            "result.fetch": self.h_fetch,
        }
        self.server = ProtocolServer(endpoint, handlers).start()
        self.endpoint = self.server.endpoint
        self.running.set()
        return self

    def stop(self):
        self.running.clear()
        if self.server is not None:
            self.server.stop()
            self.server = None

    def close(self):
        self.stop()
        self._stop.set()
        self.running.set()
        self._worker.join(5)

    # helpers
    def _log(self, req):
        with self.lock:
            self.requests.append((req.type, req.body))

    def _shot(self, name):
        if name not in self.shots:
            raise NotFound(f"unknown shot {name!r}", shot=name)
        return self.shots[name]

    def _record(self, j):
        pos = self.queue.index(j["job"]) if j["job"] in self.queue else None
        return {**{k: v for k, v in j.items() if not k.startswith("_")}, "position": pos}

    # handlers
    def h_shot_create(self, req):
        self._log(req)
        b = req.body
        with self.lock:
            if b["name"] in self.shots and not b["replace"]:
                raise InvalidInput("shot exists", shot=b["name"])
            if b["last"] < b["first"]:
                raise InvalidInput("last < first", field="body.last")
            self.shots[b["name"]] = {"name": b["name"], "first": b["first"], "last": b["last"],
                                     "colorspace": b["colorspace"], "settings": b["settings"],
                                     "frames": {"plate": {}, "matte": {}, "reference": {}},
                                     "results": {}, "latest_render": None, "lora": None}
            return self._shot_record(self.shots[b["name"]])

    def _shot_record(self, s):
        return {"name": s["name"], "first": s["first"], "last": s["last"], "colorspace": s["colorspace"],
                "settings": s["settings"], "plate": None, "matte": None,
                "frames": {r: sorted(f) for r, f in s["frames"].items()} | {"result": []},
                "loras": [s["lora"]] if s["lora"] else [], "created_at": time.time()}

    def h_shot_get(self, req):
        with self.lock:
            return self._shot_record(self._shot(req.body["name"]))

    def h_put_frames(self, req):
        self._log(req)
        b = req.body
        with self.lock:
            s = self._shot(b["shot"])
            stored = []
            for n, px in req.frames().items():
                if not s["first"] <= n <= s["last"]:
                    raise InvalidInput(f"frame {n} outside shot", field="body.frames")
                a = np.array(px)
                if not np.isfinite(a.astype(np.float32)).all():
                    raise InvalidInput(f"frame {n} has NaN or inf pixels")
                s["frames"][b["role"]][n] = a
                stored.append(n)
            return {"shot": b["shot"], "role": b["role"], "stored": stored}

    def _new_job(self, kind, shot, total, params):
        jid = f"{kind}-{next(self.ids):04d}"
        self.jobs[jid] = {"job": jid, "kind": kind, "shot": shot, "state": "queued", "stage": None,
                          "step": None, "total": total, "loss": None, "eta_s": None, "message": None,
                          "error": None, "created_at": time.time(), "started_at": None,
                          "finished_at": None, "result": None, "_params": params, "_cancel": False}
        self.queue.append(jid)
        return jid

    def h_train(self, req):
        self._log(req)
        b = req.body
        with self.lock:
            s = self._shot(b["shot"])
            missing = [f for f in range(s["first"], s["last"] + 1) if f not in s["frames"]["plate"]]
            if missing:
                raise InvalidInput(f"no plate frames for {missing[:5]}")
            unknown = set(b["settings"]) - {"steps", "rank", "seed", "caption"}
            if unknown:
                raise InvalidInput(f"unknown setting {sorted(unknown)[0]!r}")
            jid = self._new_job("train", b["shot"], int(b["settings"].get("steps", 100)), b["settings"])
            return {"job": jid, "state": "queued", "position": self.queue.index(jid)}

    def h_render(self, req):
        self._log(req)
        b = req.body
        with self.lock:
            s = self._shot(b["shot"])
            if not s["lora"]:
                raise NotFound(f"no trained LoRA for shot {b['shot']}", shot=b["shot"])
            first = b["first"] if b["first"] is not None else s["first"]
            last = b["last"] if b["last"] is not None else s["last"]
            refs = s["frames"]["reference"]
            if not refs:
                raise InvalidInput("no edited first frame")
            jid = self._new_job("render", b["shot"], last - first + 1,
                                {"first": first, "last": last, "seed": b["seed"], "steps": b["steps"],
                                 "caption": b["caption"]})
            return {"job": jid, "state": "queued", "position": self.queue.index(jid)}

    def h_status(self, req):
        with self.lock:
            if req.body["job"] not in self.jobs:
                raise NotFound(f"unknown job {req.body['job']}", job=req.body["job"])
            return self._record(self.jobs[req.body["job"]])

    def h_cancel(self, req):
        self._log(req)
        with self.lock:
            j = self.jobs.get(req.body["job"])
            if j is None:
                raise NotFound("unknown job", job=req.body["job"])
            if j["state"] == "queued":
                self.queue.remove(j["job"])
                j.update(state="cancelled", finished_at=time.time())
            elif j["state"] == "running":
                j["_cancel"] = True
            return self._record(j)

    def h_list(self, req):
        with self.lock:
            jobs = [j for j in self.jobs.values() if req.body["shot"] in (None, j["shot"])]
            jobs.sort(key=lambda j: j["created_at"], reverse=True)
            return {"jobs": [self._record(j) for j in jobs[: req.body["limit"]]]}

    def h_fetch(self, req):
        self._log(req)
        b = req.body
        with self.lock:
            s = self._shot(b["shot"])
            jid = b["job"] or s["latest_render"]
            if not jid or jid not in s["results"]:
                raise NotFound(f"shot {b['shot']} has no rendered results yet", shot=b["shot"])
            first = b["first"] if b["first"] is not None else s["first"]
            last = b["last"] if b["last"] is not None else s["last"]
            frames = [f for f in range(first, last + 1) if f in s["results"][jid]]
            if not frames:
                raise NotFound(f"job {jid} wrote no frames in {first}-{last}")
            if len(frames) > self.max_fetch_frames:
                raise TooLarge(f"{len(frames)} frames exceed the message limit", limit="max_message_bytes",
                               max_frames=self.max_fetch_frames)
            dtype = np.float16 if b["dtype"] == "f16" else np.float32
            descs, arrays = [], []
            for i, f in enumerate(frames):
                px = s["results"][jid][f].astype(dtype)
                descs.append({"frame": f, "role": "result", "buf": i + 1, "dtype": b["dtype"],
                              "shape": list(px.shape), "channels": ["R", "G", "B", "A"]})
                arrays.append(px)
            return {"shot": b["shot"], "job": jid, "frames": descs}, arrays

    # the job runner
    def _run(self):
        while not self._stop.is_set():
            self.running.wait()
            with self.lock:
                jid = self.queue[0] if self.queue else None
                j = self.jobs.get(jid) if jid else None
                if j is not None and j["state"] == "queued":
                    j.update(state="running", started_at=time.time(), step=0,
                             stage="motion" if j["kind"] == "train" else "render")
            if j is None:
                time.sleep(0.005)
                continue
            self._step(j)

    def _step(self, j):
        time.sleep(self.step_s)
        self.running.wait()
        with self.lock:
            if j["_cancel"]:
                j.update(state="cancelled", finished_at=time.time())
                self.queue.remove(j["job"])
                return
            j["step"] += 1
            j["loss"] = 1.0 / j["step"] if j["kind"] == "train" else None
            j["eta_s"] = (j["total"] - j["step"]) * self.step_s
            if j["step"] < j["total"]:
                return
            s = self.shots.get(j["shot"])
            try:
                if s is None:
                    raise NotFound(f"shot {j['shot']} was deleted")
                if j["kind"] == "train":
                    s["lora"] = j["shot"]
                    j["result"] = {"lora": j["shot"], "steps": j["total"]}
                else:
                    p = j["_params"]
                    refs = s["frames"]["reference"]
                    edited = refs.get(p["first"], refs[min(refs)])
                    s["results"][j["job"]] = {
                        f: stand_in_render(s["frames"]["plate"][f], s["frames"]["matte"].get(f), edited)
                        for f in range(p["first"], p["last"] + 1)}
                    s["latest_render"] = j["job"]
                    j["result"] = {"first": p["first"], "last": p["last"]}
                j.update(state="done", finished_at=time.time())
            except Exception as e:  # a stand-in bug shows up as a failed job, like the real thing
                j.update(state="failed", error={"code": "internal", "message": str(e), "details": {}},
                         finished_at=time.time())
            self.queue.remove(j["job"])

    def requests_of(self, type_):
        with self.lock:
            return [b for t, b in self.requests if t == type_]


@pytest.fixture
def stand_in():
    servers = []

    def make(**kw) -> StandIn:
        s = StandIn(**kw)
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.close()


def free_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


# --- the shot the host feeds the plug-in ------------------------------------------------------


class Shot:
    """Synthetic plate (HDR values, negatives, a NaN and a huge value to sanitize), a moving
    matte (Alpha-only clip), and an edited frame, written as the host's raw frame files."""

    def __init__(self, root: Path, plugin: Path, w=W, h=H):
        self.root, self.plugin, self.w, self.h = root, plugin, w, h
        rng = np.random.default_rng(11)
        root.mkdir(parents=True, exist_ok=True)
        self.plate, self.matte = {}, {}
        yy, xx = np.mgrid[0:h, 0:w]
        for f in range(CLIP_FIRST, CLIP_LAST + 1):
            rgb = rng.normal(0.4, 0.6, (h, w, 3)).astype(np.float32)
            rgb[0, 0] = [30.0, -0.5, 0.001]  # scene-linear values outside [0, 1]
            rgba = np.concatenate([rgb, rng.random((h, w, 1)).astype(np.float32)], -1)
            rgba[h - 1, 0, 1] = (f - CLIP_FIRST) * 0.125  # orientation marker: bottom-left pixel
            self.plate[f] = rgba
            m = ((xx >= 8 + (f - FIRST)) & (xx < 24 + (f - FIRST)) & (yy >= 4) & (yy < 14)).astype(np.float32)
            m[yy == 4] *= 0.5  # soft edge
            self.matte[f] = m[..., None]
        self.plate[FIRST + 2][5, 7, 0] = np.nan  # sent as 0
        self.plate[FIRST + 3][6, 8, 2] = 1e6  # sent as 65504
        self.edited = self.plate[FIRST].copy()
        self.edited[4:14, 8:24, :3] = [0.9, 0.2, 0.1]
        for f in self.plate:
            write_raw(root / f"plate.{f}.raw", self.plate[f])
            write_raw(root / f"matte.{f}.raw", self.matte[f])
        write_raw(root / f"edited.{FIRST}.raw", self.edited)

    def wire(self, a: np.ndarray) -> np.ndarray:
        """What the plug-in must send for `a`: NaN -> 0, clamped to the half range, as f16."""
        return np.clip(np.nan_to_num(a, nan=0.0), -65504, 65504).astype(np.float16)

    def setup(self, host: OfxHost, context=GENERAL, shot="sh010", endpoint=None, matte="files",
              reference="files", layout="padded", references=str(FIRST)):
        host.ok(f"layout {layout}")
        host.ok(f"project {self.w} {self.h}")
        host.ok(f"clip Source files {self.root}/plate.%d.raw {self.w} {self.h} 4 {CLIP_FIRST} {CLIP_LAST}")
        if context == GENERAL:
            host.ok(f"clip Matte files {self.root}/matte.%d.raw {self.w} {self.h} 1 {CLIP_FIRST} {CLIP_LAST}"
                    if matte == "files" else f"clip Matte {matte}")
            host.ok(f"clip Reference files {self.root}/edited.%d.raw {self.w} {self.h} 4 {FIRST} {FIRST}"
                    if reference == "files" else f"clip Reference {reference}")
        r = host.ok(f"load {self.plugin}")
        assert r["id"] == "io.lorafx.LoraEdit"
        host.ok(f"create {context}")
        if endpoint:
            host.ok(f"set serverAddress {endpoint}")
        host.ok(f"set shotName {shot}")
        host.ok(f"set firstFrame {FIRST}")
        host.ok(f"set lastFrame {LAST}")
        host.ok(f"set referenceFrames {references}")
        host.ok("set trainingSteps 20")
        host.ok("set prompt a red box on the table")


@pytest.fixture
def shot(tmp_path, ofx):  # noqa: F811
    return Shot(tmp_path / "frames", ofx.plugin)


def assert_clean(host: OfxHost):
    st = host.ok("stats")
    assert st["violations"] == [], st["violations"]
    assert st["leaked_images"] == 0


def render_frames(host: OfxHost, out: Path, first=CLIP_FIRST, last=CLIP_LAST, extra="") -> dict:
    out.mkdir(parents=True, exist_ok=True)
    r = host.ok(f"render {first} {last} {out}/out.%d.raw {extra}", timeout=120)
    frames = {f["frame"]: f for f in r["frames"]}
    for f in frames.values():
        assert f["status"] == 0 and f["unwritten"] == 0, f
        assert f["rod"] == [0.0, 0.0, float(W), float(H)], f  # Matte/Reference do not grow the output
    return frames


# --- tests ------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["padded", "topdown"])
def test_standin_train_render_pixels(ofx_host, stand_in, shot, tmp_path, layout):
    """Train -> render through the host's clip API, uploads and results bit-exact: plate/matte/
    edited frames arrive top row first as f16 (NaN/huge values sanitized), the rendered frames
    come back into the host's bottom-up buffers (padded or negative row bytes), tiles included,
    and frames outside the edit pass through untouched."""
    server = stand_in(step_s=0.005, max_fetch_frames=4).start()
    host = ofx_host()
    shot.setup(host, endpoint=server.endpoint, layout=layout)
    r = host.ok("press train", timeout=60)
    assert r["ms"] < 10000
    w = host.cmd("wait 60 refresh status trained|error")
    assert w["ok"] and "trained" in w["value"], w
    assert "clamped for upload" in w["seen"][0]  # the NaN and the 1e6 pixel, reported

    # What the server received, frame by frame.
    s = server.shots["sh010"]
    assert sorted(s["frames"]["plate"]) == list(range(FIRST, LAST + 1))
    for f in range(FIRST, LAST + 1):
        got = s["frames"]["plate"][f]
        assert got.dtype == np.float16 and got.shape == (H, W, 4)
        assert np.array_equal(got.view(np.uint16), shot.wire(shot.plate[f]).view(np.uint16)), f
        m = s["frames"]["matte"][f]
        assert m.shape == (H, W, 1) and np.array_equal(m, shot.wire(shot.matte[f])), f
    assert sorted(s["frames"]["reference"]) == [FIRST]
    assert np.array_equal(s["frames"]["reference"][FIRST], shot.wire(shot.edited))
    assert s["frames"]["plate"][FIRST + 2][5, 7, 0] == 0 and s["frames"]["plate"][FIRST + 3][6, 8, 2] == 65504
    train = server.requests_of("job.train")[-1]
    assert train["settings"] == {"steps": 20, "rank": 16, "seed": 0, "caption": "a red box on the table"}
    create = server.requests_of("shot.create")[-1]
    assert (create["name"], create["first"], create["last"], create["replace"]) == ("sh010", FIRST, LAST, True)

    host.ok("press render")
    w = host.cmd("wait 60 refresh status rendered|error")
    assert w["ok"] and "rendered" in w["value"], w
    render_req = server.requests_of("job.render")[-1]
    assert (render_req["first"], render_req["last"], render_req["steps"]) == (FIRST, LAST, 30)
    assert render_req["caption"] == "a red box on the table"

    frames = render_frames(host, tmp_path / "out")
    results = s["results"][s["latest_render"]]
    for f in range(CLIP_FIRST, CLIP_LAST + 1):
        out = read_raw(tmp_path / "out" / f"out.{f}.raw", H, W, 4)
        if FIRST <= f <= LAST:
            assert frames[f]["identity"] == "" and frames[f]["message"] == "", frames[f]
            assert np.array_equal(out, results[f].astype(np.float32)), f"frame {f} differs from the server's"
        else:
            assert frames[f]["identity"] == "Source"  # outside the edit: a pass-through
            assert np.array_equal(out, shot.plate[f], equal_nan=True), f
    # result.fetch: one too_large answer (max_frames 4), then chunks that fit
    spans = [b["last"] - b["first"] + 1 for b in server.requests_of("result.fetch")]
    assert spans and sum(n > 4 for n in spans) <= 1 and all(n <= 4 for n in spans[1:]), spans

    # Tiles (render windows smaller than the frame) give the same pixels.
    render_frames(host, tmp_path / "tiles", FIRST, LAST, "tiles 3")
    for f in range(FIRST, LAST + 1):
        assert np.array_equal(read_raw(tmp_path / "tiles" / f"out.{f}.raw", H, W, 4),
                              read_raw(tmp_path / "out" / f"out.{f}.raw", H, W, 4))
    assert_clean(host)
    assert host.ok("destroy")["leaked_images"] == 0
    host.ok("unload")
    assert host.close() == 0


def test_standin_server_down_gives_source_and_status(ofx_host, shot, tmp_path):
    """No server: Train and Render say so in the status line (and a host error message for the
    button press), renders return the source with a persistent message, nothing hangs."""
    host = ofx_host()
    shot.setup(host, context=FILTER, endpoint=free_endpoint())
    t0 = time.monotonic()
    r = host.ok("press train", timeout=30)
    assert time.monotonic() - t0 < 12
    assert "server down" in r["status"] and "unreachable" in r["status"], r
    assert any("cannot reach the server" in m for m in r["messages"]), r
    r = host.ok("press render")
    assert r["ms"] < 2000  # handed to the worker: the UI thread never waits on the network
    w = host.cmd("wait 20 refresh status render not submitted")
    assert w["ok"] and "server down" in w["value"], w
    t0 = time.monotonic()
    frames = render_frames(host, tmp_path / "out", FIRST, LAST, "interactive")
    assert time.monotonic() - t0 < 20
    for f in range(FIRST, LAST + 1):
        assert np.array_equal(read_raw(tmp_path / "out" / f"out.{f}.raw", H, W, 4), shot.plate[f], equal_nan=True)
        assert "showing the source" in frames[f]["message"] and "server down" in frames[f]["message"], frames[f]
    assert_clean(host)
    t0 = time.monotonic()
    host.ok("destroy")
    assert time.monotonic() - t0 < 5  # the worker stops promptly even mid-retry
    assert host.close() == 0


def test_standin_server_restart_mid_job_recovers(ofx_host, stand_in, shot, tmp_path):
    """The server goes down while training and comes back on the same address with its state
    (a durable server): the plug-in reports the outage, reconnects, re-queries the job and
    carries on to the rendered frames."""
    server = stand_in(step_s=0.05).start()
    endpoint = server.endpoint
    host = ofx_host()
    shot.setup(host, endpoint=endpoint)
    host.ok("set trainingSteps 60")
    host.ok("press train")
    w = host.cmd("wait 30 refresh status training step")
    assert w["ok"], w
    server.stop()
    w = host.cmd("wait 30 refresh status server down|not answering")
    assert w["ok"], w
    frames = render_frames(host, tmp_path / "down", FIRST, FIRST, "interactive")
    assert "showing the source" in frames[FIRST]["message"]
    server.start(endpoint)
    w = host.cmd("wait 60 refresh status trained|error|gone")
    assert w["ok"] and "trained" in w["value"], w
    host.ok("press render")
    w = host.cmd("wait 60 refresh status rendered|error")
    assert w["ok"] and "rendered" in w["value"], w
    render_frames(host, tmp_path / "out", FIRST, LAST)
    s = server.shots["sh010"]
    for f in range(FIRST, LAST + 1):
        out = read_raw(tmp_path / "out" / f"out.{f}.raw", H, W, 4)
        assert np.array_equal(out, s["results"][s["latest_render"]][f].astype(np.float32)), f
    assert_clean(host)
    host.ok("destroy")
    assert host.close() == 0


def test_standin_server_restart_without_state(ofx_host, stand_in, shot, tmp_path):
    """A server restarted with no memory of the job: the plug-in says the job is gone (press
    Train again), renders fall back to the source, and a new Train works."""
    server = stand_in(step_s=0.05).start()
    endpoint = server.endpoint
    host = ofx_host()
    shot.setup(host, endpoint=endpoint)
    host.ok("set trainingSteps 200")
    host.ok("press train")
    assert host.cmd("wait 30 refresh status training step")["ok"]
    server.stop()
    fresh = stand_in(step_s=0.002).start(endpoint)
    w = host.cmd("wait 30 refresh status gone from the server|error")
    assert w["ok"] and "press Train again" in w["value"], w
    frames = render_frames(host, tmp_path / "out", FIRST, FIRST)
    assert "showing the source" in frames[FIRST]["message"]
    assert np.array_equal(read_raw(tmp_path / "out" / f"out.{FIRST}.raw", H, W, 4), shot.plate[FIRST], equal_nan=True)
    host.ok("set trainingSteps 5")
    host.ok("press train")
    w = host.cmd("wait 30 refresh status trained|error")
    assert w["ok"] and "trained" in w["value"] and fresh.shots["sh010"]["lora"], w
    assert_clean(host)
    host.ok("destroy")
    assert host.close() == 0


def test_standin_render_chains_after_training_and_cancel(ofx_host, stand_in, shot, tmp_path):
    """Render pressed while training runs is submitted when training is done; Cancel stops a
    running job; a server error (render before any training) shows in the status line."""
    server = stand_in(step_s=0.01).start()
    host = ofx_host()
    shot.setup(host, endpoint=server.endpoint)
    # a server-side error: the shot does not exist on the server yet
    host.ok("press render")
    w = host.cmd("wait 20 refresh status error")
    assert w["ok"] and "not_found: unknown shot 'sh010'" in w["value"], w
    # chained render
    host.ok("press train")
    r = host.ok("press render")
    assert "waits for training" in r["status"] or "render" in r["status"], r
    w = host.cmd("wait 60 refresh status rendered|error")
    assert w["ok"] and "rendered" in w["value"], w
    assert [j["kind"] for j in server.jobs.values()] == ["train", "render"]
    # cancel a long training
    host.ok("set trainingSteps 100000")
    host.ok("press train")
    assert host.cmd("wait 20 refresh status training step")["ok"]
    host.ok("press cancel")
    w = host.cmd("wait 20 refresh status cancelled")
    assert w["ok"], w
    assert list(server.jobs.values())[-1]["state"] == "cancelled"
    assert_clean(host)
    host.ok("destroy")
    assert host.close() == 0


def test_standin_resolve_black_inputs_and_upload_abort(ofx_host, stand_in, shot, tmp_path):
    """Resolve reports every input as connected and hands back black frames: an all-black matte
    or edited frame is refused with a message saying so; Use Matte off trains without a matte.
    Cancelling the upload (progress bar) submits nothing."""
    server = stand_in(step_s=0.002).start()
    host = ofx_host()
    shot.setup(host, endpoint=server.endpoint, matte="black")
    r = host.ok("press train")
    assert "Matte input is empty on every frame" in r["status"], r
    assert any("Matte" in m for m in r["messages"])
    assert not server.requests_of("job.train")
    host.ok("set useMatte 0")
    host.ok("press train")
    w = host.cmd("wait 30 refresh status trained|error")
    assert w["ok"] and "trained" in w["value"], w
    assert server.shots["sh010"]["frames"]["matte"] == {}
    # black edited frame
    host.ok("clip Reference black")
    r = host.ok("press render")
    assert "all black at reference frame" in r["status"], r
    # the artist cancels the upload from the progress bar
    host.ok("clip Reference files {}/edited.%d.raw {} {} 4 {} {}".format(shot.root, W, H, FIRST, FIRST))
    trains = len(server.requests_of("job.train"))
    host.ok("cancel_progress_after 2")
    r = host.ok("press train")
    assert "upload cancelled" in r["status"], r
    assert len(server.requests_of("job.train")) == trains
    host.ok("cancel_progress_after -1")
    # input errors are caught before anything is sent
    host.ok("set referenceFrames 999")
    r = host.ok("press train")
    assert "reference frame 999 is outside" in r["status"], r
    host.ok("set shotName bad/name")
    r = host.ok("press train")
    assert "may only use letters" in r["status"], r
    assert_clean(host)
    host.ok("destroy")
    assert host.close() == 0


def test_standin_filter_context_uses_source_for_the_edit(ofx_host, stand_in, shot, tmp_path):
    """Filter context (Source -> Output only): the edit is read from Source at the reference
    frames, no matte is sent; the Use Input Range button sets the range from the clip."""
    server = stand_in(step_s=0.002).start()
    host = ofx_host()
    shot.setup(host, context=FILTER, endpoint=server.endpoint)
    host.ok("press setRangeFromInput")
    assert host.ok("get firstFrame")["value"] == CLIP_FIRST and host.ok("get lastFrame")["value"] == CLIP_LAST
    host.ok(f"set firstFrame {FIRST}")
    host.ok(f"set lastFrame {LAST}")
    host.ok("set referenceFrames 1002, 1004")
    host.ok("press train")
    w = host.cmd("wait 30 refresh status trained|error")
    assert w["ok"] and "trained" in w["value"], w
    s = server.shots["sh010"]
    assert s["frames"]["matte"] == {}
    assert sorted(s["frames"]["reference"]) == [1002, 1004]
    assert np.array_equal(s["frames"]["reference"][1004], shot.wire(shot.plate[1004]))
    assert_clean(host)
    host.ok("destroy")
    assert host.close() == 0
