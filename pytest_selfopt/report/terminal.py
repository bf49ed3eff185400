"""What a person reads after a cycle: terminal decision matrix, pull-request Markdown, JSON.

Pure functions of a :class:`CycleOutcome` (and history entries as plain dicts): no pytest,
no files. This module holds the terminal rendering and is the public face of the others:
``markdown``/``check_markdown``/``escape_md`` live in :mod:`pytest_selfopt.report.markdown`,
``json_document`` in :mod:`pytest_selfopt.report.jsondoc`, shared helpers in
:mod:`pytest_selfopt.report.common`. Text a model or a user file can control is cleaned for the
terminal (no newlines, no escape sequences) and escaped for Markdown.
"""

from __future__ import annotations

from collections.abc import Sequence

from pytest_selfopt.loop.outcome import CycleOutcome, PhaseOutcome
from pytest_selfopt.loop.regress import RegressionResult
from pytest_selfopt.report.common import (
    FAIL_MARK,
    GATE_ORDER,
    KIND_ORDER,
    NO_MARK,
    PASS_MARK,
    STABLE,
    check_detail,
    check_headline,
    check_verdict,
    clean,
    clip,
    curve,
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
    written_lines,
)
from pytest_selfopt.report.history import curve_lines
from pytest_selfopt.report.jsondoc import json_document
from pytest_selfopt.report.markdown import check_markdown, escape_html, escape_md, markdown

__all__ = [
    "FAIL_MARK",
    "GATE_ORDER",
    "KIND_ORDER",
    "NO_MARK",
    "PASS_MARK",
    "STABLE",
    "check_markdown",
    "check_terminal_lines",
    "clean",
    "clip",
    "curve",
    "curve_lines",
    "escape_html",
    "escape_md",
    "json_document",
    "markdown",
    "terminal_lines",
]


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
    labels = spec_labels(phase)
    gates = gate_names(phase.decisions)
    short = [f"g{i}" for i in range(1, len(gates) + 1)]  # numbered as in DESIGN.md §8
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
    for decision in phase.decisions:
        label = clip(clean(labels.get(decision.spec_id, decision.label)), 28)
        marks = [gate_mark(decision, g) for g in gates]
        rows.append([label, *metrics(decision.spec_id), *marks, decision.verdict])
        reasons.append(clean(decision_reason(decision)))
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
            label = spec_labels(phase).get(phase.winner.spec.id, phase.winner.spec.id)
            lines.append(
                clip(
                    f"  winner: {clean(label)} -> new baseline (spec {phase.winner.spec.id})", width
                )
            )
        else:
            lines.append("  no winner: baseline kept")
        groups = diagnosis_groups(phase)
        if groups:
            lines.append("  diagnoses")
        for group in groups:
            lines.append(clip(f"    {clean(group.label)}: {group_title(group)}", width))
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
                    clip(f"    {clean(recommendation_text(rec))}  {clean(rec.reason)}", width)
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
                clip(f"  {clean(pending.phase)}: {clean(recommendation_text(rec))}", width)
            )
    lines.append("")
    lines += written_lines(written, dry_run, outcome.promoted)
    return lines


def check_terminal_lines(
    results: Sequence[RegressionResult], *, notes: Sequence[str] = (), width: int = 100
) -> list[str]:
    """``--selfopt-check`` summary: a line per phase, every case that got worse, then notes.

    ``notes`` are the caller's lines about phases that could not be compared.
    """
    width = max(width, 40)
    lines = [clip(f"selfopt check: {clean(check_headline(results))}", width)]
    name_width = min(max((len(clean(r.phase)) for r in results), default=0), 24)
    for r in results:
        phase = clip(clean(r.phase), 24).ljust(name_width)
        verdict = check_verdict(r).ljust(12)
        lines.append(clip(f"  {phase}  {verdict}  {clean(check_detail(r))}", width))
        for c in r.worse_cases:
            text = (
                f"      {clean(c.case_id)}  {clean(c.committed_pattern)} -> "
                f"{clean(c.measured_pattern)}  (pass rate {rate_change(c)})"
            )
            lines.append(clip(text, width))
        if r.new_cases:
            new = ", ".join(clean(c) for c in r.new_cases)
            lines.append(clip(f"      new since the baseline was measured: {new}", width))
    lines += [clip(f"  {clean(note)}", width) for note in notes]
    lines.append("check mode: nothing written")
    return lines
