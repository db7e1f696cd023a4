"""The Nuke layer (host_plugins/nuke) against a STAND-IN `nuke` module written here -- Nuke itself
cannot run on CI. The fake records knob and node creation, `nuke.execute` calls (and really
renders a Write from the fake Read upstream of it, so the cache EXRs exist), ProgressTasks and
messages; `nuke.executeInMainThread` queues the function for the test's "main thread" to run, as
Nuke does. The lorafx side is real: the train/render test drives a real `lorafx serve`."""

from __future__ import annotations

import os
import queue
import sys
import threading
import time
import types
from pathlib import Path

import numpy as np
import pytest

from lorafx.server.media.io import read_frame, sequence_path, write_exr_atomic
from test_hosts_controller import BOX, FIRST, LAST, N, _free_port, make_scene

NUKE_DIR = Path(__file__).resolve().parents[1] / "host_plugins" / "nuke"

# Knobs a built-in node class has (the real names); anything else is a KeyError in the fake, so a
# misspelt knob fails here instead of in Nuke.
NODE_KNOBS = {
    "Read": {"file": "", "first": 1, "last": 1, "origfirst": 1, "origlast": 1, "on_error": "error",
             "reload": None, "before": "hold", "after": "hold", "disable": False},
    "Write": {"file": "", "file_type": "", "channels": "rgb", "datatype": "16 bit half",
              "compression": "Zip (16 scanlines)", "create_directories": False, "disable": False},
    "Switch": {"which": 0, "disable": False},
    "Input": {"number": 0},
    "Output": {},
    "Group": {},
    "Root": {"first_frame": 1, "last_frame": 100},
}


class FakeKnob:
    def __init__(self, fake, cls, name, label=None, value=None, command=None, values=None):
        self.fake, self.cls, self._name, self.label = fake, cls, name, label
        self._value, self.command, self.values = value, command, list(values or [])
        self.flags, self.tooltip, self.expression, self.node = set(), "", None, None
        self.set_threads: list[int] = []
        self.history: list = []

    def name(self):
        return self._name

    def value(self):
        return self._value

    getValue = value

    def setValue(self, v):
        if self.cls == "Enumeration_Knob" and v not in self.values:
            raise ValueError(f"{self._name}: {v!r} is not one of {self.values}")
        self.set_threads.append(threading.get_ident())
        self.history.append(v)
        self._value = v
        return True

    def setFlag(self, f):
        self.flags.add(f)

    def clearFlag(self, f):
        self.flags.discard(f)

    def setTooltip(self, t):
        self.tooltip = t

    def setExpression(self, expr):
        self.set_threads.append(threading.get_ident())
        self.expression = expr
        return True

    def execute(self):
        self.fake.knob_executions.append((self.node.name(), self._name))
        if self.cls == "PyScript_Knob":  # Nuke runs the command with thisNode() = the owner
            self.fake._this.append(self.node)
            try:
                exec(self.command, {"nuke": self.fake})
            finally:
                self.fake._this.pop()


class FakeNode:
    def __init__(self, fake, cls, parent):
        self.fake, self.cls, self.parent = fake, cls, parent
        self._name = cls + "1"
        self.knobs = {k: FakeKnob(fake, "builtin", k, value=v) for k, v in NODE_KNOBS[cls].items()}
        for k in self.knobs.values():
            k.node = self
        self.inputs: dict[int, FakeNode] = {}
        self.children: list[FakeNode] = []

    def Class(self):
        return self.cls

    def name(self):
        return self._name

    def setName(self, name):
        siblings = {n.name() for n in (self.parent.children if self.parent else []) if n is not self}
        i, candidate = 1, name
        while candidate in siblings:  # Nuke makes names unique by numbering
            candidate, i = f"{name}{i}", i + 1
        self._name = candidate

    def fullName(self):
        return self._name

    def __getitem__(self, name):
        return self.knobs[name]

    def knob(self, name):
        return self.knobs.get(name)

    def addKnob(self, k):
        assert k.name() not in self.knobs, f"duplicate knob {k.name()}"
        k.node = self
        self.knobs[k.name()] = k
        self.fake.created_knobs.append((k.cls, k.name()))

    def setInput(self, i, node):
        self.inputs[i] = node
        return True

    def input(self, i):
        return self.inputs.get(i)

    def firstFrame(self):
        return self.knobs["first"].value()

    def lastFrame(self):
        return self.knobs["last"].value()

    # Group
    def begin(self):
        self.fake._context.append(self)

    def end(self):
        assert self.fake._context.pop() is self

    def node(self, name):
        return next((n for n in self.children if n.name() == name), None)

    def input_nodes(self):
        return [n for n in self.children if n.cls == "Input"]


