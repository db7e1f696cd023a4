"""Prometheus metrics: queue length and job states from the database, timings from the queue."""

from __future__ import annotations

import re
import urllib.request

from lorafx.server.jobs import JobQueue, JobStore, LorafxMetrics


def sample(text: str, name: str, labels: str = "") -> float:
    m = re.search(rf"^{re.escape(name + labels)} (\S+)$", text, re.M)
    assert m, f"{name}{labels} missing from:\n{text}"
    return float(m.group(1))


def test_queue_length_and_job_states_are_exported(tmp_path):
    store = JobStore(tmp_path / "jobs.db")
    metrics = LorafxMetrics()
    q = JobQueue(store, {"render": lambda job, ctx: {}, "train": lambda job, ctx: {}},
                 metrics=metrics)
    try:
        for _ in range(3):
            q.submit("render", "sh010", client="alice")
        q.submit("train", "sh010", client="bob")
        text = metrics.render().decode()
        assert sample(text, "lorafx_queue_length") == 4
        assert sample(text, "lorafx_jobs", '{kind="render",state="queued"}') == 3
        assert sample(text, "lorafx_memory_bytes", '{device="cpu",source="process_rss"}') > 1e6

        q.start()
        for j in q.list():
            q.wait(j.id, timeout=10)
        text = metrics.render().decode()
        assert sample(text, "lorafx_queue_length") == 0
        assert sample(text, "lorafx_jobs", '{kind="render",state="done"}') == 3
        assert sample(text, "lorafx_jobs_finished_total", '{kind="train",state="done"}') == 1
        assert sample(text, "lorafx_render_seconds_count") == 3
    finally:
        q.stop()
        store.close()


def test_training_steps_are_timed(tmp_path):
    store = JobStore(tmp_path / "jobs.db")
    metrics = LorafxMetrics()

    def train(job, ctx):
        for step in range(1, 6):
            ctx.progress("motion", step, 5)
        return {}

    q = JobQueue(store, {"train": train}, metrics=metrics)
    q.start()
    try:
        q.wait(q.submit("train", "sh010"), timeout=10)
    finally:
        q.stop()
    # five progress calls in one stage = four measured step intervals
    assert sample(metrics.render().decode(), "lorafx_train_step_seconds_count") == 4
    store.close()
    text = metrics.render().decode()  # a scrape still answers when the database does not
    assert "lorafx_memory_bytes" in text and "lorafx_queue_length" not in text


def test_metrics_over_http(tmp_path):
    metrics = LorafxMetrics()
    metrics.bind_store(JobStore(tmp_path / "jobs.db"))
    server = metrics.start_http(0, addr="127.0.0.1")
    try:
        url = f"http://127.0.0.1:{server.server_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as r:
            body = r.read().decode()
    finally:
        server.shutdown()
        server.server_close()
    assert sample(body, "lorafx_queue_length") == 0
