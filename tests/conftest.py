"""Shared fixtures. The real test footage lives in ../shared/data beside the checkout (CI has it);
it is read from there and never copied into the project."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# One compute thread per process: the tests start server subprocesses beside the test process on a
# 2-core machine, and OpenMP threads spinning for a busy core made toy-size steps up to 70x slower
# (measured: 2.16 s vs 0.032 s per tiny training step). Subprocesses inherit the environment.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]


def _footage_root() -> Path | None:
    env = os.environ.get("LORAFX_TEST_FOOTAGE")
    candidates = [Path(env)] if env else []
    candidates.append(REPO_ROOT.parent / "shared" / "data")
    for c in candidates:
        if (c / "bedroom").is_dir():
            return c
    return None


@pytest.fixture(scope="session")
def bedroom_dir() -> Path:
    """49 real 960x540 sRGB JPEG frames (00000.jpg..00048.jpg) of handheld footage."""
    root = _footage_root()
    if root is None:
        pytest.skip("real footage ../shared/data/bedroom not present (set LORAFX_TEST_FOOTAGE)")
    return root / "bedroom"


@pytest.fixture(autouse=True, scope="session")
def _limit_threads():
    try:
        import torch

        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    except ImportError:
        pass
    yield


@pytest.fixture(scope="session")
def tiny_stack():
    """A Wan2.1-I2V stack with the real classes at toy size, random weights (built once)."""
    from lorafx.server.method.stack import build_tiny_stack

    return build_tiny_stack(seed=0)


@pytest.fixture(scope="module")
def tiny_server_process(tmp_path_factory):
    """A real `lorafx serve` subprocess on the tiny model, one per test module: (process, endpoint)."""
    import signal

    from lorafx.server.app.cli import start_server_process

    proc, endpoint = start_server_process(tmp_path_factory.mktemp("state"), model="tiny")
    yield proc, endpoint
    proc.send_signal(signal.SIGCONT)  # in case a test left it frozen
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(20)
    except Exception:
        proc.kill()
