"""Text formats of the committed files: deterministic dumps and validating parsers.

Pure string <-> data functions, no file system: ``files.py`` does the I/O around them. The
YAML is written by hand so that the same data always gives the same bytes (fixed key order,
fixed float precision, one line per scalar) and a one-knob change is a one-line diff; it is
read back with ``yaml.safe_load`` and validated so that every error names file, key and what
was expected.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from pytest_selfopt.loop.types import (
    CORE_KNOBS,
    ISOLATIONS,
    AuditRecord,
    PhaseBaseline,
    Route,
    Scalar,
    Spec,
)

FORMAT_VERSION = 1
BASELINE_HEADER = "# pytest-selfopt baseline: written by `pytest --selfopt`, reviewed as a diff."
ROUTING_HEADER = (
    "# pytest-selfopt routing: what to run per phase; "
    "applications load it with pytest_selfopt.load_routing()."
)
#: Metric keys in the order of ``SpecStats.metrics()``; unknown keys follow, sorted.
METRIC_ORDER: tuple[str, ...] = (
    "runs",
    "median",
    "mean",
    "variance",
    "restraint",
    "latency_p50_s",
    "latency_p95_s",
    "input_tokens",
    "output_tokens",
    "cost",
    "samples",
    "errored",
)
INT_METRICS = frozenset({"runs", "input_tokens", "output_tokens", "samples", "errored"})
METRIC_DECIMALS = 4
HISTORY_DECIMALS = 6


class FilesError(Exception):
    """A committed file is unreadable or may not be written; the message says where and why."""


# --------------------------------------------------------------------------- YAML scalars

_PLAIN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-/=+:]*")
_RESOLVER = yaml.resolver.Resolver()
# Characters PyYAML accepts raw inside a double-quoted scalar (its printable set minus the
# YAML line breaks \x85, \u2028, \u2029 and the BOM, which would not survive a round trip).
_RAW_OK = re.compile(
    r"[\x20-\x7e\xa0-\u2027\u202a-\ud7ff\ue000-\ufefe\uff00-\ufffd\U00010000-\U0010ffff]"
)


_SHORT_ESCAPES = {"\n": "\\n", "\t": "\\t", "\r": "\\r", "\x00": "\\0"}


def yaml_str(text: str) -> str:
    """A string as a YAML scalar: plain when YAML reads it back as that string, else quoted."""
    if (
        _PLAIN.fullmatch(text)
        and not text.endswith(":")
        and _RESOLVER.resolve(yaml.ScalarNode, text, (True, False)) == "tag:yaml.org,2002:str"
    ):
        return text
    out = ['"']
    for ch in text:
        if ch == '"' or ch == "\\":
            out.append("\\" + ch)
        elif ch in _SHORT_ESCAPES:
            out.append(_SHORT_ESCAPES[ch])
        elif _RAW_OK.match(ch):
            out.append(ch)
        elif ord(ch) <= 0xFF:
            out.append(f"\\x{ord(ch):02x}")
        elif ord(ch) <= 0xFFFF:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(f"\\U{ord(ch):08x}")
    out.append('"')
    return "".join(out)


def yaml_float(value: float) -> str:
    """The shortest spelling that YAML 1.1 reads back as exactly this float."""
    if math.isnan(value):
        return ".nan"
    if math.isinf(value):
        return ".inf" if value > 0 else "-.inf"
    text = repr(value)
    if "e" in text and "." not in text.split("e")[0]:
        mantissa, exponent = text.split("e")
        text = f"{mantissa}.0e{exponent}"  # PyYAML needs a dot before the exponent
    return text


def fixed_float(value: float, decimals: int = METRIC_DECIMALS) -> str:
    """Fixed precision, so re-measured noise below it never shows up in a diff."""
    if not math.isfinite(value):
        return yaml_float(value)
    text = f"{value:.{decimals}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text


def yaml_scalar(value: Any) -> str:
    """Knob values: ``60`` for a whole timeout, exact floats otherwise."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return yaml_float(value)
    if isinstance(value, str):
        return yaml_str(value)
    raise TypeError(f"cannot write {type(value).__name__} {value!r} to YAML")


def _knob_text(knob: str, value: Scalar) -> str:
    # timeout_s is canonicalised to float by Spec, so "60" reads back to the same spec id.
    if knob == "timeout_s" and isinstance(value, float) and value.is_integer():
        return str(int(value))
    return yaml_scalar(value)


