"""Text formats of the committed files, reading side: validating parsers.

Pure string -> data functions, no file system. YAML is read with a safe loader that refuses
duplicate keys, after the depth and alias limits of ``suite/bounded.py``; JSON with the same
limits. Then everything is validated so that every error names file, key and what was
expected: a person fixing a hand-edited ``baseline.yaml`` needs all three. An empty file is
an error, never "no baseline": reading it as empty would forget the committed champion.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from pytest_selfopt.loop.spec import CORE_KNOBS, ISOLATIONS, Scalar, Spec
from pytest_selfopt.loop.types import PendingCandidate, PhaseBaseline, Recommendation, Route
from pytest_selfopt.store.formats import FORMAT_VERSION, INT_METRICS, METRIC_ORDER, FilesError
from pytest_selfopt.store.historyform import HISTORY_VERSION, expand_phase
from pytest_selfopt.suite.bounded import (
    MAX_COMMITTED_VALUES,
    LimitError,
    SafeLoaderBase,
    check_yaml,
    load_json,
)


class _UniqueKeyLoader(SafeLoaderBase):  # type: ignore[misc,valid-type]
    """safe_load that refuses duplicate keys instead of silently keeping the last."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            duplicate = key in seen
        except TypeError:
            continue  # unhashable key: construct_mapping reports it
        if duplicate:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=True)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_yaml(text: str, name: str) -> Any:
    """Parse YAML within limits or raise FilesError naming the file and the line."""
    try:
        check_yaml(text, max_values=MAX_COMMITTED_VALUES)
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except LimitError as exc:
        raise FilesError(f"{name}: {exc}; restore it from git") from None
    except yaml.YAMLError as exc:
        where = ""
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f" (line {mark.line + 1}, column {mark.column + 1})"
        at = getattr(exc, "position", None)
        if mark is None and at is not None:
            where = f" (character {at + 1})"
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise FilesError(f"{name}: not valid YAML: {problem}{where}") from None
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise FilesError(f"{name}: not valid YAML: {first}") from None


def empty_file_error(name: str) -> FilesError:
    """An empty (or null, or comment-only) committed file: never read as "nothing yet"."""
    return FilesError(
        f"{name}: the file is empty, so the committed state "
        f"would be forgotten; restore it with `git checkout -- {name}`, or start over from "
        "the suite's initial spec by deleting baseline.yaml, routing.yaml, history.json and "
        "decisions.log together"
    )


def _got(value: Any) -> str:
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value)


def _mapping(value: Any, name: str, key: str, *, allow_none: bool = False) -> dict[str, Any]:
    if value is None and allow_none:
        return {}
    if not isinstance(value, dict):
        raise FilesError(f"{name}: {key}: expected a mapping, got {_got(value)}")
    for k in value:
        if not isinstance(k, str):
            raise FilesError(f"{name}: {key}: expected names as strings, got {k!r}")
    return value


def _known(data: Mapping[str, Any], allowed: Sequence[str], name: str, key: str) -> None:
    for k in data:
        if k not in allowed:
            raise FilesError(
                f"{name}: {key}.{k}: unknown key; expected one of {', '.join(allowed)}"
            )


def _knob(knob: str, value: Any, name: str, key: str) -> Scalar:
    """Validate one knob value; the message is the one a person fixing the file needs."""
    where = f"{name}: {key}.{knob}"
    if knob in ("model", "variant"):
        if not isinstance(value, str) or not value.strip():
            raise FilesError(f"{where}: expected a non-empty string, got {_got(value)}")
        return value
    if knob == "timeout_s":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not ok or not math.isfinite(value) or value <= 0:
            raise FilesError(f"{where}: expected a number of seconds > 0, got {_got(value)}")
        return float(value)
    if knob == "retries":
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise FilesError(f"{where}: expected a whole number >= 0, got {_got(value)}")
        return value
    if knob == "isolation":
        if value not in ISOLATIONS or not isinstance(value, str):
            raise FilesError(f"{where}: expected one of {', '.join(ISOLATIONS)}, got {_got(value)}")
        return value
    if knob == "warmup":
        if not isinstance(value, bool):
            raise FilesError(f"{where}: expected true or false, got {_got(value)}")
        return value
    if not isinstance(value, (str, int, float, bool)):
        raise FilesError(f"{where}: expected a string, number or boolean, got {_got(value)}")
    return value


