"""The Resolve script (host_plugins/resolve/lorafx_resolve.py) against a STAND-IN
`DaVinciResolveScript` module written here -- Resolve cannot run on CI. The fake keeps a
timeline of clips on video tracks; its renderer really writes EXRs for a render job (the top-most
*enabled* track's clip at each timeline frame, black where none), so a script that forgets to
isolate a track uploads the wrong pixels and the bit-exact check fails. Media pool bins and
ImportMedia are recorded. The lorafx side is real: the end-to-end test drives `lorafx serve`."""

from __future__ import annotations

import itertools
import json
import os
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from lorafx.errors import InvalidInput, LorafxError
from lorafx.host_plugins.common.controller import ServerUnavailable
from lorafx.server.media.io import read_frame, sequence_path, write_exr_atomic
from test_hosts_controller import BOX, FIRST, H, LAST, N, W, _free_port, make_scene

RESOLVE_DIR = Path(__file__).resolve().parents[1] / "host_plugins" / "resolve"
REC = 86400  # 01:00:00:00 at 24 fps: where the plate clip sits on the timeline
_ids = itertools.count(1)


class FakeMediaPoolItem:
    def __init__(self, name, pattern=None, start=0):
        self.name, self.pattern, self.start, self.uid = name, pattern, start, f"mpi-{next(_ids)}"

    def GetName(self):
        return self.name

    def GetUniqueId(self):
        return self.uid

    def GetMediaId(self):
        return self.uid

    def GetClipProperty(self, key=None):
        props = {"Start": str(self.start), "File Path": self.pattern or ""}
        return props if key is None else props.get(key, "")


class FakeTimelineItem:
    """A clip: `duration` frames from timeline frame `start`, showing media frames from
    media start + left_offset on."""

    def __init__(self, mpi, start, duration, left_offset, track):
        self.mpi, self.start, self.duration, self.left, self.track = mpi, start, duration, left_offset, track
        self.uid = f"ti-{next(_ids)}"

    def GetName(self):
        return self.mpi.GetName()

    def GetStart(self):
        return self.start

    def GetEnd(self):
        return self.start + self.duration

    def GetDuration(self):
        return self.duration

    def GetLeftOffset(self):
        return self.left

    def GetMediaPoolItem(self):
        return self.mpi

    def GetTrackTypeAndIndex(self):
        return ["video", self.track]

    def GetUniqueId(self):
        return self.uid

    def source_frame(self, t):
        return self.mpi.start + self.left + (t - self.start)


class FakeTimeline:
    def __init__(self, tracks: int):
        self.items = {i: [] for i in range(1, tracks + 1)}
        self.enabled = {i: True for i in self.items}
        self.current = None

    def add(self, mpi, start, duration, left_offset, track):
        item = FakeTimelineItem(mpi, start, duration, left_offset, track)
        self.items[track].append(item)
        return item

    def GetName(self):
        return "edit v3"

    def GetTrackCount(self, kind):
        return len(self.items) if kind == "video" else 0

    def GetIsTrackEnabled(self, kind, i):
        return self.enabled[i]

    def SetTrackEnable(self, kind, i, on):
        assert kind == "video" and i in self.enabled
        self.enabled[i] = bool(on)
        return True

    def GetItemListInTrack(self, kind, i):
        return list(self.items[i])

    def GetCurrentVideoItem(self):
        return self.current

    def top_item(self, t):
        for i in sorted(self.items, reverse=True):
            if self.enabled[i]:
                for it in self.items[i]:
                    if it.start <= t < it.start + it.duration:
                        return it
        return None


class FakeFolder:
    def __init__(self, name):
        self.name, self.clips, self.subs, self.uid = name, [], [], f"bin-{next(_ids)}"

    def GetName(self):
        return self.name

    def GetClipList(self):
        return list(self.clips)

    def GetSubFolderList(self):
        return list(self.subs)

    def GetUniqueId(self):
        return self.uid


class FakeMediaPool:
    def __init__(self):
        self.root = FakeFolder("Master")
        self.current = self.root
        self.imports = []  # (folder name, clip infos)

    def GetRootFolder(self):
        return self.root

    def GetCurrentFolder(self):
        return self.current

    def SetCurrentFolder(self, folder):
        self.current = folder
        return True

    def AddSubFolder(self, folder, name):
        sub = FakeFolder(name)
        folder.subs.append(sub)
        return sub

    def ImportMedia(self, infos):
        self.imports.append((self.current.GetName(), infos))
        out = []
        for info in infos:
            frames = range(info["StartIndex"], info["EndIndex"] + 1)
            if not all(os.path.isfile(info["FilePath"] % f) for f in frames):
                return []  # Resolve imports nothing it cannot find
            mpi = FakeMediaPoolItem(os.path.basename(info["FilePath"]), info["FilePath"], info["StartIndex"])
            self.current.clips.append(mpi)
            out.append(mpi)
        return out


