"""history.json on disk: the compact, line-per-record form (version 2) and back.

Why: history.json is committed with every cycle, and its indented form (one line per metric,
per gate, per pattern run) made a cycle 40-70 KB and 1,000+ lines of every pull request's diff.
A reviewer wants the decisions, not kilobytes of patterns. So the on-disk form differs from the
in-memory record (``loop/learn.py`` ``history_entry``) in two ways, both undone exactly by
``expand_phase`` when the file is read:

* **Layout** (``history_lines``): one line per record that a reviewer reads as a unit: the
  cycle's scalars, each phase's baselines, one line per candidate (its decision first), one
  line per spec's patterns, one line per spec's diagnoses, per recommendation, per enforced
  line, per pending candidate. Still one JSON document (``jq`` reads it).
* **Encoding** (``compact_phase``): a pattern ``[F,P,P]`` is written ``FPP``; a decision
  drops the phase, spec id and label its candidate already names, and puts the verdict and
  reason first; diagnoses are grouped by spec and drop what the record already says (phase,
  spec id, the pattern of the patterns table, zero failure counts).

The encoding is verified, not trusted: a phase record whose compact form does not expand back
to exactly the same data (a hand-made or older record of another shape) is written as it is,
wrapped as ``{"as_recorded": record}``. So reading gives back what was written, always; and
writing the same entries gives the same bytes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from pytest_selfopt.store.formats import FilesError

#: The on-disk layout version of history.json: 1 was the indented form (still read).
HISTORY_VERSION = 2
#: A phase record written as it is (its compact form would not read back the same).
AS_RECORDED = "as_recorded"

#: Key order of the in-memory records (``history_entry``), restored when reading.
CANDIDATE_ORDER = ("spec_id", "label", "origin", "spec", "metrics", "decision")
DECISION_ORDER = ("phase", "spec_id", "label", "verdict", "cause", "estimate", "reason", "gates")
DIAGNOSIS_ORDER = (
    "phase",
    "spec_id",
    "case_id",
    "kind",
    "pattern",
    "detail",
    "failures",
    "transport_failures",
)
#: Key order on disk: what a reviewer reads first comes first.
CANDIDATE_DISK_ORDER = ("label", "decision", "spec_id", "origin", "metrics", "spec")
DECISION_DISK_ORDER = (
    "verdict",
    "cause",
    "estimate",
    "reason",
    "gates",
    "phase",
    "spec_id",
    "label",
)
#: Diagnosis counts left out on disk when zero (the in-memory record always has them).
ZERO_COUNTS = ("failures", "transport_failures")

_BRACKETED = re.compile(r"\[(?:[FP](?:,[FP])*)?\]")
_COMPACT = re.compile(r"[FP]*")


def _ordered(record: Mapping[str, Any], order: Sequence[str]) -> dict[str, Any]:
    """Known keys in ``order``, then the others as they come."""
    out = {k: record[k] for k in order if k in record}
    out.update((k, v) for k, v in record.items() if k not in out)
    return out


# --------------------------------------------------------------------------- encoding


def _compact_patterns(patterns: Any) -> Any:
    if not isinstance(patterns, dict):
        return patterns
    out: dict[str, Any] = {}
    for spec_id, table in patterns.items():
        if not isinstance(table, dict):
            return patterns
        row = {}
        for case_id, pattern in table.items():
            if not (isinstance(pattern, str) and _BRACKETED.fullmatch(pattern)):
                return patterns  # not a run pattern: the phase is written as recorded
            row[case_id] = pattern[1:-1].replace(",", "")
        out[spec_id] = row
    return out


def _compact_candidate(candidate: Any, phase: str) -> Any:
    if not isinstance(candidate, dict):
        return candidate
    out = dict(candidate)
    decision = candidate.get("decision")
    if isinstance(decision, dict):
        trimmed = dict(decision)
        for key, same in (("phase", phase), *((k, candidate.get(k)) for k in ("spec_id", "label"))):
            if key in trimmed and trimmed[key] == same:
                del trimmed[key]
        out["decision"] = _ordered(trimmed, DECISION_DISK_ORDER)
    return _ordered(out, CANDIDATE_DISK_ORDER)


def _table_pattern(patterns: Any, diagnosis: Mapping[str, Any]) -> str | None:
    """The pattern a diagnosis would get back from the patterns table ("" spec-level)."""
    case_id = diagnosis.get("case_id")
    if case_id is None:
        return ""
    table = patterns.get(diagnosis["spec_id"]) if isinstance(patterns, dict) else None
    if not isinstance(table, dict) or not isinstance(case_id, str):
        return None
    found = table.get(case_id)
    return found if isinstance(found, str) else None


def _compact_diagnoses(diagnoses: Any, phase: str, patterns: Any) -> Any:
    if not isinstance(diagnoses, list):
        return diagnoses
    by_spec: dict[str, list[Any]] = {}
    for d in diagnoses:
        if not (isinstance(d, dict) and isinstance(d.get("spec_id"), str)):
            return diagnoses
        rec = {k: v for k, v in d.items() if k not in ("phase", "spec_id")}
        if "phase" in d and d["phase"] != phase:
            return diagnoses
        if "pattern" in rec and rec["pattern"] == _table_pattern(patterns, d):
            del rec["pattern"]
        for key in ZERO_COUNTS:
            if rec.get(key) == 0 and not isinstance(rec.get(key), bool):
                del rec[key]
        by_spec.setdefault(d["spec_id"], []).append(_ordered(rec, DIAGNOSIS_ORDER))
    return by_spec


def compact_phase(phase: str, record: Any) -> Any:
    """The phase record as written (module doc), or wrapped as recorded when its compact form
    would not read back the same."""
    if not isinstance(record, dict):
        return record
    out = dict(record)
    if "patterns" in record:
        out["patterns"] = _compact_patterns(record["patterns"])
    if isinstance(record.get("candidates"), list):
        out["candidates"] = [_compact_candidate(c, phase) for c in record["candidates"]]
    if "diagnoses" in record:
        out["diagnoses"] = _compact_diagnoses(record["diagnoses"], phase, record.get("patterns"))
    try:
        same = expand_phase(phase, json.loads(json.dumps(out)), "", "") == record
    except FilesError:
        same = False
    return out if same else {AS_RECORDED: record}


# --------------------------------------------------------------------------- decoding


def _fail(name: str, key: str, expected: str, value: Any) -> FilesError:
    """The error a person fixing the file needs: file, key, what was expected, what is there."""
    got = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
    if isinstance(value, dict):
        got = "a mapping"
    elif isinstance(value, list):
        got = "a list"
    return FilesError(f"{name}: {key}: expected {expected}, got {got}")


def _expand_patterns(patterns: Any, name: str, key: str) -> dict[str, dict[str, str]]:
    if not isinstance(patterns, dict):
        raise _fail(name, key, "a mapping of spec id to its case patterns", patterns)
    out: dict[str, dict[str, str]] = {}
    for spec_id, table in patterns.items():
        if not isinstance(table, dict):
            raise _fail(name, f"{key}.{spec_id}", "a mapping of case id to pattern", table)
        row = {}
        for case_id, pattern in table.items():
            if not (isinstance(pattern, str) and _COMPACT.fullmatch(pattern)):
                raise _fail(
                    name,
                    f"{key}.{spec_id}.{case_id}",
                    "a run pattern of P and F like PPFP",
                    pattern,
                )
            row[case_id] = "[" + ",".join(pattern) + "]"
        out[spec_id] = row
    return out


def _expand_candidate(candidate: Any, phase: str) -> Any:
    if not isinstance(candidate, dict):
        return candidate  # the in-memory validation names it
    out = dict(candidate)
    decision = candidate.get("decision")
    if isinstance(decision, dict):
        full = {
            "phase": phase,
            "spec_id": candidate.get("spec_id"),
            "label": candidate.get("label"),
        }
        full = {k: v for k, v in full.items() if v is not None}
        out["decision"] = _ordered({**full, **decision}, DECISION_ORDER)
    return _ordered(out, CANDIDATE_ORDER)


def _expand_diagnoses(
    diagnoses: Any, phase: str, patterns: Mapping[str, Mapping[str, str]], name: str, key: str
) -> list[dict[str, Any]]:
    if not isinstance(diagnoses, dict):
        raise _fail(name, key, "a mapping of spec id to its diagnoses", diagnoses)
    out = []
    for spec_id, records in diagnoses.items():
        if not isinstance(records, list):
            raise _fail(name, f"{key}.{spec_id}", "a list of diagnoses", records)
        for j, rec in enumerate(records):
            where = f"{key}.{spec_id}[{j}]"
            if not isinstance(rec, dict):
                raise _fail(name, where, "a diagnosis object", rec)
            full: dict[str, Any] = {"phase": phase, "spec_id": spec_id, **rec}
            case_id = rec.get("case_id")
            if "pattern" not in rec:
                if case_id is None:
                    full["pattern"] = ""
                elif isinstance(case_id, str) and case_id in patterns.get(spec_id, {}):
                    full["pattern"] = patterns[spec_id][case_id]
                else:
                    raise FilesError(
                        f"{name}: {where}.pattern: missing, and the patterns table has none "
                        f"for case {case_id!r} of spec {spec_id}; restore the file from git"
                    )
            for count in ZERO_COUNTS:
                full.setdefault(count, 0)
            out.append(_ordered(full, DIAGNOSIS_ORDER))
    return out


def expand_phase(phase: str, record: Any, name: str, key: str) -> Any:
    """The in-memory phase record of a written one (``compact_phase`` undone); FilesError
    naming ``name`` and ``key`` when a compact part is malformed. Other shapes are left to the
    in-memory validation of ``parse.py``."""
    if not isinstance(record, dict):
        return record
    if set(record) == {AS_RECORDED}:
        return record[AS_RECORDED]
    out = dict(record)
    patterns: dict[str, dict[str, str]] = {}
    if record.get("patterns") is not None:
        patterns = _expand_patterns(record["patterns"], name, f"{key}.patterns")
        out["patterns"] = patterns
    if isinstance(record.get("candidates"), list):
        out["candidates"] = [_expand_candidate(c, phase) for c in record["candidates"]]
    if "diagnoses" in record:
        out["diagnoses"] = _expand_diagnoses(
            record["diagnoses"], phase, patterns, name, f"{key}.diagnoses"
        )
    return out


# --------------------------------------------------------------------------- layout


#: Characters some readers take for a line break: escaped, so one record stays one line.
_LINE_BREAKS = {"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def _inline(value: Any) -> str:
    """One JSON value on one line (these characters occur in JSON only inside strings)."""
    text = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(", ", ": "))
    for raw, escaped in _LINE_BREAKS.items():
        text = text.replace(raw, escaped)
    return text


def _key(key: str) -> str:
    return _inline(key) + ": "


def _joined(items: Sequence[list[str]]) -> list[str]:
    """Items of a JSON list or object, one or more lines each, commas between them."""
    out: list[str] = []
    for i, item in enumerate(items):
        out += item[:-1] + [item[-1] + ("," if i < len(items) - 1 else "")]
    return out


#: Phase-record members written one item per line.
EXPANDED = ("candidates", "patterns", "diagnoses", "recommendations", "enforced")


def _member(key: str, value: Any, indent: str) -> list[str]:
    """``"key": value``, a non-empty list or mapping of ``EXPANDED`` one item per line."""
    head = indent + _key(key)
    if key in EXPANDED and isinstance(value, (list, dict)) and value:
        inner = indent + " "
        if isinstance(value, list):
            items = [[inner + _inline(v)] for v in value]
            opening, closing = "[", "]"
        else:
            items = [[inner + _key(k) + _inline(v)] for k, v in value.items()]
            opening, closing = "{", "}"
        lines = _joined(items)
        return [head + opening, *lines[:-1], lines[-1] + closing]
    return [head + _inline(value)]


def _object_lines(head: str, record: Mapping[str, Any], indent: str) -> list[str]:
    """``head{`` then one member per line, the closing brace on the last one."""
    lines = _joined([_member(k, v, indent) for k, v in record.items()])
    if not lines:
        return [head + "{}"]
    return [head + "{", *lines[:-1], lines[-1] + "}"]


def _phase_lines(phase: str, record: Any) -> list[str]:
    head = "  " + _key(phase)
    if not isinstance(record, dict):
        return [head + _inline(record)]
    if set(record) == {AS_RECORDED} and isinstance(record[AS_RECORDED], dict):
        lines = _object_lines(head + "{" + _key(AS_RECORDED), record[AS_RECORDED], "   ")
        return [*lines[:-1], lines[-1] + "}"]
    return _object_lines(head, record, "   ")


def _cycle_lines(entry: Any) -> list[str]:
    """One cycle: its scalars on the first line, then its phases and its pending candidates."""
    if not isinstance(entry, dict):
        return [_inline(entry)]
    scalars = {k: v for k, v in entry.items() if k not in ("phases", "pending")}
    parts = [_key(k) + _inline(v) for k, v in scalars.items()]
    members: list[list[str]] = []
    phases = entry.get("phases")
    if "phases" in entry:
        if isinstance(phases, dict) and phases:
            body = _joined([_phase_lines(p, compact_phase(p, r)) for p, r in phases.items()])
            members.append([" " + _key("phases") + "{", *body[:-1], body[-1] + "}"])
        else:
            members.append([" " + _key("phases") + _inline(phases)])
    if "pending" in entry:
        members.append(_member_list("pending", entry["pending"]))
    first = "{" + ", ".join(parts)
    if not members:
        return [first + "}"]
    lines = _joined(members)
    return [first + ("," if parts else ""), *lines[:-1], lines[-1] + "}"]


def _member_list(key: str, value: Any) -> list[str]:
    head = " " + _key(key)
    if not (isinstance(value, list) and value):
        return [head + _inline(value)]
    lines = _joined([["  " + _inline(v)] for v in value])
    return [head + "[", *lines[:-1], lines[-1] + "]"]


def history_lines(entries: Sequence[Any]) -> list[str]:
    """The lines of history.json (without newlines) for JSON-able entries."""
    body = _joined([_cycle_lines(e) for e in entries])
    return [f'{{"version": {HISTORY_VERSION}, "cycles": [', *body, "]}"]