def _spec(knobs: Mapping[str, Any], extras: Mapping[str, Any], name: str, key: str) -> Spec:
    for knob in CORE_KNOBS:
        if knob not in knobs:
            raise FilesError(
                f"{name}: {key}.{knob}: missing; every spec needs {', '.join(CORE_KNOBS)}"
            )
    core = {k: _knob(k, knobs[k], name, key) for k in CORE_KNOBS}
    extra = tuple((k, _knob(k, v, name, key)) for k, v in extras.items())
    for k, _ in extra:
        if k in CORE_KNOBS or k == "spec_id":
            raise FilesError(f"{name}: {key}.{k}: reserved name, cannot be an extra knob")
    return Spec(
        model=str(core["model"]),
        variant=str(core["variant"]),
        timeout_s=float(core["timeout_s"]),
        retries=int(core["retries"]),
        isolation=str(core["isolation"]),
        warmup=bool(core["warmup"]),
        extra=extra,
    )


def _check_spec_id(spec: Spec, value: Any, name: str, key: str) -> None:
    if value is None:
        return  # a missing spec_id is recomputed on the next write
    if value != spec.id:
        raise FilesError(
            f"{name}: {key}.spec_id: spec_id does not match the spec (expected {spec.id}, "
            f"got {_got(value)}): its model, variant or a knob was edited by hand; restore "
            f"the file with `git checkout -- {name}`, or delete spec_id to keep the edit (the "
            "edited spec must still name a model and variant of the suite config)"
        )


def _phases(data: Any, name: str) -> dict[str, Any]:
    if data is None:
        raise empty_file_error(name)
    top = _mapping(data, name, "(top level)")
    _known(top, ("version", "phases"), name, "(top level)")
    if "version" not in top:
        raise FilesError(
            f"{name}: version: missing; expected `version: {FORMAT_VERSION}` (every file the "
            "plugin writes has it: was the file cut short or written by hand?)"
        )
    version = top["version"]
    if version != FORMAT_VERSION or isinstance(version, bool):
        raise FilesError(f"{name}: version: expected {FORMAT_VERSION}, got {_got(version)}")
    return _mapping(top.get("phases"), name, "phases", allow_none=True)


def _metrics(value: Any, name: str, key: str) -> dict[str, Any] | None:
    if value is None:
        return None
    metrics = _mapping(value, name, key)
    out: dict[str, Any] = {}
    for k, v in metrics.items():
        if k in INT_METRICS:
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise FilesError(f"{name}: {key}.{k}: expected a whole number >= 0, got {_got(v)}")
        elif v is not None and (
            not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v)
        ):
            raise FilesError(f"{name}: {key}.{k}: expected a finite number or null, got {_got(v)}")
        elif k in METRIC_ORDER and isinstance(v, int):
            v = float(v)
        out[k] = v
    return out


BASELINE_KEYS = ("spec", "spec_id", "promoted_in_cycle", "reason", "metrics", "reference")
_PASSED_RUNS = re.compile(r"([0-9]+)/([0-9]+)")


def _reference(value: Any, name: str, key: str) -> dict[str, tuple[int, int]]:
    """``case_id: passed/runs`` lines (absent: the phase was never measured per case)."""
    out: dict[str, tuple[int, int]] = {}
    for case_id, text in _mapping(value, name, key, allow_none=True).items():
        found = _PASSED_RUNS.fullmatch(text) if isinstance(text, str) else None
        if found is None:
            raise FilesError(
                f"{name}: {key}.{case_id}: expected 'passed/runs' like 5/7, got {_got(text)}"
            )
        passed, runs = int(found[1]), int(found[2])
        if runs < 1 or passed > runs:
            raise FilesError(
                f"{name}: {key}.{case_id}: expected 'passed/runs' with 1 <= runs and "
                f"passed <= runs, got {text}"
            )
        out[case_id] = (passed, runs)
    return out


ROUTE_KEYS = ("model", "fallbacks", *CORE_KNOBS[1:], "extras", "spec_id")


