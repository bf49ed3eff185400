"""The committed files in ``baselines/``: read and validate them, write a cycle safely.

Formats live in ``formats.py`` (dumps) and ``parse.py`` (parsers); the lock in ``lock.py``;
the one-transaction write in ``transaction.py`` (docs/architecture.md, "Committed files").
This module puts them together:

* :func:`read_state` first finishes or undoes an interrupted write (one line in
  ``CommittedState.notes``), then reads and validates all four files, bounded in size and
  depth, and records the sha256 of each for the compare-before-write;
* :func:`write_cycle` renders the cycle's four files, refuses if any committed file changed
  since the cycle read it, and commits them together, under the lock. Unchanged files are
  not touched, so a cycle that promotes nothing leaves baseline.yaml and routing.yaml
  byte-identical; decisions.log is validated before anything is appended to it.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_selfopt.loop.types import AuditRecord, PhaseBaseline, Route
from pytest_selfopt.store.disk import decode, display, read_file, sha256_of
from pytest_selfopt.store.formats import (
    FilesError,
    dump_baseline,
    dump_history,
    dump_log_lines,
    dump_routing,
)
from pytest_selfopt.store.lock import CycleLock, LockedError, stale_lock
from pytest_selfopt.store.parse import parse_baseline, parse_history, parse_log, parse_routing
from pytest_selfopt.store.transaction import (
    ConcurrentChangeError,
    Step,
    check_unchanged,
    commit,
    pending,
    recover,
)

__all__ = [
    "BASELINE_FILE",
    "COMMITTED_FILES",
    "HISTORY_FILE",
    "LOG_FILE",
    "ROUTING_FILE",
    "CommittedState",
    "FilesError",  # defined in formats.py; imported from here by the plugin and the CLI
    "RoutingTable",
    "UnknownPhaseError",
    "git_commit",
    "load_routing",
    "read_state",
    "repair",
    "write_cycle",
]

BASELINE_FILE = "baseline.yaml"
ROUTING_FILE = "routing.yaml"
HISTORY_FILE = "history.json"
LOG_FILE = "decisions.log"
#: The four committed files, in the order a cycle writes and reports them.
COMMITTED_FILES = (BASELINE_FILE, ROUTING_FILE, HISTORY_FILE, LOG_FILE)
#: How long a reader waits for a live writer to finish its commit (it takes milliseconds).
RECOVERY_WAIT_S = 5.0


# --------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class CommittedState:
    """What ``baselines/`` held when a cycle started; the digests guard the later write.

    ``sha256`` maps each committed file name to its digest (None: absent); ``notes`` holds
    one line per repair made before reading (an interrupted write completed or undone)."""

    baselines: dict[str, PhaseBaseline] = field(default_factory=dict)
    routes: dict[str, Route] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    sha256: Mapping[str, str | None] = field(default_factory=dict)
    log_records: int = 0
    notes: tuple[str, ...] = ()

    @property
    def baseline_sha256(self) -> str | None:
        return self.sha256.get(BASELINE_FILE)


def repair(folder: Path, lock: CycleLock | None = None) -> str | None:
    """Finish or undo an interrupted write, under ``lock`` (held) or a brief lock of our own,
    and break the lock of a process that is gone. Returns one line saying what was done.

    A live writer in the middle of its commit is waited for (briefly), never interrupted."""
    folder = Path(folder)
    if lock is not None and lock.held:
        return recover(folder)
    if not pending(folder) and not stale_lock(folder):
        return None
    deadline = time.monotonic() + RECOVERY_WAIT_S
    while True:
        own = CycleLock(folder)
        try:
            note = own.acquire()
        except LockedError:
            if not pending(folder):
                return None  # the writer finished meanwhile
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
            continue
        try:
            done = recover(folder)
        finally:
            own.release()
        return "; ".join(n for n in (note, done) if n) or None


def _consistent(
    folder: Path,
    baselines: Mapping[str, PhaseBaseline],
    routes: Mapping[str, Route],
    history: Sequence[Mapping[str, Any]],
    present: Mapping[str, bool],
) -> None:
    """Every phase history.json records has a baseline and a route: a cycle never removes
    one, so a missing file or phase means a file was cut short or replaced."""
    recorded: dict[str, int] = {}
    for entry in history:
        for phase in entry.get("phases", {}):
            recorded[phase] = int(entry["cycle"])
    for name, have in ((BASELINE_FILE, baselines), (ROUTING_FILE, routes)):
        path = display(folder / name)
        if recorded and not present[name]:
            raise FilesError(
                f"{path}: missing, though {HISTORY_FILE} records {len(history)} cycle(s); "
                f"restore it with `git checkout -- {path}`, or start over from the suite's "
                "initial spec by deleting baseline.yaml, routing.yaml, history.json and "
                "decisions.log together"
            )
        for phase, cycle in sorted(recorded.items()):
            if phase not in have:
                raise FilesError(
                    f"{path}: phases.{phase}: missing, though {HISTORY_FILE} records it in "
                    f"cycle {cycle} (was the file cut short or edited?); restore it with "
                    f"`git checkout -- {path}`"
                )


def read_state(folder: Path, *, lock: CycleLock | None = None) -> CommittedState:
    """Repair an interrupted write, then read and validate the four committed files.

    A missing folder reads as empty (a fresh clone); an empty, truncated or inconsistent file
    is a :class:`FilesError` naming it. ``lock``: the cycle's own lock, when it holds one."""
    folder = Path(folder)
    note = repair(folder, lock)
    data = {name: read_file(folder / name) for name in COMMITTED_FILES}
    text = {name: None if raw is None else decode(raw, folder / name) for name, raw in data.items()}

    def parsed(name: str, parse: Any) -> Any:
        value = text[name]
        return None if value is None else parse(value, display(folder / name))

    baselines: dict[str, PhaseBaseline] = parsed(BASELINE_FILE, parse_baseline) or {}
    routes: dict[str, Route] = parsed(ROUTING_FILE, parse_routing) or {}
    history: list[dict[str, Any]] = parsed(HISTORY_FILE, parse_history) or []
    log: list[dict[str, Any]] = parsed(LOG_FILE, parse_log) or []
    present = {name: raw is not None for name, raw in data.items()}
    _consistent(folder, baselines, routes, history, present)
    return CommittedState(
        baselines,
        routes,
        history,
        {name: sha256_of(raw) for name, raw in data.items()},
        len(log),
        (note,) if note else (),
    )


