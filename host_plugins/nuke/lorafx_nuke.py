"""lorafx LoRA Edit for Nuke: a Group node over the host-agnostic ShotController.

Nodes ▸ lorafx ▸ LoRA Edit (menu.py) calls `create_node()`. The group has three inputs --
Source (the plate), Matte (white = the region to change, in alpha), Reference (the edited
frame(s); when unconnected the reference frames are taken from Source, painted upstream) -- and
the knobs of the OFX plugin. Train renders the inputs to an EXR cache with the group's internal
Write nodes (`nuke.execute`, plate frame numbers, ####), then uploads (or, with Shared Storage,
sends the paths) and trains on a worker thread that shows a `nuke.ProgressTask`; every knob
update goes through `nuke.executeInMainThread`. Render does the same for the render job and
points the internal Read at the result sequence; the group outputs that Read inside the frame
range and the Source passthrough everywhere else (and before any render).

Everything beyond reading knobs and driving Nuke is in lorafx.host_plugins.common.controller.
"""

from __future__ import annotations

import os
import re
import tempfile
import threading
import uuid
from dataclasses import dataclass

import nuke

from lorafx.errors import Cancelled, InvalidInput, LorafxError
from lorafx.host_plugins.common.controller import (
    QUALITY_PRESETS,
    JobOutcome,
    ShotController,
    ShotSettings,
    describe_error,
    error_text,
    parse_frames,
    progress_text,
)

DEFAULT_SERVER = os.environ.get("LORAFX_SERVER", "tcp://127.0.0.1:5555")
QUALITY_LABELS = [p.label for p in QUALITY_PRESETS.values()]
INPUT_NAMES = ("Source", "Matte", "Reference")
WRITE_PLATE, WRITE_MATTE, WRITE_REFERENCE = "lorafx_write_plate", "lorafx_write_matte", "lorafx_write_reference"
RESULT_READ, OUTPUT_SWITCH = "lorafx_result", "lorafx_switch"


# ---------------------------------------------------------------------------------------------
# The node


def create_node():
    """Create a LoRA Edit group (the Nodes menu command)."""
    group = nuke.createNode("Group", inpanel=False)
    group.setName("LoRAEdit")
    group.begin()
    try:
        inputs = [nuke.nodes.Input(name=n) for n in INPUT_NAMES]  # input order = creation order
        # The cache writers stay disabled except while Train executes them, so a farm's
        # "render all Writes" never touches them.
        for name, src, channels in ((WRITE_PLATE, inputs[0], "rgba"), (WRITE_MATTE, inputs[1], "alpha"),
                                    (WRITE_REFERENCE, inputs[2], "rgba")):
            w = nuke.nodes.Write(name=name, file_type="exr", channels=channels,
                                 datatype="16 bit half", compression="Zip (1 scanline)",
                                 create_directories=True, disable=True)
            w.setInput(0, src)
        read = nuke.nodes.Read(name=RESULT_READ, on_error="black")
        switch = nuke.nodes.Switch(name=OUTPUT_SWITCH, which=0)
        switch.setInput(0, inputs[0])
        switch.setInput(1, read)
        nuke.nodes.Output().setInput(0, switch)
    finally:
        group.end()
    _add_knobs(group)
    return group


def _button(name, label, func):
    return nuke.PyScript_Knob(name, label, f"import lorafx_nuke; lorafx_nuke.{func}(nuke.thisNode())")