def parse_baseline(text: str, name: str) -> dict[str, PhaseBaseline]:
    """Validated baseline.yaml content, by phase."""
    out: dict[str, PhaseBaseline] = {}
    for phase, entry in _phases(load_yaml(text, name), name).items():
        key = f"phases.{phase}"
        entry = _mapping(entry, name, key)
        _known(entry, BASELINE_KEYS, name, key)
        if "spec" not in entry:
            raise FilesError(f"{name}: {key}.spec: missing; expected the phase's spec")
        knobs = _mapping(entry["spec"], name, f"{key}.spec")
        spec = _spec(
            knobs, {k: v for k, v in knobs.items() if k not in CORE_KNOBS}, name, f"{key}.spec"
        )
        _check_spec_id(spec, entry.get("spec_id"), name, key)
        cycle = entry.get("promoted_in_cycle", 0)
        if not isinstance(cycle, int) or isinstance(cycle, bool) or cycle < 0:
            raise FilesError(
                f"{name}: {key}.promoted_in_cycle: expected a whole number >= 0, got {_got(cycle)}"
            )
        reason = entry.get("reason", "")
        if not isinstance(reason, str):
            raise FilesError(f"{name}: {key}.reason: expected a string, got {_got(reason)}")
        metrics = _metrics(entry.get("metrics"), name, f"{key}.metrics")
        if "reference" in entry and entry["reference"] is None:  # absent: never measured
            raise FilesError(
                f"{name}: {key}.reference: expected 'case_id: passed/runs' lines, got nothing "
                f"(the file may have been cut short); restore it with `git checkout -- {name}`"
            )
        reference = _reference(entry.get("reference"), name, f"{key}.reference")
        out[phase] = PhaseBaseline(phase, spec, metrics, cycle, reason, reference)
    return out


def parse_routing(text: str, name: str) -> dict[str, Route]:
    """Validated routing.yaml content, by phase."""
    out: dict[str, Route] = {}
    for phase, entry in _phases(load_yaml(text, name), name).items():
        key = f"phases.{phase}"
        entry = _mapping(entry, name, key)
        _known(entry, ROUTE_KEYS, name, key)
        extras = _mapping(entry.get("extras"), name, f"{key}.extras", allow_none=True)
        spec = _spec(entry, extras, name, key)
        _check_spec_id(spec, entry.get("spec_id"), name, key)
        fallbacks = entry.get("fallbacks") or []
        if not isinstance(fallbacks, list) or not all(
            isinstance(m, str) and m.strip() for m in fallbacks
        ):
            raise FilesError(
                f"{name}: {key}.fallbacks: expected a list of model names, got {_got(fallbacks)}"
            )
        out[phase] = Route(phase, spec, tuple(fallbacks))
    return out


def _whole(value: Any, name: str, key: str, lo: int = 0) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < lo:
        raise FilesError(f"{name}: {key}: expected a whole number >= {lo}, got {_got(value)}")
    return value


def _text(value: Any, name: str, key: str) -> str:
    if not isinstance(value, str):
        raise FilesError(f"{name}: {key}: expected a string, got {_got(value)}")
    return value


def _list(value: Any, name: str, key: str) -> list[Any]:
    if not isinstance(value, list):
        raise FilesError(f"{name}: {key}: expected a list, got {_got(value)}")
    return value


def _history_spec(value: Any, name: str, key: str) -> None:
    """A ``{spec_id, spec, metrics}`` record (baseline_before/after) or null."""
    if value is None:
        return
    rec = _mapping(value, name, key)
    if "spec_id" in rec:
        _text(rec["spec_id"], name, f"{key}.spec_id")
    if rec.get("spec") is not None:
        _mapping(rec["spec"], name, f"{key}.spec")
    _metrics(rec.get("metrics"), name, f"{key}.metrics")