def _metric_lines(metrics: Mapping[str, Any], indent: str) -> list[str]:
    keys = [k for k in METRIC_ORDER if k in metrics]
    keys += sorted(k for k in metrics if k not in METRIC_ORDER)
    lines = []
    for key in keys:
        value = metrics[key]
        if isinstance(value, float) and key in INT_METRICS and value.is_integer():
            value = int(value)
        elif (
            isinstance(value, int)
            and not isinstance(value, bool)
            and key in METRIC_ORDER
            and key not in INT_METRICS
        ):
            value = float(value)
        text = fixed_float(value) if isinstance(value, float) else yaml_scalar(value)
        lines.append(f"{indent}{yaml_str(key)}: {text}")
    return lines


# --------------------------------------------------------------------------- dumps


def dump_baseline(baselines: Mapping[str, PhaseBaseline]) -> str:
    """baseline.yaml: per phase the champion spec, its id, when and why it was promoted."""
    lines = [BASELINE_HEADER, f"version: {FORMAT_VERSION}"]
    if not baselines:
        return "\n".join(lines + ["phases: {}"]) + "\n"
    lines.append("phases:")
    for phase in sorted(baselines):
        base = baselines[phase]
        lines.append(f"  {yaml_str(phase)}:")
        lines.append("    spec:")
        lines += [f"      {yaml_str(k)}: {_knob_text(k, v)}" for k, v in base.spec.knobs().items()]
        lines.append(f"    spec_id: {yaml_str(base.spec.id)}")
        lines.append(f"    promoted_in_cycle: {int(base.promoted_in_cycle)}")
        lines.append(f"    reason: {yaml_str(base.reason)}")
        if base.metrics is None:
            lines.append("    metrics: null")
        elif not base.metrics:
            lines.append("    metrics: {}")
        else:
            lines.append("    metrics:")
            lines += _metric_lines(base.metrics, "      ")
    return "\n".join(lines) + "\n"


def dump_routing(routes: Mapping[str, Route]) -> str:
    """routing.yaml: per phase what to run; the file a user's application loads."""
    lines = [ROUTING_HEADER, f"version: {FORMAT_VERSION}"]
    if not routes:
        return "\n".join(lines + ["phases: {}"]) + "\n"
    lines.append("phases:")
    for phase in sorted(routes):
        route = routes[phase]
        knobs = route.spec.knobs()
        lines.append(f"  {yaml_str(phase)}:")
        lines.append(f"    model: {yaml_str(route.spec.model)}")
        if route.fallbacks:
            lines.append("    fallbacks:")
            lines += [f"      - {yaml_str(m)}" for m in route.fallbacks]
        else:
            lines.append("    fallbacks: []")
        for knob in CORE_KNOBS[1:]:
            lines.append(f"    {knob}: {_knob_text(knob, knobs[knob])}")
        if route.spec.extra:
            lines.append("    extras:")
            lines += [f"      {yaml_str(k)}: {_knob_text(k, v)}" for k, v in route.spec.extra]
        else:
            lines.append("    extras: {}")
        lines.append(f"    spec_id: {yaml_str(route.spec.id)}")
    return "\n".join(lines) + "\n"


def plain_json(value: Any, decimals: int = HISTORY_DECIMALS) -> Any:
    """JSON-safe builtins with floats rounded; non-finite floats become null (valid JSON)."""
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        return round(value, decimals) + 0.0  # + 0.0 turns -0.0 into 0.0
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"JSON object keys must be strings, got {k!r}")
            out[k] = plain_json(v, decimals)
        return out
    if isinstance(value, (list, tuple)):
        return [plain_json(v, decimals) for v in value]
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def dump_history(entries: Sequence[Mapping[str, Any]]) -> str:
    """history.json: one entry per cycle, floats rounded to 6 decimals."""
    doc = {"version": FORMAT_VERSION, "cycles": [plain_json(e) for e in entries]}
    return json.dumps(doc, indent=2, sort_keys=False, ensure_ascii=False, allow_nan=False) + "\n"


def dump_log_lines(records: Sequence[AuditRecord], git_commit: str | None) -> str:
    """decisions.log lines; ASCII-escaped so no Unicode line separator can split a record."""
    lines = []
    for record in records:
        data = record.to_dict()
        if git_commit is not None:
            data["git_commit"] = git_commit
        lines.append(json.dumps(plain_json(data), separators=(",", ":"), allow_nan=False))
    return "".join(line + "\n" for line in lines)


# --------------------------------------------------------------------------- parsing


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
