"""Helpers shared by the report modules (``report``, ``markdown``, ``reportjson``).

Internal: what a cycle's outcome looks like to a reader — spec labels, gate marks, grouped
diagnoses, before/after knob changes, the improvement curve read from history — computed
once here so the terminal and the Markdown report can never disagree.
"""

from __future__ import annotations

import math
import re
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from pytest_selfopt.loop.outcome import PhaseOutcome
from pytest_selfopt.loop.regress import CaseChange, RegressionResult
from pytest_selfopt.loop.spec import Scalar, format_scalar
from pytest_selfopt.loop.types import Decision, Diagnosis, Route, Sample

GATE_ORDER: tuple[str, ...] = ("samples", "stability", "improvement", "restraint")
KIND_ORDER: tuple[str, ...] = ("cold_start", "capability_limit", "timeout_bound", "flaky")
STABLE = "stable_pass"
PASS_MARK, FAIL_MARK, NO_MARK = "✓", "✗", "-"
PATTERN = re.compile(r"\[[FP,]*\]")

# --------------------------------------------------------------------------- shared helpers


def num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def fmt(value: Any, digits: int) -> str:
    number = num(value)
    return "-" if number is None else f"{number:.{digits}f}"


def latency(value: Any) -> str:
    number = num(value)
    return "-" if number is None else f"{number:.2f}s"


def spec_labels(phase: PhaseOutcome) -> dict[str, str]:
    """spec id -> label: ``baseline`` for the reference, else what differs from it."""
    out = {phase.plan.baseline.id: "baseline"}
    for cand in phase.plan.candidates:
        out.setdefault(cand.spec.id, cand.spec.label(phase.plan.baseline))
    for decision in phase.decisions:
        if decision.spec_id != phase.plan.baseline.id:
            out[decision.spec_id] = decision.label
    return out


def decision_reason(decision: Decision) -> str:
    """The reason without a leading ``VERDICT:`` that the decision column already shows."""
    prefix = f"{decision.verdict}: "
    return decision.reason.removeprefix(prefix)


def gate_names(decisions: Sequence[Decision]) -> list[str]:
    names = list(GATE_ORDER)
    for decision in decisions:
        names += [g.name for g in decision.gates if g.name not in names]
    return names


def gate_mark(decision: Decision, gate: str) -> str:
    for result in decision.gates:
        if result.name == gate:
            return PASS_MARK if result.passed else FAIL_MARK
    return NO_MARK


def _sort_diagnoses(diagnoses: Iterable[Diagnosis]) -> list[Diagnosis]:
    def rank(d: Diagnosis) -> int:
        return KIND_ORDER.index(d.kind) if d.kind in KIND_ORDER else len(KIND_ORDER)

    return sorted(diagnoses, key=rank)  # stable: keeps the loop's case order within a kind


class _Group(NamedTuple):
    """One spec's diagnoses as shown: the counts of all, the lines of the non-stable ones."""

    label: str
    found: list[Diagnosis]
    shown: list[Diagnosis]  # non-stable, and (for a candidate) not the same as the baseline's
    same: int  # non-stable diagnoses identical to the baseline's, summarised not repeated


def diagnosis_groups(phase: PhaseOutcome) -> list[_Group]:
    """The baseline and every spec with a non-stable case; a candidate's repeats are counted."""
    labels = spec_labels(phase)
    base_id = phase.plan.baseline.id
    order = [s.id for s in phase.plan.specs]
    order += [d.spec_id for d in phase.diagnoses if d.spec_id not in order]
    base_keys = {
        (d.case_id, d.kind, d.pattern)
        for d in phase.diagnoses
        if d.spec_id == base_id and d.kind != STABLE
    }
    groups = []
    for spec_id in dict.fromkeys(order):
        found = [d for d in phase.diagnoses if d.spec_id == spec_id]
        unstable = _sort_diagnoses(d for d in found if d.kind != STABLE)
        if not found or (spec_id != base_id and not unstable):
            continue
        if spec_id == base_id:
            shown, same = unstable, 0
        else:
            shown = [d for d in unstable if (d.case_id, d.kind, d.pattern) not in base_keys]
            same = len(unstable) - len(shown)
        groups.append(_Group(labels.get(spec_id, spec_id), found, shown, same))
    return groups


def group_title(group: _Group) -> str:
    """``4 stable, 2 cold_start`` over the spec's cases; a spec-level diagnosis (one per spec,
    not a case: ``case_id`` None) is named after the counts, never counted as a case."""
    spec_level = list(dict.fromkeys(d.kind for d in group.found if d.case_id is None))
    parts = [_counts(group.found)] + (
        [f"spec-level: {', '.join(spec_level)}"] if spec_level else []
    )
    same = f" ({group.same} as baseline)" if group.same else ""
    return "; ".join(p for p in parts if p) + same


def _counts(found: Sequence[Diagnosis]) -> str:
    counts: dict[str, int] = {}
    for d in found:
        if d.case_id is None:
            continue
        counts[d.kind] = counts.get(d.kind, 0) + 1
    parts = [f"{counts.pop(STABLE)} stable"] if STABLE in counts else []
    for kind in [*KIND_ORDER, *sorted(counts)]:
        if kind in counts:
            parts.append(f"{counts.pop(kind)} {kind}")
    return ", ".join(parts)


def recommendation_text(rec: Any) -> str:
    return f"{rec.action}: {rec.knob}={format_scalar(rec.value)}"


def _knob_changes(
    before: Mapping[str, Scalar | tuple[str, ...]] | None,
    after: Mapping[str, Scalar | tuple[str, ...]],
) -> list[tuple[str, str, str]]:
    out = []
    old = before or {}
    for knob in [*after, *[k for k in old if k not in after]]:
        if before is None or old.get(knob) != after.get(knob):
            out.append((knob, _value_text(old.get(knob)), _value_text(after.get(knob))))
    return out