def _history_phase(record: Any, name: str, key: str) -> None:
    """The parts of a phase record that the loop and the reports read back."""
    rec = _mapping(record, name, key)
    for part in ("baseline_before", "baseline_after"):
        _history_spec(rec.get(part), name, f"{key}.{part}")
    _metrics(rec.get("measured_baseline"), name, f"{key}.measured_baseline")
    if rec.get("winner") is not None:
        _text(rec["winner"], name, f"{key}.winner")
    for j, cand in enumerate(_list(rec.get("candidates", []), name, f"{key}.candidates")):
        ckey = f"{key}.candidates[{j}]"
        c = _mapping(cand, name, ckey)
        if "spec_id" not in c:
            raise FilesError(f"{name}: {ckey}.spec_id: missing; every candidate has one")
        _text(c["spec_id"], name, f"{ckey}.spec_id")
        for k in ("label", "origin"):
            if k in c:
                _text(c[k], name, f"{ckey}.{k}")
        _metrics(c.get("metrics"), name, f"{ckey}.metrics")
        if c.get("decision") is not None:
            decision = _mapping(c["decision"], name, f"{ckey}.decision")
            if "verdict" in decision:
                _text(decision["verdict"], name, f"{ckey}.decision.verdict")
    for part in ("patterns",):
        if rec.get(part) is not None:
            _mapping(rec[part], name, f"{key}.{part}")
    for part in ("diagnoses", "recommendations", "enforced"):
        if part in rec:
            _list(rec[part], name, f"{key}.{part}")


_RECOMMENDATION_FIELDS = frozenset(f.name for f in dataclasses.fields(Recommendation))


def _pending(value: Any, name: str, key: str) -> None:
    """Pending candidates are turned back into objects next cycle: prove it works now."""
    for j, item in enumerate(_list(value, name, key)):
        pkey = f"{key}[{j}]"
        p = _mapping(item, name, pkey)
        for k in ("phase", "spec", "recommendation", "proposed_in_cycle"):
            if k not in p:
                raise FilesError(f"{name}: {pkey}.{k}: missing")
        _text(p["phase"], name, f"{pkey}.phase")
        knobs = _mapping(p["spec"], name, f"{pkey}.spec")
        _spec(knobs, {k: v for k, v in knobs.items() if k not in CORE_KNOBS and k != "spec_id"},
              name, f"{pkey}.spec")  # fmt: skip
        rec = _mapping(p["recommendation"], name, f"{pkey}.recommendation")
        _known(rec, sorted(_RECOMMENDATION_FIELDS), name, f"{pkey}.recommendation")
        _whole(p["proposed_in_cycle"], name, f"{pkey}.proposed_in_cycle")
        try:
            PendingCandidate.from_dict(p)
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            raise FilesError(f"{name}: {pkey}: not a pending candidate ({exc})") from None


def parse_history(text: str, name: str) -> list[dict[str, Any]]:
    """Validated history.json: the list of cycle entries, numbered 1, 2, ... upwards.

    Both layouts are read: version 2 (the compact one ``dump_history`` writes, expanded back
    to the in-memory records of ``loop/learn.py``) and version 1 (indented, as committed
    before), so every reader sees the same records whichever wrote them. Every part the loop
    or a report reads back is checked for its shape here, so a bad file fails at the start of
    a cycle, naming the key, not somewhere inside it."""
    if not text.strip():
        raise empty_file_error(name)
    try:
        doc = load_json(text)
    except LimitError as exc:
        raise FilesError(f"{name}: {exc}; restore it from git") from None
    except json.JSONDecodeError as exc:
        raise FilesError(
            f"{name}: not valid JSON: {exc}; restore it with `git checkout -- {name}`"
        ) from None
    if doc is None:
        raise empty_file_error(name)
    top = _mapping(doc, name, "(top level)")
    _known(top, ("version", "cycles"), name, "(top level)")
    version = top.get("version")
    if version not in (FORMAT_VERSION, HISTORY_VERSION) or isinstance(version, bool):
        raise FilesError(
            f"{name}: version: expected {HISTORY_VERSION} (or {FORMAT_VERSION}, the older "
            f"indented layout), got {_got(version)}"
        )
    cycles = top.get("cycles", [])
    if not isinstance(cycles, list):
        raise FilesError(f"{name}: cycles: expected a list, got {_got(cycles)}")
    last = 0
    for i, entry in enumerate(cycles):
        key = f"cycles[{i}]"
        if not isinstance(entry, dict):
            raise FilesError(f"{name}: {key}: expected an object, got {_got(entry)}")
        if "cycle" not in entry:
            raise FilesError(f"{name}: {key}.cycle: missing; every entry records its number")
        number = _whole(entry["cycle"], name, f"{key}.cycle", lo=1)
        if number <= last:
            raise FilesError(
                f"{name}: {key}.cycle: {number} after cycle {last}; cycle numbers must "
                "increase (two cycles written at once, or a bad merge?); restore it from git"
            )
        last = number
        for k, lo in (("seed", None), ("runs", 1)):
            if k in entry:
                value = entry[k]
                if lo is None:
                    if not isinstance(value, int) or isinstance(value, bool):
                        raise FilesError(
                            f"{name}: {key}.{k}: expected a whole number, got {_got(value)}"
                        )
                else:
                    _whole(value, name, f"{key}.{k}", lo=lo)
        if "policy" in entry:
            _text(entry["policy"], name, f"{key}.policy")
        phases = _mapping(entry.get("phases", {}), name, f"{key}.phases")
        for phase, record in phases.items():
            pkey = f"{key}.phases.{phase}"
            if version == HISTORY_VERSION:  # the compact form: back to the in-memory record
                phases[phase] = record = expand_phase(phase, record, name, pkey)
            _history_phase(record, name, pkey)
        if "pending" in entry:
            _pending(entry["pending"], name, f"{key}.pending")
    return cycles