class FakeProject:
    def __init__(self, timeline, pool):
        self.timeline, self.pool = timeline, pool
        self.settings, self.format, self.mode = {}, None, None
        self.jobs, self.rendered, self.deleted = {}, [], []
        self.in_progress = 0
        self.fail_next = False

    def GetName(self):
        return "commercial"

    def GetCurrentTimeline(self):
        return self.timeline

    def GetMediaPool(self):
        return self.pool

    def GetRenderCodecs(self, fmt):
        return {"RGB Float": "RGBFloat", "RGB Half (ZIP)": "RGBHalfZIP", "RGB Half": "RGBHalf"} if fmt == "exr" else {}

    def SetCurrentRenderFormatAndCodec(self, fmt, codec):
        self.format = (fmt, codec)
        return fmt == "exr" and codec in self.GetRenderCodecs("exr").values()

    def SetCurrentRenderMode(self, mode):
        self.mode = mode
        return True

    def SetRenderSettings(self, settings):
        known = {"SelectAllFrames", "MarkIn", "MarkOut", "TargetDir", "CustomName", "ExportVideo",
                 "ExportAudio", "ExportAlpha", "FormatWidth", "FormatHeight"}
        if set(settings) - known:
            return False
        self.settings.update(settings)
        return True

    def AddRenderJob(self):
        job = f"job-{next(_ids)}"
        self.jobs[job] = {"settings": dict(self.settings), "format": self.format, "mode": self.mode,
                          "enabled": dict(self.timeline.enabled), "status": "Ready"}
        return job

    def DeleteRenderJob(self, job):
        self.deleted.append(job)
        return self.jobs.pop(job, None) is not None

    def StartRendering(self, jobs, isInteractiveMode=False):
        for job in jobs:
            j = self.jobs[job]
            if self.fail_next:
                j["status"], self.fail_next = "Failed", False
                continue
            self._render(j)
            j["status"] = "Complete"
            self.rendered.append(j)
        self.in_progress = 2  # reports "rendering" for a couple of polls, like the real one
        return True

    def IsRenderingInProgress(self):
        self.in_progress = max(0, self.in_progress - 1)
        return self.in_progress > 0

    def StopRendering(self):
        self.in_progress = 0

    def GetRenderJobStatus(self, job):
        return {"JobStatus": self.jobs[job]["status"], "CompletionPercentage": 100}

    def _render(self, j):
        """What the timeline shows at each frame of the job's range, with the tracks enabled when
        the job was added: EXR files `<CustomName>_<8-digit timeline frame>.exr`."""
        s = j["settings"]
        assert j["format"] == ("exr", "RGBHalfZIP") and j["mode"] == 1 and not s["SelectAllFrames"]
        saved = dict(self.timeline.enabled)
        self.timeline.enabled.update(j["enabled"])
        try:
            for t in range(s["MarkIn"], s["MarkOut"] + 1):
                item = self.timeline.top_item(t)
                if item is None:
                    px = np.zeros((H, W, 3), np.float32)
                else:
                    fr = read_frame(sequence_path(item.mpi.pattern, item.source_frame(t)))
                    px = fr.pixels[..., list(fr.rgb_indices())]
                    if s.get("ExportAlpha"):
                        px = np.concatenate([px, fr.channel("A")[..., None]], -1)
                names = ["R", "G", "B", "A"][:px.shape[-1]]
                write_exr_atomic(os.path.join(s["TargetDir"], f"{s['CustomName']}_{t:08d}.exr"), px, names,
                                 pixel_type="half")
        finally:
            self.timeline.enabled = saved


class FakeResolve:
    def __init__(self, project):
        self.project = project

    def GetProjectManager(self):
        return types.SimpleNamespace(GetCurrentProject=lambda: self.project)

    def GetVersionString(self):
        return "19.1.3.7"


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """The test scene as Resolve media: the plate sequence, the matte as a grey RGB sequence (how
    a matte clip renders), the edited still, and a burn-in overlay clip."""
    root = tmp_path_factory.mktemp("media")
    sc = make_scene(root)
    sc["matte_rgb_pat"] = str(root / "matte_rgb.####.exr")
    sc["overlay_pat"] = str(root / "overlay.####.exr")
    for f in range(FIRST, LAST + 1):
        m = sc["matte"][f].astype(np.float32)
        write_exr_atomic(sequence_path(sc["matte_rgb_pat"], f), np.repeat(m, 3, -1), ["R", "G", "B"],
                         pixel_type="half")
        write_exr_atomic(sequence_path(sc["overlay_pat"], f), np.full((H, W, 3), 0.25, np.float32),
                         ["R", "G", "B"], pixel_type="half")
    return sc


