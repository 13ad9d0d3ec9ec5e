"""The DuckDB registry: runs, artifacts, lineage, set-aside counts, selections, results.

DuckDB lets one process hold a database file at a time, and a second process cannot even
open it. The registry therefore never keeps a connection: each call (or each ``batch()`` of
calls, e.g. everything one stage records) opens the file, writes in one transaction and
closes it, retrying while another process holds the lock. Concurrent flow runs then
interleave their writes instead of failing.
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import threading
import time
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

import duckdb
import polars as pl

from undercurve.io import file_sha256

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id VARCHAR PRIMARY KEY, flow VARCHAR, run_name VARCHAR, status VARCHAR,
    started_at TIMESTAMPTZ, finished_at TIMESTAMPTZ, config_json VARCHAR, config_hash VARCHAR,
    code_version VARCHAR, prefect_flow_run_id VARCHAR, summary_json VARCHAR);
CREATE TABLE IF NOT EXISTS artifacts (
    artifact_id VARCHAR PRIMARY KEY, run_id VARCHAR, stage VARCHAR, kind VARCHAR, path VARCHAR,
    sha256 VARCHAR, rows BIGINT, created_at TIMESTAMPTZ, meta_json VARCHAR);
-- run owner and liveness (added after the first release: ALTER for older files)
ALTER TABLE runs ADD COLUMN IF NOT EXISTS pid BIGINT;
ALTER TABLE runs ADD COLUMN IF NOT EXISTS host VARCHAR;
ALTER TABLE runs ADD COLUMN IF NOT EXISTS proc_started DOUBLE;
ALTER TABLE runs ADD COLUMN IF NOT EXISTS heartbeat_at TIMESTAMPTZ;
ALTER TABLE runs ADD COLUMN IF NOT EXISTS reason VARCHAR;
CREATE TABLE IF NOT EXISTS lineage (child_id VARCHAR, parent_id VARCHAR);
CREATE TABLE IF NOT EXISTS set_aside (
    run_id VARCHAR, stage VARCHAR, reason VARCHAR, n BIGINT);
CREATE TABLE IF NOT EXISTS selections (
    run_id VARCHAR, strategy VARCHAR, rank BIGINT, sample_id VARCHAR, score DOUBLE);
CREATE TABLE IF NOT EXISTS shard_runs (
    run_id VARCHAR, stage VARCHAR, shard BIGINT, worker VARCHAR, skipped BOOLEAN, seconds DOUBLE,
    finished_at TIMESTAMPTZ, note VARCHAR);
CREATE TABLE IF NOT EXISTS contamination (
    run_id VARCHAR, benchmark VARCHAR, method VARCHAR, n BIGINT);
CREATE TABLE IF NOT EXISTS checkpoints (
    run_id VARCHAR, strategy VARCHAR, checkpoint VARCHAR, step BIGINT, val_loss DOUBLE, path VARCHAR);
CREATE TABLE IF NOT EXISTS eval_results (
    run_id VARCHAR, model VARCHAR, strategy VARCHAR, checkpoint VARCHAR, checkpoint_rank BIGINT,
    benchmark VARCHAR, pass1_mean DOUBLE, pass1_std DOUBLE, n_repeats BIGINT);
"""


def _now() -> datetime:
    return datetime.now(timezone.utc)


def owner() -> tuple[int, str, float | None]:
    """(pid, host, process start time) of this process: who a RUNNING run belongs to."""
    import psutil

    pid = os.getpid()
    return pid, socket.gethostname(), psutil.Process(pid).create_time()


def process_alive(pid: int, started: float | None) -> bool:
    """Is process ``pid`` alive and the same process (not a reused pid)?"""
    import psutil

    try:
        p = psutil.Process(int(pid))
        return p.status() != psutil.STATUS_ZOMBIE and (started is None or abs(p.create_time() - started) < 1.0)
    except psutil.NoSuchProcess:
        return False


