"""JobQueue: fairness, cancellation, failures, progress events, graceful stop."""

from __future__ import annotations

import threading
import time

import pytest

from lorafx.errors import Busy, InvalidInput, NotFound
from lorafx.server.jobs import JobQueue, JobStore
from lorafx.server.jobs.queue import AFTER


@pytest.fixture
def store(tmp_path):
    s = JobStore(tmp_path / "jobs.db")
    yield s
    s.close()


def make_queue(store, runners, events=None, **kw):
    on_event = (lambda job_id, ev: events.append(ev)) if events is not None else None
    return JobQueue(store, runners, on_event, **kw)


def quick(job, ctx):
    return {"shot": job.shot}


def gated_recorder():
    """(gate, order, runner): the runner records job names in order; jobs with params
    {"gate": True} wait for the gate first."""
    gate, order = threading.Event(), []

    def run(job, ctx):
        if job.params.get("gate"):
            gate.wait(10)
        order.append(job.params["name"])
        return {}

    return gate, order, run


def test_round_robin_across_clients_fifo_within_a_client(store):
    order = []

    def record(job, ctx):
        order.append(job.params["name"])
        return {}

    q = make_queue(store, {"render": record})
    for n in ("A1", "A2", "A3", "A4"):  # alice floods the queue first...
        q.submit("render", "sh010", {"name": n}, client="alice")
    for n in ("B1", "B2"):  # ...bob's jobs still interleave with hers
        q.submit("render", "sh020", {"name": n}, client="bob")
    predicted = [j.params["name"] for j in q.pending()]
    q.start()
    try:
        for j in q.list():
            q.wait(j.id, timeout=10)
    finally:
        q.stop()
    assert order == ["A1", "B1", "A2", "B2", "A3", "A4"]
    assert predicted == order


def test_late_client_is_not_starved_by_a_backlog(store):
    gate, order, run = gated_recorder()

    q = make_queue(store, {"render": run})
    q.start()
    try:
        q.submit("render", "sh010", {"name": "A0", "gate": True}, client="alice")
        for i in range(1, 6):
            q.submit("render", "sh010", {"name": f"A{i}"}, client="alice")
        late = q.submit("render", "sh020", {"name": "B1"}, client="bob")
        gate.set()
        q.wait(late, timeout=10)
        for j in q.list():
            q.wait(j.id, timeout=10)
    finally:
        q.stop()
    assert order.index("B1") == 1  # right after the job that was running when bob submitted


def test_a_job_queued_after_another_waits_without_holding_the_worker(store):
    # Bob's render is queued behind alice's training. Round robin alone would run it first (bob has
    # not been served, alice has), before the LoRA it needs exists; waiting inside the runner
    # instead would hold the one worker the training needs.
    gate, order, run = gated_recorder()

    q = make_queue(store, {"train": run, "render": run})
    q.start()
    try:
        busy = q.submit("train", "sh000", {"name": "busy", "gate": True}, client="alice")
        time.sleep(0.2)  # alice is now served
        train = q.submit("train", "sh010", {"name": "train"}, client="alice")
        render = q.submit("render", "sh010", {"name": "render", AFTER: train}, client="bob")
        unknown = q.submit("render", "sh030", {"name": "after-unknown", AFTER: "no-such-job"}, client="dave")
        time.sleep(0.2)
        assert q.status(render).state == "queued"
        gate.set()
        for j in (busy, train, render, unknown):
            assert q.wait(j, timeout=10).state == "done"
    finally:
        q.stop()
    assert order.index("render") > order.index("train"), order
    assert order.index("after-unknown") < order.index("train"), order  # an unknown id holds nothing


def test_cancel_queued_job_is_immediate_and_never_runs(store):
    gate, ran = threading.Event(), []

    def run(job, ctx):
        ran.append(job.id)
        if job.params.get("gate"):
            gate.wait(10)
        return {}

    events = []
    q = make_queue(store, {"render": run}, events)
    q.start()
    try:
        first = q.submit("render", "sh010", {"gate": True}, client="alice")
        second = q.submit("render", "sh010", {}, client="alice")
        job = q.cancel(second)
        assert job.state == "cancelled" and q.status(second).state == "cancelled"
        gate.set()
        assert q.wait(first, timeout=10).state == "done"
    finally:
        q.stop()
    assert ran == [first]
    assert {"type": "state", "state": "cancelled"}.items() <= next(
        e for e in events if e["job_id"] == second and e.get("state") == "cancelled").items()
    with pytest.raises(NotFound):
        q.cancel("no-such-job")