def _project(scene):
    """V1: the plate clip (media frames 995.., trimmed by 6 -> source 1001) then a neighbour clip;
    V2: the matte clip; V3: the edited still at the first frame; V4: a burn-in over everything."""
    tl = FakeTimeline(4)
    plate = FakeMediaPoolItem("A001_C003 plate", scene["plate_pat"], start=995)
    plate_item = tl.add(plate, REC, N, 6, 1)
    tl.add(FakeMediaPoolItem("next shot", scene["overlay_pat"], start=FIRST), REC + N, N, 0, 1)
    tl.add(FakeMediaPoolItem("roto", scene["matte_rgb_pat"], start=FIRST), REC, N, 0, 2)
    tl.add(FakeMediaPoolItem("edit", str(Path(scene["edited_path"]).with_name("edited.####.exr")),
                             start=FIRST), REC, 1, 0, 3)
    tl.add(FakeMediaPoolItem("burn-in", scene["overlay_pat"], start=FIRST), REC - 10, N + 20, 0, 4)
    tl.current = plate_item
    tl.enabled[4] = True
    pool = FakeMediaPool()
    plates_bin = FakeFolder("Plates")
    plates_bin.clips.append(plate)
    pool.root.subs.append(plates_bin)
    return FakeResolve(FakeProject(tl, pool)), plates_bin


@pytest.fixture
def resolve_script(monkeypatch, tmp_path):
    """A fake DaVinciResolveScript on sys.modules, lorafx_resolve imported as Resolve's Python
    would import a script from its Scripts folder."""
    fake_module = types.ModuleType("DaVinciResolveScript")
    monkeypatch.setitem(sys.modules, "DaVinciResolveScript", fake_module)
    monkeypatch.syspath_prepend(str(RESOLVE_DIR))
    monkeypatch.delitem(sys.modules, "lorafx_resolve", raising=False)
    monkeypatch.setenv("LORAFX_RESOLVE_CONFIG", str(tmp_path / "resolve.json"))
    import lorafx_resolve

    def install(app):
        fake_module.scriptapp = lambda name: app if name == "Resolve" else None

    return lorafx_resolve, install


@pytest.fixture
def server(tiny_server_process):
    return tiny_server_process[1]


def _fast(lorafx_resolve, server, cache, **kw):
    return lorafx_resolve.ResolveOptions(server=server, cache=str(cache), shared_storage=True,
                                         train_steps=3, render_steps=2, cfg=1.0, caption="a test scene", **kw)


def test_resolve_script_with_fake_resolve_module_exports_trains_renders_and_imports(resolve_script, scene,
                                                                                    server, tmp_path):
    lorafx_resolve, install = resolve_script
    app, plates_bin = _project(scene)
    install(app)
    project, tl = app.project, app.project.timeline
    before = dict(tl.enabled)
    log = []
    result = lorafx_resolve.run(lorafx_resolve.get_resolve(), _fast(lorafx_resolve, server, tmp_path / "cache"),
                                log=log.append)

    # Three Resolve renders, each of one track alone over the clip's timeline range.
    plate_job, matte_job, edit_job = project.rendered
    assert [j["settings"]["CustomName"] for j in project.rendered] == ["plate", "matte", "edited"]
    assert plate_job["enabled"] == {1: True, 2: False, 3: False, 4: False}
    assert matte_job["enabled"] == {1: False, 2: True, 3: False, 4: False}
    assert edit_job["enabled"] == {1: False, 2: False, 3: True, 4: False}
    assert (plate_job["settings"]["MarkIn"], plate_job["settings"]["MarkOut"]) == (REC, REC + N - 1)
    assert (edit_job["settings"]["MarkIn"], edit_job["settings"]["MarkOut"]) == (REC, REC)
    assert tl.enabled == before, "the artist's track switches are restored"
    assert project.jobs == {} and len(project.deleted) == 3, "no render jobs left in Resolve's queue"

    # The exported plate carries the clip's source frame numbers, bit-exact.
    folder = Path(result["folder"])
    assert folder == tmp_path / "cache" / "A001_C003_plate" / "v001"
    assert sorted(os.listdir(folder / "plate")) == [f"plate.{f}.exr" for f in range(FIRST, LAST + 1)]
    px = read_frame(folder / "plate" / f"plate.{FIRST + 4}.exr").pixels.astype(np.float16)
    assert np.array_equal(px, scene["plate"][FIRST + 4][..., :3])

    # Shared storage: the results are the server's own files, imported next to the clip.
    assert (result["first"], result["last"]) == (FIRST, LAST)
    assert result["shot"] == "A001_C003_plate" and result["pattern"].endswith(
        os.path.join(result["render_job"], "result.####.exr"))
    (bin_name, infos), = project.pool.imports
    assert bin_name == "lorafx" and [s.GetName() for s in plates_bin.subs] == ["lorafx"]
    assert infos == [{"FilePath": result["pattern"].replace("####", "%04d"), "StartIndex": FIRST, "EndIndex": LAST}]
    assert result["imported"] and project.pool.current is project.pool.root, "current bin restored"
    for f in range(FIRST, LAST + 1):
        out = read_frame(sequence_path(result["pattern"], f)).pixels.astype(np.float16)
        outside = scene["matte"][f][..., 0] == 0
        assert np.array_equal(out[outside][..., :3].view(np.uint16),
                              scene["plate"][f][outside][..., :3].view(np.uint16)), f"frame {f}"
        assert not np.array_equal(out[BOX][..., :3], scene["plate"][f][BOX][..., :3])
    assert any("training step 3/3" in line for line in log)


