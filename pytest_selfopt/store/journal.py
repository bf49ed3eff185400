"""The sample journal: every sample of a cycle, appended as it arrives, outside ``baselines/``.

A session that breaks (Ctrl-C, a crashed worker, ``-x``, a CI timeout) keeps the samples it
paid for; ``--selfopt-resume`` runs only the items whose sample is missing and closes the
cycle on the union (docs/architecture.md, "Committed files"). A journal belongs to one plan:
its first line records the plan's identity (config, committed files, seed, cycle, runs,
planned specs), and a journal of another plan is refused with the part that differs.

Format: JSON lines. Line 1 ``{"selfopt_journal": 1, "identity": {...}}``; then one line per
sample ``{"sample": {...}, "nodeid": str, "unjudged": bool}``. A last line cut short by a
kill is ignored.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from pytest_selfopt.loop.types import Sample

FORMAT = 1
#: Where journals live, relative to the rootdir (pytest's own cache folder, never committed).
FOLDER = Path(".pytest_cache") / "selfopt"


class JournalError(Exception):
    """A journal that cannot be used for this plan; the message says why and what to do."""


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def file_digest(path: Path) -> str | None:
    try:
        return digest(path.read_bytes())
    except FileNotFoundError:
        return None


@dataclass(frozen=True)
class Identity:
    """What makes two sessions the same cycle: same inputs, same plan."""

    config: str | None  # digest of the suite config file
    committed: Mapping[str, str | None]  # file name -> digest of baselines/ files
    seed: int
    cycle: int
    runs: int
    plan: str  # digest of the shipped plans (specs, candidates, runs)

    @property
    def key(self) -> str:
        return digest(json.dumps(self.to_dict(), sort_keys=True).encode())

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": self.config,
            "committed": dict(sorted(self.committed.items())),
            "seed": self.seed,
            "cycle": self.cycle,
            "runs": self.runs,
            "plan": self.plan,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Identity:
        return cls(
            config=data["config"],
            committed=dict(data["committed"]),
            seed=int(data["seed"]),
            cycle=int(data["cycle"]),
            runs=int(data["runs"]),
            plan=str(data["plan"]),
        )

    def differences(self, other: Identity) -> list[str]:
        """What changed between ``other`` (a journal's) and this plan, in words."""
        out = []
        if self.config != other.config:
            out.append("the suite config changed")
        for name in sorted(set(self.committed) | set(other.committed)):
            if self.committed.get(name) != other.committed.get(name):
                out.append(f"baselines/{name} changed")
        for name in ("seed", "cycle", "runs"):
            if getattr(self, name) != getattr(other, name):
                out.append(f"{name} {getattr(other, name)} -> {getattr(self, name)}")
        if self.plan != other.plan and not out:
            out.append("the planned specs differ")
        return out


@dataclass(frozen=True)
class Entry:
    sample: Sample
    nodeid: str
    unjudged: bool


def journal_path(rootdir: Path, shard: str = "") -> Path:
    """One journal per rootdir (and per shard: ``journal-2of3.jsonl``)."""
    return rootdir / FOLDER / (f"journal-{shard}.jsonl" if shard else "journal.jsonl")


class Journal:
    """Appends samples to the journal file, flushed line by line (a kill loses nothing
    the process had handed to the OS)."""

    def __init__(self, path: Path, identity: Identity) -> None:
        self.path = path
        self.identity = identity
        self.count = 0
        self._fh: IO[str] | None = None

    def start(self, kept: Iterable[Entry] = ()) -> None:
        """A fresh journal for this plan, holding ``kept`` (a resumed journal's samples)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        ignore = self.path.parent.parent / ".gitignore"
        if not ignore.exists():  # pytest writes the same when its cache plugin makes the folder
            ignore.write_text("# Created by pytest automatically.\n*\n", encoding="utf-8")
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(json.dumps({"selfopt_journal": FORMAT, "identity": self.identity.to_dict()}))
            fh.write("\n")
            for entry in kept:
                fh.write(_line(entry))
                self.count += 1
        os.replace(tmp, self.path)
        self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - held for the session

    def append(self, entry: Entry) -> None:
        """Started lazily, at the first sample: a session that breaks before any sample
        leaves an earlier journal of the same plan alone."""
        if self._fh is None:
            self.start()
        assert self._fh is not None
        self._fh.write(_line(entry))
        self._fh.flush()
        self.count += 1

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def discard(self) -> None:
        """The cycle closed: its samples are in the committed files (or were only a check)."""
        self.close()
        self.path.unlink(missing_ok=True)

    @property
    def started(self) -> bool:
        return self._fh is not None


def journal_samples(path: Path) -> int:
    """How many samples a journal file holds (0: none, or no file), whatever its plan."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return max(sum(1 for line in fh if line.strip()) - 1, 0)
    except OSError:
        return 0


def _line(entry: Entry) -> str:
    doc = {"sample": entry.sample.to_dict(), "nodeid": entry.nodeid, "unjudged": entry.unjudged}
    return json.dumps(doc, sort_keys=True) + "\n"


def read_journal(path: Path, identity: Identity) -> list[Entry]:
    """The samples of a journal written for ``identity``; JournalError says why not."""
    shown = _shown(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise JournalError(
            f"--selfopt-resume: no journal at {shown}: nothing to resume; run without "
            "--selfopt-resume to start the cycle"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise JournalError(f"{shown}: cannot read the journal ({exc}); delete it") from None
    lines = text.split("\n")
    try:
        header = json.loads(lines[0])
        if header.get("selfopt_journal") != FORMAT:
            raise ValueError("not a selfopt journal of this version")
        theirs = Identity.from_dict(header["identity"])
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise JournalError(f"{shown}: line 1: not a journal header ({exc}); delete it") from None
    if theirs != identity:
        why = "; ".join(identity.differences(theirs)) or "another plan"
        raise JournalError(
            f"--selfopt-resume: {shown} belongs to another plan ({why}); run without "
            "--selfopt-resume to start this cycle afresh"
        )
    entries: list[Entry] = []
    complete = lines[1:-1] if not text.endswith("\n") else lines[1:]
    for number, line in enumerate(complete, start=2):
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
            entries.append(
                Entry(Sample.from_dict(doc["sample"]), str(doc["nodeid"]), bool(doc["unjudged"]))
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise JournalError(f"{shown}: line {number}: not a sample ({exc}); delete it") from None
    return entries


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)
