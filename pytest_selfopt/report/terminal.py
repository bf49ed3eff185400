"""What a person reads at the end of a session: the terminal decision matrix and check summary.

Pure functions of a :class:`CycleOutcome` (or check results): no pytest, no files. Text a
model or a user file can control is cleaned for the terminal (no newlines, no escape
sequences); nothing is cut: long lines wrap at the width (docs/architecture.md, reports).
"""

from __future__ import annotations

from collections.abc import Sequence

from pytest_selfopt.loop.outcome import CycleOutcome, PhaseOutcome
from pytest_selfopt.loop.regress import RegressionResult
from pytest_selfopt.report.common import (
    FAIL_MARK,
    NO_MARK,
    PASS_MARK,
    check_detail,
    check_headline,
    check_verdict,
    clean,
    clip,
    decision_reason,
    diagnosis_groups,
    fmt,
    gate_mark,
    gate_names,
    group_title,
    latency,
    rate_change,
    recommendation_text,
    spec_labels,
    wrap,
    written_lines,
)


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


#: The widest a label cell gets; a longer label is written in full on its own line above.
LABEL_CELL = 28
#: The narrowest reason column worth having; narrower: each reason goes under its row.
REASON_MIN = 16


def _matrix_lines(phase: PhaseOutcome, width: int) -> list[str]:
    labels = spec_labels(phase)
    gates = gate_names(phase.decisions)
    short = [f"g{i}" for i in range(1, len(gates) + 1)]  # numbered as in docs/architecture.md
    header = ["spec", "median", "var", "restr", "p50", *short, "decision"]

    def metrics(spec_id: str) -> list[str]:
        stats = phase.stats.get(spec_id)
        if stats is None:
            return ["-", "-", "-", "-"]
        return [
            fmt(stats.median, 3),
            fmt(stats.variance, 4),
            fmt(stats.restraint, 2),
            latency(stats.latency_p50_s),
        ]

    base_id = phase.plan.baseline.id
    rows = [header, ["baseline", *metrics(base_id), *[NO_MARK] * len(gates), "reference"]]
    reasons = ["reason", ""]
    long_labels: dict[int, str] = {}  # row -> a label too wide for its cell, shown above it
    for decision in phase.decisions:
        label = clean(labels.get(decision.spec_id, decision.label))
        if len(label) > LABEL_CELL:  # in full above the row, shortened in its cell
            long_labels[len(rows)] = label
            label = clip(label, LABEL_CELL)
        marks = [gate_mark(decision, g) for g in gates]
        rows.append([label, *metrics(decision.spec_id), *marks, decision.verdict])
        reasons.append(clean(decision_reason(decision)))
    body = _table(rows, right={1, 2, 3, 4})
    used = max(len(line) for line in body) + 4  # indent + separator
    room = width - used
    out = []
    for i, (line, reason) in enumerate(zip(body, reasons)):
        if i in long_labels:
            out += wrap(f"  {long_labels[i]}", width)
        if room >= REASON_MIN:  # reasons fit as the last column, wrapped inside it
            chunks = wrap(reason, room, indent=0) if reason else [""]
            out.append(("  " + line.ljust(used - 4) + "  " + chunks[0]).rstrip())
            out += [" " * used + chunk for chunk in chunks[1:]]
        else:  # too narrow: each reason on its own lines under its row
            out.append("  " + line)
            if i > 0 and reason:
                out += wrap(f"      reason: {reason}", width, indent=8)
    legend = "  ".join(f"{k} {g}" for k, g in zip(short, gates))
    out += wrap(f"  gates: {legend}  ({PASS_MARK} passed, {FAIL_MARK} failed)", width)
    return out


