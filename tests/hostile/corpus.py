"""The hostile-input corpus: malformed versions of every file the plugin reads.

Each of the six targets (suite config, a cases file and the four committed files) gets the
same generic entries (``generic/`` plus generated encodings, truncations, depth, aliases and
sizes, some placed at a real key of an otherwise valid file) and its own type and range
mutations of a valid file. Entries are built from the valid bytes of the target, so the
corpus follows the example as it changes; a mutation that no longer applies raises instead
of silently producing a valid file.

``tolerated`` entries (a UTF-8 BOM, CRLF line ends) are well-formed variants: the plugin may
accept them exactly like the valid file, or refuse them with a named error; either way no
traceback and nothing half-written.
"""

from __future__ import annotations

import copy
import functools
import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

HERE = Path(__file__).parent
_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_DUMPER: Any = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
GENERIC = HERE / "generic"

Format = Literal["yaml", "json", "jsonl"]
Special = Literal["", "directory", "dangling-symlink"]


@dataclass(frozen=True)
class Target:
    """A file the plugin reads, relative to the example's root."""

    name: str
    path: str
    fmt: Format
    slot: str  # regex (MULTILINE) of one value of a valid file: where at-key values go
    slot_prefix: str  # what the slot's match is replaced by, before the value


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target("suite", "benchmarks/selfopt.yaml", "yaml", r"^runs: .*$", "runs: "),
        Target("cases", "benchmarks/atomic.yaml", "yaml", r"^    sim: .*$", "    sim: "),
        Target(
            "baseline",
            "baselines/baseline.yaml",
            "yaml",
            r"^    promoted_in_cycle: .*$",
            "    promoted_in_cycle: ",
        ),
        Target("routing", "baselines/routing.yaml", "yaml", r"^    retries: .*$", "    retries: "),
        Target("history", "baselines/history.json", "json", r'"runs": \d+', '"runs": '),
        Target("log", "baselines/decisions.log", "jsonl", r'"cycle":\d+', '"cycle":'),
    )
}


@dataclass(frozen=True)
class Entry:
    """One malformed input for one target; its bytes are built on demand (some are 60 MB)."""

    target: str
    name: str
    make: Callable[[], bytes] = field(repr=False)
    special: Special = ""
    tolerated: bool = False
    big: bool = False  # over 1 MB: the tests mark it slow

    @property
    def data(self) -> bytes:
        return self.make()

    @property
    def id(self) -> str:
        return f"{self.target}/{self.name}"

    def install(self, root: Path) -> Path:
        """Put this entry in place of its target under ``root`` (the example's copy)."""
        path = root / TARGETS[self.target].path
        if path.is_symlink() or path.is_file():
            path.unlink()
        elif path.is_dir():
            path.rmdir()
        path.parent.mkdir(parents=True, exist_ok=True)
        if self.special == "directory":
            path.mkdir()
        elif self.special == "dangling-symlink":
            path.symlink_to(path.parent / "no-such-file-anywhere")
        else:
            path.write_bytes(self.data)
        return path


# --------------------------------------------------------------------------- values

DEPTH = 5000
BOMB = (
    "[&a [lol, lol, lol, lol, lol, lol, lol, lol, lol], "
    + ", ".join(
        f"&{b} [{', '.join([f'*{a}'] * 9)}]" for a, b in zip("abcdefgh", "bcdefghi", strict=True)
    )
    + "]"
)
PWNED = "/tmp/hostile-pwned"


def deep_list(depth: int = DEPTH) -> str:
    return "[" * depth + "]" * depth


def deep_map(depth: int = DEPTH) -> str:
    return '{"a": ' * depth + "1" + "}" * depth


def deep_block(depth: int = 1000) -> str:
    """Block-style YAML mappings nested ``depth`` deep, one space of indent per level."""
    return "".join(" " * i + f"k{i}:\n" for i in range(depth)) + " " * depth + "leaf\n"


