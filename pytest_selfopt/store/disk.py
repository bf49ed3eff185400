"""Disk primitives of the committed files: bounded reads, durable writes, digests, paths.

Shared by the lock, the transaction and the readers in ``files.py``; every failure is a
:class:`FilesError` whose message starts with the file's path as a person reads it.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from pytest_selfopt.store.formats import FilesError
from pytest_selfopt.suite.bounded import MAX_JSON_BYTES, MAX_YAML_BYTES, LimitError, read_limited


def display(path: Path) -> str:
    """A path as a person wants to read it: relative to the working directory when inside."""
    try:  # the folder resolved, not the file: a symlink in its place is shown as itself
        return str((path.parent.resolve() / path.name).relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return str(path)


def sha256_of(data: bytes | None) -> str | None:
    return None if data is None else hashlib.sha256(data).hexdigest()


def limit_for(path: Path) -> int:
    """The size cap of a committed file: YAML files are parsed far more slowly than JSON."""
    return MAX_YAML_BYTES if path.suffix in (".yaml", ".yml") else MAX_JSON_BYTES


def read_file(path: Path) -> bytes | None:
    """A committed file's bytes (None when absent), within its size cap, refusing folders,
    pipes, devices and dangling links in its place."""
    try:
        return read_limited(path, limit_for(path))
    except LimitError as exc:
        raise FilesError(f"{display(path)}: {exc}; restore it from git") from None


def decode(data: bytes, path: Path) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        hint = " (UTF-16?)" if data[:2] in (b"\xff\xfe", b"\xfe\xff") else ""
        raise FilesError(
            f"{display(path)}: not UTF-8 text{hint} ({exc.reason} at byte {exc.start}); "
            "restore it from git or save it as UTF-8"
        ) from None


def fsync_dir(folder: Path) -> None:
    """Make renames and unlinks in ``folder`` durable (POSIX); harmless where unsupported."""
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


def write_synced(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Create or truncate ``path`` with ``data``, fsynced before returning."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, mode)  # O_CREAT's mode is filtered by the umask; a reused file kept its
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def mode_of(path: Path) -> int:
    """The permissions a rewritten file keeps (0644 for a new one)."""
    try:
        return path.stat().st_mode & 0o777
    except OSError:
        return 0o644