def test_cancel_running_job_stops_within_one_step(store):
    steps, at_cancel = [], {}
    started = threading.Event()

    def train(job, ctx):
        for step in range(1, 1001):
            time.sleep(0.01)
            steps.append(step)
            if step == 3:
                started.set()
            ctx.progress("motion", step, 1000, loss=1.0 / step)  # raises Cancelled
        return {}

    q = make_queue(store, {"train": train})
    q.start()
    try:
        job_id = q.submit("train", "sh010", {}, client="alice")
        assert started.wait(10)
        at_cancel["steps"] = len(steps)
        requested = q.cancel(job_id)
        assert requested.cancel_requested
        final = q.wait(job_id, timeout=10)
    finally:
        q.stop()
    assert final.state == "cancelled" and final.error["code"] == "cancelled"
    assert len(steps) - at_cancel["steps"] <= 1
    assert final.step is not None and final.step < 1000  # progress was flushed before finishing


def test_tensor_code_can_poll_the_cancelled_event(store):
    entered = threading.Event()

    def render(job, ctx):
        entered.set()
        while not ctx.cancelled.wait(0.01):  # e.g. a denoising loop's per-step check
            pass
        ctx.check_cancelled()
        return {"unreachable": True}

    q = make_queue(store, {"render": render})
    q.start()
    try:
        job_id = q.submit("render", "sh010")
        assert entered.wait(10)
        q.cancel(job_id)
        assert q.wait(job_id, timeout=5).state == "cancelled"
    finally:
        q.stop()


def test_runner_errors_fail_the_job_with_a_code_and_the_worker_survives(store, caplog):
    def bad_input(job, ctx):
        raise InvalidInput("matte is empty on frame 1012", frame=1012)

    def crash(job, ctx):
        raise ZeroDivisionError("boom")

    q = make_queue(store, {"mask": bad_input, "train": crash, "render": quick})
    q.start()
    try:
        a = q.submit("mask", "sh010")
        b = q.submit("train", "sh010")
        c = q.submit("render", "sh010")
        ja, jb, jc = (q.wait(x, timeout=10) for x in (a, b, c))
    finally:
        q.stop()
    assert ja.state == "failed" and ja.error == {
        "code": "invalid_input", "message": "matte is empty on frame 1012",
        "details": {"frame": 1012}}
    assert jb.state == "failed" and jb.error["code"] == "internal"
    assert "ZeroDivisionError" in jb.error["message"]
    assert "Traceback" in caplog.text and "boom" in caplog.text  # logged for the TD
    assert jc.state == "done" and jc.result == {"shot": "sh010"}


def test_unusable_result_fails_cleanly(store):
    q = make_queue(store, {"render": lambda job, ctx: {"tensor": object()}})
    q.start()
    try:
        job = q.wait(q.submit("render", "sh010"), timeout=10)
    finally:
        q.stop()
    assert job.state == "failed" and "unusable result" in job.error["message"]


def test_every_announced_state_is_already_committed(tmp_path, store):
    observer = JobStore(tmp_path / "jobs.db")  # a separate connection sees committed data only
    seen, mismatches = [], []

    def on_event(job_id, ev):
        if ev["type"] == "state":
            seen.append(ev["state"])
            if observer.get_job(job_id).state != ev["state"]:
                mismatches.append(ev["state"])

    q = JobQueue(store, {"render": quick}, on_event)
    q.start()
    try:
        q.wait(q.submit("render", "sh010"), timeout=10)
    finally:
        q.stop()
        observer.close()
    assert seen == ["queued", "running", "done"] and mismatches == []


