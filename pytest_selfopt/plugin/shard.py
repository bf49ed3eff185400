"""CI shards: one cycle's items split over N machines (``--selfopt-shard K/N``), their sample
files, and the checks ``selfopt decide`` makes before it closes the cycle on their union.

A shard runs every spec and run of its share of the cases (``select_items``), so pairing
never needs two machines' samples, and writes what the controller would have decided on to
``--selfopt-samples=PATH`` with the plan's identity (store/journal.py). Nothing goes to
``baselines/``: ``selfopt decide`` (cli/decide.py) checks that the files are one plan's
shards 1..N, each whole, and closes the cycle exactly as one machine would
(docs/architecture.md, "Data flow of a cycle"; docs/ci.md).

Format (JSON lines, sorted keys)::

    {"check": false, "identity": {...}, "selfopt_shard": 1, "shard": "2/3"}
    {"nodeid": "benchmarks/test_x.py::test_y", "sample": {...}, "unjudged": false}   per sample
    {"skipped": [[phase, spec_id, case_id, run], ...]}     items this shard left out on purpose
    {"end": 12}                                            the number of sample lines

The last line makes a file cut short (a killed upload, a full disk) detectable: without it,
or with another count, the file is refused. Written atomically (temporary file, then
``os.replace``), so a reader never sees half of a new file.
"""

from __future__ import annotations

import argparse
import json
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pytest_selfopt.loop.types import Sample
from pytest_selfopt.plugin.items import case_of, point_of
from pytest_selfopt.store.journal import Entry, Identity

if TYPE_CHECKING:
    pass

FORMAT = 1
#: The committed files whose digests are part of a plan's identity.

Key = tuple[str, str, str, int]  # phase, spec_id, case_id, run


class ShardError(Exception):
    """A shard file that cannot be used; the message names the file and says what to do."""


@dataclass(frozen=True)
class Shard:
    index: int  # 1-based
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


@dataclass(frozen=True)
class ShardFile:
    """One shard's samples as read back by ``selfopt decide``."""

    path: Path
    identity: Identity
    shard: Shard
    check: bool
    entries: tuple[Entry, ...]
    skipped: tuple[Key, ...]

    @property
    def shown(self) -> str:
        return shown(self.path)


