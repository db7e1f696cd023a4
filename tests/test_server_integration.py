"""A real `lorafx serve` process on loopback, driven by the real protocol client, on EXR plates
made from the real bedroom footage: train + render with bit-exact passthrough outside the matte,
bad input over the wire, kill -9 + restart + resume, cancel."""

import os
import signal
import time

import msgpack
import numpy as np
import pytest
import zmq

from lorafx.errors import InvalidInput, NotFound
from lorafx.protocol.client import Client
from lorafx.server.app.cli import start_server_process
from lorafx.server.media.io import read_frame, write_exr_atomic

FIRST, N = 1001, 9
W, H = 192, 108  # the 960x540 bedroom plate, downscaled to keep CPU tests fast


@pytest.fixture(scope="module")
def bedroom_plate(bedroom_dir):
    """{frame: RGBA half} plate in scene-linear, {frame: matte half}, the edited first frame."""
    import OpenImageIO as oiio

    from lorafx.server.media.colour import ColourSettings, ColourTransform

    lin = ColourTransform(ColourSettings())
    plate, matte = {}, {}
    for i in range(N):
        buf = oiio.ImageBufAlgo.resize(oiio.ImageBuf(str(bedroom_dir / f"{i:05d}.jpg")), roi=oiio.ROI(0, W, 0, H, 0, 1, 0, 3))
        rgb = lin.from_model(buf.get_pixels(oiio.FLOAT))
        rgb[0, 0] = [3.5, -0.02, 12.0]  # out-of-range scene-linear values must pass through untouched
        rgba = np.concatenate([rgb, np.ones((H, W, 1), np.float32)], axis=-1)
        plate[FIRST + i] = rgba.astype(np.float16)
        m = np.zeros((H, W, 1), np.float16)
        m[30 + i: 80 + i, 70:130] = 1.0  # a moving roto over the bed
        matte[FIRST + i] = m
    edited = plate[FIRST].copy()
    edited[30:80, 70:130, :3] = edited[30:80, 70:130, :3][..., ::-1]  # recolour inside the roto
    return plate, matte, edited


@pytest.fixture
def server(tmp_path):
    procs = []

    def start(state=None):
        proc, endpoint = start_server_process(state or tmp_path / "state", model="tiny")
        procs.append(proc)
        return proc, endpoint

    yield start
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(20)
            except Exception:
                p.kill()


def _upload(c, shot, plate, matte, edited, last=FIRST + N - 1, settings=None):
    c.create_shot(shot, FIRST, last, settings={"caption": "a child in a bedroom", **(settings or {})}, replace=True)
    c.put_frames(shot, "plate", plate)
    c.put_frames(shot, "matte", matte)
    c.put_frames(shot, "reference", {FIRST: edited})


def test_train_render_bit_exact_outside_matte(server, bedroom_plate):
    plate, matte, edited = bedroom_plate
    _, endpoint = server()
    with Client(endpoint, timeout_s=60) as c:
        hello = c.hello()
        assert hello["protocol_version"] == 1 and hello["model"] == "tiny-random"
        _upload(c, "bed010", plate, matte, edited)
        events = []
        rec = c.wait(c.train("bed010", {"steps": 4}), on_progress=events.append, timeout=300)
        assert rec["state"] == "done" and rec["result"]["steps"] == 4
        assert any(e.get("event") == "progress" and e.get("stage") == "motion" for e in events)
        assert c.list_loras("bed010")[0]["name"] == "bed010"
        # training again with the same settings reuses the stored adapter
        again = c.wait(c.train("bed010", {"steps": 4}), timeout=120)
        assert again["result"].get("cached") is True
        # new pixels under the same shot and settings must retrain, not reuse the stale adapter
        c.put_frames("bed010", "matte", matte)
        fresh = c.wait(c.train("bed010", {"steps": 4}), timeout=300)
        assert not fresh["result"].get("cached") and fresh["result"]["key"] != again["result"]["key"]
        rec = c.wait(c.render("bed010", steps=2, cfg=1.0, seed=3), timeout=300)
        assert rec["state"] == "done"
        results = c.fetch_results("bed010", dtype="f16")
        paths = c.fetch_results("bed010", mode="paths")
    assert sorted(results) == list(range(FIRST, FIRST + N))
    for f in range(FIRST, FIRST + N):
        out, src = results[f], plate[f]
        assert out.shape == src.shape and out.dtype == np.float16
        outside = matte[f][..., 0] == 0
        assert np.array_equal(out[outside].view(np.uint16), src[outside].view(np.uint16)), f"frame {f}"
        assert not np.array_equal(out[~outside], src[~outside]), "the roto region must change"
    assert out[0, 0, 0] == np.float16(3.5) and out[0, 0, 2] == np.float16(12.0)
    # frame 1 inside the matte (past the 2 px inward feather) is the artist's edited frame itself
    interior = (slice(33, 77), slice(73, 127))
    assert np.array_equal(results[FIRST][interior][..., :3], edited[interior][..., :3])
    exr = read_frame(paths[FIRST + 4])
    assert exr.attributes.get("lorafx/shot") == "bed010" and exr.pixel_type == "half"
    assert exr.attributes.get("lorafx/seed") == 3 and exr.attributes.get("lorafx/lora_hash")


