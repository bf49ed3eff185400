"""The CLI's readers of history.json and decisions.log: every bad file becomes one line.

``selfopt report`` and ``selfopt loop`` read the committed files a person may have edited,
truncated, re-encoded or replaced. Whatever is there (``null``, ``42``, UTF-16, a cut-off
line, nesting thousands deep, the wrong shapes) the reader raises :class:`ReadError` whose
message names the file and says what is wrong; the command prints it and exits with
:data:`EXIT_BAD_FILE` (the plugin's code for a bad input, docs/architecture.md).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_selfopt.store.formats import FilesError
from pytest_selfopt.store.parse import parse_history

HISTORY_FILE, LOG_FILE = "history.json", "decisions.log"
EXIT_BAD_FILE = 4
#: Bigger than any real committed file by far; refused before reading (bounded memory).
MAX_BYTES = 256 * 1024 * 1024


class ReadError(Exception):
    """A committed file cannot be read; the message names it and says why."""


def _text(path: Path) -> str | None:
    """The file's UTF-8 text, None when it does not exist."""
    try:
        if path.stat().st_size > MAX_BYTES:
            raise ReadError(f"{path}: {path.stat().st_size} bytes, more than {MAX_BYTES}")
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        raise ReadError(f"{path}: is a folder, expected a file") from None
    except OSError as exc:
        raise ReadError(f"{path}: cannot be read: {exc.strerror or exc}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        hint = " (UTF-16?)" if data[:2] in (b"\xff\xfe", b"\xfe\xff") else ""
        raise ReadError(
            f"{path}: not UTF-8 text{hint}: {exc.reason} at byte {exc.start}; "
            "restore it from git or save it as UTF-8"
        ) from None


def read_history(baselines: Path) -> list[dict[str, Any]]:
    """The cycles recorded in ``baselines/history.json`` (none when the file is missing)."""
    path = baselines / HISTORY_FILE
    text = _text(path)
    if text is None:
        return []
    try:
        return parse_history(text, str(path))
    except FilesError as exc:
        raise ReadError(f"{exc}; restore it from git") from None
    except RecursionError:
        raise ReadError(f"{path}: nested too deeply to be a history; restore it from git") from None


@dataclass(frozen=True)
class Log:
    """The records of a decisions.log, and the lines that were not records."""

    path: Path
    records: list[Mapping[str, Any]]
    skipped: list[tuple[int, str]]  # (line number, why)

    def skipped_line(self) -> str | None:
        """One line about the skipped lines, or None."""
        if not self.skipped:
            return None
        shown = ", ".join(f"{n} ({why})" for n, why in self.skipped[:3])
        more = f" and {len(self.skipped) - 3} more" if len(self.skipped) > 3 else ""
        return (
            f"{self.path}: skipped {len(self.skipped)} line(s) that are not records: {shown}{more}"
        )


def _record(line: str) -> Mapping[str, Any] | str:
    """The record on one line, or why it is not one."""
    try:
        value = json.loads(line)
    except RecursionError:
        return "nested too deeply"
    except ValueError:
        return "not JSON"
    if not isinstance(value, dict):
        return f"a JSON {type(value).__name__}, not an object"
    if "event" not in value or "phase" not in value:
        return "no event or phase"
    return value


def read_log(path: Path) -> Log:
    """decisions.log's records; a file with lines but no record at all is an error."""
    log = path / LOG_FILE if path.is_dir() or not path.exists() else path
    text = _text(log)
    if text is None:
        raise FileNotFoundError(log)
    records: list[Mapping[str, Any]] = []
    skipped: list[tuple[int, str]] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        found = _record(line)
        if isinstance(found, str):
            skipped.append((number, found))
        else:
            records.append(found)
    if skipped and not records:
        number, why = skipped[0]
        raise ReadError(
            f"{log}: no audit record in the file (line {number}: {why}); restore it from git"
        )
    return Log(log, records, skipped)
