"""Reading history.json for people: scores per cycle, the curve, one line per cycle.

Pure functions over the plain dicts ``loop.learn.history_entry`` writes; used by the
terminal summary, ``selfopt loop`` and ``selfopt report``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def promoted(entry: Mapping[str, Any]) -> bool:
    return any(rec.get("winner") for rec in entry.get("phases", {}).values())


def _median(metrics: Any) -> float | None:
    if isinstance(metrics, Mapping) and isinstance(metrics.get("median"), int | float):
        return float(metrics["median"])
    return None


def phase_scores(rec: Mapping[str, Any]) -> tuple[float | None, float | None]:
    """(median of the baseline as re-measured this cycle, committed baseline median after)."""
    before = _median(rec.get("measured_baseline"))
    after = _median((rec.get("baseline_after") or {}).get("metrics"))
    if after is None and not rec.get("winner"):
        after = before  # the suite's initial spec: committed without metrics, measured here
    return before, after


def _label(spec: Mapping[str, Any], base: Mapping[str, Any] | None) -> str:
    from .loop.types import Spec

    try:
        mine = Spec.from_dict(spec)
        return mine.label(Spec.from_dict(base)) if base else mine.id
    except (KeyError, TypeError, ValueError):
        return str(spec.get("spec_id", "?"))


def cycle_line(entry: Mapping[str, Any]) -> str:
    """``cycle 2: atomic 0.833 (=); extended 0.000 (=), not verified: ...; next: ...``"""
    parts = []
    phases = entry.get("phases", {})
    for phase, rec in phases.items():
        before, after = phase_scores(rec)
        winner = rec.get("winner")
        cands = rec.get("candidates", [])
        if winner:
            label = next((c["label"] for c in cands if c["spec_id"] == winner), winner)
            text = f"{phase} {_num(before)} -> {_num(after)} PROMOTE {label}"
        else:
            text = f"{phase} {_num(before)} (=)"
        failed = [
            f"{c['label']} ({(c.get('decision') or {}).get('verdict', '?')})"
            for c in cands
            if c.get("origin") == "pending"
            and (c.get("decision") or {}).get("verdict") != "PROMOTE"
        ]
        if failed:
            text += ", not verified: " + ", ".join(failed)
        parts.append(text)
    pending = []
    for p in entry.get("pending", []):
        base = ((phases.get(p.get("phase")) or {}).get("baseline_after") or {}).get("spec")
        action = (p.get("recommendation") or {}).get("action", "?")
        pending.append(f"{p.get('phase')} {_label(p.get('spec', {}), base)} ({action})")
    tail = f"; next: {', '.join(pending)}" if pending else ""
    return f"cycle {entry.get('cycle', '?')}: " + "; ".join(parts) + tail


def _num(value: Any) -> str:
    return "-" if value is None else f"{float(value):.3f}"


def curve(history: Sequence[Mapping[str, Any]]) -> dict[str, list[float | None]]:
    """Per phase: the measured start, then the committed baseline median after each cycle."""
    out: dict[str, list[float | None]] = {}
    for entry in history:
        for phase, rec in entry.get("phases", {}).items():
            before, after = phase_scores(rec)
            if phase not in out:
                out[phase] = [before]
            out[phase].append(after)
    return out


def curve_lines(history: Sequence[Mapping[str, Any]]) -> list[str]:
    """``atomic    0.667 -> 0.833 -> 0.833  (ceiling: no promotion since cycle 1)``"""
    points = curve(history)
    width = max((len(p) for p in points), default=0)
    lines = []
    for phase in sorted(points):
        values = points[phase]
        path = " -> ".join(_num(v) for v in values)
        lines.append(f"{phase.ljust(width)}  {path}  ({_phase_note(history, phase)})")
    return lines


def _phase_note(history: Sequence[Mapping[str, Any]], phase: str) -> str:
    entries = [e for e in history if phase in e.get("phases", {})]
    last = entries[-1]
    wins = [int(e["cycle"]) for e in entries if e["phases"][phase].get("winner")]
    pending = [p for p in last.get("pending", []) if p.get("phase") == phase]
    since = f"cycle {wins[-1]}" if wins else "the start"
    _, score = phase_scores(last["phases"][phase])
    if wins and wins[-1] == last.get("cycle"):
        return f"climbing: promoted in cycle {wins[-1]}"
    if pending:
        return f"verifying {len(pending)} pending recommendation(s); no promotion since {since}"
    if score is not None and score >= 1.0:
        return f"ceiling: perfect score since {since}"
    return f"flat: no promotion since {since}"


def ceiling_line(
    history: Sequence[Mapping[str, Any]], left: Mapping[str, Sequence[str]] | None
) -> str:
    last = history[-1]
    cycle = last.get("cycle")
    if promoted(last):
        return f"still climbing: cycle {cycle} promoted; run another cycle"
    if last.get("pending"):
        return f"not at the ceiling yet: cycle {cycle} left recommendations to verify"
    if left is None:
        return (
            f"ceiling reached unless an untried candidate is left: cycle {cycle} promoted nothing "
            "and no recommendation is pending (`selfopt loop` checks the rest)"
        )
    open_ = {p: labels for p, labels in left.items() if labels}
    if open_:
        what = "; ".join(f"{p}: {', '.join(labels)}" for p, labels in open_.items())
        return f"not at the ceiling yet: untried candidates left ({what})"
    return (
        f"ceiling reached: cycle {cycle} promoted nothing, no untried candidate and "
        "no pending recommendation left"
    )