#: Values placed at the target's slot: (name, value text, over 1 MB?)
AT_KEY: tuple[tuple[str, Callable[[], str], bool], ...] = (
    ("deep-list-at-key", deep_list, False),
    ("deep-map-at-key", deep_map, False),
    ("alias-bomb-at-key", lambda: BOMB, False),
    ("recursive-alias-at-key", lambda: "&r [1, *r]", False),
    ("python-apply-at-key", lambda: f'!!python/object/apply:os.system ["touch {PWNED}"]', False),
    ("int-5000-digits-at-key", lambda: "9" * 5000, False),
    ("float-overflow-at-key", lambda: "1e400", False),
    ("nan-at-key", lambda: "NaN", False),
    ("yaml-nan-at-key", lambda: ".nan", False),
    ("negative-at-key", lambda: "-1", False),
    ("string-at-key", lambda: '"not a number"', False),
    ("long-string-at-key", lambda: '"' + "x" * (8 * 1024 * 1024) + '"', True),
    ("million-items-at-key", lambda: "[" + ", ".join(["0"] * 1_000_000) + "]", True),
    ("binary-tag-at-key", lambda: "!!binary aGVsbG8=", False),
)


# --------------------------------------------------------------------------- generic


def _at_slot(target: Target, text: str, value: str) -> str:
    out, n = re.subn(target.slot, lambda _: target.slot_prefix + value, text, 1, re.MULTILINE)
    if n != 1:
        raise LookupError(f"{target.path}: slot {target.slot!r} not found in the valid file")
    return out


def _cut(valid: bytes, at: int) -> bytes:
    """Cut short just inside an opening quote or bracket at or after ``at``: a plain YAML
    scalar cut in the middle still reads as valid YAML, an unterminated quote never does."""
    found = re.compile(rb'["{\[]').search(valid, at)
    return valid[: found.end()] if found else valid[:at]


