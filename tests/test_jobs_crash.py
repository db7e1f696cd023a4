"""A real server process is SIGKILLed mid-job; a new one on the same database resumes the job
from its last checkpoint (not from step 0) and runs every other accepted job.

This file is also the child program: ``python test_jobs_crash.py first|second DB LOG``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

TRAIN_STEPS = 40


def _runner(log_path: str):
    def train(job, ctx):
        total = job.params["steps"]
        start = ctx.resume_from.step + 1 if ctx.resume_from else 1
        if ctx.resume_from:  # the checkpoint content must agree with the recorded step
            assert json.loads(Path(ctx.resume_from.path).read_text())["step"] == start - 1
        with open(log_path, "a") as log:
            log.write(f"{job.id} start {start} attempt {ctx.attempt}\n")
        for step in range(start, total + 1):
            time.sleep(job.params["sleep"])
            # One file per step, as LoraStore does: a kill between writing step N and
            # recording it leaves the recorded step N-1 file intact.
            ckpt = ctx.workdir / f"ckpt-{step:04d}.json"
            tmp = ckpt.with_suffix(".tmp")
            tmp.write_text(json.dumps({"step": step}))
            os.replace(tmp, ckpt)
            ctx.checkpoint(ckpt, step)
            ctx.progress("train", step, total)
        return {"started_at": start, "final_step": total}

    return train


def _child(mode: str, db: str, log_path: str) -> None:
    from lorafx.server.jobs import JobQueue, JobStore

    store = JobStore(db)
    runner = _runner(log_path)
    q = JobQueue(store, {"train": runner, "render": runner})
    if mode == "first":
        q.start()
        ids = [q.submit("train", "sh010", {"steps": TRAIN_STEPS, "sleep": 0.05}, "alice"),
               q.submit("render", "sh020", {"steps": 3, "sleep": 0.01}, "bob"),
               q.submit("render", "sh030", {"steps": 3, "sleep": 0.01}, "alice")]
        print(json.dumps(ids), flush=True)  # acknowledged to "clients" only after submit()
        time.sleep(60)  # the parent kills us long before this ends
    else:
        q.start()
        jobs = [q.wait(j.id, timeout=30) for j in store.list_jobs()]
        q.stop()
        print(json.dumps([j.to_dict() for j in jobs]), flush=True)


def _spawn(mode: str, db: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, __file__, mode, str(db), str(log)],
                            stdout=subprocess.PIPE, text=True)


def test_sigkill_mid_training_resumes_from_last_checkpoint_and_loses_nothing(tmp_path):
    from lorafx.server.jobs import JobStore

    db, log = tmp_path / "jobs.db", tmp_path / "runner.log"
    first = _spawn("first", db, log)
    try:
        ids = json.loads(first.stdout.readline())
        observer = JobStore(db)
        deadline = time.monotonic() + 20
        while (observer.get_job(ids[0]).checkpoint_step or 0) < 5:
            assert time.monotonic() < deadline, "training never reached step 5"
            assert first.poll() is None, "server process died on its own"
            time.sleep(0.02)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == -signal.SIGKILL

    crashed = observer.get_job(ids[0])
    observer.close()
    assert crashed.state == "running" and crashed.attempts == 1  # the crash left it mid-flight
    resume_step = crashed.checkpoint_step
    assert 5 <= resume_step < TRAIN_STEPS

    second = _spawn("second", db, log)
    out, _ = second.communicate(timeout=60)
    assert second.returncode == 0
    jobs = {j["id"]: j for j in json.loads(out)}

    assert set(jobs) == set(ids)  # every acknowledged job survived the crash
    assert all(j["state"] == "done" for j in jobs.values()), jobs
    train = jobs[ids[0]]
    assert train["attempts"] == 2
    assert train["result"] == {"started_at": resume_step + 1, "final_step": TRAIN_STEPS}
    assert train["checkpoint_step"] == TRAIN_STEPS
    starts = [line.split() for line in log.read_text().splitlines() if line.startswith(ids[0])]
    assert starts == [[ids[0], "start", "1", "attempt", "1"],
                      [ids[0], "start", str(resume_step + 1), "attempt", "2"]]


if __name__ == "__main__":
    _child(*sys.argv[1:4])
