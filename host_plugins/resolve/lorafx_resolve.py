"""lorafx LoRA Edit for DaVinci Resolve: Workspace ▸ Scripts ▸ lorafx_resolve.

Put the playhead over the clip to edit and run the script. It
1. exports the clip's frames as an EXR plate (the clip's track alone, over the clip's range),
   the matte (a matte clip on another track, the clip's own alpha -- e.g. a Fusion comp that
   writes the matte into alpha -- or an existing matte sequence) and the edited first frame
   (a still on another track at the clip's first frame, or a file) with Resolve's own
   renderer (project.AddRenderJob / StartRendering), restoring the tracks afterwards;
2. trains and renders through the lorafx server (the shared ShotController);
3. imports the rendered EXR sequence into a "lorafx" bin next to the clip
   (MediaPool.ImportMedia).

Options come from a JSON file ($LORAFX_RESOLVE_CONFIG, else ~/.config/lorafx/resolve.json, or
%APPDATA%\\lorafx\\resolve.json on Windows), overridden by command-line flags when the script is
run from a terminal (`python lorafx_resolve.py --help`). Messages go to Resolve's Console
(Workspace ▸ Console). Installation: host_plugins/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, fields

# Resolve runs the system's Python 3: lorafx and its client dependencies may live elsewhere.
for _path in filter(None, os.environ.get("LORAFX_PYTHONPATH", "").split(os.pathsep)):
    if os.path.isdir(_path) and _path not in sys.path:
        sys.path.append(_path)

from lorafx.errors import InvalidInput, LorafxError  # noqa: E402
from lorafx.host_plugins.common.controller import (  # noqa: E402
    ShotController,
    ShotSettings,
    describe_error,
    progress_text,
)
from lorafx.server.media.io import sequence_path  # noqa: E402


@dataclass
class ResolveOptions:
    server: str = "tcp://127.0.0.1:5555"
    shot: str = ""  # empty: the clip's name, made safe
    cache: str = ""  # empty: $LORAFX_CACHE, else <temp>/lorafx; shared with the server in path mode
    shared_storage: bool = False  # True: the server reads the exported EXRs (path mode)
    matte: str = "track:2"  # "track:N" | "alpha" | "file:/path/matte.####.exr"
    matte_channel: str = "A"  # channel of a "file:" matte
    edited: str = "track:3"  # "track:N" (a still at the clip's first frame) | "file:/path/edit.exr"
    frame_numbers: str = "source"  # "source" (the clip's own), "timeline", or a first number: "1001"
    train_steps: int = 100
    render_steps: int = 0  # 0: the quality preset's
    seed: int = 0
    quality: str = "standard"
    caption: str = ""
    colorspace: str = ""  # OCIO name of the exported plate (match Resolve's output colour space)
    cfg: float = 5.0
    bin_name: str = "lorafx"
    import_results: bool = True
    connect_timeout_s: float = 5.0
    job_timeout_s: float = 12 * 3600.0
    render_timeout_s: float = 3600.0  # Resolve's own export


def config_path() -> str:
    if os.environ.get("LORAFX_RESOLVE_CONFIG"):
        return os.environ["LORAFX_RESOLVE_CONFIG"]
    if sys.platform == "win32":
        return os.path.join(os.environ.get("APPDATA", os.path.expanduser("~")), "lorafx", "resolve.json")
    return os.path.join(os.path.expanduser("~"), ".config", "lorafx", "resolve.json")


def load_options(argv: list[str] | None = None) -> ResolveOptions:
    """Defaults < the JSON config file < command-line flags."""
    values = asdict(ResolveOptions())
    path = config_path()
    if os.path.isfile(path):
        try:
            with open(path, encoding="utf-8") as f:
                loaded = json.load(f)
        except (OSError, ValueError) as e:
            raise InvalidInput(f"cannot read the lorafx config {path}: {e}") from None
        unknown = sorted(set(loaded) - set(values))
        if unknown:
            raise InvalidInput(f"{path}: unknown option(s) {', '.join(unknown)}")
        values.update(loaded)
    parser = argparse.ArgumentParser(description="lorafx LoRA Edit on the clip under Resolve's playhead")
    for f in fields(ResolveOptions):
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool", bool):
            parser.add_argument(flag, type=lambda s: s.lower() in ("1", "true", "yes", "on"), default=None)
        else:
            typ = {"int": int, "float": float}.get(str(f.type), str)
            parser.add_argument(flag, type=typ, default=None)
    args = parser.parse_args(argv if argv is not None else [])
    values.update({k: v for k, v in vars(args).items() if v is not None})
    opts = ResolveOptions(**values)
    _source_kind(opts.matte, "matte", ("track", "alpha", "file"))
    _source_kind(opts.edited, "edited", ("track", "file"))
    return opts


def _source_kind(spec: str, what: str, allowed) -> tuple[str, str]:
    kind, _, arg = spec.partition(":")
    if kind not in allowed or (kind == "track" and not arg.isdigit()) or (kind == "file" and not arg):
        raise InvalidInput(f"{what} must be one of {', '.join(a + (':N' if a == 'track' else ':PATH' if a == 'file' else '') for a in allowed)}; got {spec!r}")
    return kind, arg


def get_resolve():
    """The running Resolve, through DaVinciResolveScript (or the `resolve`/`bmd` globals Resolve
    gives scripts it runs itself)."""
    app = None
    try:
        import DaVinciResolveScript as dvr

        app = dvr.scriptapp("Resolve")
    except ImportError:
        pass
    if app is None:
        main = sys.modules.get("__main__")
        app = getattr(main, "resolve", None)
        if app is None and getattr(main, "bmd", None) is not None:
            app = main.bmd.scriptapp("Resolve")
    if app is None:
        raise LorafxError("cannot reach DaVinci Resolve: run this from Workspace ▸ Scripts, or set "
                          "RESOLVE_SCRIPT_API / RESOLVE_SCRIPT_LIB / PYTHONPATH as Resolve's "
                          "scripting README describes, with external scripting enabled")
    return app


# ---------------------------------------------------------------------------------------------
# Reading the timeline


def _safe_name(text: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", text or "").strip("._")[:64]
    return name or "resolve_shot"


def _track_of(timeline, item) -> int:
    if hasattr(item, "GetTrackTypeAndIndex"):
        kind_index = item.GetTrackTypeAndIndex()
        if kind_index and kind_index[0] == "video":
            return int(kind_index[1])
    uid = item.GetUniqueId()
    for i in range(1, int(timeline.GetTrackCount("video")) + 1):
        if any(it.GetUniqueId() == uid for it in timeline.GetItemListInTrack("video", i) or []):
            return i
    raise LorafxError(f"cannot find the track of clip {item.GetName()!r}")


def _clip_first_source_frame(item) -> int:
    """Source frame number of the clip's first frame on the timeline: the media's first frame
    number (image sequences keep theirs, e.g. 1001) plus the clip's left trim."""
    start = 0
    mpi = item.GetMediaPoolItem()
    if mpi is not None:
        try:
            start = int(str(mpi.GetClipProperty("Start") or "0").strip() or 0)
        except ValueError:
            start = 0
    return start + int(item.GetLeftOffset())