def test_resolve_script_with_fake_resolve_module_failed_export_restores_tracks(resolve_script, scene, server,
                                                                              tmp_path):
    lorafx_resolve, install = resolve_script
    app, _ = _project(scene)
    install(app)
    app.project.timeline.enabled[3] = False  # the artist had V3 switched off
    before = dict(app.project.timeline.enabled)
    app.project.fail_next = True
    with pytest.raises(LorafxError, match="render of the plate did not complete: Failed"):
        lorafx_resolve.run(app, _fast(lorafx_resolve, server, tmp_path / "cache"), log=lambda s: None)
    assert app.project.timeline.enabled == before
    assert app.project.jobs == {} and app.project.pool.imports == []


def test_resolve_script_with_fake_resolve_module_reports_setup_problems_before_rendering(resolve_script, scene,
                                                                                        tmp_path, capsys):
    lorafx_resolve, install = resolve_script
    app, _ = _project(scene)
    install(app)
    dead = f"tcp://127.0.0.1:{_free_port()}"
    opts = _fast(lorafx_resolve, dead, tmp_path / "cache", connect_timeout_s=1.0)
    with pytest.raises(ServerUnavailable, match="Cannot reach the lorafx server"):
        lorafx_resolve.run(app, opts, log=lambda s: None)
    assert app.project.jobs == {} and app.project.rendered == [], "nothing exported for a dead server"

    app.project.timeline.current = None
    with pytest.raises(LorafxError, match="put the playhead over the clip"):
        lorafx_resolve.run(app, opts, log=lambda s: None)

    # From the Scripts menu: options from the JSON config, the error printed to the Console.
    Path(os.environ["LORAFX_RESOLVE_CONFIG"]).write_text(json.dumps({"server": dead, "connect_timeout_s": 1.0}))
    app.project.timeline.current = app.project.timeline.items[1][0]
    assert lorafx_resolve.main([]) == 1
    assert f"lorafx: error: Cannot reach the lorafx server at {dead}" in capsys.readouterr().out
    Path(os.environ["LORAFX_RESOLVE_CONFIG"]).write_text(json.dumps({"servr": dead}))
    assert lorafx_resolve.main([]) == 1
    assert "unknown option(s) servr" in capsys.readouterr().out


def test_resolve_options_config_and_flags(resolve_script, tmp_path):
    lorafx_resolve, _ = resolve_script
    Path(os.environ["LORAFX_RESOLVE_CONFIG"]).write_text(json.dumps(
        {"server": "gpu01:5555", "train_steps": 250, "matte": "alpha", "shared_storage": True}))
    opts = lorafx_resolve.load_options(["--train-steps", "400", "--edited", "file:/shows/x/edit.1001.exr",
                                        "--shared-storage", "false"])
    assert (opts.server, opts.train_steps, opts.matte, opts.shared_storage) == ("gpu01:5555", 400, "alpha", False)
    assert opts.edited == "file:/shows/x/edit.1001.exr"
    with pytest.raises(InvalidInput, match="matte must be one of track:N, alpha, file:PATH"):
        lorafx_resolve.load_options(["--matte", "roto"])
    with pytest.raises(InvalidInput, match="edited must be one of"):
        lorafx_resolve.load_options(["--edited", "track:x"])


@pytest.mark.parametrize("style", ["{name}_{t:08d}.exr", "{name}{t:08d}.exr", "{name}.{t}.exr"])
def test_resolve_rendered_file_names_are_ordered_by_number(resolve_script, tmp_path, style):
    lorafx_resolve, _ = resolve_script
    for t in (86410, 86400, 86405):
        (tmp_path / style.format(name="plate", t=t)).write_bytes(b"")
    (tmp_path / style.format(name="matte", t=86400)).write_bytes(b"")  # another job's file
    got = lorafx_resolve.collect_rendered(str(tmp_path), "plate", 3)
    assert [Path(p).name for p in got] == [style.format(name="plate", t=t) for t in (86400, 86405, 86410)]
    with pytest.raises(LorafxError, match="wrote 3 EXR file"):
        lorafx_resolve.collect_rendered(str(tmp_path), "plate", 4)
