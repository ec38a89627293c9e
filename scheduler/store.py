"""The scheduler's persistent state in SQLite: jobs, their processes and their latest metrics.

Every change is committed at once (WAL journal), so a scheduler killed at any point and started again on the
same directory knows every job, every process it launched and what happened to them.
"""

from __future__ import annotations

import math
import sqlite3
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY, name TEXT NOT NULL, algorithm TEXT NOT NULL, spec_yaml TEXT NOT NULL,
    state INTEGER NOT NULL, reason TEXT NOT NULL DEFAULT '', created REAL NOT NULL, started REAL NOT NULL DEFAULT 0,
    finished REAL NOT NULL DEFAULT 0, run_dir TEXT NOT NULL, launcher TEXT NOT NULL, total_steps INTEGER NOT NULL,
    restarts INTEGER NOT NULL DEFAULT 0, num_ps INTEGER NOT NULL, num_workers INTEGER NOT NULL,
    max_restarts INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS nodes (
    job_id TEXT NOT NULL, role TEXT NOT NULL, rank INTEGER NOT NULL, address TEXT NOT NULL DEFAULT '',
    attempt INTEGER NOT NULL DEFAULT 0, state TEXT NOT NULL, pid INTEGER NOT NULL DEFAULT 0,
    host TEXT NOT NULL DEFAULT '', last_heartbeat REAL NOT NULL DEFAULT 0, step INTEGER NOT NULL DEFAULT 0,
    port INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (job_id, role, rank));
CREATE TABLE IF NOT EXISTS metrics (
    job_id TEXT NOT NULL, rank INTEGER NOT NULL, name TEXT NOT NULL, value REAL NOT NULL, step INTEGER NOT NULL,
    PRIMARY KEY (job_id, rank, name));
"""

JOB_FIELDS = ("job_id", "name", "algorithm", "spec_yaml", "state", "reason", "created", "started", "finished",
              "run_dir", "launcher", "total_steps", "restarts", "num_ps", "num_workers", "max_restarts")
NODE_FIELDS = ("job_id", "role", "rank", "address", "attempt", "state", "pid", "host", "last_heartbeat", "step",
               "port")


@dataclass
class JobRow:
    job_id: str
    name: str
    algorithm: str
    spec_yaml: str
    state: int
    reason: str
    created: float
    started: float
    finished: float
    run_dir: str
    launcher: str
    total_steps: int
    restarts: int
    num_ps: int
    num_workers: int
    max_restarts: int


@dataclass
class NodeRow:
    job_id: str
    role: str
    rank: int
    address: str
    attempt: int
    state: str
    pid: int
    host: str
    last_heartbeat: float
    step: int
    port: int

    @property
    def name(self) -> str:
        return f"{self.role}-{self.rank}"


class JobStore:
    """Thread-safe access to the scheduler database at data_dir/scheduler.db."""

    def __init__(self, data_dir: Path) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.path = data_dir / "scheduler.db"
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.RLock()

    def _exec(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """BEGIN ... COMMIT, rolled back when the block raises: a failed write must not leave the connection inside
        a transaction, where every later BEGIN fails ("cannot start a transaction within a transaction")."""
        with self._lock:
            self._db.execute("BEGIN")
            try:
                yield
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def add_job(self, job: JobRow, nodes: list[NodeRow]) -> None:
        with self._transaction():
            self._db.execute(f"INSERT INTO jobs VALUES ({','.join('?' * len(JOB_FIELDS))})",
                             tuple(getattr(job, f) for f in JOB_FIELDS))
            self._db.executemany(f"INSERT INTO nodes VALUES ({','.join('?' * len(NODE_FIELDS))})",
                                 [tuple(getattr(n, f) for f in NODE_FIELDS) for n in nodes])

    def job(self, job_id: str) -> JobRow | None:
        rows = self._exec(f"SELECT {','.join(JOB_FIELDS)} FROM jobs WHERE job_id=?", (job_id,))
        return JobRow(*rows[0]) if rows else None

    def jobs(self, states: tuple[int, ...] | None = None) -> list[JobRow]:
        rows = self._exec(f"SELECT {','.join(JOB_FIELDS)} FROM jobs ORDER BY created")
        jobs = [JobRow(*r) for r in rows]
        return [j for j in jobs if states is None or j.state in states]

    def job_ids(self) -> list[str]:
        return [r[0] for r in self._exec("SELECT job_id FROM jobs")]

    def update_job(self, job_id: str, **fields: Any) -> None:
        sets = ",".join(f"{k}=?" for k in fields)
        self._exec(f"UPDATE jobs SET {sets} WHERE job_id=?", (*fields.values(), job_id))

    def nodes(self, job_id: str) -> list[NodeRow]:
        rows = self._exec(f"SELECT {','.join(NODE_FIELDS)} FROM nodes WHERE job_id=? ORDER BY role, rank", (job_id,))
        return [NodeRow(*r) for r in rows]

    def node(self, job_id: str, role: str, rank: int) -> NodeRow | None:
        rows = self._exec(f"SELECT {','.join(NODE_FIELDS)} FROM nodes WHERE job_id=? AND role=? AND rank=?",
                          (job_id, role, rank))
        return NodeRow(*rows[0]) if rows else None

    def update_node(self, job_id: str, role: str, rank: int, **fields: Any) -> None:
        sets = ",".join(f"{k}=?" for k in fields)
        self._exec(f"UPDATE nodes SET {sets} WHERE job_id=? AND role=? AND rank=?",
                   (*fields.values(), job_id, role, rank))

    def put_metrics(self, job_id: str, rank: int, rows: list[tuple[int, str, float]]) -> None:
        """Each metric's latest value; a NaN (a diverged loss) removes the metric's stale value instead, since SQLite
        stores NaN as NULL (the metrics CSV keeps the NaN)."""
        with self._transaction():
            self._db.executemany("INSERT OR REPLACE INTO metrics VALUES (?,?,?,?,?)",
                                 [(job_id, rank, name, value, step) for step, name, value in rows
                                  if not math.isnan(value)])
            self._db.executemany("DELETE FROM metrics WHERE job_id=? AND rank=? AND name=?",
                                 [(job_id, rank, name) for _, name, value in rows if math.isnan(value)])

    def latest_metrics(self, job_id: str) -> dict[str, float]:
        """Mean over workers of each metric's latest value."""
        rows = self._exec("SELECT name, AVG(value) FROM metrics WHERE job_id=? GROUP BY name", (job_id,))
        return {name: value for name, value in rows}

    def close(self) -> None:
        with self._lock:
            self._db.close()