@dataclass
class ClipInfo:
    name: str
    track: int
    rec_first: int  # timeline frames, inclusive
    rec_last: int
    first: int  # plate frame numbers of the shot
    last: int
    media_pool_item: object


def current_clip(resolve, frame_numbers: str = "source"):
    pm = resolve.GetProjectManager()
    project = pm.GetCurrentProject() if pm else None
    if project is None:
        raise LorafxError("open a project in Resolve first")
    timeline = project.GetCurrentTimeline()
    if timeline is None:
        raise LorafxError("open a timeline in Resolve first")
    item = timeline.GetCurrentVideoItem()
    if item is None:
        raise LorafxError("put the playhead over the clip to edit (no video clip under it)")
    rec_first, rec_last = int(item.GetStart()), int(item.GetEnd()) - 1  # GetEnd is exclusive
    if rec_last < rec_first:
        raise LorafxError(f"clip {item.GetName()!r} has no frames")
    if frame_numbers == "source":
        first = _clip_first_source_frame(item)
    elif frame_numbers == "timeline":
        first = rec_first
    elif re.fullmatch(r"-?\d+", frame_numbers.strip()):
        first = int(frame_numbers)
    else:
        raise InvalidInput(f"frame_numbers must be source, timeline or a number, got {frame_numbers!r}")
    info = ClipInfo(item.GetName(), _track_of(timeline, item), rec_first, rec_last, first,
                    first + rec_last - rec_first, item.GetMediaPoolItem())
    return project, timeline, info


# ---------------------------------------------------------------------------------------------
# Exporting with Resolve's renderer


def _pick_exr_codec(project) -> str:
    codecs = project.GetRenderCodecs("exr") or {}
    names = list(codecs.values())
    if not names:
        raise LorafxError("this Resolve offers no EXR render codec (Deliver page ▸ Format EXR)")
    for wanted in ("RGBHalfZIP", "RGBHalf", "RGBHalfPIZ"):
        if wanted in names:
            return wanted
    half = [n for n in names if "half" in n.lower()]
    return (half or names)[0]


_RENDERED = re.compile(r"^(?P<prefix>.*?)(?P<num>\d+)\.exr$", re.IGNORECASE)