def terminal_lines(
    outcome: CycleOutcome, *, written: Sequence[str], dry_run: bool, width: int = 100
) -> list[str]:
    """The end-of-session summary: per phase the decision matrix, diagnoses, what was done.

    No line is longer than ``width``, and nothing is cut: long reasons, diagnoses and
    recommendations continue on indented lines."""
    width = max(width, 40)
    lines = wrap(
        f"selfopt cycle {outcome.cycle} · seed {outcome.seed} · {outcome.runs} runs per spec"
        f" · policy {clean(outcome.policy)}",
        width,
    )
    for phase in outcome.phases:
        lines.append("")
        lines += wrap(f"phase {clean(phase.phase)}", width)
        lines += _matrix_lines(phase, width)
        if phase.winner is not None:
            label = spec_labels(phase).get(phase.winner.spec.id, phase.winner.spec.id)
            lines += wrap(
                f"  winner: {clean(label)} -> new baseline (spec {phase.winner.spec.id})", width
            )
        else:
            lines.append("  no winner: baseline kept")
        groups = diagnosis_groups(phase)
        if groups:
            lines.append("  diagnoses")
        for group in groups:
            lines += wrap(f"    {clean(group.label)}: {group_title(group)}", width)
            shown = group.shown
            cases = [clean(d.case_id or "(spec)") for d in shown]
            case_width = min(max((len(c) for c in cases), default=0), 30)
            for case, d in zip(cases, shown):
                text = f"      {case.ljust(case_width)}  {clean(d.pattern)}  {d.kind}"
                if d.detail:
                    text += f"  {clean(d.detail)}"
                lines += wrap(text, width, indent=10)
        if phase.recommendations:
            lines.append("  recommendations")
            for rec in phase.recommendations:
                lines += wrap(f"    {clean(recommendation_text(rec))}  {clean(rec.reason)}", width)
        if phase.enforced:
            lines.append("  enforced")
            for e in phase.enforced:
                lines += wrap(f"    {clean(e)}", width)
    if outcome.pending:
        lines.append("")
        lines.append(f"pending for the next cycle: {len(outcome.pending)} candidate(s)")
        for pending in outcome.pending:
            rec = pending.recommendation
            lines += wrap(f"  {clean(pending.phase)}: {clean(recommendation_text(rec))}", width)
    held = _held_back_lines(outcome)
    if held:
        lines.append("")
        lines.append(
            "held back next cycle (tried again later, or retired until the baseline changes)"
        )
        for line in held:
            lines += wrap(line, width, indent=6)
    lines.append("")
    for line in written_lines(written, dry_run, outcome.promoted):
        lines += wrap(line, width, indent=4)
    return lines


def _held_back_lines(outcome: CycleOutcome) -> list[str]:
    """Per phase, the candidates the next cycle will not run and why: cooling down (until
    which cycle) or retired. Untried ones that did not fit are listed as waiting."""
    lines = []
    for phase in outcome.phases:
        if phase.outlook is None:
            continue
        outlook = phase.outlook.to_dict()
        for key, word in (
            ("cooling_down", "cooling down"),
            ("retired", "retired"),
            ("waiting", "waiting"),
        ):
            for item in outlook.get(key, []):
                when = ""
                if key == "cooling_down" and item.get("free_in_cycle") is not None:
                    when = f" until cycle {item['free_in_cycle']}"
                elif key == "retired" and item.get("since_cycle") is not None:
                    when = f" since cycle {item['since_cycle']}"
                elif key == "waiting":
                    when = ": no room (max_candidates)"
                lines.append(f"  {clean(phase.phase)}: {clean(item['label'])} {word}{when}")
    return lines


def check_terminal_lines(
    results: Sequence[RegressionResult], *, notes: Sequence[str] = (), width: int = 100
) -> list[str]:
    """``--selfopt-check`` summary: a line per phase, every case that got worse, then notes.

    ``notes`` are the caller's lines about phases that could not be compared. Wrapped at
    ``width``, never cut."""
    width = max(width, 40)
    lines = wrap(f"selfopt check: {clean(check_headline(results))}", width)
    name_width = min(max((len(clean(r.phase)) for r in results), default=0), 24)
    for r in results:
        phase = clean(r.phase).ljust(name_width)
        verdict = check_verdict(r).ljust(12)
        lines += wrap(f"  {phase}  {verdict}  {clean(check_detail(r))}", width, indent=6)
        for c in r.worse_cases:
            text = (
                f"      {clean(c.case_id)}  {clean(c.committed_pattern)} -> "
                f"{clean(c.measured_pattern)}  (pass rate {rate_change(c)})"
            )
            lines += wrap(text, width, indent=10)
        if r.new_cases:
            new = ", ".join(clean(c) for c in r.new_cases)
            lines += wrap(f"      new since the baseline was measured: {new}", width, indent=10)
        if r.missing_cases:
            gone = ", ".join(clean(c) for c in r.missing_cases)
            lines += wrap(f"      committed but not measured now: {gone}", width, indent=10)
    for note in notes:
        lines += wrap(f"  {clean(note)}", width)
    lines.append("check mode: nothing written")
    return lines