def test_a_shot_longer_than_the_model_window_renders_window_by_window(server, bedroom_plate):
    # 9 frames through 5-frame model windows: training on windows, rendering (0-5), (4-9) with the
    # second window pinned to frame 1005; every frame comes back, the plate exact outside the matte.
    plate, matte, edited = bedroom_plate
    _, endpoint = server()
    with Client(endpoint, timeout_s=60) as c:
        _upload(c, "long010", plate, matte, edited, settings={"window_frames": 5, "window_overlap": 1})
        assert c.wait(c.train("long010", {"steps": 2}), timeout=300)["state"] == "done"
        events = []
        rec = c.wait(c.render("long010", steps=2, cfg=1.0), on_progress=events.append, timeout=300)
        assert rec["state"] == "done"
        render_steps = [e["step"] for e in events if e.get("event") == "progress" and e.get("stage") == "render"]
        assert max(render_steps) == 4 and {e["total"] for e in events if e.get("stage") == "render"} == {4}
        results = c.fetch_results("long010", dtype="f16")
    assert sorted(results) == list(range(FIRST, FIRST + N))
    for f in range(FIRST, FIRST + N):
        outside = matte[f][..., 0] == 0
        assert np.array_equal(results[f][outside].view(np.uint16), plate[f][outside].view(np.uint16)), f"frame {f}"
        assert np.isfinite(results[f].astype(np.float32)).all()


BAD_SETTINGS = [
    ("feather_px", "soft", "shot setting 'feather_px' must be a number"),
    ("steps", "many", "training setting 'steps' must be a whole number"),
    ("context", -1.0, "context must be >= 0"),
    ("mask_mode", "blob", "mask mode must be 'bbox', 'tight' or 'dilate:N'"),
    ("dilate", "x", "shot setting 'dilate' must be a whole number"),
    ("roi_mode", "zoom", "roi_mode must be one of matte, full"),
    ("highlight_mode", "squash", "highlight_mode must be one of clip, shaper"),
    ("colour_config", "/nope.ocio", "cannot load OCIO config '/nope.ocio'"),
    ("model_space", "nope", "model colour space 'nope' is not a colour space"),
    ("appearance_steps", -1, "appearance_steps must be >= 0"),
    ("caption", 5, "shot setting 'caption' must be a string"),
    ("rank", 0, "LoRA rank must be >= 1"),
    ("cfg", 3.0, "cfg: render settings belong to job.render, not to the shot"),
    ("lr", float("nan"), "lr'?: must be finite"),  # the protocol layer already refuses NaN
]