def collect_rendered(directory: str, custom_name: str, expected: int) -> list[str]:
    """Resolve's files for one render job, in frame order. Resolve's image-sequence naming
    (separator, padding, timeline or source numbers) varies with version and settings, so any
    `<CustomName><sep?><digits>.exr` is taken and ordered by its number."""
    found = []
    for name in os.listdir(directory):
        m = _RENDERED.match(name)
        if m and m.group("prefix").rstrip("._- ") == custom_name:
            found.append((int(m.group("num")), os.path.join(directory, name)))
    found.sort()
    if len(found) != expected:
        raise LorafxError(f"Resolve wrote {len(found)} EXR file(s) named {custom_name}* in {directory}; "
                          f"expected {expected}")
    return [p for _, p in found]


class Exporter:
    """Renders one video track alone over the clip's timeline range to EXR files named with the
    shot's plate frame numbers (<folder>/<name>/<name>.####.exr)."""

    def __init__(self, project, timeline, clip: ClipInfo, folder: str, timeout_s: float, log=print):
        self.project, self.timeline, self.clip = project, timeline, clip
        self.folder, self.timeout_s, self.log = folder, timeout_s, log

    def render(self, name: str, track: int, *, alpha: bool = False, single: bool = False) -> str:
        count = int(self.timeline.GetTrackCount("video"))
        if not 1 <= track <= count:
            raise InvalidInput(f"the {name} is expected on video track {track}, but the timeline has "
                               f"{count} video track(s)")
        raw = os.path.join(self.folder, name, "_resolve")
        os.makedirs(raw, exist_ok=True)
        last = self.clip.rec_first if single else self.clip.rec_last
        saved = {i: bool(self.timeline.GetIsTrackEnabled("video", i)) for i in range(1, count + 1)}
        try:
            for i in range(1, count + 1):  # only this track: what is above must not cover it
                self.timeline.SetTrackEnable("video", i, i == track)
            self._render_job(name, raw, self.clip.rec_first, last, alpha)
        finally:
            for i, enabled in saved.items():
                self.timeline.SetTrackEnable("video", i, enabled)
        files = collect_rendered(raw, name, last - self.clip.rec_first + 1)
        pattern = os.path.join(self.folder, name, f"{name}.####.exr")
        for k, path in enumerate(files):  # Resolve's numbering -> the shot's plate numbers
            os.replace(path, sequence_path(pattern, self.clip.first + k))
        shutil.rmtree(raw, ignore_errors=True)
        return pattern

    def _render_job(self, name: str, target: str, mark_in: int, mark_out: int, alpha: bool) -> None:
        p = self.project
        if not p.SetCurrentRenderFormatAndCodec("exr", _pick_exr_codec(p)):
            raise LorafxError("Resolve refused the EXR render format")
        p.SetCurrentRenderMode(1)  # single clip: one sequence for the whole range
        settings = {"SelectAllFrames": False, "MarkIn": mark_in, "MarkOut": mark_out,
                    "TargetDir": target, "CustomName": name, "ExportVideo": True,
                    "ExportAudio": False, "ExportAlpha": bool(alpha)}
        if not p.SetRenderSettings(settings):
            raise LorafxError(f"Resolve refused the render settings for the {name}: {settings}")
        job = p.AddRenderJob()
        if not job:
            raise LorafxError(f"Resolve could not add a render job for the {name}")
        try:
            self.log(f"lorafx: Resolve renders the {name} (timeline frames {mark_in}-{mark_out})")
            if not p.StartRendering([job]):
                raise LorafxError(f"Resolve could not start rendering the {name}")
            end = time.monotonic() + self.timeout_s
            while p.IsRenderingInProgress():
                if time.monotonic() > end:
                    p.StopRendering()
                    raise LorafxError(f"Resolve's render of the {name} took longer than "
                                      f"{self.timeout_s:.0f}s; stopped")
                time.sleep(0.25)
            status = p.GetRenderJobStatus(job) or {}
            if status.get("JobStatus") != "Complete":
                detail = status.get("Error") or status.get("JobStatus") or "unknown status"
                raise LorafxError(f"Resolve's render of the {name} did not complete: {detail}")
        finally:
            p.DeleteRenderJob(job)


# ---------------------------------------------------------------------------------------------
# Bringing results back


def _find_folder(folder, clip_id: str):
    if any(c.GetUniqueId() == clip_id for c in folder.GetClipList() or []):
        return folder
    for sub in folder.GetSubFolderList() or []:
        found = _find_folder(sub, clip_id)
        if found is not None:
            return found
    return None


