"""Reading history.json for people: scores per cycle, the curve, one line per cycle.

Pure functions over the plain dicts ``loop.learn.history_entry`` writes; used by the
terminal summary, ``selfopt loop`` and ``selfopt report``. The top level of the file is
validated by the store; inside an entry every value is read defensively (a wrong shape shows
as ``-`` or ``?``, never as a traceback), because a report must work on a hand-edited, an old
or a newer history.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


def as_map(value: Any) -> Mapping[str, Any]:
    """``value`` when it is a mapping, else an empty one."""
    return value if isinstance(value, Mapping) else {}


def as_list(value: Any) -> list[Any]:
    """``value`` when it is a list, else an empty one."""
    return value if isinstance(value, list) else []


def _maps(value: Any) -> list[Mapping[str, Any]]:
    return [v for v in as_list(value) if isinstance(v, Mapping)]


def phases_of(entry: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """The entry's phase records that are records, by phase name."""
    return {str(k): v for k, v in as_map(entry.get("phases")).items() if isinstance(v, Mapping)}


def promoted(entry: Mapping[str, Any]) -> bool:
    return any(rec.get("winner") for rec in phases_of(entry).values())


def _median(metrics: Any) -> float | None:
    value = as_map(metrics).get("median")
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def phase_scores(rec: Mapping[str, Any]) -> tuple[float | None, float | None]:
    """(median of the baseline as re-measured this cycle, committed baseline median after)."""
    before = _median(rec.get("measured_baseline"))
    after = _median(as_map(rec.get("baseline_after")).get("metrics"))
    if after is None and not rec.get("winner"):
        after = before  # the suite's initial spec: committed without metrics, measured here
    return before, after


def _label(spec: Any, base: Any) -> str:
    from pytest_selfopt.loop.spec import Spec

    spec = as_map(spec)
    try:
        mine = Spec.from_dict(spec)
        return mine.label(Spec.from_dict(base)) if isinstance(base, Mapping) else mine.id
    except (KeyError, TypeError, ValueError, AttributeError):
        return str(spec.get("spec_id", "?"))


def _verdict(candidate: Mapping[str, Any]) -> str:
    return str(as_map(candidate.get("decision")).get("verdict", "?"))


def cycle_line(entry: Mapping[str, Any]) -> str:
    """``cycle 2: atomic 0.833 (=); extended 0.000 (=), not verified: ...; next: ...``"""
    parts = []
    phases = phases_of(entry)
    for phase, rec in phases.items():
        before, after = phase_scores(rec)
        winner = rec.get("winner")
        cands = _maps(rec.get("candidates"))
        if winner:
            label = next((c.get("label") for c in cands if c.get("spec_id") == winner), winner)
            text = f"{phase} {_num(before)} -> {_num(after)} PROMOTE {label}"
        else:
            text = f"{phase} {_num(before)} (=)"
        failed = [
            f"{c.get('label', '?')} ({_verdict(c)})"
            for c in cands
            if c.get("origin") == "pending" and _verdict(c) != "PROMOTE"
        ]
        if failed:
            text += ", not verified: " + ", ".join(failed)
        parts.append(text)
    pending = []
    for p in _maps(entry.get("pending")):
        base = as_map(as_map(phases.get(str(p.get("phase")))).get("baseline_after")).get("spec")
        action = as_map(p.get("recommendation")).get("action", "?")
        pending.append(f"{p.get('phase')} {_label(p.get('spec'), base)} ({action})")
    tail = f"; next: {', '.join(pending)}" if pending else ""
    return f"cycle {entry.get('cycle', '?')}: " + "; ".join(parts) + tail


def _num(value: Any) -> str:
    return "-" if value is None else f"{float(value):.3f}"


def curve(history: Sequence[Mapping[str, Any]]) -> dict[str, list[float | None]]:
    """Per phase: the measured start, then the committed baseline median after each cycle."""
    out: dict[str, list[float | None]] = {}
    for entry in history:
        for phase, rec in phases_of(entry).items():
            before, after = phase_scores(rec)
            if phase not in out:
                out[phase] = [before]
            out[phase].append(after)
    return out


def curve_lines(history: Sequence[Mapping[str, Any]]) -> list[str]:
    """``atomic    0.667 -> 0.833 -> 0.833  (flat: no promotion since cycle 1)``"""
    points = curve(history)
    width = max((len(p) for p in points), default=0)
    lines = []
    for phase in sorted(points):
        values = points[phase]
        path = " -> ".join(_num(v) for v in values)
        lines.append(f"{phase.ljust(width)}  {path}  ({_phase_note(history, phase)})")
    return lines


