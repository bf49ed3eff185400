"""Text formats of the committed files, writing side: deterministic dumps.

Pure data -> string functions, no file system: ``files.py`` does the I/O around them. The
YAML is written by hand so that the same data always gives the same bytes (fixed key order,
fixed float precision, one line per scalar) and a one-knob change is a one-line diff. The
reading side (validating parsers) is ``parse.py``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import yaml

from pytest_selfopt.loop.spec import CORE_KNOBS, Scalar
from pytest_selfopt.loop.types import AuditRecord, PhaseBaseline, Route

FORMAT_VERSION = 1
BASELINE_HEADER = "# pytest-selfopt baseline: written by `pytest --selfopt`, reviewed as a diff."
ROUTING_HEADER = (
    "# pytest-selfopt routing: what to run per phase; "
    "applications load it with pytest_selfopt.load_routing()."
)
#: After ``reference:`` in baseline.yaml, for the person reading the file.
REFERENCE_COMMENT = (
    "# per case: passed/runs of the champion's measurement (--selfopt-check compares with it)"
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
    resolve: Callable[..., str] = _RESOLVER.resolve
    if (
        _PLAIN.fullmatch(text)
        and not text.endswith(":")
        and resolve(yaml.ScalarNode, text, (True, False)) == "tag:yaml.org,2002:str"
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
    """baseline.yaml: per phase the champion spec, its id, when and why it was promoted, its
    metrics and (once measured) its per-case ``reference``, one ``case: passed/runs`` line per
    case, sorted, so a re-measured case is a one-line diff."""
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
        if base.reference:
            lines.append(f"    reference:   {REFERENCE_COMMENT}")
            lines += [
                f"      {yaml_str(case_id)}: {passed}/{runs}"
                for case_id, (passed, runs) in sorted(base.reference.items())
            ]
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
    """history.json: one entry per cycle, floats rounded to 6 decimals, in the compact
    line-per-record form of ``historyform.py`` (a cycle is a few dozen reviewable lines)."""
    # Imported here: historyform raises this module's FilesError when reading.
    from pytest_selfopt.store.historyform import history_lines

    return "\n".join(history_lines([plain_json(e) for e in entries])) + "\n"


def dump_log_lines(records: Sequence[AuditRecord], git_commit: str | None) -> str:
    """decisions.log lines; ASCII-escaped so no Unicode line separator can split a record."""
    lines = []
    for record in records:
        data = record.to_dict()
        if git_commit is not None:
            data["git_commit"] = git_commit
        lines.append(json.dumps(plain_json(data), separators=(",", ":"), allow_nan=False))
    return "".join(line + "\n" for line in lines)