def generic(target: Target, valid: bytes) -> list[Entry]:
    t = target.name
    text = valid.decode("utf-8")
    mid = len(valid) // 2

    def at(value: Callable[[], str]) -> Callable[[], bytes]:
        return lambda: _at_slot(target, text, value()).encode()

    def const(data: bytes) -> Callable[[], bytes]:
        return lambda: data

    out = [
        Entry(t, f"file-{p.stem}", const(p.read_bytes()))
        for p in sorted(GENERIC.iterdir())
        if p.is_file()
    ]
    out += [
        Entry(t, "utf8-bom", const(b"\xef\xbb\xbf" + valid), tolerated=True),
        Entry(t, "crlf", const(valid.replace(b"\n", b"\r\n")), tolerated=True),
        Entry(t, "utf16-le-bom", const(text.encode("utf-16"))),
        Entry(t, "utf16-be", const(text.encode("utf-16-be"))),
        Entry(t, "utf32", const(text.encode("utf-32"))),
        Entry(t, "invalid-utf8", const(valid[:mid] + b"\xff\xfe\xfa" + valid[mid:])),
        Entry(t, "latin1", const(valid[:mid] + "\u00e9t\u00e9".encode("latin-1") + valid[mid:])),
        Entry(t, "overlong-utf8", const(valid[:mid] + b"\xc0\xaf" + valid[mid:])),
        Entry(t, "lone-surrogate", const(valid[:mid] + b"\xed\xa0\x80" + valid[mid:])),
        Entry(t, "truncated-half", const(_cut(valid, len(valid) // 2))),
        Entry(t, "truncated-90pct", const(_cut(valid, len(valid) * 9 // 10))),
        Entry(t, "random-binary", lambda: random.Random(f"hostile-{t}").randbytes(4096)),
        Entry(t, "deep-list", lambda: deep_list().encode()),
        Entry(t, "deep-map", lambda: deep_map().encode()),
        Entry(t, "deep-block", lambda: deep_block().encode()),
        Entry(
            t,
            "huge-padded-60mb",
            lambda: valid + b"\n" + b"#" * (60 * 1024 * 1024) + b"\n",
            big=True,
        ),
        Entry(
            t,
            "many-keys-200k",
            lambda: "".join(f"k{i}: {i}\n" for i in range(200_000)).encode(),
            big=True,
        ),
        Entry(t, "directory", const(b""), special="directory"),
        Entry(t, "dangling-symlink", const(b""), special="dangling-symlink"),
    ]
    for name, value, big in AT_KEY:
        _at_slot(target, text, "0")  # fail at collection when the slot is gone
        out.append(Entry(t, name, at(value), big=big))
    return out


# --------------------------------------------------------------------------- per target

Mutation = Callable[[Any], Any]


def _set(path: str, value: Any) -> Mutation:
    """Set a dotted path (``phases.atomic.spec.model``; ``[0]`` indexes a list)."""

    def apply(doc: Any) -> Any:
        parts = re.findall(r"[^.\[\]]+|\[\d+\]", path)
        node = doc
        for part in parts[:-1]:
            node = node[int(part[1:-1])] if part.startswith("[") else node[part]
        last = parts[-1]
        if last.startswith("["):
            node[int(last[1:-1])] = value
        else:
            node[last] = value
        return doc

    return apply


def _drop(path: str) -> Mutation:
    def apply(doc: Any) -> Any:
        *parents, last = path.split(".")
        node = doc
        for part in parents:
            node = node[part]
        del node[last]
        return doc

    return apply


def _whole(value: Any) -> Mutation:
    return lambda _doc: value


def _suite_mutations() -> dict[str, Mutation]:
    return {
        "runs-zero": _set("runs", 0),
        "runs-negative": _set("runs", -3),
        "runs-string": _set("runs", "seven"),
        "runs-float": _set("runs", 7.5),
        "runs-bool": _set("runs", True),
        "runs-100000": _set("runs", 100_000),
        "runs-100000000000": _set("runs", 100_000_000_000),
        "seed-list": _set("seed", [7]),
        "policy-unknown": _set("policy", "bogus"),
        "models-list": _set("models", ["lfm"]),
        "models-empty": _set("models", {}),
        "model-null": _set("models.lfm", None),
        "provider-unknown": _set("models.lfm.provider", "nope"),
        "latency-negative": _set("models.lfm.latency_s", -1),
        "variant-no-placeholder": _set("variants.atomic", "no placeholder here"),
        "initial-model-ghost": _set("initial.model", "ghost"),
        "initial-timeout-zero": _set("initial.timeout_s", 0),
        "initial-isolation-bad": _set("initial.isolation", "i9"),
        "search-empty-list": _set("search.variant", []),
        "max-candidates-negative": _set("max_candidates", -1),
        "gates-alpha-2": _set("gates.alpha", 2),
        "fallback-ghost": _set("fallback_chain", ["lfm", "ghost"]),
        "literal-secret": _set("models.lfm.api_key", "sk-" + "A1b2" * 10),
        "unknown-top-key": _set("rnus", 7),
        "top-level-list": lambda doc: [doc],
        "missing-models": _drop("models"),
    }


def _cases_mutations() -> dict[str, Mutation]:
    def dup_id(doc: Any) -> Any:
        doc["cases"][1]["id"] = doc["cases"][0]["id"]
        return doc

    return {
        "cases-empty": _set("cases", []),
        "cases-null": _set("cases", None),
        "cases-string": _set("cases", "capital-france"),
        "duplicate-id": dup_id,
        "id-bad-chars": _set("cases[0].id", "Bad Id!"),
        "id-number": _set("cases[0].id", 5),
        "prompt-empty": _set("cases[0].prompt", ""),
        "prompt-list": _set("cases[0].prompt", ["a", "b"]),
        "expect-empty": _set("cases[0].expect", {}),
        "expect-two-kinds": _set("cases[0].expect", {"equals": "Paris", "contains": "Par"}),
        "regex-invalid": _set("cases[0].expect", {"regex": "(unclosed"}),
        "regex-redos": lambda doc: _set(
            "cases[0]",
            {
                "id": "redos",
                "prompt": "Say a",
                "expect": {"regex": "^(a+)+$"},
                "answer": "a",
                "wrong_answer": "a" * 40 + "!",
            },
        )(doc),  # fmt: skip
        "number-string": _set("cases[1].expect", {"number": "hundred"}),
        "tolerance-negative": _set("cases[1].expect", {"number": 100, "tolerance": -1}),
        "max-words-zero": _set("cases[0].restraint", {"max_words": 0}),
        "must-not-contain-number": _set("cases[0].restraint", {"must_not_contain": [5]}),
        "difficulty-2": _set("cases[0].sim", {"difficulty": 2}),
        "case-is-string": _set("cases[0]", "capital-france"),
        "unknown-case-key": _set("cases[0].expected", "Paris"),
        "phase-number": _set("phase", 5),
    }


def _spec_mutations(prefix: str) -> dict[str, Mutation]:
    """Shared by baseline.yaml (``phases.X.spec``) and routing.yaml (``phases.X``)."""
    return {
        "model-ghost": _set(f"{prefix}.model", "ghost"),
        "variant-ghost": _set(f"{prefix}.variant", "ghost"),
        "timeout-negative": _set(f"{prefix}.timeout_s", -5),
        "timeout-inf": _set(f"{prefix}.timeout_s", float("inf")),
        "retries-float": _set(f"{prefix}.retries", 1.5),
        "isolation-bad": _set(f"{prefix}.isolation", "i9"),
        "warmup-string": _set(f"{prefix}.warmup", "no"),
        "model-null": _set(f"{prefix}.model", None),
    }


def _committed_common() -> dict[str, Mutation]:
    return {
        "version-2": _set("version", 2),
        "version-string": _set("version", "1"),
        "version-missing": _drop("version"),
        "phases-list": _set("phases", ["atomic"]),
        "phase-null": _set("phases.atomic", None),
        "phase-number": _set("phases.atomic", 5),
        "spec-id-mismatch": _set("phases.atomic.spec_id", "0000000000"),
        "unknown-phase-key": _set("phases.atomic.surprise", 1),
        "unknown-top-key": _set("phasez", {}),
        "top-level-list": lambda doc: [doc],
    }


def _baseline_mutations() -> dict[str, Mutation]:
    return {
        **_committed_common(),
        **_spec_mutations("phases.atomic.spec"),
        "spec-missing": _drop("phases.atomic.spec"),
        "promoted-negative": _set("phases.atomic.promoted_in_cycle", -1),
        "reason-number": _set("phases.atomic.reason", 5),
        "metrics-list": _set("phases.atomic.metrics", [1, 2]),
        "metrics-runs-string": _set("phases.atomic.metrics.runs", "seven"),
        "metrics-median-string": _set("phases.atomic.metrics.median", "high"),
        "metrics-median-nan": _set("phases.atomic.metrics.median", float("nan")),
        "reserved-extra-knob": _set("phases.atomic.spec.spec_id", "x"),
    }


def _routing_mutations() -> dict[str, Mutation]:
    return {
        **_committed_common(),
        **_spec_mutations("phases.atomic"),
        "fallbacks-string": _set("phases.atomic.fallbacks", "claude-haiku"),
        "fallbacks-blank": _set("phases.atomic.fallbacks", [""]),
        "fallbacks-ghost": _set("phases.atomic.fallbacks", ["ghost"]),
        "extras-list": _set("phases.atomic.extras", [1]),
    }


def _history_mutations() -> dict[str, Mutation]:
    def dup_cycle(doc: Any) -> Any:
        doc["cycles"].append(copy.deepcopy(doc["cycles"][0]))
        return doc

    def backwards(doc: Any) -> Any:
        second = copy.deepcopy(doc["cycles"][0])
        doc["cycles"][0]["cycle"] = 2
        doc["cycles"].append(second)
        return doc

    return {
        "top-level-list": lambda doc: doc["cycles"],
        "version-99": _set("version", 99),
        "version-missing": _drop("version"),
        "cycles-object": _set("cycles", {"1": {}}),
        "cycles-null": _set("cycles", None),
        "cycles-numbers": _set("cycles", [1, 2]),
        "cycles-strings": _set("cycles", ["cycle 1"]),
        "cycle-number-string": _set("cycles[0].cycle", "one"),
        "cycle-number-negative": _set("cycles[0].cycle", -1),
        "cycle-number-missing": lambda doc: (doc["cycles"][0].pop("cycle"), doc)[1],
        "duplicate-cycle": dup_cycle,
        "cycles-backwards": backwards,
        "phases-list": _set("cycles[0].phases", ["atomic"]),
        "phase-number": _set("cycles[0].phases.atomic", 5),
        "baseline-after-string": _set("cycles[0].phases.atomic.baseline_after", "x"),
        "metrics-median-string": _set(
            "cycles[0].phases.atomic.baseline_after.metrics.median", "high"
        ),
        "pending-number": _set("cycles[0].pending", 5),
        "candidates-object": _set("cycles[0].phases.atomic.candidates", {"a": 1}),
        "unknown-top-key": _set("surprise", 1),
        "runs-string": _set("cycles[0].runs", "seven"),
    }


def _log_lines() -> dict[str, Callable[[list[str]], list[str]]]:
    def put(i: int, line: str) -> Callable[[list[str]], list[str]]:
        return lambda lines: [*lines[:i], line, *lines[i:]]

    def edit(key: str, value: Any) -> Callable[[list[str]], list[str]]:
        def apply(lines: list[str]) -> list[str]:
            first = json.loads(lines[0])
            first[key] = value
            return [json.dumps(first, separators=(",", ":")), *lines[1:]]

        return apply

    def drop(key: str) -> Callable[[list[str]], list[str]]:
        def apply(lines: list[str]) -> list[str]:
            first = json.loads(lines[0])
            del first[key]
            return [json.dumps(first, separators=(",", ":")), *lines[1:]]

        return apply

    return {
        "line-not-json": put(1, "this is not json"),
        "line-list": put(1, "[1, 2, 3]"),
        "line-null": put(1, "null"),
        "line-number": put(1, "42"),
        "line-empty-object": put(1, "{}"),
        "blank-line-middle": put(1, ""),
        "torn-last-line": lambda lines: [*lines[:-1], lines[-1][: len(lines[-1]) // 2]],
        "event-number": edit("event", 5),
        "event-blank": edit("event", ""),
        "event-missing": drop("event"),
        "cycle-string": edit("cycle", "one"),
        "cycle-negative": edit("cycle", -1),
        "phase-number": edit("phase", 5),
        "detail-string": edit("detail", "x"),
        "cycles-backwards": lambda lines: [*lines, lines[0].replace('"cycle":1', '"cycle":0', 1)],
        "nul-in-line": put(1, '{"cycle":1,"phase":"atomic\x00","event":"decision"}'),
        "line-10mb": put(
            1,
            '{"cycle":1,"phase":"atomic","event":"decision","label":"'
            + "x" * (10 * 1024 * 1024)
            + '"}',
        ),  # fmt: skip
        "cr-only-line-ends": lambda lines: ["\r".join(lines)],
        "line-yaml": put(1, "cycle: 1\nphase: atomic"),
    }


#: Well-formed but extreme: a long-context prompt of 10 MB (under the 16 MiB file cap) is the
#: user's call, as long as it loads in time.
TOLERATED = frozenset({"prompt-10mb"})


def _sub(pattern: str, make: Callable[[], str]) -> Callable[[str], str]:
    """A text mutation: the first match of ``pattern`` (MULTILINE) replaced by ``make()``.
    Huge entries are written as text: dumping 100,000 mappings through PyYAML takes minutes."""

    def apply(text: str) -> str:
        out, n = re.subn(pattern, lambda _: make(), text, count=1, flags=re.MULTILINE)
        if n != 1:
            raise LookupError(f"{pattern!r} not found in the valid file")
        return out

    return apply


TEXT_MUTATIONS: dict[str, dict[str, Callable[[str], str]]] = {
    "suite": {
        "models-100000": _sub(
            r"^models:.*\n",
            lambda: (
                "models:\n"
                + "".join(
                    f"  m{i}: {{provider: sim, skill: {{atomic: 0.5}}}}\n" for i in range(100_000)
                )
            ),
        ),
        "search-100000-values": _sub(
            r"^  timeout_s: \[.*\]$",
            lambda: "  timeout_s: [" + ", ".join(str(i) for i in range(1, 100_001)) + "]",
        ),
    },
    "cases": {
        "cases-100000": lambda text: (
            "phase: atomic\ncases:\n"
            + "".join(
                f"  - {{id: case-{i}, prompt: 'What is {i} + 1?', expect: {{number: {i + 1}}}}}\n"
                for i in range(100_000)
            )
        ),
        "prompt-10mb": _sub(r"^    prompt: .*$", lambda: "    prompt: " + "word " * (2 << 20)),
    },
}

#: Specific entries over 1 MB.
BIG = frozenset(
    {"models-100000", "search-100000-values", "cases-100000", "prompt-10mb", "line-10mb"}
)


def _render_log(lines: list[str], change: Callable[[list[str]], list[str]]) -> bytes:
    return ("\n".join(change(list(lines))) + "\n").encode()


def _render(target: Target, text: str, mutate: Mutation) -> bytes:
    doc = json.loads(text) if target.fmt == "json" else yaml.load(text, Loader=_LOADER)
    changed = mutate(doc)
    if target.fmt == "json":
        return (json.dumps(changed, indent=2, allow_nan=True) + "\n").encode()
    return yaml.dump(
        changed, Dumper=_DUMPER, sort_keys=False, allow_unicode=True, width=1_000_000
    ).encode()


def specific(target: Target, valid: bytes) -> list[Entry]:
    t = target.name
    text = valid.decode("utf-8")
    out: list[Entry] = []
    if target.fmt == "jsonl":
        lines = text.splitlines()
        for name, change in _log_lines().items():
            out.append(
                Entry(t, name, functools.partial(_render_log, lines, change), big=name in BIG)
            )
        return out
    table = {
        "suite": _suite_mutations,
        "cases": _cases_mutations,
        "baseline": _baseline_mutations,
        "routing": _routing_mutations,
        "history": _history_mutations,
    }[t]()
    for name, change in TEXT_MUTATIONS.get(t, {}).items():
        out.append(
            Entry(
                t,
                name,
                functools.partial(lambda c: c(text).encode(), change),
                tolerated=name in TOLERATED,
                big=name in BIG,
            )
        )
    for name, mutate in table.items():
        out.append(
            Entry(
                t,
                name,
                functools.partial(_render, target, text, mutate),
                tolerated=name in TOLERATED,
                big=name in BIG,
            )
        )
    return out


def corpus(target: str, valid: bytes) -> list[Entry]:
    """Every entry for ``target`` (a key of TARGETS), built from its valid bytes."""
    tgt = TARGETS[target]
    entries = [*generic(tgt, valid), *specific(tgt, valid)]
    names = [e.name for e in entries]
    assert len(names) == len(set(names)), "corpus entry names must be unique per target"
    return entries


def full_corpus(root: Path) -> list[Entry]:
    """The corpus for all six targets, from the valid files under ``root``."""
    return [e for t in TARGETS.values() for e in corpus(t.name, (root / t.path).read_bytes())]
