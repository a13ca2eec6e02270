"""The scan store: one SQLite file holding every checkpoint's result, written one checkpoint per transaction.

A result is keyed by the checkpoint's content fingerprint and the analysis options (with the htmp
version), so moving a zoo does not redo it and changing an option does. Only the scanning process
writes, and each checkpoint's row and all its layer rows are committed together: a scan killed at
any moment leaves whole checkpoints or nothing, never half of one.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from htmp_cli import __version__
from htmp_cli.errors import HtmpError
from htmp_cli.options import AnalysisOptions

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
"""


def options_key(options: AnalysisOptions) -> str:
    text = json.dumps({"options": options.to_dict(), "htmp_version": __version__}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class StoredResult:
    """One checkpoint's outcome as stored: the full JSON report when it succeeded, the error when not."""

    fingerprint: str
    path: str
    status: str
    error: str | None
    n_layers: int
    seconds: float
    report: dict[str, Any] | None  # htmp.report/1, layers included


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

    def statuses(self, key: str) -> dict[str, str]:
        """fingerprint -> status of every stored result under one options key."""
        return dict(self._db.execute("SELECT fingerprint, status FROM results WHERE options_key = ?", (key,)))

    def save(self, fingerprint: str, key: str, path: str, outcome: dict[str, Any]) -> None:
        """Store one checkpoint's outcome, replacing any earlier one, in a single transaction."""
        report = outcome.get("report")
        layers = report["layers"] if report is not None else []
        rest = {k: v for k, v in report.items() if k != "layers"} if report is not None else None
        with self._transaction():
            self._db.execute("DELETE FROM layers WHERE fingerprint = ? AND options_key = ?", (fingerprint, key))
            self._db.execute("DELETE FROM results WHERE fingerprint = ? AND options_key = ?", (fingerprint, key))
            self._db.execute(
                "INSERT INTO results VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (fingerprint, key, path, outcome["status"], outcome.get("error"), len(layers),
                 json.dumps(rest) if rest is not None else None, float(outcome["seconds"]),
                 time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())))
            self._db.executemany("INSERT INTO layers VALUES (?, ?, ?, ?, ?)",
                                 [(fingerprint, key, k, layer["name"], json.dumps(layer)) for k, layer in enumerate(layers)])

    def load(self, fingerprint: str, key: str) -> StoredResult | None:
        row = self._db.execute("SELECT path, status, error, n_layers, seconds, report FROM results "
                               "WHERE fingerprint = ? AND options_key = ?", (fingerprint, key)).fetchone()
        if row is None:
            return None
        path, status, error, n_layers, seconds, report_text = row
        report = None
        if report_text is not None:
            report = json.loads(report_text)
            report["layers"] = [json.loads(data) for (data,) in self._db.execute(
                "SELECT data FROM layers WHERE fingerprint = ? AND options_key = ? ORDER BY idx", (fingerprint, key))]
        return StoredResult(fingerprint=fingerprint, path=path, status=status, error=error, n_layers=n_layers,
                            seconds=seconds, report=report)

    def counts(self) -> dict[str, int]:
        return {table: self._db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
                for table in ("results", "layers", "analyses")}


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any exception (sqlite3's own context manager
    does not begin a transaction in autocommit mode)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self._db.execute("COMMIT" if exc_type is None else "ROLLBACK")
