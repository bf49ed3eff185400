"""The committed files in ``baselines/``: read, validate, and write them safely (DESIGN.md §9).

Formats live in ``filesformat.py`` (dumps) and ``filesparse.py`` (parsers); this module adds the file system rules: every write goes
through a temporary file in the same folder, fsync and ``os.replace``; a lock file records
the writer's PID (and is broken when that process is gone); a cycle refuses to write when
``baseline.yaml`` changed since it was read; unchanged files are not touched at all, so a
cycle that promotes nothing leaves baseline.yaml and routing.yaml byte-identical.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import tempfile
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_selfopt.loop.types import AuditRecord, PhaseBaseline, Route
from pytest_selfopt.store.formats import (
    FilesError,
    dump_baseline,
    dump_history,
    dump_log_lines,
    dump_routing,
)
from pytest_selfopt.store.parse import parse_baseline, parse_history, parse_routing

__all__ = [
    "BASELINE_FILE",
    "HISTORY_FILE",
    "LOCK_FILE",
    "LOG_FILE",
    "ROUTING_FILE",
    "CommittedState",
    "ConcurrentChangeError",
    "FilesError",
    "LockedError",
    "RoutingTable",
    "StaleLockWarning",
    "dump_baseline",
    "dump_history",
    "dump_log_lines",
    "dump_routing",
    "git_commit",
    "load_routing",
    "parse_baseline",
    "parse_history",
    "parse_routing",
    "read_state",
    "sha256_of",
    "write_cycle",
]

BASELINE_FILE = "baseline.yaml"
ROUTING_FILE = "routing.yaml"
HISTORY_FILE = "history.json"
LOG_FILE = "decisions.log"
LOCK_FILE = ".selfopt.lock"


class LockedError(FilesError):
    """Another live process holds ``baselines/.selfopt.lock``."""


class ConcurrentChangeError(FilesError):
    """baseline.yaml changed between the start of the cycle and its write."""


class StaleLockWarning(UserWarning):
    """A lock left by a process that no longer exists was broken."""


def display(path: Path) -> str:
    """A path as a person wants to read it: relative to the working directory when inside."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return str(path)


def sha256_of(data: bytes | None) -> str | None:
    return None if data is None else hashlib.sha256(data).hexdigest()


def _read_bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _decode(data: bytes, path: Path) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FilesError(
            f"{display(path)}: not UTF-8 text ({exc.reason} at byte {exc.start})"
        ) from None


# --------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class CommittedState:
    """What ``baselines/`` held when a cycle started; the sha256 guards the later write."""

    baselines: dict[str, PhaseBaseline] = field(default_factory=dict)
    routes: dict[str, Route] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    baseline_sha256: str | None = None


def read_state(folder: Path) -> CommittedState:
    """Read and validate the committed files; a missing folder or file reads as empty."""
    folder = Path(folder)
    base_bytes = _read_bytes(folder / BASELINE_FILE)
    route_bytes = _read_bytes(folder / ROUTING_FILE)
    hist_bytes = _read_bytes(folder / HISTORY_FILE)
    baselines: dict[str, PhaseBaseline] = {}
    routes: dict[str, Route] = {}
    history: list[dict[str, Any]] = []
    if base_bytes is not None:
        path = folder / BASELINE_FILE
        baselines = parse_baseline(_decode(base_bytes, path), display(path))
    if route_bytes is not None:
        path = folder / ROUTING_FILE
        routes = parse_routing(_decode(route_bytes, path), display(path))
    if hist_bytes is not None:
        path = folder / HISTORY_FILE
        history = parse_history(_decode(hist_bytes, path), display(path))
    return CommittedState(baselines, routes, history, sha256_of(base_bytes))


# --------------------------------------------------------------------------- writing


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (POSIX); harmless to skip where unsupported."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    """Temp file in the same folder, fsync, os.replace: readers see old or new, never half."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        try:
            mode = path.stat().st_mode & 0o777
        except FileNotFoundError:
            mode = 0o644  # mkstemp's 0600 would hide a committed file from other users
        if hasattr(os, "fchmod"):
            os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)