class FakeProgressTask:
    def __init__(self, fake, title):
        self.title, self.progress, self.messages, self.cancelled = title, [], [], False
        fake.tasks.append(self)

    def setProgress(self, p):
        assert isinstance(p, int) and 0 <= p <= 100, p
        self.progress.append(p)

    def setMessage(self, m):
        self.messages.append(m)

    def isCancelled(self):
        return self.cancelled


class FakeMenu:
    def __init__(self, name):
        self.name, self.menus, self.commands = name, {}, {}

    def addMenu(self, name, **kw):
        return self.menus.setdefault(name, FakeMenu(name))

    def addCommand(self, name, command, *args, **kw):
        self.commands[name] = command


def make_fake_nuke() -> types.ModuleType:
    fake = types.ModuleType("nuke")
    fake.GUI, fake.NUKE_VERSION_STRING = True, "16.0v1"
    fake.INVISIBLE, fake.DISABLED, fake.STARTLINE = 0x400, 0x80, 0x1000
    fake.created_nodes, fake.created_knobs, fake.knob_executions = [], [], []
    fake.executed, fake.messages, fake.tasks, fake.main_queue = [], [], [], queue.Queue()
    fake.main_thread = threading.get_ident()
    fake._context, fake._this, fake._menus = [], [], {}
    root = FakeNode(fake, "Root", None)
    root.knobs["first_frame"]._value, root.knobs["last_frame"]._value = FIRST, LAST

    def create(cls, **knobs):
        parent = fake._context[-1] if fake._context else None
        node = FakeNode(fake, cls, parent)
        if parent is not None:
            parent.children.append(node)
        node.setName(knobs.pop("name", cls))
        for k, v in knobs.items():
            node[k]._value = v
        fake.created_nodes.append((cls, node.name(), parent.name() if parent else None))
        return node

    fake.nodes = types.SimpleNamespace(**{c: (lambda c=c, **kw: create(c, **kw)) for c in NODE_KNOBS})
    fake.createNode = lambda cls, knobs="", inpanel=True: create(cls)
    fake.root = lambda: root
    fake.thisNode = lambda: fake._this[-1]
    fake.message = lambda text: fake.messages.append(text)
    fake.ProgressTask = lambda title: FakeProgressTask(fake, title)
    fake.menu = lambda name: fake._menus.setdefault(name, FakeMenu(name))

    def execute_in_main_thread(fn, args=(), kwargs=None):
        fake.main_queue.put(lambda: fn(*args, **(kwargs or {})))

    fake.executeInMainThread = execute_in_main_thread

    def pump(predicate, timeout):
        """Run queued main-thread work until predicate() holds (what Nuke's event loop does)."""
        end, shown = time.monotonic() + timeout, len(fake.messages)
        while not predicate():
            assert len(fake.messages) == shown, f"unexpected nuke.message: {fake.messages[shown:]}"
            assert time.monotonic() < end, "timed out waiting on the fake Nuke main thread"
            try:
                fake.main_queue.get(timeout=0.1)()
            except queue.Empty:
                pass

    fake.pump = pump

    def knob_factory(cls):
        def make(name, label=None, *args):
            if cls == "Enumeration_Knob":
                return FakeKnob(fake, cls, name, label, value=args[0][0], values=args[0])
            if cls == "PyScript_Knob":
                return FakeKnob(fake, cls, name, label, command=args[0] if args else "")
            default = {"Int_Knob": 0, "Double_Knob": 0.0, "Boolean_Knob": False}.get(cls, "")
            return FakeKnob(fake, cls, name, label, value=args[0] if args else default)
        return make

    for cls in ("Tab_Knob", "String_Knob", "Int_Knob", "Double_Knob", "Multiline_Eval_String_Knob",
                "Enumeration_Knob", "Boolean_Knob", "File_Knob", "PyScript_Knob", "Text_Knob"):
        setattr(fake, cls, knob_factory(cls))

    def upstream(node):
        while node is not None and node.cls == "Input":  # out of the group, to what feeds it
            group = node.parent
            node = group.input(group.input_nodes().index(node))
        return node

    def execute(node, first, last, incr=1, views=None, continueOnError=False):
        """Render a Write from the fake Read upstream of it, frame by frame, like Nuke would."""
        assert threading.get_ident() == fake.main_thread, "nuke.execute off the main thread"
        fake.executed.append((node.name(), first, last))
        if node.cls != "Write":
            raise RuntimeError(f"{node.name()} cannot be executed")
        if node["disable"].value():
            raise RuntimeError(f"{node.name()}: node is disabled")
        src = upstream(node.input(0))
        if src is None or src.cls != "Read":
            raise RuntimeError(f"{node.name()}: input is not connected")
        if node["file_type"].value() != "exr" or node["datatype"].value() != "16 bit half":
            raise RuntimeError(f"{node.name()}: expected a half EXR writer")
        for f in range(first, last + 1, incr):
            fr = read_frame(sequence_path(src["file"].value(), f))
            names = {"rgba": ["R", "G", "B", "A"], "alpha": ["A"]}[node["channels"].value()]
            px = fr.pixels[..., [fr.channel_index(c) for c in names]]
            out = sequence_path(node["file"].value(), f)
            if not os.path.isdir(os.path.dirname(out)) and not node["create_directories"].value():
                raise RuntimeError(f"{node.name()}: Can't write {out}: no such directory")
            write_exr_atomic(out, px, names, pixel_type="half")

    fake.execute = execute
    return fake