def _phase_note(history: Sequence[Mapping[str, Any]], phase: str) -> str:
    """How one phase stands: climbing, verifying, at a perfect score, or flat.

    "ceiling" here is the phase's score (1.000 cannot be beaten); whether the whole suite has
    anything left to try is :func:`plateau_line`'s word, "plateau"."""
    entries = [e for e in history if phase in phases_of(e)]
    last = entries[-1]
    wins = [e.get("cycle") for e in entries if phases_of(e)[phase].get("winner")]
    pending = [p for p in _maps(last.get("pending")) if p.get("phase") == phase]
    since = f"cycle {wins[-1]}" if wins else "the start"
    _, score = phase_scores(phases_of(last)[phase])
    if wins and wins[-1] == last.get("cycle"):
        return f"climbing: promoted in cycle {wins[-1]}"
    if pending:
        return f"verifying {len(pending)} pending recommendation(s); no promotion since {since}"
    if score is not None and score >= 1.0:
        return f"ceiling: perfect score since {since}"
    return f"flat: no promotion since {since}"


@dataclass(frozen=True)
class NextCycle:
    """One phase's candidates as the next cycle would see them, in the report's words."""

    untried: tuple[str, ...] = ()  # never measured against this baseline
    again: tuple[str, ...] = ()  # measured before; free again after its cool-down
    cooling: tuple[tuple[str, int], ...] = ()  # (label, first cycle it may run again)
    retired: tuple[str, ...] = ()  # rejected twice against this baseline: back only after a change

    @property
    def candidates(self) -> tuple[str, ...]:
        return (*self.untried, *self.again)


def next_cycles(entry: Mapping[str, Any]) -> dict[str, NextCycle] | None:
    """What the cycle recorded about the next one (history ``phases.*.next``, written since
    the loop computes it), or None for an older history without it."""
    phases = phases_of(entry)
    if not phases or any(not isinstance(rec.get("next"), Mapping) for rec in phases.values()):
        return None
    out = {}
    for phase, rec in sorted(phases.items()):
        nxt = as_map(rec.get("next"))
        runnable = [*_maps(nxt.get("planned")), *_maps(nxt.get("waiting"))]

        def labels(items: list[Mapping[str, Any]]) -> tuple[str, ...]:
            return tuple(str(i.get("label", i.get("spec_id", "?"))) for i in items)

        cooling = tuple(
            (str(i.get("label", i.get("spec_id", "?"))), int(i["free_in_cycle"]))
            for i in _maps(nxt.get("cooling_down"))
            if isinstance(i.get("free_in_cycle"), int)
        )
        out[phase] = NextCycle(
            untried=labels([i for i in runnable if i.get("status") != "retry"]),
            again=labels([i for i in runnable if i.get("status") == "retry"]),
            cooling=cooling,
            retired=labels(_maps(nxt.get("retired"))),
        )
    return out


def _open_text(phase: str, left: NextCycle) -> str:
    parts = [*left.untried, *[f"{label} (again after its cool-down)" for label in left.again]]
    return f"{phase}: {', '.join(parts)}"


def _held_text(left: Mapping[str, NextCycle]) -> str:
    """``; cooling down: atomic retries=2 (may run again in cycle 5); retired: ...``"""
    cooling = [
        f"{phase} {label} (may run again in cycle {free})"
        for phase, nxt in left.items()
        for label, free in nxt.cooling
    ]
    retired = [f"{phase} {label}" for phase, nxt in left.items() for label in nxt.retired]
    text = f"; cooling down: {', '.join(cooling)}" if cooling else ""
    if retired:
        text += f"; retired (rejected twice against this baseline): {', '.join(retired)}"
    return text


def plateau_line(history: Sequence[Mapping[str, Any]], left: Mapping[str, NextCycle] | None) -> str:
    """Whether the suite has anything left to gain: climbing, verifying, open, or a plateau.

    ``left``: the next cycle's candidates per phase, when known (:func:`next_cycles`, or
    the suite config read for an older history)."""
    last = history[-1]
    cycle = last.get("cycle")
    if promoted(last):
        return f"still climbing: cycle {cycle} promoted; run another cycle"
    if _maps(last.get("pending")):
        return f"not at a plateau yet: cycle {cycle} left recommendations to verify"
    if left is None:
        return (
            f"plateau unless a candidate is left: cycle {cycle} promoted nothing and no "
            "recommendation is pending (`selfopt loop` checks the rest)"
        )
    open_ = {p: nxt for p, nxt in left.items() if nxt.candidates}
    if open_:
        what = "; ".join(_open_text(p, nxt) for p, nxt in open_.items())
        return f"not at a plateau yet: the next cycle tries {what}"
    return (
        f"plateau reached: cycle {cycle} promoted nothing, no untried candidate and "
        f"no pending recommendation left{_held_text(left)}"
    )
