"""The job queue: fair scheduling over durable jobs, one worker thread per GPU.

Runners (the method layer's train / render / mask entry points) are plain callables
``runner(job: Job, ctx: JobContext) -> dict``. They get progress reporting, cancellation, a
resumable-checkpoint record and a per-job working directory through ``JobContext``; they never
touch the database.

Fairness: the next job is the oldest queued job of the client served least recently (clients
never served yet come first, oldest submission first). So one artist queueing ten renders does
not hold back another artist's single job by more than one job; within a client it is FIFO.
A job whose params name another job under AFTER stays queued until that job has ended (a render
queued behind the training that makes its LoRA), and never holds a worker while it waits.

Ordering guarantee: every event passed to ``on_event`` describes a state that is already
committed to the database.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from lorafx.errors import Busy, Cancelled, InvalidInput, LorafxError, NotFound

from .metrics import LorafxMetrics
from .store import DEFAULT_MAX_ATTEMPTS, Checkpoint, Job, JobStore

log = logging.getLogger("lorafx.jobs.queue")

Runner = Callable[[Job, "JobContext"], Mapping[str, Any] | None]

AFTER = "after"  # params key: the id of a job this one must not start before
EventCallback = Callable[[str, dict], None]

# Smoothing of the seconds-per-step estimate behind the ETA: recent steps dominate (the first
# step of a stage often includes compilation or caching), but one slow step does not swing it.
_ETA_SMOOTHING = 0.2


class JobContext:
    """What a runner gets besides its Job: progress, cancellation, checkpoints, a workdir.

    Attributes a runner reads:
      job_id, kind, shot, client, params  -- the job as submitted
      attempt        -- 1 on the first run, 2 after one crash...
      resume_from    -- Checkpoint(path, step) recorded by a previous attempt, or None
      workdir        -- a per-job directory that survives crashes (same across attempts)
      device_index   -- which GPU this worker owns (0 with one GPU)
      cancelled      -- threading.Event, set on cancel or shutdown; tensor code may poll it
      log            -- a logger tagged with the job id
    """

    def __init__(self, *, job: Job, store: JobStore, emit: Callable[[str, dict], None],
                 workdir: Path, device_index: int, resume_from: Checkpoint | None,
                 metrics: LorafxMetrics | None, progress_interval_s: float):
        self.job_id = job.id
        self.kind = job.kind
        self.shot = job.shot
        self.client = job.client
        self.params = job.params
        self.attempt = job.attempts
        self.resume_from = resume_from
        self.workdir = workdir
        self.device_index = device_index
        self.cancelled = threading.Event()
        self.log = logging.LoggerAdapter(log, {"job_id": job.id})
        self._store = store
        self._emit = emit
        self._metrics = metrics
        self._interval = progress_interval_s
        self._cancel_reason: str | None = None  # "user" or "shutdown"
        self._started_mono = time.monotonic()
        # Progress bookkeeping (only the runner's thread touches it).
        self._stage: str | None = None
        self._last_step: int | None = None
        self._last_step_t = 0.0
        self._sec_per_step: float | None = None
        self._last_persist_t = -math.inf
        self._pending: dict | None = None  # latest progress not yet written to the database

    # ------------------------------------------------------------------ for runners
    def progress(self, stage: str, step: int, total: int, loss: float | None = None,
                 message: str | None = None) -> None:
        """Report progress. Streams an event at once; persists at most every
        ``progress_interval_s`` (and always on a stage change or the last step). Raises
        Cancelled when the job has been cancelled, so a runner that reports every step is
        cancellable with no extra code."""
        now = time.monotonic()
        step, total = int(step), int(total)
        stage_changed = stage != self._stage
        if stage_changed:
            self._stage, self._sec_per_step = stage, None
        elif self._last_step is not None and step > self._last_step:
            dt = (now - self._last_step_t) / (step - self._last_step)
            self._sec_per_step = dt if self._sec_per_step is None else (
                _ETA_SMOOTHING * dt + (1 - _ETA_SMOOTHING) * self._sec_per_step)
            if self._metrics is not None and self.kind == "train":
                self._metrics.train_step_seconds.observe(dt)
        self._last_step, self._last_step_t = step, now
        eta = (None if self._sec_per_step is None
               else max(0, total - step) * self._sec_per_step)
        loss = None if loss is None else float(loss)
        self._pending = dict(stage=stage, step=step, total=total,
                             loss=loss, message=message, eta_s=eta)
        if stage_changed or step >= total or now - self._last_persist_t >= self._interval:
            self._flush_progress(now)
        self._emit("progress", {
            "stage": stage, "step": step, "total": total, "loss": loss, "message": message,
            "eta_s": eta, "step_s": self._sec_per_step, "attempt": self.attempt,
            "elapsed_s": now - self._started_mono})
        self.check_cancelled()

    def check_cancelled(self) -> None:
        """Raise lorafx.errors.Cancelled if the job was cancelled (or the server is stopping)."""
        if self.cancelled.is_set():
            why = ("the server is shutting down; the job will resume"
                   if self._cancel_reason == "shutdown" else "cancelled by the user")
            raise Cancelled(why, job_id=self.job_id)

    def checkpoint(self, path: str | Path, step: int) -> None:
        """Record the latest resumable state (already written by the runner, e.g. with
        LoraStore.save_checkpoint). Committed at once: a crash after this resumes from here."""
        self._store.record_checkpoint(self.job_id, str(path), int(step))
        self._emit("checkpoint", {"path": str(path), "step": int(step)})

    # ------------------------------------------------------------------ for the queue
    def _request_cancel(self, reason: str) -> None:
        if self._cancel_reason != "user":  # a user cancel is final; shutdown must not undo it
            self._cancel_reason = reason
        self.cancelled.set()

    def _flush_progress(self, now: float | None = None) -> None:
        if self._pending is not None:
            self._store.update_progress(self.job_id, **self._pending)
            self._pending = None
            self._last_persist_t = time.monotonic() if now is None else now


class JobQueue:
    """Durable, fair, cancellable job execution.

    ``runners`` maps a job kind ("train", "render", "mask") to its runner. ``workers`` is the
    number of GPUs: worker i runs one job at a time and passes ``device_index=i`` to it.

    ``on_event(job_id, event)`` receives dicts with ``type``, ``job_id``, ``time`` (epoch s) and:
      "state"            state, job (Job.to_dict())         -- queued/running/done/failed/
                                                               cancelled, after the commit
      "progress"         stage, step, total, loss, message, eta_s, step_s, elapsed_s, attempt
      "checkpoint"       path, step                          -- a resume point was recorded
      "cancel_requested" state                               -- the runner will stop at its
                                                               next step
    It runs on the submitting or worker thread, so it should hand off quickly (e.g. put on a
    socket queue). Exceptions it raises are logged and ignored.
    """

    def __init__(self, store: JobStore, runners: Mapping[str, Runner],
                 on_event: EventCallback | None = None, *, workers: int = 1,
                 workdir_root: str | Path | None = None, max_attempts: int = DEFAULT_MAX_ATTEMPTS,
                 progress_interval_s: float = 0.5, metrics: LorafxMetrics | None = None):
        if workers < 1:
            raise ValueError("workers must be >= 1 (one per GPU)")
        self.store = store
        self.runners = dict(runners)
        self.on_event = on_event
        self.workers = workers
        self.workdir_root = Path(workdir_root) if workdir_root else store.db_path.parent / "work"
        self.max_attempts = max_attempts
        self.progress_interval_s = progress_interval_s
        self.metrics = metrics
        if metrics is not None:
            metrics.bind_store(store)
        self._cond = threading.Condition()  # guards everything below
        self._running: dict[str, JobContext] = {}
        self._served: dict[str, int] = {}  # client -> tick of its last dispatch
        self._tick = 0
        self._threads: list[threading.Thread] = []
        self._started = False
        self._stopping = False

    # ------------------------------------------------------------------ lifecycle
    def start(self):
        """Take ownership of the database, recover crashed jobs, start the workers."""
        if self._started:
            raise RuntimeError("JobQueue already started")
        self.store.acquire_owner_lock()
        report = self.store.recover(self.max_attempts)
        self._started = True
        for i in range(self.workers):
            t = threading.Thread(target=self._worker, args=(i,), name=f"lorafx-job-worker-{i}",
                                 daemon=True)
            t.start()
            self._threads.append(t)
        log.info("job queue started: %d worker(s); recovered %d requeued, %d failed, "
                 "%d cancelled", self.workers, len(report.requeued), len(report.failed),
                 len(report.cancelled))
        return report

    def stop(self, timeout: float | None = 30.0, *, interrupt: bool = True) -> bool:
        """Stop taking jobs and end the workers. With ``interrupt`` (default) running jobs are
        asked to stop at their next step and go back to the queue (resuming from their last
        checkpoint next start, the interruption not counted as an attempt); without it they run
        to completion. Returns False if a worker was still busy after ``timeout`` -- its job
        stays ``running`` in the database and is recovered at the next start. A stopped queue
        cannot be restarted; make a new JobQueue on the same store."""
        with self._cond:
            self._stopping = True
            contexts = list(self._running.values())
            self._cond.notify_all()
        if interrupt:
            for ctx in contexts:
                ctx._request_cancel("shutdown")
        deadline = None if timeout is None else time.monotonic() + timeout
        for t in self._threads:
            t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        alive = [t.name for t in self._threads if t.is_alive()]
        if alive:
            log.warning("job queue stop: %s still busy after %ss", ", ".join(alive), timeout)
            return False
        self.store.release_owner_lock()
        return True

    def __enter__(self) -> "JobQueue":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ API
    def submit(self, kind: str, shot: str, params: dict | None = None,
               client: str = "default") -> str:
        """Queue a job; returns its id once it is durably stored."""
        if kind not in self.runners:
            raise InvalidInput(f"this server has no runner for {kind!r} jobs "
                               f"(available: {', '.join(sorted(self.runners))})")
        with self._cond:
            if self._stopping:
                raise Busy("the server is shutting down; not accepting jobs")
        job = self.store.add_job(kind, shot, client, params)
        self._announce_state(job)
        with self._cond:
            self._cond.notify()
        return job.id

    def cancel(self, job_id: str) -> Job:
        """Cancel a job. Queued: cancelled at once. Running: the cancel flag is set and the
        runner stops at its next step (the returned Job is still ``running`` with
        ``cancel_requested``; ``wait()`` for the final state). Finished: returned unchanged."""
        with self._cond:
            # Under the lock: a worker claims a job and registers its context atomically, so
            # the job is either still cancellable as queued or has a context to signal.
            job = self.store.cancel_queued(job_id)
            cancelled_now = job is not None
            ctx = None
            if job is None:
                ctx = self._running.get(job_id)
                if ctx is not None:
                    job = self.store.request_cancel(job_id) or self.store.get_job(job_id)
                    ctx._request_cancel("user")
                else:
                    job = self.store.get_job(job_id)  # raises NotFound for unknown ids
            if job.terminal:
                self._cond.notify_all()
        if cancelled_now:
            self._announce_state(job)
        elif ctx is not None:
            self._emit(job_id, "cancel_requested", {"state": job.state})
        return job

    def status(self, job_id: str) -> Job:
        return self.store.get_job(job_id)

    def list(self, *, state: str | None = None, client: str | None = None,
             shot: str | None = None, kind: str | None = None,
             limit: int | None = None) -> list[Job]:
        return self.store.list_jobs(state=state, client=client, shot=shot, kind=kind,
                                    limit=limit)

    def pending(self) -> list[Job]:
        """Queued jobs in the order they will be dispatched (given no new submissions)."""
        with self._cond:
            served, tick = dict(self._served), self._tick
        queued = self.store.queued_jobs()
        order: list[Job] = []
        while queued:
            job = self._pick(queued, served)
            order.append(job)
            queued.remove(job)
            tick += 1
            served[job.client] = tick
        return order

    def wait(self, job_id: str, timeout: float | None = None) -> Job:
        """Block until the job is done, failed or cancelled; returns it. Raises TimeoutError."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                job = self.store.get_job(job_id)
                if job.terminal:
                    return job
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(f"job {job_id} still {job.state} after {timeout}s")
                # Bounded wait: also notices jobs finished by another connection to the db.
                self._cond.wait(1.0 if remaining is None else min(1.0, remaining))

    # ------------------------------------------------------------------ scheduling
    @staticmethod
    def _pick(queued: list[Job], served: Mapping[str, int]) -> Job:
        heads: dict[str, Job] = {}
        for job in queued:  # submission order, so the first per client is its oldest
            heads.setdefault(job.client, job)
        return min(heads.values(), key=lambda j: (served.get(j.client, -1), j.seq))

    def _waits(self, job: Job) -> bool:
        """True while the job named in its params' AFTER has not ended (an unknown one does not
        hold it back: its runner reports that)."""
        after = (job.params or {}).get(AFTER)
        if not after:
            return False
        try:
            return not self.store.get_job(after).terminal
        except NotFound:
            return False

    def _claim(self, device_index: int) -> tuple[Job, JobContext] | None:
        """Under the lock: choose the next job, mark it running, register its context."""
        while True:
            queued = [j for j in self.store.queued_jobs() if not self._waits(j)]
            if not queued:
                return None
            choice = self._pick(queued, self._served)
            job = self.store.mark_running(choice.id)
            if job is None:
                continue  # cancelled between the read and the claim; pick again
            self._tick += 1
            self._served[job.client] = self._tick
            ctx = JobContext(job=job, store=self.store,
                             emit=lambda ev, data, _id=job.id: self._emit(_id, ev, data),
                             workdir=self._workdir(job.id), device_index=device_index,
                             resume_from=self._resume_point(job), metrics=self.metrics,
                             progress_interval_s=self.progress_interval_s)
            self._running[job.id] = ctx
            return job, ctx

    def _workdir(self, job_id: str) -> Path:
        d = self.workdir_root / job_id
        d.mkdir(parents=True, exist_ok=True)
        return d

    @staticmethod
    def _resume_point(job: Job) -> Checkpoint | None:
        ckpt = job.last_checkpoint
        if ckpt is not None and not Path(ckpt.path).exists():
            # Restarting from zero beats failing on a checkpoint someone cleaned up.
            log.warning("job %s: recorded checkpoint %s (step %d) is gone; starting over",
                        job.id, ckpt.path, ckpt.step)
            return None
        return ckpt

    # ------------------------------------------------------------------ execution
    def _worker(self, device_index: int) -> None:
        while True:
            with self._cond:
                claimed = None
                while not self._stopping:
                    try:
                        claimed = self._claim(device_index)
                    except Exception:
                        log.exception("worker %d: could not claim a job; retrying", device_index)
                    if claimed is not None:
                        break
                    self._cond.wait(1.0)
                if claimed is None:
                    return
            job, ctx = claimed
            try:
                self._announce_state(job)
                self._execute(job, ctx)
            except Exception:
                # Only bookkeeping can land here (the runner's own errors are handled in
                # _execute). The job stays 'running' in the db and is recovered at restart.
                log.exception("worker %d: bookkeeping failed for job %s", device_index, job.id)
            finally:
                with self._cond:
                    self._running.pop(job.id, None)
                    self._cond.notify_all()

    def _execute(self, job: Job, ctx: JobContext) -> None:
        runner = self.runners.get(job.kind)
        t0 = time.monotonic()
        state, result, error = "done", None, None
        if ctx.resume_from is not None:
            ctx.log.info("job %s (%s, shot %s) attempt %d resumes from step %d", job.id, job.kind,
                         job.shot, ctx.attempt, ctx.resume_from.step)
        try:
            if runner is None:
                raise InvalidInput(f"this server has no runner for {job.kind!r} jobs")
            out = runner(job, ctx)
            result = dict(out) if out is not None else {}
        except Cancelled as e:
            state, error = "cancelled", e.to_dict()
        except LorafxError as e:
            state, error = "failed", e.to_dict()
            if ctx.cancelled.is_set():  # most likely a consequence of the interruption
                state = "cancelled"
            ctx.log.warning("job %s failed: [%s] %s", job.id, e.code, e.message)
        except Exception as e:
            state = "cancelled" if ctx.cancelled.is_set() else "failed"
            error = {"code": "internal",
                     "message": f"internal error in the {job.kind} runner: "
                                f"{type(e).__name__}: {e}",
                     "details": {"exception": type(e).__name__}}
            ctx.log.error("job %s raised an unexpected exception\n%s", job.id,
                          traceback.format_exc())
        if state == "cancelled" and ctx._cancel_reason == "shutdown":
            ctx._flush_progress()
            requeued = self.store.requeue(job.id, refund_attempt=True)
            if requeued is not None:
                self._announce_state(requeued)
            return
        if state == "done" and ctx.cancelled.is_set():
            ctx.log.info("job %s finished before it saw the cancel request; keeping the result",
                         job.id)
        ctx._flush_progress()
        try:
            final = self.store.finish(job.id, state, result=result, error=error)
        except InvalidInput as e:  # result not JSON-serialisable: the runner's bug
            final = self.store.finish(job.id, "failed", error={
                "code": "internal", "message": f"the {job.kind} runner returned an unusable "
                                               f"result: {e.message}", "details": {}})
        if self.metrics is not None:
            self.metrics.jobs_finished.labels(final.kind, final.state).inc()
            if final.kind == "render" and final.state == "done":
                self.metrics.render_seconds.observe(time.monotonic() - t0)
        self._announce_state(final)

    # ------------------------------------------------------------------ events
    def _announce_state(self, job: Job) -> None:
        self._emit(job.id, "state", {"state": job.state, "job": job.to_dict()})

    def _emit(self, job_id: str, event_type: str, data: dict) -> None:
        if self.on_event is None:
            return
        event = {"type": event_type, "job_id": job_id, "time": time.time(), **data}
        try:
            self.on_event(job_id, event)
        except Exception:
            log.exception("on_event callback failed for job %s (%s); continuing", job_id,
                          event_type)