@pytest.fixture
def nuke_env(monkeypatch, tmp_path):
    """The fake `nuke` in sys.modules and the Nuke folder on sys.path (as NUKE_PATH makes it),
    then `lorafx_nuke` imported fresh against it."""
    fake = make_fake_nuke()
    monkeypatch.setitem(sys.modules, "nuke", fake)
    monkeypatch.syspath_prepend(str(NUKE_DIR))
    monkeypatch.delitem(sys.modules, "lorafx_nuke", raising=False)
    monkeypatch.setenv("LORAFX_CACHE", str(tmp_path / "env-cache"))
    import lorafx_nuke

    yield fake, lorafx_nuke
    for s in lorafx_nuke._SESSIONS.values():
        s.controller.close()


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    sc = make_scene(tmp_path_factory.mktemp("scene"))
    # the edited frame as a one-frame sequence, the way a Read node sees a paint render
    os.link(sc["edited_path"], os.path.join(os.path.dirname(sc["edited_path"]), "edit.1001.exr"))
    sc["edit_pat"] = os.path.join(os.path.dirname(sc["edited_path"]), "edit.####.exr")
    return sc


@pytest.fixture
def server(tiny_server_process):
    return tiny_server_process[1]


def _wired_node(fake, lorafx_nuke, scene, server, cache, shot):
    plate = fake.nodes.Read(file=scene["plate_pat"], first=FIRST, last=LAST)
    matte = fake.nodes.Read(file=scene["matte_pat"], first=FIRST, last=LAST)
    edit = fake.nodes.Read(file=scene["edit_pat"], first=FIRST, last=FIRST)
    g = lorafx_nuke.create_node()
    for i, n in enumerate((plate, matte, edit)):
        g.setInput(i, n)
    g["server"].setValue(server)
    g["shot"].setValue(shot)
    g["steps"].setValue(3)
    g["render_steps"].setValue(2)
    g["cfg"].setValue(1.0)
    g["prompt"].setValue("a test scene")
    g["cache"].setValue(str(cache))
    return g