def _append(path: Path, data: bytes) -> None:
    """Append-only: O_APPEND plus fsync; a torn last line from a crash is closed first."""
    existing = _read_bytes(path)
    if existing and not existing.endswith(b"\n"):
        data = b"\n" + data
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    if existing is None:
        _fsync_dir(path.parent)


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    except OSError:
        return False
    return True


def _locked_message(folder: Path, pid: int | str) -> str:
    where = display(folder).rstrip("/") + "/"
    return (
        f"{where} is locked by PID {pid} (another selfopt run?); wait for it or delete "
        f"{display(folder / LOCK_FILE)} if that process is gone"
    )


@contextmanager
def lock(folder: Path) -> Iterator[Path]:
    """Hold ``folder/.selfopt.lock`` (created with O_EXCL, holding our PID) for a write."""
    path = folder / LOCK_FILE
    for attempt in range(5):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            data = _read_bytes(path)
            if data is None:
                continue  # released meanwhile: try again
            raw = data.decode("utf-8", "replace").strip()
            if not re.fullmatch(r"\d+", raw):
                if raw == "" and attempt < 4:
                    time.sleep(0.05)  # its owner is between O_EXCL and writing the PID
                    continue
                raise LockedError(
                    _locked_message(folder, "unknown (the lock file holds no PID)")
                ) from None
            pid = int(raw)
            if _pid_alive(pid):
                raise LockedError(_locked_message(folder, pid)) from None
            warnings.warn(
                f"{display(path)}: broke a stale lock of PID {pid}, which is no longer running",
                StaleLockWarning,
                stacklevel=3,
            )
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            continue
        try:
            os.write(fd, f"{os.getpid()}\n".encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        break
    else:
        raise LockedError(_locked_message(folder, "unknown (the lock kept reappearing)"))
    try:
        yield path
    finally:
        if (_read_bytes(path) or b"").strip() == str(os.getpid()).encode():
            os.unlink(path)


def write_cycle(
    folder: Path,
    *,
    baselines: Mapping[str, PhaseBaseline],
    routes: Mapping[str, Route],
    history_entry: Mapping[str, Any],
    audit: Sequence[AuditRecord],
    expected_baseline_sha256: str | None,
    git_commit: str | None = None,
) -> list[Path]:
    """Record one cycle; returns the paths that actually changed.

    Everything is rendered and checked before the first byte is written, so a refusal or a
    malformed existing history leaves the folder as it was.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    base_path, route_path = folder / BASELINE_FILE, folder / ROUTING_FILE
    hist_path, log_path = folder / HISTORY_FILE, folder / LOG_FILE
    with lock(folder):
        current = _read_bytes(base_path)
        if sha256_of(current) != expected_baseline_sha256:
            if expected_baseline_sha256 is None:
                what = "was created"
            elif current is None:
                what = "was deleted"
            else:
                what = "was modified"
            raise ConcurrentChangeError(
                f"{display(base_path)}: {what} since this cycle read it at its start "
                "(another selfopt run or a hand edit?); nothing was written; "
                "run the cycle again on the current baseline"
            )
        hist_bytes = _read_bytes(hist_path)
        entries = (
            []
            if hist_bytes is None
            else parse_history(_decode(hist_bytes, hist_path), display(hist_path))
        )
        new_base = dump_baseline(baselines).encode()
        new_route = dump_routing(routes).encode()
        new_hist = dump_history([*entries, history_entry]).encode()
        new_log = dump_log_lines(audit, git_commit).encode()

        changed: list[Path] = []
        for path, data, old in (
            (base_path, new_base, current),
            (route_path, new_route, _read_bytes(route_path)),
            (hist_path, new_hist, hist_bytes),
        ):
            if data != old:
                atomic_write(path, data)
                changed.append(path)
        if new_log:
            _append(log_path, new_log)
            changed.append(log_path)
        return changed


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
    data = _read_bytes(path)
    if data is None:
        raise FilesError(f"{display(path)}: not found; run `pytest --selfopt` to create it")
    name = display(path)
    return RoutingTable(parse_routing(_decode(data, path), name), name)


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