def test_progress_streams_every_step_but_persists_throttled(store, monkeypatch):
    writes = []
    real = store.update_progress
    monkeypatch.setattr(store, "update_progress",
                        lambda job_id, **kw: (writes.append(kw), real(job_id, **kw)))

    def train(job, ctx):
        for step in range(1, 51):
            ctx.progress("motion", step, 50, loss=0.5)
        for step in range(1, 11):
            time.sleep(0.01)
            ctx.progress("appearance", step, 10, message="painted frame 1")
        return {}

    events = []
    q = make_queue(store, {"train": train}, events, progress_interval_s=10.0)
    q.start()
    try:
        job = q.wait(q.submit("train", "sh010"), timeout=10)
    finally:
        q.stop()
    progress = [e for e in events if e["type"] == "progress"]
    assert len(progress) == 60
    # First step of each stage and each stage's last step; nothing in between at 10 s throttle.
    assert [(w["stage"], w["step"]) for w in writes] == [
        ("motion", 1), ("motion", 50), ("appearance", 1), ("appearance", 10)]
    assert (job.stage, job.step, job.total, job.message) == ("appearance", 10, 10,
                                                              "painted frame 1")
    eta = [e["eta_s"] for e in progress if e["stage"] == "appearance"]
    assert eta[0] is None and all(x is not None for x in eta[1:])  # needs two steps to time
    assert 0 < eta[1] < 9 * 0.5 and eta[-1] == 0  # ~9 steps x ~10 ms left, then none


def test_checkpoints_and_workdir_are_offered_to_the_runner(store):
    seen = {}

    def train(job, ctx):
        seen.update(workdir=ctx.workdir, resume=ctx.resume_from, attempt=ctx.attempt)
        (ctx.workdir / "step-2.bin").write_bytes(b"x")
        ctx.checkpoint(ctx.workdir / "step-2.bin", 2)
        return {}

    q = make_queue(store, {"train": train})
    q.start()
    try:
        job = q.wait(q.submit("train", "sh010"), timeout=10)
    finally:
        q.stop()
    assert seen["workdir"].is_dir() and seen["workdir"].name == job.id
    assert seen["resume"] is None and seen["attempt"] == 1
    assert job.last_checkpoint.step == 2


def test_graceful_stop_requeues_the_running_job_for_resume(tmp_path, store):
    started = threading.Event()

    def train(job, ctx):
        start = ctx.resume_from.step + 1 if ctx.resume_from else 1
        for step in range(start, 201):
            ckpt = ctx.workdir / "ckpt"
            ckpt.write_text(str(step))
            ctx.checkpoint(ckpt, step)
            if step >= 3:
                started.set()
            time.sleep(0.01)
            ctx.progress("motion", step, 200)
        return {"resumed_at": start}

    q = make_queue(store, {"train": train})
    q.start()
    job_id = q.submit("train", "sh010")
    assert started.wait(10)
    assert q.stop(timeout=10)
    stopped = store.get_job(job_id)
    assert stopped.state == "queued" and stopped.attempts == 0  # shutdown is not the job's fault
    with pytest.raises(Busy):
        q.submit("train", "sh010")

    q2 = make_queue(store, {"train": train})
    q2.start()
    try:
        done = q2.wait(job_id, timeout=20)
    finally:
        q2.stop()
    assert done.state == "done" and done.attempts == 1
    assert done.result["resumed_at"] == stopped.checkpoint_step + 1 > 1


def test_wait_times_out_and_unknown_kinds_are_refused(store):
    release = threading.Event()
    q = make_queue(store, {"render": lambda job, ctx: release.wait(10) and {}})
    q.start()
    try:
        job_id = q.submit("render", "sh010")
        with pytest.raises(TimeoutError):
            q.wait(job_id, timeout=0.2)
        with pytest.raises(InvalidInput):
            q.submit("train", "sh010")
        release.set()
        assert q.wait(job_id, timeout=10).state == "done"
    finally:
        q.stop()


def test_a_failing_event_callback_does_not_break_the_job(store):
    def on_event(job_id, ev):
        raise RuntimeError("socket closed")

    q = JobQueue(store, {"render": quick}, on_event)
    q.start()
    try:
        assert q.wait(q.submit("render", "sh010"), timeout=10).state == "done"
    finally:
        q.stop()


def test_one_worker_per_gpu_runs_jobs_side_by_side(store):
    barrier = threading.Barrier(2, timeout=10)  # both jobs must be running at the same time
    devices = []

    def render(job, ctx):
        devices.append(ctx.device_index)
        barrier.wait()
        return {}

    q = make_queue(store, {"render": render}, workers=2)
    q.start()
    try:
        ids = [q.submit("render", "sh010", client=c) for c in ("alice", "bob")]
        states = [q.wait(i, timeout=15).state for i in ids]
    finally:
        q.stop()
    assert states == ["done", "done"] and sorted(devices) == [0, 1]
