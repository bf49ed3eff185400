"""The writer's lock on ``baselines/``: one cycle writes at a time (docs/architecture.md,
"Committed files").

``baselines/.selfopt.lock`` is created with O_EXCL and holds the owner's PID and process start
time. A cycle takes it when it starts and keeps it until it ends, so a second cycle started
meanwhile is refused at once (before it pays for any model call) and writes nothing. A lock
whose process is gone, or whose PID now belongs to a later process, is stale and is broken.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from types import TracebackType

from pytest_selfopt.store.disk import display
from pytest_selfopt.store.formats import FilesError

LOCK_FILE = ".selfopt.lock"


class LockedError(FilesError):
    """Another live process holds ``baselines/.selfopt.lock``."""


def _start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot (Linux); "" where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    fields = stat[stat.rfind(")") + 2 :].split()
    return fields[19] if len(fields) > 19 else ""


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


def owner_alive(raw: str) -> bool | None:
    """Is the process recorded in a lock file's text still running? None: no PID in it."""
    found = re.fullmatch(r"(\d+)(?:\s+(\d+))?", raw.strip())
    if found is None:
        return None
    pid, started = int(found.group(1)), found.group(2)
    if not _pid_alive(pid):
        return False
    return not (started and _start_time(pid) and _start_time(pid) != started)


def stale_lock(folder: Path) -> bool:
    """Is there a lock file whose owner is gone?"""
    raw = _read(Path(folder) / LOCK_FILE)
    return raw is not None and owner_alive(raw) is False


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return None


class CycleLock:
    """``baselines/.selfopt.lock`` for one process; a context manager, or acquire/release.

    ``acquire`` returns a one-line note when it broke a stale lock (for the session's output)
    and raises :class:`LockedError` with a one-line message when a live process holds it."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self.held = False
        self._made_folder = False  # acquire created the folder: release removes it if empty
        self._pid = os.getpid()
        self._mine = f"{self._pid} {_start_time(self._pid)}".strip()

    def _refused(self, who: str) -> LockedError:
        where = display(self.folder).rstrip("/") + "/"
        return LockedError(
            f"{where} is locked by {who} (another selfopt cycle is running); nothing was "
            f"written; wait for it to finish, or delete {display(self.path)} if that process "
            "is gone"
        )

    def acquire(self) -> str | None:
        if self.held:
            return None
        self._made_folder = not self.folder.exists()
        self.folder.mkdir(parents=True, exist_ok=True)
        note = None
        for attempt in range(20):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                raw = _read(self.path)
                if raw is None:
                    continue  # released meanwhile: try again
                alive = owner_alive(raw)
                if alive is None:
                    if raw.strip() == "" and attempt < 19:
                        time.sleep(0.05)  # its owner is between O_EXCL and writing its PID
                        continue
                    raise self._refused("an unknown process (the lock file holds no PID)")
                pid = raw.split()[0]
                if alive:
                    raise self._refused(f"PID {pid}")
                note = (
                    f"{display(self.path)}: broke a stale lock of PID {pid}, which is no "
                    "longer running"
                )
                try:
                    os.unlink(self.path)
                except FileNotFoundError:
                    pass
                continue
            try:
                os.write(fd, f"{self._mine}\n".encode())
                os.fsync(fd)
            finally:
                os.close(fd)
            self.held = True
            return note
        raise self._refused("a process that keeps re-creating it")

    def release(self) -> None:
        """Remove the lock file if it is still ours (idempotent)."""
        if not self.held or os.getpid() != self._pid:  # a forked child never releases it
            return
        self.held = False
        raw = _read(self.path)
        if raw is not None and raw.strip() == self._mine:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
        if self._made_folder:  # a cycle that wrote nothing leaves no empty baselines/ behind
            try:
                self.folder.rmdir()
            except OSError:  # not empty (the cycle wrote its files), or gone
                pass

    def __enter__(self) -> CycleLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