def test_bad_input_over_the_wire(server, bedroom_plate, tmp_path):
    plate, matte, edited = bedroom_plate
    _, endpoint = server()
    with Client(endpoint, timeout_s=30) as c:
        with pytest.raises(NotFound, match="unknown shot"):
            c.train("nope")
        c.create_shot("bad", FIRST, FIRST + N - 1)
        with pytest.raises(InvalidInput, match="no plate frames"):
            c.train("bad")
        c.put_frames("bad", "plate", {FIRST: plate[FIRST]})
        with pytest.raises(InvalidInput, match="but earlier plate frames are"):
            c.put_frames("bad", "plate", {FIRST + 1: plate[FIRST + 1][:50]})
        nan = plate[FIRST + 1].copy()
        nan[5, 5, 1] = np.nan
        with pytest.raises(InvalidInput, match="NaN"):
            c.put_frames("bad", "plate", {FIRST + 1: nan})
        with pytest.raises(InvalidInput, match="outside shot"):
            c.put_frames("bad", "plate", {FIRST + 100: plate[FIRST]})
        with pytest.raises(InvalidInput, match="matte frame 1001 is 50x40 but the shot's plate frames are"):
            c.put_frames("bad", "matte", {FIRST: np.ones((40, 50), np.float32)})  # roles share the plate's size
        with pytest.raises(InvalidInput, match="unknown setting 'stepz'"):
            c.create_shot("bad2", FIRST, FIRST + 8, settings={"stepz": 3})
        # path mode: a matte sequence unlike the plate is refused at shot.create, naming both files
        write_exr_atomic(str(tmp_path / f"p.{FIRST}.exr"), plate[FIRST], ["R", "G", "B", "A"])
        write_exr_atomic(str(tmp_path / f"m.{FIRST}.exr"), matte[FIRST][:50, :60], ["A"])
        with pytest.raises(InvalidInput, match=r"matte .*m.1001.exr is 60x50 \(display window\) but the plate"):
            c.create_shot("bad5", FIRST, FIRST + 8, plate=str(tmp_path / "p.####.exr"),
                          matte=str(tmp_path / "m.####.exr"))
        with pytest.raises(InvalidInput, match="window_frames must be 4k\\+1"):
            c.create_shot("bad3", FIRST, FIRST + 8, settings={"window_frames": 20})
        # every setting a job would trip over is refused when it arrives, naming it (these used to
        # be accepted, then failed the job later, two of them as an "internal" TypeError)
        for key, value, message in BAD_SETTINGS:
            with pytest.raises(InvalidInput, match=message):
                c.create_shot("bad4", FIRST, FIRST + 8, settings={key: value})
        with pytest.raises(NotFound, match="unknown shot"):
            c.get_shot("bad4")  # nothing half-created
        with pytest.raises(InvalidInput, match="training setting 'steps' must be a whole number"):
            c.train("bad", {"steps": "many"})
        with pytest.raises(InvalidInput, match="shift: render settings belong to job.render, not to job.train"):
            c.train("bad", {"shift": 3.0})
        with pytest.raises(InvalidInput, match="window_overlap must be 1..13"):
            c.train("bad", {"window_overlap": 16})  # a job's override is checked when submitted
        with pytest.raises(InvalidInput, match="shot setting 'window_overlap' must be a whole number"):
            c.train("bad", {"window_overlap": "five"})
        # missing plate frames and an empty matte are found when the job reads the shot
        c.put_frames("bad", "matte", matte)
        with pytest.raises(InvalidInput, match="missing"):
            c.wait(c.train("bad", {"steps": 1}), timeout=60)
        _upload(c, "empty", plate, {f: np.zeros_like(m) for f, m in matte.items()}, edited)
        with pytest.raises(InvalidInput, match="empty"):
            c.wait(c.train("empty", {"steps": 1}), timeout=60)
        with pytest.raises(NotFound, match="no trained LoRA"):
            c.render("empty")
        with pytest.raises(InvalidInput, match="no SAM2 checkpoint"):
            c.mask("empty", FIRST, [[100.0, 50.0]])
        assert c.health()["queue_length"] == 0  # the server is alive and idle after all of it
    # a client speaking another protocol version gets an error naming both versions
    ctx = zmq.Context.instance()
    s = ctx.socket(zmq.DEALER)
    s.connect(endpoint)
    s.send_multipart([msgpack.packb({"v": 99, "type": "hello", "id": 1, "body": {"client": "x"}})])
    assert s.poll(10000)
    reply = msgpack.unpackb(s.recv_multipart()[0])
    assert reply["error"]["code"] == "version_mismatch" and "99" in reply["error"]["message"]
    s.close(0)


def test_small_inline_frames_upload(server):
    # 16x16 and 32x32 float mattes arrived in unaligned message frames and failed to be written
    _, endpoint = server()
    with Client(endpoint, timeout_s=30) as c:
        for size in (16, 32, 48):
            name = f"small{size}"
            c.create_shot(name, FIRST, FIRST + 4)
            frames = range(FIRST, FIRST + 5)
            assert c.put_frames(name, "plate", {f: np.full((size, size, 3), 0.5, np.float32) for f in frames}) \
                == list(frames)
            assert c.put_frames(name, "matte", {f: np.ones((size, size), np.float32) for f in frames}) == list(frames)
            assert c.get_shot(name)["frames"]["matte"] == list(frames)


