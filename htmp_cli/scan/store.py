"""The scan store: one SQLite file holding every checkpoint's result, written one checkpoint per transaction.

A result is keyed by the checkpoint's content fingerprint and the analysis options (with the htmp
version), so moving a zoo does not redo it and changing an option does. Only scanning processes
write (never their workers), and each checkpoint's row and all its layer rows are committed together:
a scan killed at any moment leaves whole checkpoints or nothing, never half of one.

Several scans may share a store. A scan claims each checkpoint just before analysing it (the claims
table) and drops the claim in the transaction that stores the result; another scan skips what is
claimed and later waits for it. A claim whose scan is gone is stale and is taken over: on this
host when its process no longer runs (so a scan killed with SIGKILL is resumed at once), from
another host when its heartbeat is older than REMOTE_STALE_SECONDS.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from htmp_cli import __version__
from htmp_cli.errors import HtmpError
from htmp_cli.options import AnalysisOptions
from htmp_cli.results import Report, report_to_dict
from htmp_cli.scan.worker import Outcome

SCHEMA_VERSION = "1"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS analyses (
    options_key TEXT PRIMARY KEY,
    options TEXT NOT NULL,
    htmp_version TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS results (
    fingerprint TEXT NOT NULL,
    options_key TEXT NOT NULL REFERENCES analyses(options_key),
    path TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('success', 'failed')),
    error TEXT,
    n_layers INTEGER NOT NULL,
    report TEXT,
    seconds REAL NOT NULL,
    finished_at TEXT NOT NULL,
    PRIMARY KEY (fingerprint, options_key)
);
CREATE TABLE IF NOT EXISTS layers (
    fingerprint TEXT NOT NULL,
    options_key TEXT NOT NULL,
    idx INTEGER NOT NULL,
    name TEXT NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (fingerprint, options_key, idx),
    FOREIGN KEY (fingerprint, options_key) REFERENCES results(fingerprint, options_key)
);
CREATE TABLE IF NOT EXISTS fingerprints (
    path TEXT PRIMARY KEY,
    signature TEXT NOT NULL,
    fingerprint TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS claims (
    fingerprint TEXT NOT NULL,
    options_key TEXT NOT NULL,
    token TEXT NOT NULL,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    started TEXT,
    claimed_at REAL NOT NULL,
    heartbeat REAL NOT NULL,
    PRIMARY KEY (fingerprint, options_key)
);
"""
# The claims table is new in a store of schema 1; an older htmp ignores it (and claims nothing).

HEARTBEAT_SECONDS = 20.0
# A claim from another host is stale when its scan has not renewed it for this long.
REMOTE_STALE_SECONDS = 6 * HEARTBEAT_SECONDS

# A stored result as it was when a scan looked: a new row written by any scan differs from it.
ResultVersion = tuple[str, str, float]
ClaimState = Literal["claimed", "done", "held"]


