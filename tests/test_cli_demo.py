"""The README's main job, `lorafx demo`, as a user runs it: a real CLI process that starts a real
server process, on the generated miniworld shot and on the real bedroom footage."""

import subprocess
import sys

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
