"""JobStore: durable records, transitions, and what recover() does after a crash."""

from __future__ import annotations

import threading

import pytest

from lorafx.errors import Busy, InvalidInput, NotFound
from lorafx.server.jobs import JobStore


@pytest.fixture
def store(tmp_path):
    s = JobStore(tmp_path / "jobs.db")
    yield s
    s.close()


def test_job_round_trips_through_a_fresh_connection(tmp_path, store):
    job = store.add_job("train", "sh010", "alice", {"steps": 100, "rank": 16, "mask": "bbox"})
    assert len(job.id) == 32 and job.state == "queued" and job.attempts == 0
    other = JobStore(tmp_path / "jobs.db")  # another connection sees it: it was committed
    try:
        again = other.get_job(job.id)
    finally:
        other.close()
    assert again.params == {"steps": 100, "rank": 16, "mask": "bbox"}
    assert (again.kind, again.shot, again.client, again.state) == ("train", "sh010", "alice",
                                                                    "queued")


def test_rejects_what_could_not_be_stored_faithfully(store):
    with pytest.raises(InvalidInput):
        store.add_job("paint", "sh010", "alice", {})
    with pytest.raises(InvalidInput):
        store.add_job("train", "sh010", "alice", {"lr": float("nan")})
    with pytest.raises(InvalidInput):
        store.add_job("train", "sh010", "alice", {"obj": object()})
    with pytest.raises(NotFound):
        store.get_job("nope")
    assert store.list_jobs() == []


def test_lifecycle_progress_checkpoint_and_finish(store):
    job = store.add_job("train", "sh010", "alice")
    running = store.mark_running(job.id)
    assert running.state == "running" and running.attempts == 1 and running.started
    store.update_progress(job.id, stage="motion", step=3, total=100, loss=0.25, eta_s=12.0)
    store.record_checkpoint(job.id, "/tmp/ckpt-3", 3)
    done = store.finish(job.id, "done", result={"lora_key": "abc"})
    assert (done.state, done.step, done.total, done.loss) == ("done", 3, 100, 0.25)
    assert done.last_checkpoint.step == 3 and done.result == {"lora_key": "abc"}
    assert done.terminal and done.finished >= done.started
    with pytest.raises(InvalidInput):  # a finished job cannot be finished twice
        store.finish(job.id, "failed")


def test_cancel_queued_only_affects_queued_jobs(store):
    a = store.add_job("render", "sh010", "alice")
    b = store.add_job("render", "sh010", "alice")
    store.mark_running(b.id)
    assert store.cancel_queued(a.id).state == "cancelled"
    assert store.cancel_queued(b.id) is None  # running: needs the runner's cooperation
    assert store.mark_running(a.id) is None  # a cancelled job is never started


def test_recover_requeues_with_checkpoint_and_gives_up_after_max_attempts(store):
    resumable = store.add_job("train", "sh010", "alice")
    poison = store.add_job("train", "sh020", "bob")
    wanted_gone = store.add_job("render", "sh030", "carol")
    untouched = store.add_job("mask", "sh040", "dave")
    store.mark_running(resumable.id)
    store.record_checkpoint(resumable.id, "/ckpt/step-40", 40)
    for _ in range(3):  # started three times, the server died each time
        store.mark_running(poison.id)
        store.requeue(poison.id, refund_attempt=False)
    store.mark_running(poison.id)
    store.mark_running(wanted_gone.id)
    store.request_cancel(wanted_gone.id)

    report = store.recover(max_attempts=3)

    assert report.requeued == [resumable.id]
    assert report.failed == [poison.id]
    assert report.cancelled == [wanted_gone.id]
    r = store.get_job(resumable.id)
    assert r.state == "queued" and r.last_checkpoint.step == 40 and r.attempts == 1
    assert "step 40" in r.message
    p = store.get_job(poison.id)
    assert p.state == "failed" and p.error["code"] == "internal"
    assert "4 times" in p.error["message"]
    assert store.get_job(wanted_gone.id).state == "cancelled"
    assert store.get_job(untouched.id).state == "queued"
    # A second attempt counts: mark_running after recovery increments attempts to 2.
    assert store.mark_running(resumable.id).attempts == 2


def test_shots_upsert_keeps_unspecified_fields(store):
    s = store.put_shot("sh010", settings={"rank": 16}, frame_first=1001, frame_last=1049,
                       paths={"plate": "/plates/sh010.####.exr"})
    s2 = store.put_shot("sh010", settings={"rank": 32})
    assert s2.frame_first == 1001 and s2.paths == {"plate": "/plates/sh010.####.exr"}
    assert s2.settings == {"rank": 32} and s2.created == s.created
    with pytest.raises(InvalidInput):
        store.put_shot("sh020", frame_first=1050, frame_last=1001)
    assert [x.name for x in store.list_shots()] == ["sh010"]
    assert store.delete_shot("sh010") and not store.delete_shot("sh010")
    with pytest.raises(NotFound):
        store.get_shot("sh010")


def test_concurrent_writers_from_many_threads_lose_nothing(store):
    errors = []

    def submit(n):
        try:
            for i in range(25):
                store.add_job("render", "sh010", f"client{n}", {"i": i})
        except Exception as e:  # pragma: no cover - the assertion below reports it
            errors.append(e)

    threads = [threading.Thread(target=submit, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    jobs = store.list_jobs()
    assert len(jobs) == 100 and len({j.id for j in jobs}) == 100
    assert [j.params["i"] for j in jobs if j.client == "client2"] == list(range(25))
    assert len(store.list_jobs(limit=10)) == 10


def test_only_one_process_may_execute_jobs_from_a_database(tmp_path, store):
    store.acquire_owner_lock()
    other = JobStore(tmp_path / "jobs.db")
    try:
        with pytest.raises(Busy):
            other.acquire_owner_lock()
        with pytest.raises(Busy):  # recovering a live server's jobs would run them twice
            other.recover()
        store.release_owner_lock()
        other.acquire_owner_lock()  # free again once released
    finally:
        other.close()
