"""Text formats of the committed files, reading side: validating parsers.

Pure string -> data functions, no file system. Read with a ``yaml.safe_load`` that refuses
duplicate keys, then validated so that every error names file, key and what was expected:
a person fixing a hand-edited ``baseline.yaml`` needs all three.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from pytest_selfopt.loop.spec import CORE_KNOBS, ISOLATIONS, Scalar, Spec
from pytest_selfopt.loop.types import PhaseBaseline, Route
from pytest_selfopt.store.formats import FORMAT_VERSION, INT_METRICS, METRIC_ORDER, FilesError


class _UniqueKeyLoader(yaml.SafeLoader):
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
    """Parse YAML or raise FilesError naming the file and the line."""
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as exc:
        where = ""
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f" (line {mark.line + 1}, column {mark.column + 1})"
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise FilesError(f"{name}: not valid YAML: {problem}{where}") from None


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
            f"got {_got(value)}); was it edited by hand? delete spec_id to recompute"
        )


def _phases(data: Any, name: str) -> dict[str, Any]:
    if data is None:
        return {}
    top = _mapping(data, name, "(top level)")
    _known(top, ("version", "phases"), name, "(top level)")
    version = top.get("version", FORMAT_VERSION)
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
        elif v is not None and (not isinstance(v, (int, float)) or isinstance(v, bool)):
            raise FilesError(f"{name}: {key}.{k}: expected a number or null, got {_got(v)}")
        elif k in METRIC_ORDER and isinstance(v, int):
            v = float(v)
        out[k] = v
    return out


BASELINE_KEYS = ("spec", "spec_id", "promoted_in_cycle", "reason", "metrics")
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
        out[phase] = PhaseBaseline(phase, spec, metrics, cycle, reason)
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


def parse_history(text: str, name: str) -> list[dict[str, Any]]:
    """Validated history.json: the list of cycle entries."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise FilesError(f"{name}: not valid JSON: {exc}") from None
    top = _mapping(doc, name, "(top level)")
    _known(top, ("version", "cycles"), name, "(top level)")
    if top.get("version") != FORMAT_VERSION or isinstance(top.get("version"), bool):
        raise FilesError(
            f"{name}: version: expected {FORMAT_VERSION}, got {_got(top.get('version'))}"
        )
    cycles = top.get("cycles", [])
    if not isinstance(cycles, list):
        raise FilesError(f"{name}: cycles: expected a list, got {_got(cycles)}")
    for i, entry in enumerate(cycles):
        if not isinstance(entry, dict):
            raise FilesError(f"{name}: cycles[{i}]: expected an object, got {_got(entry)}")
    return cycles