# --------------------------------------------------------------------------- writing


def write_cycle(
    folder: Path,
    *,
    baselines: Mapping[str, PhaseBaseline],
    routes: Mapping[str, Route],
    history_entry: Mapping[str, Any],
    audit: Sequence[AuditRecord],
    expected: CommittedState | None = None,
    expected_baseline_sha256: str | None = None,
    git_commit: str | None = None,
    lock: CycleLock | None = None,
    on_step: Step | None = None,
) -> list[Path]:
    """Record one cycle as one transaction; returns the paths that actually changed.

    ``expected``: the state the cycle read at its start; every committed file must still be
    as it was (compare-before-write), else nothing is written. Without it only baseline.yaml
    is compared, against ``expected_baseline_sha256`` (the older calling convention).
    ``lock``: the cycle's lock when it holds one for the whole session; else one is taken
    for the write. Everything is rendered and validated before the first byte is written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    own = None if lock is not None and lock.held else CycleLock(folder)
    if own is not None:
        own.acquire()
    try:
        if expected is not None:
            wanted = {name: expected.sha256.get(name) for name in COMMITTED_FILES}
        else:
            wanted = {BASELINE_FILE: expected_baseline_sha256}
        check_unchanged(folder, wanted)  # first: a refusal must not depend on the content
        current = {name: read_file(folder / name) for name in COMMITTED_FILES}
        new = _render(folder, current, baselines, routes, history_entry, audit, git_commit)
        cycle = history_entry.get("cycle")
        return commit(
            folder,
            new,
            wanted,
            cycle=cycle if isinstance(cycle, int) else None,
            on_step=on_step,
        )
    finally:
        if own is not None:
            own.release()


def _render(
    folder: Path,
    current: Mapping[str, bytes | None],
    baselines: Mapping[str, PhaseBaseline],
    routes: Mapping[str, Route],
    history_entry: Mapping[str, Any],
    audit: Sequence[AuditRecord],
    git_commit: str | None,
) -> dict[str, bytes]:
    """The four files' new bytes, from the current history and log (both validated)."""
    hist_raw, log_raw = current[HISTORY_FILE], current[LOG_FILE]
    hist_path, log_path = folder / HISTORY_FILE, folder / LOG_FILE
    entries = (
        [] if hist_raw is None else parse_history(decode(hist_raw, hist_path), display(hist_path))
    )
    cycle, last = history_entry.get("cycle"), int(entries[-1]["cycle"]) if entries else 0
    if isinstance(cycle, int) and cycle <= last:
        raise ConcurrentChangeError(
            f"{display(hist_path)}: cycle {cycle} is already recorded (cycles {last} so far: "
            "another selfopt cycle wrote meanwhile?); nothing was written; run the cycle again"
        )
    if log_raw is not None:
        parse_log(decode(log_raw, log_path), display(log_path))
    new = {
        BASELINE_FILE: dump_baseline(baselines).encode(),
        ROUTING_FILE: dump_routing(routes).encode(),
        HISTORY_FILE: dump_history([*entries, history_entry]).encode(),
    }
    lines = dump_log_lines(audit, git_commit).encode()
    if lines:
        new[LOG_FILE] = (log_raw or b"") + lines
    return new


# --------------------------------------------------------------------------- applications


class UnknownPhaseError(KeyError):
    """``RoutingTable.for_phase`` of a phase the file does not route; lists the known ones."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class RoutingTable:
    """routing.yaml as an application sees it: which spec and fallbacks to use per phase."""

    routes: Mapping[str, Route]
    source: str = ROUTING_FILE

    @property
    def phases(self) -> tuple[str, ...]:
        return tuple(sorted(self.routes))

    def for_phase(self, name: str) -> Route:
        try:
            return self.routes[name]
        except KeyError:
            known = ", ".join(self.phases) or "none"
            raise UnknownPhaseError(
                f"{self.source} has no route for phase {name!r}; phases: {known}"
            ) from None


def load_routing(path: str | Path) -> RoutingTable:
    """Load routing.yaml (or ``<folder>/routing.yaml``) for use outside pytest."""
    path = Path(path)
    if path.is_dir():
        path = path / ROUTING_FILE
    data = read_file(path)
    if data is None:
        raise FilesError(f"{display(path)}: not found; run `pytest --selfopt` to create it")
    name = display(path)
    return RoutingTable(parse_routing(decode(data, path), name), name)


def git_commit(folder: Path) -> str | None:
    """HEAD of the repository holding ``folder``, for the audit log; None when unknown."""
    cwd = Path(folder)
    while not cwd.is_dir() and cwd != cwd.parent:
        cwd = cwd.parent
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=2,
            check=False,
        )
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    head = done.stdout.strip()
    if done.returncode != 0 or not re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", head):
        return None
    return head