def write_shard(
    path: Path,
    identity: Identity,
    shard: Shard,
    entries: Sequence[Entry],
    *,
    skipped: Sequence[tuple[str, str, str, int]],
    unjudged: Mapping[str, int],
    check: bool,
) -> None:
    """This shard's samples, for ``selfopt decide``.

    ``unjudged``: test functions none of whose samples *in this shard* judged a reply. Each
    of their samples is written with ``unjudged: true``, so that decide, like one session,
    leaves a function out only when no shard saw it judge (codec.Collected.judged)."""
    header = {"selfopt_shard": FORMAT, "identity": identity.to_dict(), "shard": str(shard)}
    lines: list[dict[str, Any]] = [{**header, "check": check}]
    lines += [
        {
            "sample": e.sample.to_dict(),
            "nodeid": e.nodeid,
            "unjudged": e.unjudged or e.nodeid in unjudged,
        }
        for e in entries
    ]
    lines.append({"skipped": [list(key) for key in sorted(skipped)]})
    lines.append({"end": len(entries)})
    text = "".join(json.dumps(line, sort_keys=True) + "\n" for line in lines)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def read_shard(path: Path) -> ShardFile:
    """A shard file, whole; ShardError (one line naming the file) when it is not."""
    where = shown(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ShardError(f"{where}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ShardError(f"{where}: cannot be read ({exc})") from None
    lines = text.split("\n")
    redo = "re-run its shard, or use the shard's artifact again"
    try:
        header = json.loads(lines[0])
        if not isinstance(header, dict) or header.get("selfopt_shard") != FORMAT:
            raise ValueError("no selfopt_shard header of this version")
        identity = Identity.from_dict(header["identity"])
        shard = parse_shard(str(header["shard"]))
        check = header["check"]
        if not isinstance(check, bool):
            raise ValueError(f"check: expected true or false, got {check!r}")
    except (ValueError, KeyError, TypeError, AttributeError, argparse.ArgumentTypeError) as exc:
        raise ShardError(
            f"{where}: line 1: not a selfopt shard file ({exc}); pass the files written by "
            "--selfopt-samples"
        ) from None
    numbered = [(n, line) for n, line in enumerate(lines[1:], start=2) if line.strip()]
    try:
        footer = json.loads(numbered[-1][1]) if numbered and text.endswith("\n") else None
    except ValueError:
        footer = None
    if not isinstance(footer, dict) or set(footer) != {"end"}:
        raise ShardError(f"{where}: truncated (no end line): shard {shard} is incomplete; {redo}")
    entries: list[Entry] = []
    skipped: list[Key] = []
    for number, line in numbered[:-1]:
        try:
            doc = json.loads(line)
            if "skipped" in doc:
                skipped += [(str(p), str(s), str(c), int(r)) for p, s, c, r in doc["skipped"]]
                continue
            sample = Sample.from_dict(doc["sample"])
            entries.append(Entry(sample, str(doc["nodeid"]), bool(doc["unjudged"])))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ShardError(f"{where}: line {number}: not a sample ({exc}); {redo}") from None
    if footer["end"] != len(entries):
        raise ShardError(
            f"{where}: truncated: {len(entries)} sample line(s), its end line says "
            f"{footer['end']!r}; {redo}"
        )
    return ShardFile(path, identity, shard, check, tuple(entries), tuple(skipped))


def set_problems(files: Sequence[ShardFile]) -> list[str]:
    """Why these files are not shards 1..N of one split, exactly once each, of one kind
    (cycle or check), with no sample twice: one line per file (or missing shard)."""
    if not files:
        return []
    counts = Counter(f.shard.count for f in files)
    n = max(counts, key=lambda c: (counts[c], -c))
    problems = [
        f"{f.shown}: shard {f.shard}, the other files are shards of {n}; pass the files of "
        f"one split (--selfopt-shard K/{n})"
        for f in files
        if f.shard.count != n
    ]
    same = [f for f in files if f.shard.count == n]
    first: dict[int, ShardFile] = {}
    for f in same:
        if f.shard.index in first:
            problems.append(
                f"{f.shown}: shard {f.shard} again (also {first[f.shard.index].shown}); pass "
                "one file per shard (a re-run shard's new file replaces the old one)"
            )
        else:
            first[f.shard.index] = f
    problems += [
        f"shard {k}/{n}: no file among the {len(files)} given; run it with "
        f"`pytest --selfopt --selfopt-shard {k}/{n} --selfopt-samples=PATH` and add PATH"
        for k in range(1, n + 1)
        if k not in first
    ]
    kinds = Counter(f.check for f in files)
    if len(kinds) > 1:
        check = kinds[True] > kinds[False]
        problems += [
            f"{f.shown}: a {'check' if f.check else 'cycle'} shard among "
            f"{'check' if check else 'cycle'} shards (--selfopt-check vs --selfopt); pass "
            "the files of one run"
            for f in files
            if f.check != check
        ]
    owner: dict[Key, ShardFile] = {}
    for f in first.values():  # a file already named above is not named twice
        for e in f.entries:
            key = (e.sample.phase, e.sample.spec_id, e.sample.case_id, e.sample.run)
            other = owner.setdefault(key, f)
            if other is not f:
                phase, spec_id, case_id, run = key
                problems.append(
                    f"{f.shown}: sample (phase {phase}, spec {spec_id}, case {case_id}, run "
                    f"{run}) is also in {other.shown}: these files overlap; pass one split"
                )
                break
    return problems


def identity_problems(
    files: Sequence[ShardFile], current: Identity, config_shown: str = ""
) -> list[str]:
    """Shards of another plan than ``current`` (what the suite config and the committed files
    plan now): each named with what differs; all of them at once said once. ``config_shown``:
    the suite config this plan was read from, named when the config is what differs (the
    shards of another suite are the usual cause: a missing ``--rootdir``)."""
    other = [f for f in files if f.identity != current]
    if not other:
        return []
    if len(other) == len(files) and len({f.identity.key for f in files}) == 1:
        why = "; ".join(current.differences(other[0].identity)) or "another plan"
        if config_shown and other[0].identity.config != current.config:
            return [
                f"{', '.join(f.shown for f in files)}: the shards were run with another suite "
                f"config than {config_shown} ({why}); if they ran another suite, pass its "
                "folder as --rootdir; else re-run the shards from this commit, or decide from "
                "the commit they ran on"
            ]
        return [
            f"{', '.join(f.shown for f in files)}: the shards were run for another plan than "
            f"the suite config and baselines/ give now ({why}); re-run the shards from this "
            "commit, or decide from the commit they ran on"
        ]
    return [
        f"{f.shown}: shard {f.shard} belongs to another plan than "
        f"{'the other shards' if len(other) < len(files) else 'this one'} "
        f"({'; '.join(current.differences(f.identity)) or 'another plan'}); re-run it from "
        "this commit"
        for f in other
    ]


def shown(path: Path) -> str:
    """``path`` relative to the working directory when it is below it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def parse_shard(text: str) -> Shard:
    """argparse type for ``K/N`` with 1 <= K <= N."""
    try:
        k, n = (int(x) for x in text.split("/"))
    except ValueError:
        k = n = 0
    if not 1 <= k <= n:
        raise argparse.ArgumentTypeError(f"expected K/N with 1 <= K <= N, like 2/3; got {text!r}")
    return Shard(k, n)


def select_items(items: Sequence[pytest.Item], shard: Shard) -> list[pytest.Item]:
    """This shard's items: the distinct (phase, case) of the llm items, sorted, dealt round-robin,
    so every spec and run of a case lands on the same shard and shards differ by at most one
    case. Items that measure nothing (ordinary tests) run on shard 1 only."""
    keys = sorted(
        {(p.phase, c.id if (c := case_of(i)) else i.nodeid) for i in items if (p := point_of(i))}
    )
    mine = {key for n, key in enumerate(keys) if n % shard.count == shard.index - 1}
    out = []
    for item in items:
        point = point_of(item)
        if point is None:
            if shard.index == 1:
                out.append(item)
            continue
        case = case_of(item)
        if (point.phase, case.id if case else item.nodeid) in mine:
            out.append(item)
    return out
