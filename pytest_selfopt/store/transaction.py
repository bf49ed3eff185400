"""The committed files written as one transaction (docs/architecture.md, "Committed files").

After a kill at any instruction, ``baselines/`` must be entirely the previous cycle's or
entirely the new one's: a new baseline.yaml next to an old history.json loses the promotion
record. So a commit

1. checks that every committed file is still what the cycle read at its start (a hand edit
   made meanwhile is refused, never overwritten);
2. writes each changed file to a temporary next to it (``.selfopt-new.<name>``) and fsyncs it;
3. writes the journal (``.selfopt-journal.json``: each file's old and new sha256) and renames
   it into place: **this rename is the commit point**;
4. renames every temporary onto its file, then removes the journal.

:func:`recover`, run by the next start under the lock, completes the renames when it finds a
journal (roll forward) and deletes the temporaries when it finds none (roll back), and says
what it did in one line. SIGINT, SIGTERM and SIGHUP are deferred during steps 2-4 (about a
millisecond per file), so a Ctrl-C lands after the commit, not inside it. Every temporary
name starts with ``.selfopt`` so one ignore rule keeps them out of git.
"""

from __future__ import annotations

import json
import os
import re
import signal
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

from pytest_selfopt.store.disk import (
    display,
    fsync_dir,
    mode_of,
    read_file,
    sha256_of,
    write_synced,
)
from pytest_selfopt.store.formats import FilesError

TEMP_PREFIX = ".selfopt-new."
JOURNAL = ".selfopt-journal.json"
JOURNAL_TEMP = TEMP_PREFIX + "journal.json"
#: Temporaries of versions before the transaction (``.baseline.yaml.<random>.tmp``).
_LEGACY_TEMP = re.compile(
    r"\.(?:baseline\.yaml|routing\.yaml|history\.json|decisions\.log)\..+\.tmp"
)

#: Called with the name of each step as it completes; tests inject faults (kills) here.
Step = Callable[[str], None]


class ConcurrentChangeError(FilesError):
    """A committed file changed between the start of the cycle and its write."""