def test_a_refused_replace_keeps_the_old_shot(server, bedroom_plate):
    # shot.create with replace=true used to delete the old shot's files before it checked the new
    # plate path: a typo in the path lost the uploaded plate, matte and reference frames.
    plate, matte, edited = bedroom_plate
    _, endpoint = server()
    with Client(endpoint, timeout_s=30) as c:
        _upload(c, "keep", plate, matte, edited)
        before = c.get_shot("keep")["frames"]
        assert before["plate"] and before["matte"] and before["reference"]
        with pytest.raises(NotFound, match="first frame"):
            c.create_shot("keep", FIRST, FIRST + N - 1, plate="/no/such/plate.####.exr", replace=True)
        with pytest.raises(InvalidInput, match="mask mode"):
            c.create_shot("keep", FIRST, FIRST + N - 1, settings={"mask_mode": "blob"}, replace=True)
        assert c.get_shot("keep")["frames"] == before


def test_a_render_submitted_with_its_training_waits_for_it(server, bedroom_plate):
    # A farm submits train and render together and walks away: the render waits in the queue for
    # the LoRA the training makes; if that training does not succeed, the render says why.
    plate, matte, edited = bedroom_plate
    _, endpoint = server()
    with Client(endpoint, timeout_s=30) as c:
        _upload(c, "farm010", plate, matte, edited)
        train = c.train("farm010", {"steps": 3})
        render = c.render("farm010", steps=2, cfg=1.0)  # no LoRA exists yet: accepted, queued behind
        trained = c.wait(train, timeout=300)
        rendered = c.wait(render, timeout=300)
        assert rendered["state"] == "done" and rendered["started_at"] >= trained["finished_at"]
        assert sorted(c.fetch_results("farm010")) == list(range(FIRST, FIRST + N))
        # a render queued behind a training that is then cancelled fails, naming that training
        _upload(c, "farm020", plate, matte, edited)
        train = c.train("farm020", {"steps": 100000})
        render = c.render("farm020", steps=2, cfg=1.0)
        c.cancel(train)
        with pytest.raises(NotFound, match=f"the training job {train} this render was queued behind ended cancelled"):
            c.wait(render, timeout=120)
        with pytest.raises(NotFound, match="no trained LoRA"):
            c.render("farm020")  # nothing pending and nothing trained: refused at once, as before


def test_kill9_mid_training_resumes_from_checkpoint(server, bedroom_plate, tmp_path):
    plate, matte, edited = bedroom_plate
    state = tmp_path / "crash-state"
    proc, endpoint = server(state)
    with Client(endpoint, timeout_s=30) as c:
        _upload(c, "crash", plate, matte, edited)
        job = c.train("crash", {"steps": 120, "checkpoint_every": 10})
        deadline = time.monotonic() + 240
        while (c.status(job).get("step") or 0) < 25:
            assert time.monotonic() < deadline, "training made no progress"
            time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    _, endpoint = server(state)
    with Client(endpoint, timeout_s=30) as c:
        rec = c.wait(job, timeout=600)
        assert rec["state"] == "done" and rec["attempts"] == 2
        assert rec["result"]["resumed_from"] >= 20, rec["result"]
        assert rec["result"]["steps"] == 120
        assert [l["name"] for l in c.list_loras("crash")] == ["crash"]


def test_cancel_running_training(server, bedroom_plate):
    plate, matte, edited = bedroom_plate
    _, endpoint = server()
    with Client(endpoint, timeout_s=30) as c:
        _upload(c, "cancel", plate, matte, edited)
        job = c.train("cancel", {"steps": 100000})
        queued = c.train("cancel", {"steps": 5, "seed": 9})
        deadline = time.monotonic() + 120
        while c.status(job)["state"] != "running" or not c.status(job).get("step"):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert c.cancel(queued)["state"] == "cancelled"
        t0 = time.monotonic()
        c.cancel(job)
        while c.status(job)["state"] not in ("cancelled", "failed", "done"):
            time.sleep(0.05)
        assert c.status(job)["state"] == "cancelled"
        assert time.monotonic() - t0 < 10
        assert c.list_loras("cancel") == []  # nothing half-trained was published
