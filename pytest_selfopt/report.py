"""What a person reads after a cycle: terminal decision matrix, pull-request Markdown, JSON.

Pure functions of a :class:`CycleOutcome` (and history entries as plain dicts): no pytest,
no files. Text that can come from a model or a user file (reasons, labels, case ids,
details) is cleaned for the terminal and escaped for Markdown, so a hostile reason can
neither break a table, open HTML, nor mention people in a pull request.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from pytest_selfopt.loop.types import (
    CycleOutcome,
    Decision,
    Diagnosis,
    PhaseBaseline,
    PhaseOutcome,
    Route,
    Scalar,
    SpecStats,
    format_scalar,
)

GATE_ORDER: tuple[str, ...] = ("samples", "stability", "improvement", "restraint")
KIND_ORDER: tuple[str, ...] = ("cold_start", "capability_limit", "timeout_bound", "flaky")
STABLE = "stable_pass"
PASS_MARK, FAIL_MARK, NO_MARK = "✓", "✗", "-"
_PATTERN = re.compile(r"\[[FP,]*\]")


# --------------------------------------------------------------------------- shared helpers


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _fmt(value: Any, digits: int) -> str:
    number = _num(value)
    return "-" if number is None else f"{number:.{digits}f}"


def _latency(value: Any) -> str:
    number = _num(value)
    return "-" if number is None else f"{number:.2f}s"


def _labels(phase: PhaseOutcome) -> dict[str, str]:
    """spec id -> label: ``baseline`` for the reference, else what differs from it."""
    out = {phase.plan.baseline.id: "baseline"}
    for cand in phase.plan.candidates:
        out.setdefault(cand.spec.id, cand.spec.label(phase.plan.baseline))
    for decision in phase.decisions:
        if decision.spec_id != phase.plan.baseline.id:
            out[decision.spec_id] = decision.label
    return out


def _reason(decision: Decision) -> str:
    """The reason without a leading ``VERDICT:`` that the decision column already shows."""
    prefix = f"{decision.verdict}: "
    return decision.reason.removeprefix(prefix)


def _gate_names(decisions: Sequence[Decision]) -> list[str]:
    names = list(GATE_ORDER)
    for decision in decisions:
        names += [g.name for g in decision.gates if g.name not in names]
    return names


def _gate_mark(decision: Decision, gate: str) -> str:
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


def _diagnosis_groups(phase: PhaseOutcome) -> list[_Group]:
    """The baseline and every spec with a non-stable case; a candidate's repeats are counted."""
    labels = _labels(phase)
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


def _group_title(group: _Group) -> str:
    same = f" ({group.same} as baseline)" if group.same else ""
    return f"{_counts(group.found)}{same}"


def _counts(found: Sequence[Diagnosis]) -> str:
    counts: dict[str, int] = {}
    for d in found:
        counts[d.kind] = counts.get(d.kind, 0) + 1
    parts = [f"{counts.pop(STABLE)} stable"] if STABLE in counts else []
    for kind in [*KIND_ORDER, *sorted(counts)]:
        if kind in counts:
            parts.append(f"{counts.pop(kind)} {kind}")
    return ", ".join(parts)


def _recommendation_text(rec: Any) -> str:
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


def _baseline_changes(phase: PhaseOutcome) -> list[tuple[str, str, str]]:
    before, after = phase.baseline_before, phase.baseline_after
    return _knob_changes(dict(before.spec.knobs()), dict(after.spec.knobs()))


def _route_changes(phase: PhaseOutcome) -> list[tuple[str, str, str]]:
    after = _route_knobs(phase.route_after)
    assert after is not None
    return _knob_changes(_route_knobs(phase.route_before), after)


# --------------------------------------------------------------------------- terminal

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def clean(text: str) -> str:
    """One terminal line: no newlines, no escape sequences a model could smuggle in."""
    text = text.replace("\r\n", " ").replace("\n", " ").replace("\t", " ")
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def clip(text: str, width: int) -> str:
    """At most ``width`` characters, with an ellipsis when cut."""
    width = max(width, 1)
    return text if len(text) <= width else text[: width - 1] + "…"


def _table(rows: Sequence[Sequence[str]], right: set[int]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ]
        lines.append("  ".join(cells).rstrip())
    return lines