def code_version() -> str:
    """git commit (+dirty) of the checkout, else the package version."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True,
                             text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        from importlib.metadata import version

        return "undercurve-" + version("undercurve")


# DuckDB also refuses two simultaneous handles on one file inside a process (threads of a
# Prefect flow), so calls are serialised per file here and retried across processes.
_PROCESS_LOCKS: dict[str, threading.Lock] = {}
_PROCESS_LOCKS_GUARD = threading.Lock()


def _process_lock(key: str) -> threading.Lock:
    with _PROCESS_LOCKS_GUARD:
        return _PROCESS_LOCKS.setdefault(key, threading.Lock())


# Files whose schema this process has already brought up to date, by (path, device, inode):
# the CREATE / ALTER script then runs once per process, not once per Registry object.
_SCHEMA_DONE: set[tuple[str, int, int]] = set()


def _file_identity(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return str(path.resolve()), st.st_dev, st.st_ino


# (file, thread) -> the writes of that thread's open batch(), applied together when it ends.
_PENDING: dict[tuple[str, int], list[Callable[[duckdb.DuckDBPyConnection], None]]] = {}


class RegistryMissing(FileNotFoundError):
    """The registry file is not there: a read never creates one, a running run never recreates it."""


# A run whose heartbeat is older than this, on another host, is taken as crashed.
STALE_AFTER_S = 600.0
HEARTBEAT_S = 30.0


class Registry:
    def __init__(self, path: str | Path, lock_timeout_s: float = 120.0, create: bool = False):
        """``create``: make the file if it is missing (only when a run starts); otherwise a
        missing file is an error, so a registry deleted mid-run fails the run loudly."""
        self.path = Path(path)
        self._key = str(self.path.resolve())
        self.lock_timeout_s = lock_timeout_s
        if not self.path.exists():
            if not create:
                raise RegistryMissing(f"registry {self.path} does not exist")
            self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() and _file_identity(self.path) in _SCHEMA_DONE:
            return
        with self.connect() as con:
            con.execute(SCHEMA)
        _SCHEMA_DONE.add(_file_identity(self.path))

    @contextmanager
    def batch(self) -> Iterator["Registry"]:
        """Several writes applied together, in one connection and one transaction (all or
        none of them), e.g. a stage's artifacts, lineage and set-aside counts: opening the
        file and its checkpoint on close cost ~30-60 ms each, per call otherwise.

        Writes inside the block are queued (any Registry object on this file, in this thread,
        joins the batch) and the file is opened only when the block ends, so work done inside
        it, such as hashing a large output, never holds the file from other threads and
        processes. Reads inside the block do not see its queued writes."""
        slot = (self._key, threading.get_ident())
        if slot in _PENDING:  # nested: the outer batch applies
            yield self
            return
        ops = _PENDING[slot] = []
        try:
            yield self
        finally:
            del _PENDING[slot]
        if not ops:
            return
        with self.connect() as con:
            con.begin()
            try:
                for op in ops:
                    op(con)
                con.commit()
            except BaseException:
                con.rollback()
                raise

    def _write(self, op: Callable[[duckdb.DuckDBPyConnection], None]) -> None:
        """Apply a write now, or queue it in this thread's open batch() on this file."""
        ops = _PENDING.get((self._key, threading.get_ident()))
        if ops is not None:
            ops.append(op)
            return
        with self.connect() as con:
            op(con)

    @contextmanager
    def connect(self, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        deadline = time.monotonic() + self.lock_timeout_s
        delay = 0.02
        with _process_lock(self._key):
            while True:
                try:
                    con = duckdb.connect(str(self.path), read_only=read_only)
                    break
                except duckdb.IOException as exc:  # another process holds the file
                    if "lock" not in str(exc).lower() or time.monotonic() > deadline:
                        raise
                    time.sleep(delay * (1 + random.random()))
                    delay = min(delay * 2, 1.0)
            try:
                yield con
            finally:
                con.close()

    def _insert(self, table: str, df: pl.DataFrame) -> None:
        if df.height == 0:
            return
        frame = df.to_arrow()

        def insert(con: duckdb.DuckDBPyConnection) -> None:
            con.register("_frame", frame)
            con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM _frame")
            con.unregister("_frame")

        self._write(insert)

    # runs -----------------------------------------------------------------
    def start_run(self, flow: str, run_name: str, config: dict, config_hash: str,
                  prefect_flow_run_id: str | None = None) -> str:
        run_id = uuid.uuid4().hex[:12]
        pid, host, started = owner()
        self._insert("runs", pl.DataFrame([{
            "run_id": run_id, "flow": flow, "run_name": run_name, "status": "RUNNING",
            "started_at": _now(), "finished_at": None, "config_json": json.dumps(config, default=str),
            "config_hash": config_hash, "code_version": code_version(),
            "prefect_flow_run_id": prefect_flow_run_id, "summary_json": None,
            "pid": pid, "host": host, "proc_started": started, "heartbeat_at": _now(), "reason": None}]))
        return run_id

    def finish_run(self, run_id: str, status: str, summary: dict | None = None, reason: str | None = None) -> None:
        """Final state: COMPLETED, FAILED or CANCELLED (with a one-line reason), or CRASHED."""
        params = [status, _now(), None if summary is None else json.dumps(summary, default=str), reason, run_id]
        self._write(lambda con: con.execute(
            "UPDATE runs SET status = ?, finished_at = ?, summary_json = coalesce(?, summary_json), reason = ? "
            "WHERE run_id = ?", params))

    def heartbeat(self, run_id: str) -> None:
        params = [_now(), run_id]
        self._write(lambda con: con.execute(
            "UPDATE runs SET heartbeat_at = ? WHERE run_id = ? AND status = 'RUNNING'", params))

    def reap_crashed(self, stale_after_s: float = STALE_AFTER_S) -> list[str]:
        """Mark CRASHED every RUNNING run whose owner is gone: its process on this host no
        longer exists, or (any host) its heartbeat stopped more than ``stale_after_s`` ago."""
        with self.connect() as con:
            running = pl.from_arrow(con.sql(
                "SELECT run_id, pid, host, proc_started, heartbeat_at FROM runs WHERE status = 'RUNNING'").to_arrow_table())
        me = socket.gethostname()
        crashed = []
        for r in running.iter_rows(named=True):
            beat = r["heartbeat_at"]
            if r["host"] == me and r["pid"] is not None and not process_alive(r["pid"], r["proc_started"]):
                crashed.append((r["run_id"], f"owner process {r['pid']} on {me} is gone (killed or crashed)"))
            elif beat is not None and (_now() - beat).total_seconds() > stale_after_s:
                crashed.append((r["run_id"], f"no heartbeat since {beat:%Y-%m-%d %H:%M:%S} UTC"))
        for run_id, reason in crashed:
            params = [_now(), reason, run_id]
            self._write(lambda con, params=params: con.execute(
                "UPDATE runs SET status = 'CRASHED', finished_at = ?, reason = ? WHERE run_id = ? AND status = 'RUNNING'",
                params))
        return [c[0] for c in crashed]

    # artifacts ------------------------------------------------------------
    def add_artifact(self, run_id: str, stage: str, kind: str, path: str | Path, rows: int | None,
                     parents: list[str] = (), meta: dict | None = None) -> str:
        """Record a file (content-hashed) and its lineage; returns the artifact id."""
        path = Path(path)
        artifact_id = uuid.uuid4().hex[:12]
        self._insert("artifacts", pl.DataFrame([{
            "artifact_id": artifact_id, "run_id": run_id, "stage": stage, "kind": kind,
            "path": str(path.resolve()), "sha256": file_sha256(path) if path.is_file() else None,
            "rows": rows, "created_at": _now(), "meta_json": json.dumps(meta or {}, default=str)}]))
        self._insert("lineage", pl.DataFrame({"child_id": [artifact_id] * len(parents), "parent_id": list(parents)},
                                             schema={"child_id": pl.Utf8, "parent_id": pl.Utf8}))
        return artifact_id

    def add_set_aside(self, run_id: str, stage: str, set_aside: pl.DataFrame) -> None:
        counts = set_aside.group_by("reason").len("n").with_columns(
            pl.lit(run_id).alias("run_id"), pl.lit(stage).alias("stage"))
        self._insert("set_aside", counts)

    def add_selection(self, run_id: str, selection: pl.DataFrame) -> None:
        self._insert("selections", selection.select(
            pl.lit(run_id).alias("run_id"), "strategy", "rank", pl.col("id").alias("sample_id"), "score"))

    def add_rows(self, table: str, run_id: str, df: pl.DataFrame) -> None:
        """Insert a frame into ``checkpoints``, ``eval_results``, ``contamination`` or ``shard_runs``."""
        if table not in ("checkpoints", "eval_results", "contamination", "shard_runs"):
            raise ValueError(table)
        self._insert(table, df.with_columns(pl.lit(run_id).alias("run_id")))

    # queries --------------------------------------------------------------
    def query(self, sql: str, params: list | None = None) -> pl.DataFrame:
        # not read_only: DuckDB refuses a read-only and a read-write handle in one process.
        # Inside a batch() this reads what is committed, not the batch's queued writes.
        with self.connect() as con:
            return pl.from_arrow(con.sql(sql, params=params).to_arrow_table())
