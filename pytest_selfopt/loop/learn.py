"""Phase 5, learn: decisions -> the winner, the new baseline, and the cycle's history record.

The baseline never gets worse: only a promoted candidate replaces it. Without a winner the
committed baseline is returned *unchanged* (not refreshed with this cycle's re-measurement),
so a cycle that promotes nothing leaves ``baseline.yaml`` byte-identical — except once: a
champion never measured (``initial``) gets its first usable measurement (metrics and per-case
``reference``), so that ``--selfopt-check`` can guard it.

``history_entry`` is the JSON-able record of one cycle (history.json), keys in this fixed
order, builtins only::

    {"cycle", "seed", "runs", "policy",
     "phases": {phase: {
         "baseline_before": {"spec_id", "spec", "metrics"}, "baseline_after": {...},
         "measured_baseline": metrics of the baseline re-measured this cycle,
         "improvement": winner median - measured baseline median (0.0 without winner),
         "winner": spec id | None,
         "candidates": [{"spec_id", "label", "origin", "spec", "metrics", "decision"}],
             (origin "screen": ran runs 1..k only, metrics["runs"] says k)
         "patterns": {spec_id: {case_id: "[F,P,...]"}},   (run order; on disk "FP...": store/historyform.py)
         "diagnoses": [...], "recommendations": [...], "enforced": [...],
         "next": Outlook.to_dict(): {"planned", "waiting", "cooling_down", "retired"}}},
     "pending": [PendingCandidate.to_dict()]}

A candidate's ``decision`` carries its ``cause`` (``types.Cause``) and ``estimate``.
``tried_from_history`` and ``pending_from_history`` read it back as loop inputs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from pytest_selfopt.loop.decide import pick_winner
from pytest_selfopt.loop.diagnose import outage
from pytest_selfopt.loop.outcome import CycleOutcome, PhaseOutcome
from pytest_selfopt.loop.types import (
    Candidate,
    Cause,
    Decision,
    Origin,
    PendingCandidate,
    PhaseBaseline,
    PhasePlan,
    SpecStats,
    TriedSpec,
    Verdict,
)


def learn(
    phase: str,
    plan: PhasePlan,
    stats: Mapping[str, SpecStats],
    decisions: Sequence[Decision],
    baseline_before: PhaseBaseline,
    cycle: int,
) -> tuple[Candidate | None, PhaseBaseline]:
    """The winning candidate (or None) and the phase's baseline after this cycle: the winner
    with its evidence, or the committed champion (measured once, ``first_measurement``)."""
    best = pick_winner(decisions, stats)
    if best is None:
        return None, first_measurement(baseline_before, stats.get(baseline_before.spec.id))
    winner = next(c for c in plan.candidates if c.spec.id == best.spec_id)
    after = PhaseBaseline(
        phase=phase,
        spec=winner.spec,
        metrics=stats[best.spec_id].metrics(),
        promoted_in_cycle=cycle,
        reason=f"{best.label}: {best.reason}",
        reference=stats[best.spec_id].reference(),
    )
    return winner, after


def first_measurement(baseline: PhaseBaseline, measured: SpecStats | None) -> PhaseBaseline:
    """The committed champion with its first usable measurement filled in.

    A champion that was never measured (``initial``) or committed without per-case evidence
    gets this cycle's measurement, once, so ``--selfopt-check`` can guard it; a champion that
    already has both is returned unchanged (no churn), as is one whose measurement this cycle
    is unusable (no sample, or an outage: a service that did not answer vouches for nothing).
    """
    if baseline.metrics is not None and baseline.reference:
        return baseline
    if measured is None or not measured.samples or outage(measured) is not None:
        return baseline
    return replace(
        baseline,
        metrics=baseline.metrics if baseline.metrics is not None else measured.metrics(),
        reference=dict(baseline.reference) or measured.reference(),
    )


def _baseline_record(baseline: PhaseBaseline) -> dict[str, Any]:
    return {
        "spec_id": baseline.spec.id,
        "spec": baseline.spec.to_dict(),
        "metrics": None if baseline.metrics is None else dict(baseline.metrics),
    }


def _phase_record(p: PhaseOutcome) -> dict[str, Any]:
    measured = p.stats.get(p.plan.baseline.id)
    improvement = 0.0
    if p.winner is not None and measured is not None:
        improvement = p.stats[p.winner.spec.id].median - measured.median
    decisions = {d.spec_id: d for d in p.decisions}
    candidates = []
    for c in p.plan.candidates:
        d = decisions.get(c.spec.id)
        s = p.stats.get(c.spec.id)
        candidates.append(
            {
                "spec_id": c.spec.id,
                "label": d.label if d is not None else c.spec.label(p.plan.baseline),
                "origin": c.origin,
                "spec": c.spec.to_dict(),
                "metrics": None if s is None else s.metrics(),
                "decision": None if d is None else d.to_dict(),
            }
        )
    patterns = {
        spec.id: {pat.case_id: pat.render() for pat in p.stats[spec.id].patterns}
        for spec in p.plan.specs
        if spec.id in p.stats
    }
    return {
        "baseline_before": _baseline_record(p.baseline_before),
        "baseline_after": _baseline_record(p.baseline_after),
        "measured_baseline": None if measured is None else measured.metrics(),
        "improvement": float(improvement),
        "winner": None if p.winner is None else p.winner.spec.id,
        "candidates": candidates,
        "patterns": patterns,
        "diagnoses": [d.to_dict() for d in p.diagnoses],
        "recommendations": [r.to_dict() for r in p.recommendations],
        "enforced": list(p.enforced),
        "next": None if p.outlook is None else p.outlook.to_dict(),
    }


def history_entry(outcome: CycleOutcome) -> dict[str, Any]:
    """One cycle of history.json (schema: module doc)."""
    return {
        "cycle": outcome.cycle,
        "seed": outcome.seed,
        "runs": outcome.runs,
        "policy": outcome.policy,
        "phases": {
            p.phase: _phase_record(p) for p in sorted(outcome.phases, key=lambda p: p.phase)
        },
        "pending": [c.to_dict() for c in outcome.pending],
    }


def tried_from_history(entries: Sequence[Mapping[str, Any]]) -> tuple[TriedSpec, ...]:
    """Every candidate ever decided, for cool-downs and retirements: whether the decision was
    a try (its ``cause``; histories without one: every decision was) and the phase's
    baseline then. Candidates without a decision are skipped."""
    out = []
    verdicts = {str(v) for v in Verdict}
    causes = {str(c) for c in Cause}
    for entry in entries:
        for phase, record in entry.get("phases", {}).items():
            baseline_id = str((record.get("baseline_before") or {}).get("spec_id", ""))
            for c in record.get("candidates", []):
                decision = c.get("decision") or {}
                verdict = str(decision.get("verdict", ""))
                if verdict not in verdicts:
                    continue
                cause = decision.get("cause")
                origin = str(c.get("origin", Origin.SEARCH))
                out.append(
                    TriedSpec(
                        phase=phase,
                        spec_id=c["spec_id"],
                        cycle=int(entry["cycle"]),
                        verdict=Verdict(verdict),
                        origin=Origin(origin) if origin in {*Origin} else Origin.SEARCH,
                        is_try=Cause(cause).is_try if cause in causes else True,
                        baseline_id=baseline_id,
                    )
                )
    return tuple(out)


def pending_from_history(entries: Sequence[Mapping[str, Any]]) -> tuple[PendingCandidate, ...]:
    """The pending candidates the last recorded cycle left for the next one."""
    if not entries:
        return ()
    return tuple(PendingCandidate.from_dict(d) for d in entries[-1].get("pending", []))