def _matrix_lines(phase: PhaseOutcome, width: int) -> list[str]:
    labels = _labels(phase)
    gates = _gate_names(phase.decisions)
    short = [f"g{i}" for i in range(1, len(gates) + 1)]  # numbered as in DESIGN.md §8
    header = ["spec", "median", "var", "restr", "p50", *short, "decision"]

    def metrics(spec_id: str) -> list[str]:
        stats = phase.stats.get(spec_id)
        if stats is None:
            return ["-", "-", "-", "-"]
        return [
            _fmt(stats.median, 3),
            _fmt(stats.variance, 4),
            _fmt(stats.restraint, 2),
            _latency(stats.latency_p50_s),
        ]

    base_id = phase.plan.baseline.id
    rows = [header, ["baseline", *metrics(base_id), *[NO_MARK] * len(gates), "reference"]]
    reasons = ["reason", ""]
    for decision in phase.decisions:
        label = clip(clean(labels.get(decision.spec_id, decision.label)), 28)
        marks = [_gate_mark(decision, g) for g in gates]
        rows.append([label, *metrics(decision.spec_id), *marks, decision.verdict])
        reasons.append(clean(_reason(decision)))
    body = _table(rows, right={1, 2, 3, 4})
    used = max(len(line) for line in body) + 4  # indent + separator
    room = width - used
    out = []
    for i, (line, reason) in enumerate(zip(body, reasons)):
        if room >= 16:  # reasons fit as the last column
            out.append(("  " + line.ljust(used - 4) + "  " + clip(reason, room)).rstrip())
        else:  # too narrow: each reason on its own line under its row
            out.append("  " + line)
            if i > 0 and reason:
                out.append(clip(f"      reason: {reason}", width))
    legend = "  ".join(f"{k} {g}" for k, g in zip(short, gates))
    out.append(clip(f"  gates: {legend}  ({PASS_MARK} passed, {FAIL_MARK} failed)", width))
    return out


def terminal_lines(
    outcome: CycleOutcome, *, written: Sequence[str], dry_run: bool, width: int = 100
) -> list[str]:
    """The end-of-session summary: per phase the decision matrix, diagnoses, what was done."""
    width = max(width, 40)
    lines = [
        clip(
            f"selfopt cycle {outcome.cycle} · seed {outcome.seed} · {outcome.runs} runs per spec"
            f" · policy {clean(outcome.policy)}",
            width,
        )
    ]
    for phase in outcome.phases:
        lines.append("")
        lines.append(clip(f"phase {clean(phase.phase)}", width))
        lines += _matrix_lines(phase, width)
        if phase.winner is not None:
            label = _labels(phase).get(phase.winner.spec.id, phase.winner.spec.id)
            lines.append(
                clip(
                    f"  winner: {clean(label)} -> new baseline (spec {phase.winner.spec.id})", width
                )
            )
        else:
            lines.append("  no winner: baseline kept")
        groups = _diagnosis_groups(phase)
        if groups:
            lines.append("  diagnoses")
        for group in groups:
            lines.append(clip(f"    {clean(group.label)}: {_group_title(group)}", width))
            shown = group.shown
            case_width = min(max((len(clean(d.case_id or "(spec)")) for d in shown), default=0), 30)
            for d in shown:
                case = clip(clean(d.case_id or "(spec)"), 30).ljust(case_width)
                text = f"      {case}  {clean(d.pattern)}  {d.kind}"
                if d.detail:
                    text += f"  {clean(d.detail)}"
                lines.append(clip(text.rstrip(), width))
        if phase.recommendations:
            lines.append("  recommendations")
            for rec in phase.recommendations:
                lines.append(
                    clip(f"    {clean(_recommendation_text(rec))}  {clean(rec.reason)}", width)
                )
        if phase.enforced:
            lines.append("  enforced")
            lines += [clip(f"    {clean(e)}", width) for e in phase.enforced]
    if outcome.pending:
        lines.append("")
        lines.append(f"pending for the next cycle: {len(outcome.pending)} candidate(s)")
        for pending in outcome.pending:
            rec = pending.recommendation
            lines.append(
                clip(f"  {clean(pending.phase)}: {clean(_recommendation_text(rec))}", width)
            )
    lines.append("")
    lines += _written_lines(written, dry_run, outcome.promoted)
    return lines


def _written_lines(written: Sequence[str], dry_run: bool, promoted: bool) -> list[str]:
    if dry_run:
        return ["dry run: nothing written"]
    names = {str(w).replace("\\", "/").rsplit("/", 1)[-1] for w in written}
    out = []
    if not names & {"baseline.yaml", "routing.yaml"}:
        why = "nothing promoted" if not promoted else "no change"
        out.append(f"{why}: baseline.yaml and routing.yaml unchanged")
    out.append("written: " + ", ".join(str(w) for w in written) if written else "nothing written")
    return out


# --------------------------------------------------------------------------- Markdown

