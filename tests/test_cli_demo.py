"""The README's main job, `lorafx demo`, as a user runs it: a real CLI process that starts a real
server process, on the generated miniworld shot and on the real bedroom footage; and `lorafx
submit` as a farm script runs it against a running server."""

import subprocess
import sys
import time

import numpy as np

from lorafx.server.media.io import read_frame


def _demo(tmp_path, *extra):
    cmd = [sys.executable, "-m", "lorafx.server.app.cli", "demo", "--out", str(tmp_path), "--model", "tiny",
           "--steps", "2", "--render-steps", "2", "--frames", "9", *extra]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    pattern = res.stdout.strip().splitlines()[-1]
    assert pattern.endswith("result.####.exr")
    return pattern, res


def test_demo_on_generated_shot_writes_exrs_and_contact_sheet(tmp_path):
    pattern, res = _demo(tmp_path)
    assert (tmp_path / "contact_sheet.png").stat().st_size > 1000
    out = read_frame(pattern.replace("####", "1009"))
    plate = read_frame(str(tmp_path / "input" / "plate" / "plate.1009.exr"))
    matte = read_frame(str(tmp_path / "input" / "matte" / "matte.1009.exr")).pixels[..., 0]
    assert out.pixels.shape == plate.pixels.shape
    assert np.array_equal(out.pixels[matte == 0], plate.pixels[matte == 0])
    assert "contact sheet" in res.stderr


def test_demo_on_bedroom_footage(tmp_path, bedroom_dir):
    pattern, _ = _demo(tmp_path, "--images", str(bedroom_dir))
    out = read_frame(pattern.replace("####", "1005"))
    assert (out.width, out.height) == (960, 540)
    assert out.attributes.get("lorafx/shot") == "bedroom"


def test_demo_reports_bad_plate_clearly(tmp_path):
    cmd = [sys.executable, "-m", "lorafx.server.app.cli", "demo", "--out", str(tmp_path), "--model", "tiny",
           "--plate", str(tmp_path / "nothing.####.exr"), "--matte", str(tmp_path / "m.####.exr"),
           "--edited", str(tmp_path / "e.exr"), "--last", "1009"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2
    assert "not found" in res.stderr and "nothing.1001.exr" in res.stderr


def test_submit_no_wait_queues_training_and_render_together(tmp_path):
    # A farm script: shot from EXR sequences on shared storage, both jobs queued at once, exit.
    import signal

    from lorafx.protocol.client import Client
    from lorafx.server.app.cli import start_server_process
    from lorafx.server.media.io import sequence_path, write_exr_atomic

    rng = np.random.default_rng(0)
    matte = np.zeros((64, 96, 1), np.float32)
    matte[16:48, 24:72] = 1
    for f in range(1001, 1010):
        write_exr_atomic(sequence_path(str(tmp_path / "plate.####.exr"), f), rng.random((64, 96, 3), np.float32),
                         ["R", "G", "B"])
        write_exr_atomic(sequence_path(str(tmp_path / "matte.####.exr"), f), matte, ["A"])
    write_exr_atomic(str(tmp_path / "edit.1001.exr"), rng.random((64, 96, 3), np.float32), ["R", "G", "B"])
    proc, endpoint = start_server_process(tmp_path / "state", model="tiny")
    try:
        base = [sys.executable, "-m", "lorafx.server.app.cli", "submit", "--shot", "farm", "--first", "1001",
                "--last", "1009", "--plate", str(tmp_path / "plate.####.exr"), "--matte",
                str(tmp_path / "matte.####.exr"), "--edited", str(tmp_path / "edit.1001.exr"),
                "--steps", "2", "--render-steps", "2", "--endpoint", endpoint]
        res = subprocess.run(base + ["--no-wait"], capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stderr[-3000:]
        words = res.stdout.split()
        assert words[0] == "train" and words[2] == "render"
        with Client(endpoint, timeout_s=30) as c:
            assert c.wait(words[1], timeout=300)["state"] == "done"
            rendered = c.wait(words[3], timeout=300)
            assert rendered["state"] == "done" and rendered["result"]["frames"] == 9
        # a render the server refuses fails the command before any training runs
        res = subprocess.run(base + ["--steps", "100000", "--render-steps", "0"], capture_output=True, text=True,
                             timeout=120)
        assert res.returncode != 0 and "steps" in res.stderr
        with Client(endpoint, timeout_s=30) as c:
            train = c.list_jobs("farm")[-1]
            assert train["kind"] == "train"
            deadline = time.monotonic() + 60
            while c.status(train["job"])["state"] != "cancelled":  # cancelled within a step
                assert time.monotonic() < deadline
                time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