def test_nuke_layer_with_fake_nuke_module_builds_the_group(nuke_env):
    fake, lorafx_nuke = nuke_env
    g = lorafx_nuke.create_node()
    inner = {name: parent for _, name, parent in fake.created_nodes}
    assert [n.name() for n in g.input_nodes()] == ["Source", "Matte", "Reference"]
    for name in (lorafx_nuke.WRITE_PLATE, lorafx_nuke.WRITE_MATTE, lorafx_nuke.WRITE_REFERENCE,
                 lorafx_nuke.RESULT_READ, lorafx_nuke.OUTPUT_SWITCH):
        assert inner[name] == g.name(), f"{name} must live inside the group"
        if "write" in name:
            w = g.node(name)
            assert w["disable"].value() is True and w["file_type"].value() == "exr"
            assert w["create_directories"].value() is True
    assert g.node(lorafx_nuke.WRITE_MATTE)["channels"].value() == "alpha"
    switch = g.node(lorafx_nuke.OUTPUT_SWITCH)
    assert switch["which"].value() == 0 and switch.input(0).name() == "Source", "Source passthrough first"
    assert switch.input(1).name() == lorafx_nuke.RESULT_READ
    assert next(n for n in g.children if n.cls == "Output").input(0) is switch
    kinds = dict((name, cls) for cls, name in fake.created_knobs)
    for name, cls in {"server": "String_Knob", "shot": "String_Knob", "first": "Int_Knob",
                      "last": "Int_Knob", "references": "String_Knob", "prompt": "Multiline_Eval_String_Knob",
                      "steps": "Int_Knob", "seed": "Int_Knob", "quality": "Enumeration_Knob",
                      "train": "PyScript_Knob", "render": "PyScript_Knob", "cancel": "PyScript_Knob",
                      "status": "Text_Knob", "shared_storage": "Boolean_Knob", "cache": "File_Knob"}.items():
        assert kinds.get(name) == cls, name
    assert g["quality"].values == ["Draft", "Standard", "Final"] and g["quality"].value() == "Standard"
    assert (g["first"].value(), g["last"].value(), g["steps"].value()) == (FIRST, LAST, 100)
    assert fake.INVISIBLE in g["last_job"].flags and fake.INVISIBLE in g["lorafx_id"].flags
    assert g["train"].command == "import lorafx_nuke; lorafx_nuke.on_train(nuke.thisNode())"
    # Use Input Range reads the Source input's range
    src = fake.nodes.Read(file="/x/plate.####.exr", first=990, last=1020)
    g.setInput(0, src)
    g["use_input_range"].execute()
    assert (g["first"].value(), g["last"].value()) == (990, 1020)


def test_nuke_layer_with_fake_nuke_module_menu_and_init(monkeypatch, tmp_path):
    fake = make_fake_nuke()
    monkeypatch.setitem(sys.modules, "nuke", fake)
    monkeypatch.syspath_prepend(str(NUKE_DIR))
    exec(compile((NUKE_DIR / "menu.py").read_text(), "menu.py", "exec"), {})
    assert fake.menu("Nodes").menus["lorafx"].commands == {"LoRA Edit": "lorafx_nuke.create_node()"}
    extra = tmp_path / "site"
    extra.mkdir()
    monkeypatch.setenv("LORAFX_PYTHONPATH", os.pathsep.join([str(extra), str(tmp_path / "missing")]))
    monkeypatch.setattr(sys, "path", list(sys.path))
    exec(compile((NUKE_DIR / "init.py").read_text(), "init.py", "exec"), {})
    assert str(extra) in sys.path and str(tmp_path / "missing") not in sys.path


def test_nuke_layer_with_fake_nuke_module_offline_server_and_bad_knobs_give_messages(nuke_env, scene, tmp_path):
    fake, lorafx_nuke = nuke_env
    g = _wired_node(fake, lorafx_nuke, scene, f"tcp://127.0.0.1:{_free_port()}", tmp_path, "off010")
    lorafx_nuke.session(g).controller.connect_timeout_s = 1.0
    t0 = time.monotonic()
    g["train"].execute()
    assert time.monotonic() - t0 < 5, "an offline server must not freeze the UI"
    assert len(fake.messages) == 1 and "Cannot reach the lorafx server" in fake.messages[0]
    assert g["status"].value().startswith("error: Cannot reach")
    assert fake.executed == [], "nothing is rendered to the cache when the server is down"
    assert fake.tasks == []

    g["shot"].setValue("bad name!")
    g["render"].execute()
    assert "may only use letters" in fake.messages[-1]
    g["shot"].setValue("off010")
    g["shared_storage"].setValue(True)
    g["cache"].setValue("")
    os.environ.pop("LORAFX_CACHE")
    g["train"].execute()
    assert "no Cache Folder is set" in fake.messages[-1]
    assert fake.executed == [] and len(fake.messages) == 3