_MD_ESCAPES = {
    "\\": "\\\\",
    "`": "\\`",
    "*": "\\*",
    "_": "\\_",
    "[": "\\[",
    "]": "\\]",
    "~": "\\~",
    "|": "\\|",
    "&": "&amp;",
    "<": "&lt;",
    ">": "&gt;",
    "#": "\\#",
}


def escape_md(text: str) -> str:
    """Inline-safe Markdown: cannot break a table, open HTML, start code or mention anyone."""
    text = clean(str(text))
    out = []
    for ch in text:
        if ch == "@":
            out.append("@\u200b")  # a zero-width space: GitHub does not see a mention
        else:
            out.append(_MD_ESCAPES.get(ch, ch))
    return "".join(out)


def _md_table(
    header: Sequence[str], align: Sequence[str], rows: Sequence[Sequence[str]]
) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _md_matrix(phase: PhaseOutcome) -> list[str]:
    labels = _labels(phase)
    gates = _gate_names(phase.decisions)
    header = [
        "spec",
        "median",
        "variance",
        "restraint",
        "latency p50",
        *[f"{escape_md(g)} gate" for g in gates],
        "decision",
        "reason",
    ]
    align = ["---", "--:", "--:", "--:", "--:", *[":-:"] * len(gates), "---", "---"]

    def metrics(spec_id: str) -> list[str]:
        stats = phase.stats.get(spec_id)
        if stats is None:
            return ["-"] * 4
        return [
            _fmt(stats.median, 3),
            _fmt(stats.variance, 4),
            _fmt(stats.restraint, 2),
            _latency(stats.latency_p50_s),
        ]

    rows = [["baseline", *metrics(phase.plan.baseline.id), *[""] * len(gates), "reference", ""]]
    for d in phase.decisions:
        verdict = f"**{escape_md(d.verdict)}**" if d.verdict == "PROMOTE" else escape_md(d.verdict)
        rows.append(
            [
                escape_md(labels.get(d.spec_id, d.label)),
                *metrics(d.spec_id),
                *[_gate_mark(d, g) for g in gates],
                verdict,
                escape_md(_reason(d)),
            ]
        )
    return _md_table(header, align, rows)


def _md_changes(phase: PhaseOutcome) -> list[str]:
    rows = [
        ["baseline.yaml", escape_md(k), escape_md(b), escape_md(a)]
        for k, b, a in _baseline_changes(phase)
    ]
    rows += [
        ["routing.yaml", escape_md(k), escape_md(b), escape_md(a)]
        for k, b, a in _route_changes(phase)
    ]
    if not rows:
        return ["_No change to baseline or routing._"]
    return _md_table(["file", "knob", "before", "after"], ["---"] * 4, rows)


def _md_pattern(pattern: str) -> str:
    return f"`{pattern}`" if _PATTERN.fullmatch(pattern) else escape_md(pattern)


def _md_diagnoses(phase: PhaseOutcome) -> list[str]:
    lines = []
    for group in _diagnosis_groups(phase):
        lines.append(f"- {escape_md(group.label)}: {_group_title(group)}")
        for d in group.shown:
            text = f"  - {escape_md(d.case_id or '(spec)')} {_md_pattern(d.pattern)} {d.kind}"
            if d.detail:
                text += f" — {escape_md(d.detail)}"
            lines.append(text)
    return lines


def _metric_rows(phase: PhaseOutcome) -> list[list[str]]:
    labels = _labels(phase)
    origins = {c.spec.id: c.origin for c in phase.plan.candidates}
    rows = []
    for spec in phase.plan.specs:
        stats = phase.stats.get(spec.id)
        if stats is None:
            continue
        accs = ", ".join(_fmt(a, 3) for a in stats.run_accuracies)
        rows.append(
            [
                escape_md(labels.get(spec.id, spec.id)),
                escape_md(spec.id),
                escape_md(origins.get(spec.id, "baseline")),
                str(stats.runs),
                _fmt(stats.median, 4),
                _fmt(stats.mean, 4),
                _fmt(stats.variance, 4),
                _fmt(stats.restraint, 4),
                _latency(stats.latency_p50_s),
                _latency(stats.latency_p95_s),
                str(stats.input_tokens),
                str(stats.output_tokens),
                _fmt(stats.cost, 4),
                str(stats.samples),
                str(stats.errored),
                accs,
            ]
        )
    return rows


