"""The OpenFX plug-in, loaded by the test OFX host, against a REAL `lorafx serve` process on
loopback (the CPU "tiny" model, a temporary state directory): Train and Render pressed in the
host, the rendered frames read back through the host's output buffers and compared bit for bit
with what the server produced (fetched with the Python protocol client), and with the plate
outside the matte, which the server composites through untouched."""

from __future__ import annotations

import signal

import numpy as np
import pytest

from test_ofx_build import ofx, ofx_host, read_raw, write_raw  # noqa: F401

GENERAL = "OfxImageEffectContextGeneral"
FIRST, N = 1001, 5  # 4k+1 frames, as the model wants
LAST = FIRST + N - 1
W, H = 192, 108


class Served:
    """One `lorafx serve --model tiny` for the module; kill() / restart() on the same address
    and state directory for the crash test."""

    def __init__(self, state):
        self.cli = pytest.importorskip("lorafx.server.app.cli")
        self.state = state
        self.proc, self.endpoint = self.cli.start_server_process(state, model="tiny")

    def kill(self):
        self.proc.kill()  # kill -9
        self.proc.wait()

    def restart(self):
        self.proc, endpoint = self.cli.start_server_process(self.state, model="tiny",
                                                            extra=["--endpoint", self.endpoint])
        assert endpoint == self.endpoint

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except Exception:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    s = Served(tmp_path_factory.mktemp("lorafx-state"))
    yield s
    s.stop()


@pytest.fixture
def lorafx_server(served):
    return served.endpoint


def _frames(root):
    """A plate in [0, 1] with an alpha of 1, a moving box matte, the edited first frame."""
    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[0:H, 0:W]
    plate, matte = {}, {}
    base = np.stack([xx / W, yy / H, 0.5 + 0.0 * xx], -1).astype(np.float32)
    for i in range(N):
        f = FIRST + i
        rgb = np.clip(base + rng.normal(0, 0.05, base.shape), 0, 1).astype(np.float32)
        plate[f] = np.concatenate([rgb, np.ones((H, W, 1), np.float32)], -1)
        m = ((xx >= 60 + 3 * i) & (xx < 120 + 3 * i) & (yy >= 30) & (yy < 80)).astype(np.float32)
        matte[f] = m[..., None]
        write_raw(root / f"plate.{f}.raw", plate[f])
        write_raw(root / f"matte.{f}.raw", matte[f])
    edited = plate[FIRST].copy()
    edited[30:80, 60:120, :3] = [0.8, 0.1, 0.1]
    write_raw(root / f"edited.{FIRST}.raw", edited)
    return plate, matte, edited


def _create_instance(host, ofx, root) -> None:
    """The plug-in in a General context over the plate / matte / edited-frame files under root."""
    host.ok(f"project {W} {H}")
    host.ok(f"clip Source files {root}/plate.%d.raw {W} {H} 4 {FIRST} {LAST}")
    host.ok(f"clip Matte files {root}/matte.%d.raw {W} {H} 1 {FIRST} {LAST}")
    host.ok(f"clip Reference files {root}/edited.%d.raw {W} {H} 4 {FIRST} {FIRST}")
    host.ok(f"load {ofx.plugin}")
    host.ok(f"create {GENERAL}")