def test_nuke_layer_with_fake_nuke_module_train_render_cancel_against_real_server(nuke_env, scene, server, tmp_path):
    fake, lorafx_nuke = nuke_env
    g = _wired_node(fake, lorafx_nuke, scene, server, tmp_path / "cache", "nk010")
    status = g["status"]
    session = lorafx_nuke.session(g)
    idle = lambda: not session.busy  # noqa: E731 -- the node takes requests again: the job ended

    g["train"].execute()  # the artist presses Train (main thread)
    v1 = tmp_path / "cache" / "nk010" / "v001"
    assert fake.executed == [(lorafx_nuke.WRITE_PLATE, FIRST, LAST), (lorafx_nuke.WRITE_MATTE, FIRST, LAST),
                             (lorafx_nuke.WRITE_REFERENCE, FIRST, FIRST)]
    assert sorted(os.listdir(v1 / "plate")) == [f"plate.{f}.exr" for f in range(FIRST, LAST + 1)]
    assert read_frame(v1 / "matte" / f"matte.{FIRST}.exr").channels == ("A",)
    assert all(g.node(w)["disable"].value() for w in (lorafx_nuke.WRITE_PLATE, lorafx_nuke.WRITE_MATTE))
    assert session.busy
    fake.pump(idle, 240)
    assert status.value().startswith("trained 3 steps") and status.value().endswith("press Render")
    assert fake.messages == []
    session.worker.join(5)
    assert not session.worker.is_alive(), "the worker thread ends with the job"
    task = fake.tasks[0]
    assert task.title == "lorafx: training nk010" and task.progress[-1] == 100
    # the ProgressTask samples the status; the knob saw every step
    assert "training step 3/3" in " | ".join(status.history)
    assert any(h.startswith("uploading frame 9/9") for h in status.history)
    train_job = g["last_job"].value()
    assert train_job and g["last_job_kind"].value() == "train"

    g["render"].execute()
    fake.pump(idle, 240)
    assert status.value() == f"rendered {N} frames", status.value()
    render_job = g["last_job"].value()
    read = g.node(lorafx_nuke.RESULT_READ)
    expected = str(tmp_path / "cache" / "nk010" / "results" / render_job / "result.####.exr")
    assert read["file"].value() == expected
    assert [read[k].value() for k in ("first", "last", "origfirst", "origlast")] == [FIRST, LAST, FIRST, LAST]
    assert (lorafx_nuke.RESULT_READ, "reload") in fake.knob_executions
    assert g.node(lorafx_nuke.OUTPUT_SWITCH)["which"].expression == f"frame >= {FIRST} && frame <= {LAST}"
    for f in (FIRST, LAST):
        out = read_frame(sequence_path(expected, f)).pixels.astype(np.float16)
        outside = scene["matte"][f][..., 0] == 0
        assert np.array_equal(out[outside].view(np.uint16), scene["plate"][f][outside].view(np.uint16))
        assert not np.array_equal(out[BOX], scene["plate"][f][BOX])

    # Train again with far more steps, then cancel from the ProgressTask's cancel button.
    g["steps"].setValue(100000)
    g["train"].execute()
    assert os.path.isdir(tmp_path / "cache" / "nk010" / "v002"), "a fresh cache folder per Train"
    fake.pump(lambda: status.value().startswith(("training step", "error")), 120)
    fake.tasks[-1].cancelled = True
    fake.pump(idle, 30)
    assert status.value() == "cancelled" and fake.messages == []

    # Knobs were only ever changed on the main thread; nuke.execute only ran there (asserted in it).
    changed = [t for k in g.knobs.values() for t in k.set_threads]
    changed += [t for n in g.children for k in n.knobs.values() for t in k.set_threads]
    assert changed and set(changed) == {fake.main_thread}