def _add_knobs(group) -> None:
    root = nuke.root()
    knobs = [
        nuke.Tab_Knob("lorafx", "lorafx"),
        nuke.String_Knob("server", "Server"),
        nuke.String_Knob("shot", "Shot Name"),
        nuke.Int_Knob("first", "First Frame"),
        nuke.Int_Knob("last", "Last Frame"),
        _button("use_input_range", "Use Input Range", "use_input_range"),
        nuke.String_Knob("references", "Reference Frames"),
        nuke.Multiline_Eval_String_Knob("prompt", "Prompt"),
        nuke.Int_Knob("steps", "Training Steps"),
        nuke.Int_Knob("seed", "Seed"),
        nuke.Enumeration_Knob("quality", "Quality", QUALITY_LABELS),
        nuke.Int_Knob("render_steps", "Render Steps"),
        nuke.Double_Knob("cfg", "Guidance (CFG)"),
        nuke.String_Knob("colorspace", "Colorspace"),
        nuke.Boolean_Knob("shared_storage", "Shared Storage (send paths)"),
        nuke.File_Knob("cache", "Cache Folder"),
        _button("train", "Train", "on_train"),
        _button("render", "Render", "on_render"),
        _button("cancel", "Cancel", "on_cancel"),
        _button("refresh", "Refresh", "on_refresh"),
        nuke.Text_Knob("status", "Status", "idle"),
        nuke.String_Knob("lorafx_id", "id"),
        nuke.String_Knob("last_job", "last job"),
        nuke.String_Knob("last_job_kind", "last job kind"),
    ]
    for k in knobs:
        group.addKnob(k)
    group["server"].setValue(DEFAULT_SERVER)
    group["first"].setValue(int(root["first_frame"].value()))
    group["last"].setValue(int(root["last_frame"].value()))
    group["steps"].setValue(100)
    group["quality"].setValue("Standard")
    group["cfg"].setValue(5.0)
    group["lorafx_id"].setValue(uuid.uuid4().hex)
    for name in ("lorafx_id", "last_job", "last_job_kind"):
        group[name].setFlag(nuke.INVISIBLE)
    tips = {
        "server": "Address of the lorafx server: host, host:port or tcp://host:port",
        "shot": "Name of the shot on the server (letters, digits, _ . -); Train replaces it",
        "references": "Frames of the Reference input that carry the edit, e.g. 1001,1025 (empty: "
                      "First Frame). Without a Reference input they are read from Source.",
        "prompt": "Caption of the edited shot (empty: the server captions it)",
        "quality": "Draft: 12 render steps, LoRA rank 8. Standard: 30, rank 16. Final: 50, rank 32.",
        "render_steps": "Sampling steps of Render (0: the Quality preset's)",
        "cfg": "Classifier-free guidance scale of Render (1 = off, faster)",
        "colorspace": "OCIO colour space of the plate (empty: the server's scene-linear default)",
        "shared_storage": "On: the server reads the cache EXRs itself (farm storage it can see). "
                          "Off: the frames are uploaded (a remote GPU box).",
        "cache": "Where the inputs and the results are written (empty: $LORAFX_CACHE or the temp "
                 "folder). With Shared Storage it must be a path the server can read.",
    }
    for name, tip in tips.items():
        group[name].setTooltip(tip)


def _inner(group, name):
    node = group.node(name)
    if node is None:
        raise InvalidInput(f"{group.name()} has lost its internal node {name}; create a new LoRA Edit")
    return node


# ---------------------------------------------------------------------------------------------
# Knobs -> controller


@dataclass
class Params:
    endpoint: str
    shot: str
    first: int
    last: int
    references: list
    settings: ShotSettings
    path_mode: bool
    cache_root: str


def read_params(node) -> Params:
    """The knobs, validated; InvalidInput says what to fix."""
    first, last = int(node["first"].value()), int(node["last"].value())
    refs = parse_frames(node["references"].value()) or [first]
    cache = node["cache"].value().strip() or os.environ.get("LORAFX_CACHE", "")
    path_mode = bool(node["shared_storage"].value())
    if path_mode and not cache:
        raise InvalidInput("Shared Storage is on but no Cache Folder is set: set it to a folder "
                           "the server can read (or turn Shared Storage off to upload the frames)")
    settings = ShotSettings(train_steps=int(node["steps"].value()), seed=int(node["seed"].value()),
                            quality=str(node["quality"].value()), caption=node["prompt"].value(),
                            render_steps=int(node["render_steps"].value()) or None,
                            cfg=float(node["cfg"].value()),
                            colorspace=node["colorspace"].value().strip() or None)
    return Params(node["server"].value(), node["shot"].value().strip(), first, last, refs, settings,
                  path_mode, cache or os.path.join(tempfile.gettempdir(), "lorafx"))


