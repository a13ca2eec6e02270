"""A scan from start to end: fingerprint the checkpoints, analyse what the store lacks, read all back."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Protocol

from htmp_cli.options import AnalysisOptions
from htmp_cli.scan.discovery import ScanUnit, fingerprint_files
from htmp_cli.scan.executors import Executor
from htmp_cli.scan.store import ScanStore, StoredResult


class ScanListener(Protocol):
    def fingerprinting(self, total: int) -> None: ...
    def start(self, names: dict[int, str], reused: int) -> None: ...
    def event(self, index: int, kind: str, value: int) -> None: ...
    def checkpoint_done(self, index: int, outcome: dict[str, Any]) -> None: ...


@dataclass(frozen=True)
class ScanRow:
    unit: ScanUnit
    fingerprint: str
    result: StoredResult
    analysed_now: bool


@dataclass(frozen=True)
class ScanResult:
    rows: tuple[ScanRow, ...]
    options_key: str
    n_analysed: int
    n_reused: int
    seconds: float
    executor: str

    @property
    def failed(self) -> tuple[ScanRow, ...]:
        return tuple(row for row in self.rows if row.result.status == "failed")


def fingerprints(units: tuple[ScanUnit, ...], store: ScanStore, full_hash: bool) -> list[str]:
    """Each unit's content fingerprint, taken from the store while its files' sizes and times are unchanged."""
    result, fresh = [], []
    for unit in units:
        stats = []
        for f in unit.files:
            try:
                st = f.stat()
                stats.append([str(f.resolve()), st.st_size, st.st_mtime_ns])
            except OSError:
                stats.append([str(f), None, None])
        signature = json.dumps([full_hash, stats])
        cached = store.cached_fingerprint(str(unit.path.resolve()), signature)
        if cached is None:
            cached = fingerprint_files(unit, full=full_hash)
            fresh.append((str(unit.path.resolve()), signature, cached))
        result.append(cached)
    if fresh:
        store.remember_fingerprints(fresh)
    return result


def run_scan(units: tuple[ScanUnit, ...], options: AnalysisOptions, store: ScanStore, executor: Executor, *,
             force: bool = False, retry_failed: bool = False, full_hash: bool = False,
             listener: ScanListener | None = None) -> ScanResult:
    started = time.perf_counter()
    key = store.register_options(options)
    if listener is not None:
        listener.fingerprinting(len(units))
    prints = fingerprints(units, store, full_hash)
    stored = store.statuses(key)
    tasks: dict[str, int] = {}  # fingerprint -> the unit analysed for it (identical copies: once)
    for index, (unit, fp) in enumerate(zip(units, prints)):
        status = stored.get(fp)
        redo = force or status is None or (retry_failed and status == "failed")
        if redo and fp not in tasks:
            tasks[fp] = index
    if listener is not None:
        listener.start({index: str(units[index].path) for index in tasks.values()}, len(units) - len(tasks))
    analysed: set[str] = set()
    if tasks:
        on_event = listener.event if listener is not None else (lambda *_: None)
        for index, outcome in executor.run([(index, str(units[index].path)) for index in tasks.values()], options, on_event):
            store.save(prints[index], key, str(units[index].path), outcome)
            analysed.add(prints[index])
            if listener is not None:
                listener.checkpoint_done(index, outcome)
    rows = []
    for unit, fp in zip(units, prints):
        result = store.load(fp, key)
        if result is None:  # every fingerprint was found in the store or analysed just now
            raise RuntimeError(f"{unit.path}: the executor returned no result for it")
        rows.append(ScanRow(unit=unit, fingerprint=fp, result=result, analysed_now=fp in analysed))
    return ScanResult(rows=tuple(rows), options_key=key, n_analysed=len(analysed), n_reused=len(units) - sum(r.analysed_now for r in rows),
                      seconds=time.perf_counter() - started, executor=executor.description)
