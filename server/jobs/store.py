"""Durable job and shot records in SQLite.

Every state change is a committed transaction before anyone is told about it: the queue announces
an event only after the call here returns, so a job a client was told about can never vanish in a
crash. The database is in WAL mode with ``synchronous=FULL`` (each commit is fsynced), so this
holds for power loss too, not only for a killed process.

Threads: each thread gets its own connection (SQLite connections are not meant to be shared);
writes that read-then-modify run in ``BEGIN IMMEDIATE`` transactions so two threads (or a second
inspecting process) cannot interleave them.

Attempts: ``attempts`` counts how many times a worker has *started* the job. A job found
``running`` at startup was interrupted by a crash; ``recover()`` puts it back in the queue with its
last checkpoint, unless it has already used ``max_attempts`` starts, in which case it fails: a job
that takes the server down every time (an OOM, a driver fault) must not crash-loop it forever.
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import os
import sqlite3
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

from lorafx.errors import Busy, InvalidInput, NotFound

log = logging.getLogger("lorafx.jobs.store")

SCHEMA_VERSION = 1

JOB_KINDS = ("train", "render", "mask")
JOB_STATES = ("queued", "running", "done", "failed", "cancelled")
TERMINAL_STATES = frozenset({"done", "failed", "cancelled"})
DEFAULT_MAX_ATTEMPTS = 3

_SCHEMA = """
CREATE TABLE IF NOT EXISTS shots (
    name        TEXT PRIMARY KEY,
    created     REAL NOT NULL,
    updated     REAL NOT NULL,
    settings    TEXT NOT NULL DEFAULT '{}',
    frame_first INTEGER,
    frame_last  INTEGER,
    paths       TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS jobs (
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,  -- submission order (FIFO tie-break)
    id               TEXT NOT NULL UNIQUE,
    kind             TEXT NOT NULL,
    shot             TEXT NOT NULL,
    client           TEXT NOT NULL,
    params           TEXT NOT NULL,
    state            TEXT NOT NULL,
    created          REAL NOT NULL,
    started          REAL,
    finished         REAL,
    updated          REAL NOT NULL,
    stage            TEXT,
    step             INTEGER,
    total            INTEGER,
    loss             REAL,
    message          TEXT,
    eta_s            REAL,
    error_code       TEXT,
    error_message    TEXT,
    error_details    TEXT,
    result           TEXT,
    attempts         INTEGER NOT NULL DEFAULT 0,
    checkpoint_path  TEXT,
    checkpoint_step  INTEGER,
    cancel_requested INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state, seq);
CREATE INDEX IF NOT EXISTS jobs_shot ON jobs(shot, seq);
"""


def _dumps(value: Any, what: str) -> str:
    """Canonical JSON for storage; rejects what would not survive a round trip (NaN, objects)."""
    try:
        return json.dumps(value, sort_keys=True, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as e:
        raise InvalidInput(f"{what} must be JSON-serialisable (plain dicts, lists, strings, "
                           f"finite numbers): {e}") from e


def _loads(text: str | None, default: Any = None) -> Any:
    return default if text is None else json.loads(text)


@dataclass(frozen=True)
class Checkpoint:
    """The latest resumable state a runner recorded: an opaque path (the runner's format) and the
    step it reached."""

    path: str
    step: int


@dataclass(frozen=True)
class Shot:
    name: str
    created: float
    updated: float
    settings: dict
    frame_first: int | None
    frame_last: int | None
    paths: dict

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Job:
    """A snapshot of one job row. Timestamps are Unix epoch seconds."""

    id: str
    seq: int
    kind: str
    shot: str
    client: str
    params: dict
    state: str
    created: float
    started: float | None
    finished: float | None
    updated: float
    stage: str | None
    step: int | None
    total: int | None
    loss: float | None
    message: str | None
    eta_s: float | None
    error_code: str | None
    error_message: str | None
    error_details: dict | None
    result: dict | None
    attempts: int
    checkpoint_path: str | None
    checkpoint_step: int | None
    cancel_requested: bool

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    @property
    def last_checkpoint(self) -> Checkpoint | None:
        if self.checkpoint_path is None:
            return None
        return Checkpoint(self.checkpoint_path, int(self.checkpoint_step or 0))

    @property
    def error(self) -> dict | None:
        """The failure in the shape of ``LorafxError.to_dict()`` (what the wire carries)."""
        if self.error_code is None:
            return None
        return {"code": self.error_code, "message": self.error_message or "",
                "details": self.error_details or {}}

    def to_dict(self) -> dict:
        d = asdict(self)
        d["error"] = self.error
        for k in ("error_code", "error_message", "error_details"):
            d.pop(k)
        return d


_JOB_COLUMNS = [f.name for f in Job.__dataclass_fields__.values()]  # type: ignore[attr-defined]


def _job_from_row(row: sqlite3.Row) -> Job:
    d = dict(row)
    d["params"] = _loads(d["params"], {})
    d["result"] = _loads(d["result"])
    d["error_details"] = _loads(d["error_details"])
    d["cancel_requested"] = bool(d["cancel_requested"])
    return Job(**{k: d[k] for k in _JOB_COLUMNS})


def _shot_from_row(row: sqlite3.Row) -> Shot:
    d = dict(row)
    return Shot(name=d["name"], created=d["created"], updated=d["updated"],
                settings=_loads(d["settings"], {}), frame_first=d["frame_first"],
                frame_last=d["frame_last"], paths=_loads(d["paths"], {}))


@dataclass
class RecoveryReport:
    """What ``recover()`` did with jobs a crash left ``running``."""

    requeued: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)


class JobStore:
    """SQLite-backed jobs and shots. Safe to call from any thread."""

    def __init__(self, db_path: str | os.PathLike, *, busy_timeout_s: float = 30.0):
        self.db_path = Path(db_path)
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        self._busy_timeout_ms = int(busy_timeout_s * 1000)
        self._local = threading.local()
        self._all_connections: list[sqlite3.Connection] = []
        self._conn_lock = threading.Lock()
        self._owner_fd: int | None = None
        self._closed = False
        con = self._con()
        con.execute("PRAGMA journal_mode=WAL")
        version = con.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise InvalidInput(f"job database {self.db_path} has schema version {version}; this "
                               f"lorafx understands up to {SCHEMA_VERSION} (upgrade lorafx)")
        with self._tx() as c:
            # Statement by statement: executescript() would COMMIT outside our transaction.
            for stmt in _SCHEMA.split(";"):
                if stmt.strip():
                    c.execute(stmt)
            c.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    # ------------------------------------------------------------------ connections
    def _con(self) -> sqlite3.Connection:
        if self._closed:
            raise RuntimeError("JobStore is closed")
        con = getattr(self._local, "con", None)
        if con is None:
            # isolation_level=None: we issue BEGIN/COMMIT ourselves, so nothing is left
            # half-committed by the sqlite3 module's implicit transactions.
            con = sqlite3.connect(self.db_path, isolation_level=None, check_same_thread=False,
                                  timeout=self._busy_timeout_ms / 1000)
            con.row_factory = sqlite3.Row
            con.execute(f"PRAGMA busy_timeout={self._busy_timeout_ms}")
            con.execute("PRAGMA synchronous=FULL")
            self._local.con = con
            with self._conn_lock:
                self._all_connections.append(con)
        return con

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """A write transaction, taken up front (IMMEDIATE) so read-modify-write cannot race."""
        con = self._con()
        con.execute("BEGIN IMMEDIATE")
        try:
            yield con
        except BaseException:
            con.execute("ROLLBACK")
            raise
        con.execute("COMMIT")

    def close(self) -> None:
        with self._conn_lock:
            for con in self._all_connections:
                try:
                    con.close()
                except sqlite3.Error:
                    pass
            self._all_connections.clear()
        self._local = threading.local()
        self.release_owner_lock()
        self._closed = True

    def __enter__(self) -> "JobStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ ownership
    def acquire_owner_lock(self) -> None:
        """Claim the right to execute jobs from this database (one server process at a time).

        Two servers on one database would each "recover" the other's running jobs and run them
        twice. The lock is an flock on ``<db>.lock``; the kernel drops it when the process dies,
        so a crashed server never leaves a stale lock behind. Raises Busy if another live process
        holds it."""
        if self._owner_fd is not None:
            return
        lock_path = str(self.db_path) + ".lock"
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            finally:
                os.close(fd)
            raise Busy(f"another lorafx server (pid {holder}) is already running jobs from "
                       f"{self.db_path}", db=str(self.db_path)) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._owner_fd = fd

    def release_owner_lock(self) -> None:
        if self._owner_fd is not None:
            try:
                fcntl.flock(self._owner_fd, fcntl.LOCK_UN)
            finally:
                os.close(self._owner_fd)
                self._owner_fd = None

    # ------------------------------------------------------------------ shots
    def put_shot(self, name: str, *, settings: dict | None = None, frame_first: int | None = None,
                 frame_last: int | None = None, paths: dict | None = None) -> Shot:
        """Create or update a shot. Fields left as None keep their stored value on update."""
        if not isinstance(name, str) or not name.strip():
            raise InvalidInput("shot name must be a non-empty string")
        now = time.time()
        with self._tx() as con:
            row = con.execute("SELECT * FROM shots WHERE name=?", (name,)).fetchone()
            cur = _shot_from_row(row) if row else None
            new_settings = settings if settings is not None else (cur.settings if cur else {})
            new_paths = paths if paths is not None else (cur.paths if cur else {})
            first = frame_first if frame_first is not None else (cur.frame_first if cur else None)
            last = frame_last if frame_last is not None else (cur.frame_last if cur else None)
            if first is not None and last is not None and int(first) > int(last):
                raise InvalidInput(f"shot {name!r}: frame range {first}-{last} is reversed")
            con.execute(
                "INSERT INTO shots(name, created, updated, settings, frame_first, frame_last, paths)"
                " VALUES(?,?,?,?,?,?,?) ON CONFLICT(name) DO UPDATE SET updated=excluded.updated,"
                " settings=excluded.settings, frame_first=excluded.frame_first,"
                " frame_last=excluded.frame_last, paths=excluded.paths",
                (name, now, now, _dumps(new_settings, "shot settings"), first, last,
                 _dumps(new_paths, "shot paths")))
            row = con.execute("SELECT * FROM shots WHERE name=?", (name,)).fetchone()
        return _shot_from_row(row)

    def get_shot(self, name: str) -> Shot:
        row = self._con().execute("SELECT * FROM shots WHERE name=?", (name,)).fetchone()
        if row is None:
            raise NotFound(f"unknown shot {name!r}", shot=name)
        return _shot_from_row(row)

    def list_shots(self) -> list[Shot]:
        rows = self._con().execute("SELECT * FROM shots ORDER BY name").fetchall()
        return [_shot_from_row(r) for r in rows]

    def delete_shot(self, name: str) -> bool:
        """Forget a shot record (its jobs stay, as history). Returns whether it existed."""
        with self._tx() as con:
            return con.execute("DELETE FROM shots WHERE name=?", (name,)).rowcount > 0

    # ------------------------------------------------------------------ jobs: reads
    def get_job(self, job_id: str) -> Job:
        row = self._con().execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
        if row is None:
            raise NotFound(f"unknown job {job_id!r}", job_id=job_id)
        return _job_from_row(row)

    def list_jobs(self, *, state: str | None = None, client: str | None = None,
                  shot: str | None = None, kind: str | None = None,
                  limit: int | None = None) -> list[Job]:
        """Jobs in submission order. With ``limit``, the most recent ``limit`` matches."""
        where, args = [], []
        for col, val in (("state", state), ("client", client), ("shot", shot), ("kind", kind)):
            if val is not None:
                where.append(f"{col}=?")
                args.append(val)
        sql = "SELECT * FROM jobs" + (" WHERE " + " AND ".join(where) if where else "")
        if limit is not None:
            sql = f"SELECT * FROM ({sql} ORDER BY seq DESC LIMIT ?) ORDER BY seq"
            args.append(int(limit))
        else:
            sql += " ORDER BY seq"
        return [_job_from_row(r) for r in self._con().execute(sql, args).fetchall()]

    def queued_jobs(self) -> list[Job]:
        return self.list_jobs(state="queued")

    def count_by_state(self) -> dict[tuple[str, str], int]:
        """{(kind, state): count} for every combination present."""
        rows = self._con().execute(
            "SELECT kind, state, COUNT(*) AS n FROM jobs GROUP BY kind, state").fetchall()
        return {(r["kind"], r["state"]): r["n"] for r in rows}

    # ------------------------------------------------------------------ jobs: transitions
    def add_job(self, kind: str, shot: str, client: str, params: dict | None = None) -> Job:
        """Insert a queued job; committed (and fsynced) when this returns."""
        if kind not in JOB_KINDS:
            raise InvalidInput(f"unknown job kind {kind!r}; expected one of {', '.join(JOB_KINDS)}")
        if not isinstance(shot, str) or not shot:
            raise InvalidInput("a job needs a shot name")
        if not isinstance(client, str) or not client:
            raise InvalidInput("a job needs a client id")
        params = {} if params is None else params
        if not isinstance(params, dict):
            raise InvalidInput("job params must be a dict")
        params_json = _dumps(params, "job params")
        job_id = uuid.uuid4().hex
        now = time.time()
        with self._tx() as con:
            con.execute("INSERT INTO jobs(id, kind, shot, client, params, state, created, updated)"
                        " VALUES(?,?,?,?,?,'queued',?,?)",
                        (job_id, kind, shot, client, params_json, now, now))
        return self.get_job(job_id)

    def mark_running(self, job_id: str) -> Job | None:
        """queued -> running, counting an attempt. None if the job was no longer queued (a
        cancel won the race)."""
        now = time.time()
        with self._tx() as con:
            n = con.execute("UPDATE jobs SET state='running', started=?, updated=?,"
                            " attempts=attempts+1, error_code=NULL, error_message=NULL,"
                            " error_details=NULL WHERE id=? AND state='queued'",
                            (now, now, job_id)).rowcount
        return self.get_job(job_id) if n else None

    def update_progress(self, job_id: str, *, stage: str | None, step: int | None,
                        total: int | None, loss: float | None = None,
                        message: str | None = None, eta_s: float | None = None) -> None:
        if loss is not None and not math.isfinite(loss):
            loss = None  # SQLite has no NaN; the live event still carries it
        with self._tx() as con:
            con.execute("UPDATE jobs SET stage=?, step=?, total=?, loss=?, message=?, eta_s=?,"
                        " updated=? WHERE id=? AND state='running'",
                        (stage, step, total, loss, message, eta_s, time.time(), job_id))

    def record_checkpoint(self, job_id: str, path: str, step: int) -> None:
        """Never throttled: the resume point is what makes a crash cheap."""
        with self._tx() as con:
            n = con.execute("UPDATE jobs SET checkpoint_path=?, checkpoint_step=?, updated=?"
                            " WHERE id=? AND state='running'",
                            (str(path), int(step), time.time(), job_id)).rowcount
        if not n:
            raise InvalidInput(f"job {job_id} is not running; cannot record a checkpoint")

    def finish(self, job_id: str, state: str, *, result: dict | None = None,
               error: dict | None = None) -> Job:
        """running -> done | failed | cancelled. ``error`` is a ``LorafxError.to_dict()``."""
        if state not in TERMINAL_STATES:
            raise ValueError(f"finish() needs a terminal state, got {state!r}")
        result_json = None if result is None else _dumps(result, "job result")
        err = error or {}
        now = time.time()
        with self._tx() as con:
            n = con.execute(
                "UPDATE jobs SET state=?, finished=?, updated=?, result=?, error_code=?,"
                " error_message=?, error_details=?, eta_s=NULL WHERE id=? AND state='running'",
                (state, now, now, result_json, err.get("code"), err.get("message"),
                 _dumps(err.get("details") or {}, "error details") if error else None,
                 job_id)).rowcount
        if not n:
            raise InvalidInput(f"job {job_id} is not running; cannot finish it as {state}")
        return self.get_job(job_id)

    def cancel_queued(self, job_id: str) -> Job | None:
        """queued -> cancelled at once. None if the job was not queued."""
        now = time.time()
        with self._tx() as con:
            n = con.execute("UPDATE jobs SET state='cancelled', cancel_requested=1, finished=?,"
                            " updated=?, error_code='cancelled', error_message=?"
                            " WHERE id=? AND state='queued'",
                            (now, now, "cancelled before it started", job_id)).rowcount
        return self.get_job(job_id) if n else None

    def request_cancel(self, job_id: str) -> Job | None:
        """Persist a cancel request on a running job, so a crash before the runner notices does
        not resurrect it. None if the job was not running."""
        with self._tx() as con:
            n = con.execute("UPDATE jobs SET cancel_requested=1, updated=?"
                            " WHERE id=? AND state='running'", (time.time(), job_id)).rowcount
        return self.get_job(job_id) if n else None

    def requeue(self, job_id: str, *, refund_attempt: bool) -> Job | None:
        """running -> queued, keeping the checkpoint. ``refund_attempt`` for interruptions that
        were not the job's fault (a graceful shutdown), so they do not count towards
        max_attempts."""
        with self._tx() as con:
            n = con.execute("UPDATE jobs SET state='queued', updated=?, eta_s=NULL,"
                            " attempts=MAX(0, attempts-?) WHERE id=? AND state='running'",
                            (time.time(), 1 if refund_attempt else 0, job_id)).rowcount
        return self.get_job(job_id) if n else None

    def recover(self, max_attempts: int = DEFAULT_MAX_ATTEMPTS) -> RecoveryReport:
        """Run once at startup, before any worker: settle jobs a crash left ``running``.

        - cancel was requested before the crash -> cancelled;
        - it has been started ``max_attempts`` times -> failed (code ``internal``), so a job
          that kills the server does not do so forever;
        - otherwise -> queued again, keeping its checkpoint so the runner resumes from it.

        Takes the owner lock first: "recovering" the jobs of a live server would run them twice.
        """
        self.acquire_owner_lock()
        report = RecoveryReport()
        now = time.time()
        with self._tx() as con:
            rows = con.execute("SELECT id, attempts, cancel_requested, checkpoint_step FROM jobs"
                               " WHERE state='running' ORDER BY seq").fetchall()
            for r in rows:
                if r["cancel_requested"]:
                    con.execute("UPDATE jobs SET state='cancelled', finished=?, updated=?,"
                                " error_code='cancelled', error_message=? WHERE id=?",
                                (now, now, "cancelled (the server stopped before the job did)",
                                 r["id"]))
                    report.cancelled.append(r["id"])
                elif r["attempts"] >= max_attempts:
                    msg = (f"the server stopped unexpectedly while running this job "
                           f"{r['attempts']} times (limit {max_attempts}); giving up. Check the "
                           f"server log and GPU memory before resubmitting.")
                    con.execute("UPDATE jobs SET state='failed', finished=?, updated=?,"
                                " error_code='internal', error_message=?, error_details=?"
                                " WHERE id=?",
                                (now, now, msg, _dumps({"attempts": r["attempts"]}, "details"),
                                 r["id"]))
                    report.failed.append(r["id"])
                else:
                    con.execute("UPDATE jobs SET state='queued', updated=?, eta_s=NULL,"
                                " message=? WHERE id=?",
                                (now, "requeued after a server crash"
                                 + (f"; resumes from step {r['checkpoint_step']}"
                                    if r["checkpoint_step"] is not None else ""), r["id"]))
                    report.requeued.append(r["id"])
        for name in ("requeued", "failed", "cancelled"):
            ids = getattr(report, name)
            if ids:
                log.warning("recovery: %d job(s) %s after a crash: %s", len(ids), name,
                            ", ".join(ids))
        return report
