"""The OpenFX bridge (host_plugins/ofx): CMake build once per session, and the helpers the other
tests/test_ofx_*.py use (the build, a driver for the test OFX host, raw frame files).

The build needs cmake, a C++17 compiler and the Debian packages libzmq3-dev and
libmsgpack-cxx-dev; without them every OFX test skips and says which one is missing."""

from __future__ import annotations

import fcntl
import json
import os
import queue
import shutil
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
OFX_DIR = REPO / "host_plugins" / "ofx"
BUILD_DIR = OFX_DIR / "build"
ARCH_DIR = "Linux-x86-64"


@dataclass(frozen=True)
class OfxBuild:
    bundle: Path  # lorafx.ofx.bundle
    plugin: Path  # .../Contents/Linux-x86-64/lorafx.ofx
    host: Path  # the test OFX host
    abi_dump: Path
    unit: Path


_BUILD: OfxBuild | None = None
_SKIP: str | None = None


def _compiler() -> str | None:
    for cc in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if cc and shutil.which(cc):
            return cc
    return None


def ofx_build() -> OfxBuild:
    """Configure + build host_plugins/ofx/build once per test session (incremental and locked,
    so concurrent sessions on one checkout do not race). Skips when a tool or package is missing."""
    global _BUILD, _SKIP
    if _BUILD is not None:
        return _BUILD
    if _SKIP is not None:
        pytest.skip(_SKIP)
    if not shutil.which("cmake"):
        _SKIP = "cmake is not installed (Debian: apt-get install cmake)"
        pytest.skip(_SKIP)
    if not _compiler():
        _SKIP = "no C++ compiler (Debian: apt-get install g++)"
        pytest.skip(_SKIP)
    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    with open(BUILD_DIR / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        cfg = subprocess.run(["cmake", "-S", str(OFX_DIR), "-B", str(BUILD_DIR), "-DCMAKE_BUILD_TYPE=Release"],
                             capture_output=True, text=True)
        if cfg.returncode != 0:
            log = cfg.stdout + cfg.stderr
            marker = "LORAFX_MISSING_DEPENDENCY:"
            if marker in log:
                # CMake wraps the message over indented lines; the paragraph ends at a blank line.
                what = " ".join(log.split(marker, 1)[1].split("\n\n", 1)[0].split())
                _SKIP = "OFX build dependency missing: " + what
                pytest.skip(_SKIP)
            pytest.fail("cmake configure of host_plugins/ofx failed:\n" + log[-4000:])
        jobs = str(min(2, os.cpu_count() or 1))
        b = subprocess.run(["cmake", "--build", str(BUILD_DIR), "-j", jobs], capture_output=True, text=True)
        if b.returncode != 0:
            pytest.fail("build of host_plugins/ofx failed:\n" + (b.stdout + b.stderr)[-6000:])
    bundle = BUILD_DIR / "lorafx.ofx.bundle"
    _BUILD = OfxBuild(bundle=bundle, plugin=bundle / "Contents" / ARCH_DIR / "lorafx.ofx",
                      host=BUILD_DIR / "ofx_test_host", abi_dump=BUILD_DIR / "ofx_abi_dump",
                      unit=BUILD_DIR / "lorafx_ofx_unit")
    return _BUILD


@pytest.fixture(scope="session")
def ofx() -> OfxBuild:
    return ofx_build()


# --- the test OFX host ------------------------------------------------------------------------


class OfxHost:
    """Drives build/ofx_test_host line by line: each command answers one JSON line."""

    def __init__(self, build: OfxBuild, log_dir: Path, env: dict | None = None):
        log_dir.mkdir(parents=True, exist_ok=True)
        self.stderr_path = log_dir / "ofx_test_host.stderr"
        self._stderr = open(self.stderr_path, "w")
        self.proc = subprocess.Popen([str(build.host)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._stderr, text=True, bufsize=1,
                                     env={**os.environ, **(env or {})})
        self._lines: queue.Queue = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.transcript: list[tuple[str, dict]] = []

    def _read(self):
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def cmd(self, line: str, timeout: float = 60.0) -> dict:
        assert self.proc.poll() is None, f"the OFX host died (rc {self.proc.returncode}); {self._tail()}"
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        try:
            out = self._lines.get(timeout=timeout)
        except queue.Empty:
            self.proc.kill()
            raise AssertionError(f"the OFX host did not answer {line!r} within {timeout}s (hung?); {self._tail()}")
        if out is None:
            raise AssertionError(f"the OFX host exited during {line!r} (rc {self.proc.wait()}); {self._tail()}")
        reply = json.loads(out)
        self.transcript.append((line, reply))
        return reply

    def ok(self, line: str, timeout: float = 60.0) -> dict:
        r = self.cmd(line, timeout)
        assert r["ok"], f"{line!r} failed: {r}"
        return r

    def _tail(self) -> str:
        self._stderr.flush()
        try:
            return "stderr: " + self.stderr_path.read_text()[-3000:]
        except OSError:
            return ""

    def close(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.flush()
            except BrokenPipeError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"the OFX host did not exit within {timeout}s; {self._tail()}")
        self._stderr.close()
        return self.proc.returncode


@pytest.fixture
def ofx_host(ofx, tmp_path):
    hosts = []

    def start(**kw) -> OfxHost:
        h = OfxHost(ofx, tmp_path / f"host{len(hosts)}", **kw)
        hosts.append(h)
        return h

    yield start
    for h in hosts:
        if h.proc.poll() is None:
            h.proc.kill()
            h.proc.wait()


# --- raw frames (what the test host reads and writes: float32, H x W x C, top row first) ------


def write_raw(path: Path, array: np.ndarray) -> None:
    np.ascontiguousarray(array, dtype=np.float32).tofile(path)


def read_raw(path: Path, h: int, w: int, c: int) -> np.ndarray:
    a = np.fromfile(path, dtype=np.float32)
    assert a.size == h * w * c, f"{path}: {a.size} floats, expected {h}x{w}x{c}"
    return a.reshape(h, w, c)


# --- tests of the build itself ----------------------------------------------------------------


def test_bundle_layout_and_exports(ofx):
    """The bundle has the layout OFX hosts scan for, and the binary exports exactly the two
    OpenFX entry points (everything else, including the static C++ runtime, stays hidden)."""
    assert ofx.plugin.is_file()
    assert ofx.plugin.relative_to(ofx.bundle).parts == ("Contents", ARCH_DIR, "lorafx.ofx")
    assert (ofx.bundle / "Contents" / "Info.plist").is_file()
    nm = subprocess.run(["nm", "-D", "--defined-only", str(ofx.plugin)], capture_output=True, text=True)
    if nm.returncode != 0:
        pytest.skip("nm (binutils) not available")
    exported = sorted(line.split()[-1] for line in nm.stdout.splitlines()
                      if line.split() and line.split()[-2] in ("T", "W", "D", "B", "V", "i", "u"))
    assert exported == ["OfxGetNumberOfPlugins", "OfxGetPlugin"], exported
    # No libstdc++ symbol is imported from the host's runtime (it is linked in statically).
    undef = subprocess.run(["nm", "-D", "--undefined-only", str(ofx.plugin)], capture_output=True, text=True).stdout
    assert "GLIBCXX" not in undef and "CXXABI" not in undef, "plug-in depends on the host's libstdc++"