def _md_details(phase: PhaseOutcome) -> list[str]:
    rows = _metric_rows(phase)
    if not rows:
        return []
    header = [
        "spec",
        "spec id",
        "origin",
        "runs",
        "median",
        "mean",
        "variance",
        "restraint",
        "p50",
        "p95",
        "input tokens",
        "output tokens",
        "cost",
        "samples",
        "errored",
        "run accuracies",
    ]
    return [
        f"<details><summary>Full metrics: {escape_md(phase.phase)}</summary>",
        "",
        *_md_table(header, ["---"] * 3 + ["--:"] * 12 + ["---"], rows),
        "",
        "</details>",
    ]


def _outcome_curve(outcome: CycleOutcome) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for phase in outcome.phases:
        out[phase.phase] = _baseline_median(phase.baseline_after, phase.stats)
    return out


def _baseline_median(base: PhaseBaseline, stats: Mapping[str, SpecStats]) -> float | None:
    if base.metrics is not None and _num(base.metrics.get("median")) is not None:
        return _num(base.metrics.get("median"))
    measured = stats.get(base.spec.id)
    return None if measured is None else _num(measured.median)


def _md_curve(outcome: CycleOutcome, history: Sequence[Mapping[str, Any]]) -> list[str]:
    points = curve(history)
    seen = {c for series in points.values() for c, _ in series}
    if outcome.cycle not in seen:
        for phase, median in _outcome_curve(outcome).items():
            points.setdefault(phase, []).append((outcome.cycle, median))
    cycles = sorted({c for series in points.values() for c, _ in series})
    if not cycles:
        return []
    phases = sorted(points)
    lines = [
        "### Improvement curve",
        "",
        "```mermaid",
        "xychart-beta",
        '    title "Committed baseline median per cycle"',
        '    x-axis "cycle" [' + ", ".join(str(c) for c in cycles) + "]",
        '    y-axis "median run accuracy" 0 --> 1',
    ]
    gaps = False
    for phase in phases:
        values = dict(points[phase])
        row = []
        for c in cycles:
            v = values.get(c)
            gaps |= v is None
            row.append(f"{v:.3f}" if v is not None else "0")
        lines.append("    line [" + ", ".join(row) + "]")
    lines.append("```")
    lines.append("")
    legend = "; ".join(f"line {i}: {escape_md(p)}" for i, p in enumerate(phases, 1))
    lines.append(
        f"Lines in order — {legend}."
        + (" A cycle without a measured baseline is drawn at 0." if gaps else "")
    )
    return lines


def markdown(
    outcome: CycleOutcome,
    *,
    history: Sequence[Mapping[str, Any]] = (),
    written: Sequence[str] = (),
    dry_run: bool = False,
) -> str:
    """The pull-request body: decisions, what changed, diagnoses, curve, full metrics."""
    promoted = [p.phase for p in outcome.phases if p.winner is not None]
    headline = (
        f"{len(promoted)} promotion(s): {', '.join(escape_md(p) for p in promoted)}"
        if promoted
        else "no promotion"
    )
    policy = escape_md(outcome.policy)
    lines = [
        f"## pytest-selfopt cycle {outcome.cycle}: {headline}",
        "",
        f"seed {outcome.seed} · {outcome.runs} runs per spec · policy {policy}",
    ]
    for phase in outcome.phases:
        lines += ["", f"### Phase {escape_md(phase.phase)}", "", *_md_matrix(phase), ""]
        lines += ["**What changed**", "", *_md_changes(phase)]
        diag = _md_diagnoses(phase)
        if diag:
            lines += ["", "**Diagnoses**", "", *diag]
        if phase.recommendations:
            lines += ["", "**Recommendations**", ""]
            for rec in phase.recommendations:
                cases = (
                    f" (cases: {', '.join(escape_md(c) for c in rec.evidence)})"
                    if rec.evidence
                    else ""
                )
                lines.append(
                    f"- {escape_md(_recommendation_text(rec))} — {escape_md(rec.reason)}{cases}"
                )
        if phase.enforced:
            lines += ["", "**Enforced**", "", *[f"- {escape_md(e)}" for e in phase.enforced]]
        details = _md_details(phase)
        if details:
            lines += ["", *details]
    if outcome.pending:
        lines += ["", "### Pending for the next cycle", ""]
        for p in outcome.pending:
            lines.append(
                f"- {escape_md(p.phase)}: {escape_md(_recommendation_text(p.recommendation))}"
                f" (spec {escape_md(p.spec.id)})"
            )
    curve_md = _md_curve(outcome, history)
    if curve_md:
        lines += ["", *curve_md]
    lines += [
        "",
        "---",
        "",
        *[escape_md(x) for x in _written_lines(written, dry_run, outcome.promoted)],
    ]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- JSON and curve


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(value, "to_dict"):
        return _plain(value.to_dict())
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    raise TypeError(f"cannot put {type(value).__name__} into the JSON report")