def options_key(options: AnalysisOptions) -> str:
    text = json.dumps({"options": options.to_dict(), "htmp_version": __version__}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class StoredResult:
    """One checkpoint's outcome as stored: its report when it succeeded, the error when not."""

    fingerprint: str
    path: str
    status: str
    error: str | None
    n_layers: int
    seconds: float
    report: Report | None


def _process_stat(pid: int) -> tuple[str, str] | None:
    """(state, start time in clock ticks since boot) of a process, from Linux's /proc; None elsewhere."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()  # the command name, in parentheses, may hold spaces
    return fields[0], fields[19]


@dataclass(frozen=True)
class ScanOwner:
    """One scan, as its claims name it: the token tells its claims apart, the rest whether it still runs."""

    token: str
    host: str
    pid: int
    started: str | None  # the process's start time: a pid reused by another process is not the scan

    @classmethod
    def this_scan(cls) -> "ScanOwner":
        stat = _process_stat(os.getpid())
        return cls(token=uuid.uuid4().hex, host=socket.gethostname(), pid=os.getpid(),
                   started=stat[1] if stat is not None else None)


def _claim_alive(host: str, pid: int, started: str | None, heartbeat: float) -> bool:
    if host != socket.gethostname():  # its process cannot be seen from here
        return time.time() - heartbeat < REMOTE_STALE_SECONDS
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it runs
        pass
    stat = _process_stat(pid)
    if stat is None:
        return True
    state, start = stat
    # A zombie has ended (killed, its parent has not waited for it yet); another start time is another process.
    return state != "Z" and (started is None or start == started)


def _holder(host: str, pid: int) -> str:
    return f"pid {pid}" if host == socket.gethostname() else f"pid {pid} on {host}"


class ScanStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._db = sqlite3.connect(path, timeout=60, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            # FULL: a commit survives the machine losing power, not only the process being killed.
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            with self._transaction():
                for statement in filter(str.strip, _SCHEMA.split(";")):
                    self._db.execute(statement)
                row = self._db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
                if row is None:
                    self._db.execute("INSERT INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
                elif row[0] != SCHEMA_VERSION:
                    raise HtmpError(f"--db {path}: written by another htmp (store schema {row[0]}, this one reads {SCHEMA_VERSION})")
        except sqlite3.DatabaseError as err:
            raise HtmpError(f"--db {path}: not a usable htmp scan store ({err})") from None

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "ScanStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _transaction(self):  # type: ignore[no-untyped-def]
        return _Transaction(self._db)

    def register_options(self, options: AnalysisOptions) -> str:
        key = options_key(options)
        with self._transaction():
            self._db.execute("INSERT OR IGNORE INTO analyses VALUES (?, ?, ?)",
                             (key, json.dumps(options.to_dict(), sort_keys=True, default=str), __version__))
        return key

    def cached_fingerprint(self, path: str, signature: str) -> str | None:
        row = self._db.execute("SELECT fingerprint FROM fingerprints WHERE path = ? AND signature = ?",
                               (path, signature)).fetchone()
        return row[0] if row else None

    def remember_fingerprints(self, entries: list[tuple[str, str, str]]) -> None:
        with self._transaction():
            self._db.executemany("INSERT OR REPLACE INTO fingerprints VALUES (?, ?, ?)", entries)

    def versions(self, key: str) -> dict[str, ResultVersion]:
        """fingerprint -> version of every stored result under one options key."""
        return {fp: (status, finished, seconds) for fp, status, finished, seconds in self._db.execute(
            "SELECT fingerprint, status, finished_at, seconds FROM results WHERE options_key = ?", (key,))}

    def _version(self, fingerprint: str, key: str) -> ResultVersion | None:
        row = self._db.execute("SELECT status, finished_at, seconds FROM results WHERE fingerprint = ? AND options_key = ?",
                               (fingerprint, key)).fetchone()
        return tuple(row) if row is not None else None  # type: ignore[return-value]

    def _state(self, fingerprint: str, key: str, owner: ScanOwner, seen: ResultVersion | None) -> tuple[ClaimState | None, str | None]:
        """("done", None) when another scan stored a result since `seen`; ("held", who) while another
        live scan claims it; (None, None) when it is free or ours."""
        if self._version(fingerprint, key) != seen:
            return "done", None
        row = self._db.execute("SELECT token, host, pid, started, heartbeat FROM claims WHERE fingerprint = ? AND options_key = ?",
                               (fingerprint, key)).fetchone()
        if row is not None and row[0] != owner.token and _claim_alive(*row[1:]):
            return "held", _holder(row[1], row[2])
        return None, None

    def claim(self, fingerprint: str, key: str, owner: ScanOwner, seen: ResultVersion | None) -> tuple[ClaimState, str | None]:
        """Claim a checkpoint for `owner` unless another scan holds it or has stored it since `seen`
        (the result the scan found when it planned); a stale claim is taken over.

        Returns ("claimed", None), ("done", None) or ("held", a description of the other scan).
        """
        state, holder = self._state(fingerprint, key, owner, seen)
        if state is not None:  # decided without taking the write lock (a waiting scan polls this)
            return state, holder
        with self._transaction():
            state, holder = self._state(fingerprint, key, owner, seen)
            if state is not None:
                return state, holder
            now = time.time()
            self._db.execute("INSERT OR REPLACE INTO claims VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                             (fingerprint, key, owner.token, owner.host, owner.pid, owner.started, now, now))
        return "claimed", None

    def release(self, owner: ScanOwner) -> None:
        """Drop the claims of `owner` (a scan ending, finished or interrupted) and any stale ones."""
        with self._transaction():
            self._db.execute("DELETE FROM claims WHERE token = ?", (owner.token,))
            owners = self._db.execute("SELECT token, host, pid, started, MAX(heartbeat) FROM claims GROUP BY token").fetchall()
            self._db.executemany("DELETE FROM claims WHERE token = ?",
                                 [(token,) for token, *rest in owners if not _claim_alive(*rest)])

    def save(self, fingerprint: str, key: str, path: str, outcome: Outcome, owner: ScanOwner | None = None) -> None:
        """Store one checkpoint's outcome, replacing any earlier one, and drop `owner`'s claim on it, in a single transaction.

        The report is stored as its JSON form (htmp.report/3), its layers one row each.
        """
        rest = report_to_dict(outcome.report) if outcome.report is not None else None
        layers = rest.pop("layers") if rest is not None else []
        with self._transaction():
            if owner is not None:
                self._db.execute("DELETE FROM claims WHERE fingerprint = ? AND options_key = ? AND token = ?",
                                 (fingerprint, key, owner.token))
            self._db.execute("DELETE FROM layers WHERE fingerprint = ? AND options_key = ?", (fingerprint, key))
            self._db.execute("DELETE FROM results WHERE fingerprint = ? AND options_key = ?", (fingerprint, key))
            self._db.execute(
                "INSERT INTO results VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (fingerprint, key, path, outcome.status, outcome.error, len(layers),
                 json.dumps(rest) if rest is not None else None, float(outcome.seconds),
                 time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())))
            self._db.executemany("INSERT INTO layers VALUES (?, ?, ?, ?, ?)",
                                 [(fingerprint, key, k, layer["name"], json.dumps(layer)) for k, layer in enumerate(layers)])

    def load(self, fingerprint: str, key: str) -> StoredResult | None:
        """The stored result, its report read as any saved one is (htmp.report/1 too); None when there is none."""
        row = self._db.execute("SELECT path, status, error, n_layers, seconds, report FROM results "
                               "WHERE fingerprint = ? AND options_key = ?", (fingerprint, key)).fetchone()
        if row is None:
            return None
        path, status, error, n_layers, seconds, report_text = row
        report = None
        if report_text is not None:
            data = json.loads(report_text)
            data["layers"] = [json.loads(layer) for (layer,) in self._db.execute(
                "SELECT data FROM layers WHERE fingerprint = ? AND options_key = ? ORDER BY idx", (fingerprint, key))]
            try:
                report = Report.from_dict(data)
            except HtmpError as err:
                raise HtmpError(f"--db {self.path}: the stored result of {path}: {err}") from None
        return StoredResult(fingerprint=fingerprint, path=path, status=status, error=error, n_layers=n_layers,
                            seconds=seconds, report=report)

    def counts(self) -> dict[str, int]:
        return {table: self._db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
                for table in ("results", "layers", "analyses")}


class ClaimHeartbeat:
    """While a scan runs, renew its claims every HEARTBEAT_SECONDS from a thread with its own connection.

    A scan on this host judges a claim by its process; one on another host (a store on a shared file
    system) sees only this heartbeat, so a long analysis is not taken for an abandoned one.
    """

    def __init__(self, path: Path, owner: ScanOwner, interval: float = HEARTBEAT_SECONDS) -> None:
        self._path = path
        self._owner = owner
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="htmp-claim-heartbeat", daemon=True)

    def __enter__(self) -> "ClaimHeartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=1)

    def _beat(self) -> None:
        db = sqlite3.connect(self._path, timeout=60, isolation_level=None)
        try:
            while not self._stop.wait(self._interval):
                try:
                    db.execute("UPDATE claims SET heartbeat = ? WHERE token = ?", (time.time(), self._owner.token))
                except sqlite3.Error:  # busy beyond the timeout, or the disk is gone: the next beat tries again
                    pass
        finally:
            db.close()


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any exception (sqlite3's own context manager
    does not begin a transaction in autocommit mode)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self._db.execute("COMMIT" if exc_type is None else "ROLLBACK")