@contextmanager
def _signals_held() -> Iterator[None]:
    """Defer SIGINT/SIGTERM/SIGHUP until the block is done, then deliver them as before.

    Python runs signal handlers in the main thread whichever thread the kernel picked, so the
    handlers are swapped (a signal mask would not do: another thread may take the signal).
    Elsewhere than the main thread handlers cannot be changed and the block runs as is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def defer(signum: int, frame: FrameType | None) -> None:
        received.append(signum)

    previous: dict[int, Any] = {}
    for sig in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if sig is not None:
            previous[sig] = signal.signal(sig, defer)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
        for sig in dict.fromkeys(received):
            signal.raise_signal(sig)


def _changed_since(path: Path, what: str) -> ConcurrentChangeError:
    return ConcurrentChangeError(
        f"{display(path)}: {what} since this cycle read it at its start (a hand edit, or "
        "another tool?); nothing was written, so the edit is kept; run the cycle again"
    )


def check_unchanged(folder: Path, expected: Mapping[str, str | None]) -> dict[str, bytes | None]:
    """Compare-before-write: every file in ``expected`` (name -> sha256 at the cycle's start,
    None for absent) must be unchanged. Returns the current bytes by name."""
    current: dict[str, bytes | None] = {}
    for name, sha in expected.items():
        path = folder / name
        data = read_file(path)
        now = sha256_of(data)
        if now != sha:
            what = (
                "was created" if sha is None else "was deleted" if now is None else "was modified"
            )
            raise _changed_since(path, what)
        current[name] = data
    return current


def commit(
    folder: Path,
    new: Mapping[str, bytes],
    expected: Mapping[str, str | None],
    *,
    cycle: int | None = None,
    on_step: Step | None = None,
) -> list[Path]:
    """Replace the files named in ``new`` as one transaction; the caller holds the lock.

    ``expected`` maps every committed file to its sha256 at the cycle's start (None: absent)
    and is checked first. Files whose content does not change are not touched. Returns the
    paths written."""
    folder = Path(folder)
    step: Step = on_step or (lambda name: None)
    current = check_unchanged(folder, expected)
    changes = {
        name: data
        for name, data in new.items()
        if data != (current[name] if name in current else read_file(folder / name))
    }
    step("checked")
    if not changes:
        return []
    journal: dict[str, Any] = {
        "version": 1,
        "cycle": cycle,
        "pid": os.getpid(),
        "files": [
            {"name": name, "old": sha256_of(current.get(name)), "new": sha256_of(data)}
            for name, data in changes.items()
        ],
    }
    with _signals_held():
        try:
            for name, data in changes.items():
                write_synced(folder / (TEMP_PREFIX + name), data, mode_of(folder / name))
                step(f"temp:{name}")
            write_synced(folder / JOURNAL_TEMP, (json.dumps(journal) + "\n").encode())
            step("journal-written")
            os.replace(folder / JOURNAL_TEMP, folder / JOURNAL)
            fsync_dir(folder)
        except OSError as exc:  # before the commit point: the old files stand; clean up
            _remove_temporaries(folder)
            raise FilesError(
                f"{display(folder / next(iter(changes)))}: could not write the new files "
                f"({exc.strerror or exc}); nothing was changed"
            ) from None
        step("committed")
        try:
            for name in changes:
                os.replace(folder / (TEMP_PREFIX + name), folder / name)
                step(f"replaced:{name}")
            fsync_dir(folder)
            os.unlink(folder / JOURNAL)
            fsync_dir(folder)
        except OSError as exc:  # after the commit point: the next start completes it
            raise FilesError(
                f"{display(folder)}: the write of this cycle was committed but could not be "
                f"completed ({exc.strerror or exc}); the next run completes it"
            ) from None
        step("done")
    return [folder / name for name in changes]


def _temporaries(folder: Path) -> list[Path]:
    try:
        names = sorted(os.listdir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [folder / n for n in names if n.startswith(TEMP_PREFIX) or _LEGACY_TEMP.fullmatch(n)]


def _remove_temporaries(folder: Path) -> int:
    removed = 0
    for path in _temporaries(folder):
        try:
            path.unlink()
            removed += 1
        except FileNotFoundError:
            pass
    fsync_dir(folder)
    return removed


def pending(folder: Path) -> bool:
    """Is there an interrupted write (a journal or temporaries) to recover?"""
    return (Path(folder) / JOURNAL).exists() or bool(_temporaries(Path(folder)))


def _journal_files(path: Path) -> tuple[int | None, list[tuple[str, str | None, str]]]:
    """The journal's cycle and (name, old sha, new sha) entries, validated."""
    bad = FilesError(
        f"{display(path)}: not a journal this plugin wrote; compare the files in "
        f"{display(path.parent)}/ with git, then delete it"
    )
    try:
        doc = json.loads((read_file(path) or b"").decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise bad from None
    if not isinstance(doc, dict) or not isinstance(doc.get("files"), list):
        raise bad
    cycle = doc.get("cycle")
    out: list[tuple[str, str | None, str]] = []
    for item in doc["files"]:
        if not (
            isinstance(item, dict)
            and isinstance(item.get("name"), str)
            and "/" not in item["name"]
            and not item["name"].startswith(".")
            and isinstance(item.get("new"), str)
            and (item.get("old") is None or isinstance(item.get("old"), str))
        ):
            raise bad
        out.append((item["name"], item.get("old"), item["new"]))
    return (cycle if isinstance(cycle, int) and not isinstance(cycle, bool) else None), out


def recover(folder: Path) -> str | None:
    """Finish or undo an interrupted commit; the caller holds the lock. Returns one line
    saying what was done, or None when there was nothing to do."""
    folder = Path(folder)
    journal = folder / JOURNAL
    where = display(folder).rstrip("/") + "/"
    if not journal.exists():
        removed = _remove_temporaries(folder)
        if not removed:
            return None
        return (
            f"{where}: removed {removed} temporary file(s) of a write that was interrupted "
            "before it committed; the committed files are the previous cycle's, unchanged"
        )
    cycle, entries = _journal_files(journal)
    with _signals_held():
        for name, old, new in entries:
            target, temp = folder / name, folder / (TEMP_PREFIX + name)
            now = sha256_of(read_file(target))
            if now == new:
                continue
            if temp.exists() and sha256_of(read_file(temp)) == new:
                os.replace(temp, target)
                continue
            state = "the old version" if now == old else "neither the old nor the new version"
            raise FilesError(
                f"{display(target)}: an interrupted write cannot be completed: the file is "
                f"{state} and its new version is gone; restore {where} from git, then delete "
                f"{display(journal)}"
            )
        fsync_dir(folder)
        journal.unlink()
        _remove_temporaries(folder)
    names = ", ".join(name for name, _, _ in entries)
    which = f"cycle {cycle}" if cycle is not None else "a cycle"
    return (
        f"{where}: completed the write of {which}, which was interrupted after it committed "
        f"({names}); the committed files are now entirely that cycle's"
    )