def _value_text(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, tuple):
        return ", ".join(value) if value else "none"
    return format_scalar(value)


def _route_knobs(route: Route | None) -> dict[str, Scalar | tuple[str, ...]] | None:
    if route is None:
        return None
    knobs: dict[str, Scalar | tuple[str, ...]] = dict(route.spec.knobs())
    knobs["fallbacks"] = route.fallbacks
    return knobs


def baseline_changes(phase: PhaseOutcome) -> list[tuple[str, str, str]]:
    before, after = phase.baseline_before, phase.baseline_after
    return _knob_changes(dict(before.spec.knobs()), dict(after.spec.knobs()))


def route_changes(phase: PhaseOutcome) -> list[tuple[str, str, str]]:
    after = _route_knobs(phase.route_after)
    assert after is not None
    return _knob_changes(_route_knobs(phase.route_before), after)


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def clean(text: str) -> str:
    """One terminal line: no newlines, no escape sequences a model could smuggle in."""
    text = text.replace("\r\n", " ").replace("\n", " ").replace("\t", " ")
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def clip(text: str, width: int) -> str:
    """At most ``width`` characters, with an ellipsis when cut (only for a table cell whose
    full text is shown elsewhere)."""
    width = max(width, 1)
    return text if len(text) <= width else text[: width - 1] + "…"


def wrap(text: str, width: int, indent: int | None = None) -> list[str]:
    """``text`` in lines of at most ``width`` characters, never cut: continuation lines are
    indented by ``indent`` (default: the text's own indentation + 4). CI logs are 80 columns
    wide and a reason cut there is a reason nobody reads (docs/architecture.md, reports)."""
    text = text.rstrip()
    if len(text) <= width:
        return [text]
    lead = len(text) - len(text.lstrip(" "))
    hang = " " * min(lead + 4 if indent is None else indent, max(width // 2, 0))
    lines = textwrap.wrap(
        text,
        width=max(width, len(hang) + 8),
        subsequent_indent=hang,
        break_on_hyphens=False,
        replace_whitespace=False,
    )
    return lines or [text]


def written_lines(written: Sequence[str], dry_run: bool, promoted: bool) -> list[str]:
    if dry_run:
        return ["dry run: nothing written"]
    names = {str(w).replace("\\", "/").rsplit("/", 1)[-1] for w in written}
    out = []
    if not names & {"baseline.yaml", "routing.yaml"}:
        why = "nothing promoted" if not promoted else "no change"
        out.append(f"{why}: baseline.yaml and routing.yaml unchanged")
    out.append("written: " + ", ".join(str(w) for w in written) if written else "nothing written")
    return out


def _entry_median(entry: Mapping[str, Any]) -> float | None:
    after = entry.get("baseline_after")
    if not isinstance(after, Mapping):
        return None
    metrics = after.get("metrics")
    if isinstance(metrics, Mapping) and num(metrics.get("median")) is not None:
        return num(metrics.get("median"))
    before = entry.get("baseline_before")
    same_spec = isinstance(before, Mapping) and before.get("spec_id") == after.get("spec_id")
    measured = entry.get("measured_baseline")  # the committed spec, re-measured this cycle
    if same_spec and isinstance(measured, Mapping):
        if isinstance(measured.get("metrics"), Mapping):
            measured = measured["metrics"]
        return num(measured.get("median"))
    return None


def curve(history: Sequence[Mapping[str, Any]]) -> dict[str, list[tuple[int, float | None]]]:
    """Per phase, (cycle, committed baseline median after that cycle), in history order."""
    out: dict[str, list[tuple[int, float | None]]] = {}
    for entry in history:
        cycle, phases = entry.get("cycle"), entry.get("phases")
        if not isinstance(cycle, int) or not isinstance(phases, Mapping):
            continue
        for name in sorted(phases):
            data = phases[name]
            if isinstance(data, Mapping):
                out.setdefault(str(name), []).append((cycle, _entry_median(data)))
    return out


# --------------------------------------------------------------------------- check mode


def check_verdict(result: RegressionResult) -> str:
    if result.regressed:
        return "REGRESSED"
    return "ok" if result.effect is not None else "not compared"


def check_detail(result: RegressionResult) -> str:
    """The gate's reason without the verdict the verdict column already shows."""
    return result.reason.removeprefix("REGRESSED: ").removeprefix("ok: ")


def rate_change(change: CaseChange) -> str:
    return f"{change.committed_rate:.2f} → {change.measured_rate:.2f}"


def check_headline(results: Sequence[RegressionResult]) -> str:
    bad = [r.phase for r in results if r.regressed]
    if not results:
        return "nothing compared"
    if not bad:
        return f"no regression in {len(results)} phase(s)"
    return f"{len(bad)} of {len(results)} phase(s) regressed: " + ", ".join(bad)


def sample_failures_line(samples: Sequence[Sample], shard: bool = False) -> str | None:
    """The closing line on failed samples: how many were wrong answers (or broke a
    constraint) and how many failed in transport, so an outage is not read as a bad model.
    ``shard``: a CI shard decides nothing; `selfopt decide` will count them."""
    failed = [s for s in samples if not s.passed]
    if not failed:
        return None
    transport = sum(s.transport_error for s in failed)
    who = "`selfopt decide` counts them" if shard else "the decisions above count them"
    tail = f"(data, not errors: {who})"
    if not transport:
        return f"{len(failed)} of {len(samples)} samples failed their checks {tail}"
    checks = len(failed) - transport
    return (
        f"{len(failed)} of {len(samples)} samples failed: {checks} their checks, {transport} in "
        f"transport (timeouts, connections, 429/5xx) {tail}"
    )
