"""A scan from start to end: fingerprint the checkpoints, analyse what the store lacks, read all back.

Another scan may be working on the same store. Each checkpoint is claimed just before it is
analysed; one claimed by the other scan is left to it, and once this scan has analysed the rest it
waits for those results, or analyses them itself when the other scan ends without them.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Protocol

from htmp_cli.options import AnalysisOptions
from htmp_cli.scan.discovery import ScanUnit, fingerprint_files
from htmp_cli.scan.executors import Executor, Task
from htmp_cli.scan.store import ClaimHeartbeat, ResultVersion, ScanOwner, ScanStore, StoredResult
from htmp_cli.scan.worker import Outcome

# How often a scan waiting for another one looks at the store.
WAIT_POLL_SECONDS = 0.25


class ScanListener(Protocol):
    def fingerprinting(self, total: int) -> None: ...
    def start(self, names: dict[int, str], reused: int) -> None: ...
    def event(self, index: int, kind: str, value: int) -> None: ...
    def checkpoint_done(self, index: int, outcome: Outcome | None) -> None:
        """A checkpoint finished: analysed by this scan (its outcome) or stored by another one (None)."""


@dataclass(frozen=True)
class ScanRow:
    unit: ScanUnit
    fingerprint: str
    result: StoredResult
    analysed_now: bool
    by_another_scan: bool = False  # analysed meanwhile by another scan of the same store


@dataclass(frozen=True)
class ScanResult:
    rows: tuple[ScanRow, ...]
    options_key: str
    n_analysed: int
    n_reused: int
    seconds: float
    executor: str
    n_by_another_scan: int = 0

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
             listener: ScanListener | None = None, notice: Callable[[str], None] | None = None) -> ScanResult:
    """Analyse what the store lacks and read every unit's result back; `notice` gets one-line news
    about another scan of the same store (what this one waits for, what it takes over)."""
    started = time.perf_counter()
    key = store.register_options(options)
    if listener is not None:
        listener.fingerprinting(len(units))
    prints = fingerprints(units, store, full_hash)
    seen = store.versions(key)
    tasks: dict[str, int] = {}  # fingerprint -> the unit analysed for it (identical copies: once)
    for index, (unit, fp) in enumerate(zip(units, prints)):
        status = seen[fp][0] if fp in seen else None
        redo = force or status is None or (retry_failed and status == "failed")
        if redo and fp not in tasks:
            tasks[fp] = index
    if listener is not None:
        listener.start({index: str(units[index].path) for index in tasks.values()}, len(units) - len(tasks))
    owner = ScanOwner.this_scan()
    analysed: set[str] = set()
    elsewhere: set[str] = set()  # stored by another scan while this one ran
    held: dict[str, str] = {}  # claimed by another scan when this one came to it -> which scan

    def stored_elsewhere(fp: str) -> None:
        elsewhere.add(fp)
        if listener is not None:
            listener.checkpoint_done(tasks[fp], None)

    def claimed(fps: Iterable[str]) -> Iterator[Task]:
        for fp in fps:
            state, holder = store.claim(fp, key, owner, seen.get(fp))
            if state == "claimed":
                yield tasks[fp], str(units[tasks[fp]].path)
            elif state == "done":
                stored_elsewhere(fp)
            else:
                held[fp] = holder or "another scan"

    todo = list(tasks)
    with ClaimHeartbeat(store.path, owner):
        try:
            while todo:
                on_event = listener.event if listener is not None else (lambda *_: None)
                outcomes = executor.run(claimed(todo), options, on_event)
                try:
                    for index, outcome in outcomes:
                        store.save(prints[index], key, str(units[index].path), outcome, owner)
                        analysed.add(prints[index])
                        if listener is not None:
                            listener.checkpoint_done(index, outcome)
                finally:
                    # Now, not when garbage is collected: on Ctrl-C this is what stops the workers.
                    outcomes.close()
                todo = _wait_for_others(store, key, owner, seen, held, stored_elsewhere, notice)
        finally:
            store.release(owner)
    rows = []
    for unit, fp in zip(units, prints):
        result = store.load(fp, key)
        if result is None:  # every fingerprint was found in the store or analysed just now
            raise RuntimeError(f"{unit.path}: the executor returned no result for it")
        rows.append(ScanRow(unit=unit, fingerprint=fp, result=result, analysed_now=fp in analysed,
                            by_another_scan=fp in elsewhere and fp not in analysed))
    return ScanResult(rows=tuple(rows), options_key=key, n_analysed=len(analysed),
                      n_reused=len(units) - sum(r.analysed_now or r.by_another_scan for r in rows),
                      seconds=time.perf_counter() - started, executor=executor.description,
                      n_by_another_scan=len(elsewhere - analysed))


def _wait_for_others(store: ScanStore, key: str, owner: ScanOwner, seen: dict[str, ResultVersion],
                     held: dict[str, str], stored_elsewhere: Callable[[str], None],
                     notice: Callable[[str], None] | None) -> list[str]:
    """Wait until every checkpoint in `held` is stored by its scan (removed from `held`), or until
    some are free again (that scan ended without them): those are returned, claimed for this one."""
    if not held:
        return []
    if notice is not None:
        holders = ", ".join(sorted(set(held.values())))
        notice(f"htmp scan: {len(held)} checkpoint{'s are' if len(held) > 1 else ' is'} being analysed by another scan "
               f"of {store.path} ({holders}); waiting for {'their' if len(held) > 1 else 'its'} results")
    while True:
        taken = []
        for fp in list(held):
            state, holder = store.claim(fp, key, owner, seen.get(fp))
            if state == "done":
                del held[fp]
                stored_elsewhere(fp)
            elif state == "claimed":
                del held[fp]
                taken.append(fp)
        if taken or not held:
            if taken and notice is not None:
                notice(f"htmp scan: the other scan stopped before analysing {len(taken)} checkpoint"
                       f"{'s' if len(taken) > 1 else ''}; analysing {'them' if len(taken) > 1 else 'it'} here")
            return taken
        time.sleep(WAIT_POLL_SECONDS)