#: Characters of one decisions.log record; a real one (gates, evidence) is a few kilobytes.
MAX_LOG_LINE = 1024 * 1024
_EVENT = re.compile(r"[a-z][a-z0-9_]*")


def parse_log(text: str, name: str) -> list[dict[str, Any]]:
    """Validated decisions.log: one JSON object per line, cycles never going down.

    Checked before anything is appended, so a bad line is reported (with its number) instead
    of being buried under new records; a last line without its newline is a cut-off write."""
    if not text.strip():
        raise empty_file_error(name)
    if not text.endswith("\n"):
        last = text.count("\n") + 1
        raise FilesError(
            f"{name}: line {last}: cut short (the file does not end with a newline, as an "
            "interrupted write leaves it); restore it from git"
        )
    records: list[dict[str, Any]] = []
    last_cycle = 0
    for number, line in enumerate(text[:-1].split("\n"), 1):
        where = f"{name}: line {number}"
        if not line.strip():
            raise FilesError(f"{where}: blank; every line is one JSON record")
        if len(line) > MAX_LOG_LINE:
            raise FilesError(
                f"{where}: {len(line):,} characters, above the limit of {MAX_LOG_LINE:,} for "
                "one record; restore it from git"
            )
        try:
            record = load_json(line)
        except LimitError as exc:
            raise FilesError(f"{where}: {exc}; restore it from git") from None
        except json.JSONDecodeError as exc:
            raise FilesError(f"{where}: not valid JSON ({exc.msg}, column {exc.colno})") from None
        if not isinstance(record, dict):
            raise FilesError(f"{where}: expected a JSON object, got {_got(record)}")
        for k in ("cycle", "phase", "event"):
            if k not in record:
                raise FilesError(f"{where}: {k}: missing; every record has cycle, phase, event")
        cycle = record["cycle"]
        if not isinstance(cycle, int) or isinstance(cycle, bool) or cycle < 1:
            raise FilesError(f"{where}: cycle: expected a whole number >= 1, got {_got(cycle)}")
        if cycle < last_cycle:
            raise FilesError(
                f"{where}: cycle: {cycle} after cycle {last_cycle}; records are appended in "
                "cycle order (a bad merge?); restore it from git"
            )
        last_cycle = cycle
        if not (isinstance(record["event"], str) and _EVENT.fullmatch(record["event"])):
            raise FilesError(
                f"{where}: event: expected an event name like decision or promote, "
                f"got {_got(record['event'])}"
            )
        for k in ("phase", "spec_id", "label", "git_commit"):
            if k in record and not (isinstance(record[k], str) and (record[k] or k == "label")):
                raise FilesError(
                    f"{where}: {k}: expected a non-empty string, got {_got(record[k])}"
                )
        if "detail" in record and not isinstance(record["detail"], dict):
            raise FilesError(f"{where}: detail: expected an object, got {_got(record['detail'])}")
        records.append(record)
    return records