@pytest.mark.slow
def test_serve_train_render_through_the_host(lorafx_server, ofx_host, ofx, tmp_path):  # noqa: F811
    from lorafx.protocol.client import Client

    root = tmp_path / "frames"
    root.mkdir()
    plate, matte, edited = _frames(root)
    host = ofx_host()
    _create_instance(host, ofx, root)
    for line in (f"serverAddress {lorafx_server}", "shotName ofx010", f"firstFrame {FIRST}",
                 f"lastFrame {LAST}", f"referenceFrames {FIRST}", "trainingSteps 2", "renderSteps 2",
                 "seed 3", "prompt a red box in a gradient"):
        host.ok("set " + line)

    host.ok("press train", timeout=120)
    w = host.cmd("wait 300 refresh status trained|error", timeout=320)
    assert w["ok"] and "trained" in w["value"], w
    host.ok("press render")
    w = host.cmd("wait 300 refresh status rendered|error", timeout=320)
    assert w["ok"] and "rendered" in w["value"], w

    out = tmp_path / "out"
    out.mkdir()
    r = host.ok(f"render {FIRST} {LAST} {out}/out.%d.raw", timeout=180)
    with Client(lorafx_server, timeout_s=60) as c:
        results = c.fetch_results("ofx010", dtype="f16")
        jobs = c.list_jobs("ofx010")
    assert sorted(results) == list(range(FIRST, LAST + 1))
    render_job = [j for j in jobs if j["kind"] == "render"][0]
    assert render_job["state"] == "done"
    for fr in r["frames"]:
        f = fr["frame"]
        assert fr["status"] == 0 and fr["unwritten"] == 0 and fr["message"] == "", fr
        got = read_raw(out / f"out.{f}.raw", H, W, 4)
        want = results[f].astype(np.float32)
        assert np.array_equal(got, want), f"frame {f}: the host output differs from the server's result"
        outside = matte[f][..., 0] == 0
        # the server composites the plate through untouched outside the matte (f16 plate upload)
        assert np.array_equal(got[outside], plate[f].astype(np.float16).astype(np.float32)[outside]), f
        assert not np.array_equal(got[~outside], plate[f][~outside])
    st = host.ok("stats")
    assert st["violations"] == [] and st["leaked_images"] == 0
    host.ok("destroy")
    assert host.close() == 0


@pytest.mark.slow
def test_serve_killed_mid_training_plugin_recovers(served, ofx_host, ofx, tmp_path):  # noqa: F811
    """kill -9 of the real server while it trains; restarted on the same address and state
    directory it requeues the job (durable queue). The plug-in reports the outage, renders fall
    back to the source meanwhile, it follows the same job again once the server is back, and
    Cancel reaches it."""
    from lorafx.protocol.client import Client

    root = tmp_path / "frames"
    root.mkdir()
    plate, _, _ = _frames(root)
    host = ofx_host()
    _create_instance(host, ofx, root)
    for line in (f"serverAddress {served.endpoint}", "shotName ofx020", f"firstFrame {FIRST}",
                 f"lastFrame {LAST}", "trainingSteps 100000"):
        host.ok("set " + line)
    host.ok("press train", timeout=120)
    w = host.cmd("wait 300 refresh status training step|trained|error", timeout=320)
    assert w["ok"] and "training step" in w["value"], w
    job = [s for s in w["seen"] if "submitted (job" in s][0].split("(job ")[1].split(")")[0]
    served.kill()
    w = host.cmd("wait 60 refresh status server down|not answering|lost the connection")
    assert w["ok"], w
    r = host.ok(f"render {FIRST} {FIRST} {tmp_path}/down.%d.raw interactive")
    assert "showing the source" in r["frames"][0]["message"]
    assert np.array_equal(read_raw(tmp_path / f"down.{FIRST}.raw", H, W, 4), plate[FIRST])
    served.restart()
    w = host.cmd("wait 300 refresh status training step|error|gone", timeout=320)
    assert w["ok"] and "training step" in w["value"], w
    with Client(served.endpoint, timeout_s=60) as c:
        jobs = c.list_jobs("ofx020")
    assert [(j["job"], j["kind"], j["state"]) for j in jobs] == [(job, "train", "running")]
    host.ok("press cancel")
    w = host.cmd("wait 120 refresh status cancelled|error", timeout=140)
    assert w["ok"] and "training cancelled" in w["value"], w
    st = host.ok("stats")
    assert st["violations"] == [] and st["leaked_images"] == 0
    host.ok("destroy")
    assert host.close() == 0