def import_results(project, media_pool_item, pattern: str, first: int, last: int, bin_name: str) -> list:
    """ImportMedia the sequence into `bin_name` inside the bin that holds the clip."""
    pool = project.GetMediaPool()
    root = pool.GetRootFolder()
    home = (_find_folder(root, media_pool_item.GetUniqueId()) if media_pool_item is not None else None) or root
    target = next((f for f in home.GetSubFolderList() or [] if f.GetName() == bin_name), None)
    target = target or pool.AddSubFolder(home, bin_name)
    if target is None:
        raise LorafxError(f"Resolve could not create the bin {bin_name!r}")
    previous = pool.GetCurrentFolder()
    pool.SetCurrentFolder(target)
    try:
        printf = re.sub(r"#+", lambda m: f"%0{len(m.group(0))}d", pattern)
        items = pool.ImportMedia([{"FilePath": printf, "StartIndex": int(first), "EndIndex": int(last)}])
    finally:
        if previous is not None:
            pool.SetCurrentFolder(previous)
    if not items:
        raise LorafxError(f"Resolve did not import {pattern} ({first}-{last})")
    return items


# ---------------------------------------------------------------------------------------------
# The whole run


def _next_version(base: str) -> str:
    taken = [int(m.group(1)) for d in (os.listdir(base) if os.path.isdir(base) else ())
             if (m := re.fullmatch(r"v(\d+)", d))]
    return os.path.join(base, f"v{max(taken, default=0) + 1:03d}")


def _progress_logger(log):
    last = {"text": None, "t": 0.0, "stage": None}

    def on_progress(stage, step, total, loss, eta):
        now = time.monotonic()
        if stage != last["stage"] or now - last["t"] > 2.0 or step == total:  # no console flood
            last.update(stage=stage, t=now)
            log("lorafx: " + progress_text(stage, step, total, loss, eta))
    return on_progress


def run(resolve, opts: ResolveOptions, log=print) -> dict:
    project, timeline, clip = current_clip(resolve, opts.frame_numbers)
    matte_kind, matte_arg = _source_kind(opts.matte, "matte", ("track", "alpha", "file"))
    edited_kind, edited_arg = _source_kind(opts.edited, "edited", ("track", "file"))
    settings = ShotSettings(train_steps=opts.train_steps, seed=opts.seed, quality=opts.quality,
                            caption=opts.caption, colorspace=opts.colorspace or None,
                            render_steps=opts.render_steps or None, cfg=opts.cfg,
                            # a matte clip rendered by Resolve is a grey RGB image; alpha is alpha
                            matte_channel={"track": "R", "alpha": "A"}.get(matte_kind, opts.matte_channel))
    shot = opts.shot or _safe_name(clip.name)
    cache = opts.cache or os.environ.get("LORAFX_CACHE") or os.path.join(tempfile.gettempdir(), "lorafx")
    version = getattr(resolve, "GetVersionString", lambda: "")()
    ctl = ShotController(opts.server, shot, clip.first, clip.last, settings,
                         path_mode=opts.shared_storage, client_name="lorafx-resolve",
                         connect_timeout_s=opts.connect_timeout_s,
                         host=f"DaVinci Resolve {version}".strip(), on_progress=_progress_logger(log),
                         on_state=lambda state, msg: log(f"lorafx: {msg}"))
    with ctl:
        ctl.check()
        ctl.connect()  # an unreachable server is reported before Resolve renders anything
        log(f"lorafx: shot {shot}: {clip.name!r} on V{clip.track}, timeline {clip.rec_first}-"
            f"{clip.rec_last}, plate frames {clip.first}-{clip.last}")
        folder = _next_version(os.path.join(cache, shot))
        export = Exporter(project, timeline, clip, folder, opts.render_timeout_s, log)
        plate = export.render("plate", clip.track, alpha=matte_kind == "alpha")
        if matte_kind == "track":
            matte = export.render("matte", int(matte_arg))
        elif matte_kind == "alpha":
            matte = plate  # the server reads the plate files' alpha as the matte
        else:
            matte = matte_arg
        if edited_kind == "track":
            edited = sequence_path(export.render("edited", int(edited_arg), single=True), clip.first)
        else:
            edited = edited_arg
        ctl.submit_shot(plate, matte, edited)
        train_job = ctl.train()
        ctl.wait(train_job, opts.job_timeout_s)
        render_job = ctl.render(results_dir=os.path.join(cache, shot, "results"))
        outcome = ctl.wait(render_job, opts.job_timeout_s)
    imported = []
    if opts.import_results:
        imported = import_results(project, clip.media_pool_item, outcome.pattern, outcome.first,
                                  outcome.last, opts.bin_name)
        log(f"lorafx: imported {outcome.pattern} into bin {opts.bin_name!r}")
    return {"shot": shot, "train_job": train_job, "render_job": render_job, "pattern": outcome.pattern,
            "first": outcome.first, "last": outcome.last, "imported": imported, "folder": folder}


def main(argv: list[str] | None = None) -> int:
    try:
        opts = load_options(argv if argv is not None else sys.argv[1:])
        result = run(get_resolve(), opts)
    except LorafxError as e:
        print(f"lorafx: error: {describe_error(e)}")
        return 1
    print(f"lorafx: done: {result['pattern']} ({result['first']}-{result['last']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
