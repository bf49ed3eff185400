"""The pull-request Markdown of a cycle, and of a ``--selfopt-check`` run.

Everything that can come from a model, a user file or a config (reasons, labels, case ids,
details, phase names) goes through :func:`escape_md` (or :func:`escape_html` inside HTML
tags), so it can neither break a table, open or close HTML, start code, nor mention people.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pytest_selfopt.loop.outcome import CycleOutcome, PhaseOutcome
from pytest_selfopt.loop.regress import RegressionResult
from pytest_selfopt.loop.types import PhaseBaseline, SpecStats
from pytest_selfopt.report.common import (
    PATTERN,
    baseline_changes,
    check_detail,
    check_headline,
    check_verdict,
    clean,
    curve,
    decision_reason,
    diagnosis_groups,
    fmt,
    gate_mark,
    gate_names,
    group_title,
    latency,
    num,
    rate_change,
    recommendation_text,
    route_changes,
    spec_labels,
    written_lines,
)

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


_HTML_ENTITIES = {ch: f"&#{ord(ch)};" for ch in "\\`*_[]~|#\"'"} | {
    "&": "&amp;",
    "<": "&lt;",
    ">": "&gt;",
}


def escape_html(text: str) -> str:
    """Text inside an HTML tag (``<summary>``): entities only, since backslashes show there."""
    out = []
    for ch in clean(str(text)):
        out.append("@\u200b" if ch == "@" else _HTML_ENTITIES.get(ch, ch))
    return "".join(out)


def _md_table(
    header: Sequence[str], align: Sequence[str], rows: Sequence[Sequence[str]]
) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _md_matrix(phase: PhaseOutcome) -> list[str]:
    labels = spec_labels(phase)
    gates = gate_names(phase.decisions)
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
            fmt(stats.median, 3),
            fmt(stats.variance, 4),
            fmt(stats.restraint, 2),
            latency(stats.latency_p50_s),
        ]

    rows = [["baseline", *metrics(phase.plan.baseline.id), *[""] * len(gates), "reference", ""]]
    for d in phase.decisions:
        verdict = f"**{escape_md(d.verdict)}**" if d.verdict == "PROMOTE" else escape_md(d.verdict)
        rows.append(
            [
                escape_md(labels.get(d.spec_id, d.label)),
                *metrics(d.spec_id),
                *[gate_mark(d, g) for g in gates],
                verdict,
                escape_md(decision_reason(d)),
            ]
        )
    return _md_table(header, align, rows)


def _md_changes(phase: PhaseOutcome) -> list[str]:
    rows = [
        ["baseline.yaml", escape_md(k), escape_md(b), escape_md(a)]
        for k, b, a in baseline_changes(phase)
    ]
    rows += [
        ["routing.yaml", escape_md(k), escape_md(b), escape_md(a)]
        for k, b, a in route_changes(phase)
    ]
    if not rows:
        return ["_No change to baseline or routing._"]
    return _md_table(["file", "knob", "before", "after"], ["---"] * 4, rows)


def _md_pattern(pattern: str) -> str:
    return f"`{pattern}`" if PATTERN.fullmatch(pattern) else escape_md(pattern)


def _md_diagnoses(phase: PhaseOutcome) -> list[str]:
    lines = []
    for group in diagnosis_groups(phase):
        lines.append(f"- {escape_md(group.label)}: {group_title(group)}")
        for d in group.shown:
            text = f"  - {escape_md(d.case_id or '(spec)')} {_md_pattern(d.pattern)} {d.kind}"
            if d.detail:
                text += f" — {escape_md(d.detail)}"
            lines.append(text)
    return lines


def _metric_rows(phase: PhaseOutcome) -> list[list[str]]:
    labels = spec_labels(phase)
    origins = {c.spec.id: c.origin for c in phase.plan.candidates}
    rows = []
    for spec in phase.plan.specs:
        stats = phase.stats.get(spec.id)
        if stats is None:
            continue
        accs = ", ".join(fmt(a, 3) for a in stats.run_accuracies)
        rows.append(
            [
                escape_md(labels.get(spec.id, spec.id)),
                escape_md(spec.id),
                escape_md(origins.get(spec.id, "baseline")),
                str(stats.runs),
                fmt(stats.median, 4),
                fmt(stats.mean, 4),
                fmt(stats.variance, 4),
                fmt(stats.restraint, 4),
                latency(stats.latency_p50_s),
                latency(stats.latency_p95_s),
                str(stats.input_tokens),
                str(stats.output_tokens),
                fmt(stats.cost, 4),
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
        f"<details><summary>Full metrics: {escape_html(phase.phase)}</summary>",
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
    if base.metrics is not None and num(base.metrics.get("median")) is not None:
        return num(base.metrics.get("median"))
    measured = stats.get(base.spec.id)
    return None if measured is None else num(measured.median)


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
                    f"- {escape_md(recommendation_text(rec))} — {escape_md(rec.reason)}{cases}"
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
                f"- {escape_md(p.phase)}: {escape_md(recommendation_text(p.recommendation))}"
                f" (spec {escape_md(p.spec.id)})"
            )
    curve_md = _md_curve(outcome, history)
    if curve_md:
        lines += ["", *curve_md]
    lines += [
        "",
        "---",
        "",
        *[escape_md(x) for x in written_lines(written, dry_run, outcome.promoted)],
    ]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- check mode


def _effect_text(result: RegressionResult) -> str:
    """Today minus committed (mean per-case pass rate) with its 90 % interval; "–" when the
    phase was not compared."""
    if result.effect is None:
        return "–"
    text = f"{result.effect:+.3f}"
    if result.interval is not None:
        lo, hi = result.interval
        text += f" [{lo:+.3f}, {hi:+.3f}]"
    return text


def check_markdown(results: Sequence[RegressionResult], *, notes: Sequence[str] = ()) -> str:
    """``--selfopt-check`` for a pull request: per phase the verdict, then the worse cases.

    ``notes`` are the caller's lines about phases that could not be compared.
    """
    lines = [
        f"## pytest-selfopt check: {escape_md(check_headline(results))}",
        "",
        "The routed spec of every phase, measured now, against the committed baseline; "
        + "nothing was written.",
    ]
    if results:
        rows = []
        for r in results:
            verdict = escape_md(check_verdict(r))
            rows.append(
                [
                    escape_md(r.phase),
                    f"**{verdict}**" if r.regressed else verdict,
                    _effect_text(r),
                    "–" if r.p_value is None else f"{r.p_value:.3f}",
                    fmt(r.tolerance, 3),
                    f"{r.samples} ({r.errored})",
                    escape_md(check_detail(r)),
                ]
            )
        header = ["phase", "verdict", "effect [90 % interval]", "p", "minimum drop"]
        header += ["samples (errored)", "reason"]
        lines += ["", *_md_table(header, ["---", "---", "--:", "--:", "--:", "--:", "---"], rows)]
    for r in results:
        if not r.worse_cases:
            continue
        lines += ["", f"### Cases of {escape_md(r.phase)} that pass less often", ""]
        rows = [
            [
                escape_md(c.case_id),
                escape_md(c.committed_pattern),  # committed evidence: passed/runs
                f"{c.measured[0]}/{c.measured[1]} {_md_pattern(c.measured_pattern)}",
                escape_md(rate_change(c)),
            ]
            for c in r.worse_cases
        ]
        header = ["case", "committed (passed/runs)", "now (runs in order)", "pass rate"]
        lines += _md_table(header, ["---"] * 4, rows)
    if notes:
        lines += ["", *[f"- {escape_md(note)}" for note in notes]]
    new = [r for r in results if r.new_cases]
    if new:
        lines += ["", "<details><summary>Cases new since the baseline was measured</summary>", ""]
        for r in new:
            cases = ", ".join(escape_md(c) for c in r.new_cases)
            lines.append(f"- {escape_md(r.phase)}: {cases}")
        lines += ["", "</details>"]
    return "\n".join(lines) + "\n"