def _baseline_doc(base: PhaseBaseline) -> dict[str, Any]:
    return {
        "spec_id": base.spec.id,
        "spec": base.spec.to_dict(),
        "metrics": _plain(base.metrics),
        "promoted_in_cycle": base.promoted_in_cycle,
        "reason": base.reason,
    }


def _route_doc(route: Route | None) -> dict[str, Any] | None:
    if route is None:
        return None
    return {
        "spec_id": route.spec.id,
        "spec": route.spec.to_dict(),
        "fallbacks": list(route.fallbacks),
    }


def _stats_doc(stats: SpecStats) -> dict[str, Any]:
    doc = dict(stats.metrics())
    doc["run_accuracies"] = list(stats.run_accuracies)
    doc["patterns"] = [p.to_dict() for p in stats.patterns]
    return {k: _plain(v) for k, v in doc.items()}


def json_document(
    outcome: CycleOutcome, samples: Sequence[Mapping[str, Any]] = ()
) -> dict[str, Any]:
    """Everything the cycle decided and measured, as JSON-able builtins."""
    phases = []
    for phase in outcome.phases:
        labels = _labels(phase)
        phases.append(
            {
                "phase": phase.phase,
                "baseline_before": _baseline_doc(phase.baseline_before),
                "baseline_after": _baseline_doc(phase.baseline_after),
                "route_before": _route_doc(phase.route_before),
                "route_after": _route_doc(phase.route_after),
                "candidates": [
                    {
                        "spec_id": c.spec.id,
                        "label": labels.get(c.spec.id, c.spec.id),
                        "origin": c.origin,
                        "spec": c.spec.to_dict(),
                        "recommendation": _plain(c.recommendation),
                    }
                    for c in phase.plan.candidates
                ],
                "stats": {sid: _stats_doc(s) for sid, s in phase.stats.items()},
                "decisions": [d.to_dict() for d in phase.decisions],
                "diagnoses": [d.to_dict() for d in phase.diagnoses],
                "recommendations": [r.to_dict() for r in phase.recommendations],
                "winner": None if phase.winner is None else phase.winner.spec.id,
                "enforced": list(phase.enforced),
            }
        )
    return {
        "cycle": outcome.cycle,
        "seed": outcome.seed,
        "runs": outcome.runs,
        "policy": outcome.policy,
        "promoted": outcome.promoted,
        "phases": phases,
        "pending": [p.to_dict() for p in outcome.pending],
        "audit": [a.to_dict() for a in outcome.audit],
        "samples": [_plain(s) for s in samples],
    }


def _entry_median(entry: Mapping[str, Any]) -> float | None:
    after = entry.get("baseline_after")
    if not isinstance(after, Mapping):
        return None
    metrics = after.get("metrics")
    if isinstance(metrics, Mapping) and _num(metrics.get("median")) is not None:
        return _num(metrics.get("median"))
    before = entry.get("baseline_before")
    same_spec = isinstance(before, Mapping) and before.get("spec_id") == after.get("spec_id")
    measured = entry.get("measured_baseline")  # the committed spec, re-measured this cycle
    if same_spec and isinstance(measured, Mapping):
        if isinstance(measured.get("metrics"), Mapping):
            measured = measured["metrics"]
        return _num(measured.get("median"))
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


def _curve_note(history: Sequence[Mapping[str, Any]], phase: str, last: float | None) -> str:
    entries = [
        e["phases"][phase]
        for e in history
        if isinstance(e.get("phases"), Mapping) and isinstance(e["phases"].get(phase), Mapping)
    ]
    if not entries:
        return ""
    if not entries[-1].get("candidates"):
        return "  (ceiling: no untried candidate)"
    if last is not None and last >= 1.0:
        return "  (ceiling: perfect score)"
    quiet = 0
    for data in reversed(entries):
        if data.get("winner"):
            break
        quiet += 1
    if quiet >= 2:
        return f"  (plateau: no promotion in the last {quiet} cycles)"
    return ""


def curve_lines(history: Sequence[Mapping[str, Any]]) -> list[str]:
    """``atomic   0.667 → 0.833 → 0.833  (ceiling: no untried candidate)`` per phase."""
    points = curve(history)
    width = max((len(clean(p)) for p in points), default=0)
    lines = []
    for phase in sorted(points):
        values = [v for _, v in points[phase]]
        path = " → ".join("n/a" if v is None else f"{v:.3f}" for v in values)
        note = _curve_note(history, phase, values[-1] if values else None)
        lines.append(f"{clean(phase).ljust(width)}   {path}{note}")
    return lines