class _Session:
    """One node's controller, worker thread and progress state (kept across button presses)."""

    def __init__(self, node):
        self.node = node
        gui = bool(getattr(nuke, "GUI", True))
        self.controller = ShotController(
            DEFAULT_SERVER, client_name="lorafx-nuke",
            host=f"Nuke {getattr(nuke, 'NUKE_VERSION_STRING', '')}".strip(),
            dispatch=(lambda fn: nuke.executeInMainThread(fn)) if gui else None,
            on_progress=self._on_progress, on_state=self._on_state, on_done=self._on_done,
            on_error=self._on_error)
        self.busy = False
        self.finished = threading.Event()
        self.percent = 0
        self.text = "idle"
        self.task = None
        self.worker: threading.Thread | None = None

    def configure(self, p: Params) -> None:
        c = self.controller
        c.endpoint, c.shot, c.first, c.last = p.endpoint, p.shot, p.first, p.last
        c.settings, c.path_mode = p.settings, p.path_mode
        c.results_dir = os.path.join(p.cache_root, p.shot, "results")

    # callbacks: run on Nuke's main thread (executeInMainThread)

    def _status(self, text: str) -> None:
        self.text = text
        try:
            self.node["status"].setValue(text)
        except (ValueError, NameError):
            pass  # the node was deleted meanwhile

    def _on_progress(self, stage, step, total, loss, eta) -> None:
        self.percent = int(100 * step / total) if step is not None and total else self.percent
        self._status(progress_text(stage, step, total, loss, eta))
        if self.task is not None and self.task.isCancelled():
            self.controller.cancel()  # also stops an upload between batches

    def _on_state(self, state, message) -> None:
        self._status(message)
        if state == "cancelled":
            self._end()

    def _on_done(self, outcome: JobOutcome) -> None:
        if outcome.kind == "render" and outcome.pattern:
            set_result(self.node, outcome.pattern, outcome.first, outcome.last)
        elif outcome.kind == "train":
            self._status(outcome.text + " -- press Render")
        self._end()

    def _on_error(self, code, message) -> None:
        self._status(error_text(message))
        nuke.message(f"lorafx: {message}")
        self._end()

    def _end(self) -> None:
        # The node takes the next request as soon as the job has ended, not when the worker
        # thread gets round to noticing it.
        self.busy = False
        self.finished.set()

    # the worker

    def start(self, title: str, work) -> threading.Thread:
        """Run work(controller) -> job id on a worker thread with a ProgressTask, then follow the
        job until the controller reports its end."""
        self.busy = True
        self.finished = threading.Event()  # one per run: a late wake-up never sees the next run's
        self.percent = 0
        t = threading.Thread(target=self._worker, args=(title, work, self.finished),
                             name="lorafx-nuke", daemon=True)
        self.worker = t
        t.start()
        return t

    def _ui(self, fn, *args) -> None:
        self.controller.dispatch(lambda: fn(*args))

    def _worker(self, title, work, finished: threading.Event) -> None:
        task = self.task = nuke.ProgressTask(title)
        cancel_sent = False
        try:
            try:
                job, kind = work(self.controller)
            except Cancelled:
                self._ui(self._status, "cancelled: nothing was submitted")
                self._ui(self._end)
                return
            except LorafxError as e:
                self._ui(self._on_error, e.code, describe_error(e))
                return
            self._ui(self._remember_job, job, kind)
            while not finished.wait(0.2):
                if task.isCancelled() and not cancel_sent:
                    cancel_sent = True
                    try:
                        self.controller.cancel()
                    except LorafxError as e:
                        self._ui(self._status, error_text(describe_error(e)))
                task.setProgress(self.percent)
                task.setMessage(self.text)
            task.setProgress(100)
        except Exception as e:  # a bug here must not leave the node busy forever
            self._ui(self._on_error, "internal", describe_error(e))
            raise
        finally:
            if self.task is task:
                self.task = None  # the ProgressTask closes when it is released

    def _remember_job(self, job, kind) -> None:
        # Stored in the script so Refresh can re-attach after a Nuke or server restart.
        self.node["last_job"].setValue(job)
        self.node["last_job_kind"].setValue(kind)


_SESSIONS: dict[str, _Session] = {}


def session(node) -> _Session:
    """The node's session, found by its hidden id (Nuke hands out new wrapper objects for the
    same node, and the name may change)."""
    key = node["lorafx_id"].value() or node.fullName()
    s = _SESSIONS.get(key)
    if s is None:
        s = _SESSIONS[key] = _Session(node)
    s.node = node
    return s


def _fail(node, message: str) -> None:
    node["status"].setValue(error_text(message))
    nuke.message(f"lorafx: {message}")


def _prepare(node):
    """Read the knobs and say hello to the server; None (after telling the artist) on failure."""
    s = session(node)
    if s.busy:
        nuke.message("lorafx: still working on the last request (press Cancel to stop it)")
        return None, None
    try:
        p = read_params(node)
        s.configure(p)
        s.controller.check(p.references)
        node["status"].setValue(f"connecting to {s.controller.endpoint}...")
        s.controller.connect()  # short timeout: an offline server is reported here
    except LorafxError as e:
        _fail(node, describe_error(e))
        return None, None
    return s, p


# ---------------------------------------------------------------------------------------------
# Buttons


def on_train(node=None):
    node = node or nuke.thisNode()
    s, p = _prepare(node)
    if s is None:
        return None
    try:
        paths = render_inputs(node, p)
    except (LorafxError, RuntimeError) as e:
        _fail(node, f"rendering the inputs to the cache failed: {describe_error(e)}")
        return None
    node["status"].setValue("uploading..." if not p.path_mode else "submitting...")

    def work(ctl):
        ctl.submit_shot(paths["plate"], paths["matte"], paths["references"][p.first],
                        painted={f: v for f, v in paths["references"].items() if f != p.first})
        return ctl.train(), "train"

    return s.start(f"lorafx: training {p.shot}", work)


def on_render(node=None):
    node = node or nuke.thisNode()
    s, p = _prepare(node)
    if s is None:
        return None
    node["status"].setValue("submitting the render...")
    return s.start(f"lorafx: rendering {p.shot}",
                   lambda ctl: (ctl.render(results_dir=ctl.results_dir), "render"))


def on_cancel(node=None):
    node = node or nuke.thisNode()
    try:
        jobs = session(node).controller.cancel()
    except LorafxError as e:
        _fail(node, describe_error(e))
        return
    if not jobs:
        node["status"].setValue("nothing to cancel")


def on_refresh(node=None):
    """Re-attach to the last job by id (after reopening the script or a server restart)."""
    node = node or nuke.thisNode()
    job = node["last_job"].value()
    if not job:
        nuke.message("lorafx: nothing was submitted from this node yet")
        return None
    s, p = _prepare(node)
    if s is None:
        return None
    kind = node["last_job_kind"].value() or None
    return s.start(f"lorafx: following {job}", lambda ctl: (ctl.follow(job, kind) or job, kind))


def use_input_range(node=None):
    node = node or nuke.thisNode()
    src = node.input(0)
    if src is None:
        nuke.message("lorafx: connect the Source input first")
        return
    node["first"].setValue(int(src.firstFrame()))
    node["last"].setValue(int(src.lastFrame()))


# ---------------------------------------------------------------------------------------------
# Nuke work on the main thread


def cache_folder(p: Params) -> str:
    """<cache>/<shot>/v###: a fresh folder per Train, so the server never mistakes re-rendered
    inputs for the ones it already trained on."""
    base = os.path.join(p.cache_root, p.shot)
    taken = [int(m.group(1)) for d in (os.listdir(base) if os.path.isdir(base) else ())
             if (m := re.fullmatch(r"v(\d+)", d))]
    return os.path.join(base, f"v{max(taken, default=0) + 1:03d}")


def render_inputs(node, p: Params) -> dict:
    """Execute the internal Writes: plate and matte over the range, the reference frames one by
    one. Returns {"plate": pattern, "matte": pattern, "references": {frame: path}}."""
    if node.input(0) is None:
        raise InvalidInput("connect the Source input (the plate)")
    if node.input(1) is None:
        raise InvalidInput("connect the Matte input (alpha: white = the region to change)")
    folder = cache_folder(p)
    out = {"plate": os.path.join(folder, "plate", "plate.####.exr"),
           "matte": os.path.join(folder, "matte", "matte.####.exr")}
    _execute(node, WRITE_PLATE, out["plate"], [(p.first, p.last)])
    _execute(node, WRITE_MATTE, out["matte"], [(p.first, p.last)])
    if node.input(2) is not None:
        ref_pattern = os.path.join(folder, "reference", "reference.####.exr")
        _execute(node, WRITE_REFERENCE, ref_pattern, [(f, f) for f in p.references])
    else:
        ref_pattern = out["plate"]  # edits painted upstream on Source
    out["references"] = {f: _frame_path(ref_pattern, f) for f in p.references}
    return out


def _execute(node, write_name, pattern, ranges) -> None:
    write = _inner(node, write_name)
    write["file"].setValue(pattern.replace("\\", "/"))
    write["disable"].setValue(False)
    try:
        for a, b in ranges:
            nuke.execute(write, a, b)
    finally:
        write["disable"].setValue(True)


def _frame_path(pattern: str, frame: int) -> str:
    from lorafx.server.media.io import sequence_path

    return sequence_path(pattern, frame)


def set_result(node, pattern: str, first: int, last: int) -> None:
    """Point the internal Read at the result sequence and output it inside first-last."""
    read = _inner(node, RESULT_READ)
    read["file"].setValue(pattern.replace("\\", "/"))
    for knob, value in (("first", first), ("last", last), ("origfirst", first), ("origlast", last)):
        read[knob].setValue(int(value))
    read["reload"].execute()
    # Source outside the rendered range, the result inside it.
    _inner(node, OUTPUT_SWITCH)["which"].setExpression(f"frame >= {int(first)} && frame <= {int(last)}")
    node["status"].setValue(f"rendered {int(last) - int(first) + 1} frames")
