"""Phase 6, enforce: recommendations, winner, routing -> new routing, pending candidates, audit.

Nothing reaches routing unverified: the route of a phase is always derived from the gated
baseline (``baseline_after``), never from a recommendation. A recommendation only becomes a
*pending candidate*: the diagnosed spec with the recommended ``knob=value``, evaluated first
next cycle and kept only if it passes the same gates. A pending candidate of this cycle that
did not PROMOTE is ``verify_failed`` and, being in cool-down, is not re-proposed.

Pending candidates skip: the new baseline's spec, duplicates (by spec id), and specs that are
cooling down or retired for the next cycle (``generate.blocked``, this cycle's decisions
included). A screened leader's HOLD is no failed try: its ``confirm_screened`` recommendation
(loop/screen.py) names the screened spec itself, which becomes a pending candidate verified on
all runs next cycle. A pending candidate that could not be decided for want of data (no
sample, an outage) is no failed try either: no ``verify_failed``, and ``cycle`` carries it
over to the next cycle.

Audit records (decisions.log), in this order: one ``decision`` per candidate (verdict, reason,
gates with their numbers), ``promote`` for the winner, ``verify_failed`` per failed pending
candidate, ``enforce`` when the route changed (before/after), ``recommend`` per new pending
candidate.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pytest_selfopt.loop.generate import blocked, candidate_status, tries_of
from pytest_selfopt.loop.spec import Spec, format_scalar
from pytest_selfopt.loop.types import (
    PROMOTE,
    AuditRecord,
    Candidate,
    CandidateStatus,
    Decision,
    LoopSettings,
    Origin,
    PendingCandidate,
    PhaseBaseline,
    PhasePlan,
    Recommendation,
    Route,
    TriedSpec,
)


def fallbacks_for(model: str, chain: Sequence[str]) -> tuple[str, ...]:
    """Models after ``model`` in the chain; when it is not in the chain, the whole chain."""
    if model in chain:
        return tuple(chain[list(chain).index(model) + 1 :])
    return tuple(m for m in chain if m != model)


def route_dict(route: Route) -> dict[str, Any]:
    return {
        "spec_id": route.spec.id,
        "spec": route.spec.to_dict(),
        "fallbacks": list(route.fallbacks),
    }


def _route_line(before: Route | None, after: Route, baseline: PhaseBaseline) -> str:
    why = (
        f"verified in cycle {baseline.promoted_in_cycle}"
        if baseline.promoted_in_cycle > 0
        else "initial spec"
    )
    if before is None:
        knobs = ", ".join(f"{k} {format_scalar(v)}" for k, v in after.spec.knobs().items())
        return f"routing {after.phase}: set to {knobs} ({why})"
    changes = [
        f"{k} {format_scalar(old)} -> {format_scalar(new)}"
        for k, (old, new) in after.spec.diff(before.spec).items()
    ]
    # Fallbacks follow the model; spell them out only when they changed on their own.
    if before.fallbacks != after.fallbacks and before.spec.model == after.spec.model:
        changes.append(
            f"fallbacks [{', '.join(before.fallbacks)}] -> [{', '.join(after.fallbacks)}]"
        )
    return f"routing {after.phase}: {', '.join(changes)} ({why})"


def enforce(
    phase: str,
    plan: PhasePlan,
    decisions: Sequence[Decision],
    winner: Candidate | None,
    baseline_after: PhaseBaseline,
    route_before: Route | None,
    recommendations: Sequence[Recommendation],
    settings: LoopSettings,
    tried: Sequence[TriedSpec],
    cycle: int,
) -> tuple[Route, tuple[PendingCandidate, ...], tuple[AuditRecord, ...], tuple[str, ...]]:
    """New route, next cycle's pending candidates, audit records, human lines of what changed."""
    route = Route(
        phase,
        baseline_after.spec,
        fallbacks_for(baseline_after.spec.model, settings.fallback_chain),
    )
    by_id = {c.spec.id: c for c in plan.candidates}
    now = (*tried, *tries_of(plan, decisions, cycle))
    cooldown = settings.gates.cooldown_cycles

    def after_failure(d: Decision) -> str:
        status = candidate_status(phase, d.spec_id, now, cycle + 1, cooldown, route.spec.id)
        if status == CandidateStatus.RETIRED:
            return "retired: rejected twice against this baseline"
        return f"cooling down: may run again from cycle {cycle + cooldown + 1}"

    audit: list[AuditRecord] = []
    lines: list[str] = []
    for d in decisions:
        origin = by_id[d.spec_id].origin if d.spec_id in by_id else Origin.SEARCH
        audit.append(
            AuditRecord(
                cycle,
                phase,
                "decision",
                d.spec_id,
                d.label,
                {
                    "verdict": str(d.verdict),
                    "reason": d.reason,
                    "origin": str(origin),
                    "cause": str(d.cause),
                    "gates": [g.to_dict() for g in d.gates],
                },
            )
        )
    if winner is not None:
        audit.append(
            AuditRecord(
                cycle,
                phase,
                "promote",
                winner.spec.id,
                winner.spec.label(plan.baseline),
                {
                    "reason": baseline_after.reason,
                    "spec": winner.spec.to_dict(),
                    "metrics": None
                    if baseline_after.metrics is None
                    else dict(baseline_after.metrics),
                },
            )
        )
    for d in decisions:
        candidate = by_id.get(d.spec_id)
        if candidate is None or candidate.origin != Origin.PENDING or d.verdict == PROMOTE:
            continue
        if not d.is_try:
            lines.append(f"not decided: {d.label} ({d.reason}); kept for cycle {cycle + 1}")
            continue
        rec = candidate.recommendation
        audit.append(
            AuditRecord(
                cycle,
                phase,
                "verify_failed",
                d.spec_id,
                d.label,
                {
                    "verdict": str(d.verdict),
                    "reason": d.reason,
                    "action": None if rec is None else str(rec.action),
                    "recommended_because": None if rec is None else rec.reason,
                },
            )
        )
        lines.append(f"not verified: {d.label} ({d.reason}); {after_failure(d)}")
    if route_before != route:
        audit.append(
            AuditRecord(
                cycle,
                phase,
                "enforce",
                route.spec.id,
                route.spec.label(plan.baseline),
                {
                    "before": None if route_before is None else route_dict(route_before),
                    "after": route_dict(route),
                },
            )
        )
        lines.append(_route_line(route_before, route, baseline_after))
    pending = _pending(
        phase, plan, decisions, baseline_after, recommendations, settings, tried, cycle
    )
    for p in pending:
        label = p.spec.label(baseline_after.spec)
        rec = p.recommendation
        audit.append(
            AuditRecord(
                cycle,
                phase,
                "recommend",
                p.spec.id,
                label,
                {
                    "action": str(rec.action),
                    "knob": rec.knob,
                    "value": rec.value,
                    "diagnosed_spec_id": rec.spec_id,
                    "reason": rec.reason,
                    "evidence": list(rec.evidence),
                },
            )
        )
        lines.append(f"pending for cycle {cycle + 1}: {label} ({rec.action}: {rec.reason})")
    return route, pending, tuple(audit), tuple(lines)


def _pending(
    phase: str,
    plan: PhasePlan,
    decisions: Sequence[Decision],
    baseline_after: PhaseBaseline,
    recommendations: Sequence[Recommendation],
    settings: LoopSettings,
    tried: Sequence[TriedSpec],
    cycle: int,
) -> tuple[PendingCandidate, ...]:
    now = tries_of(plan, decisions, cycle)
    held = blocked(
        phase,
        (*tried, *now),
        cycle + 1,
        settings.gates.cooldown_cycles,
        baseline_after.spec.id,
    )
    specs: dict[str, Spec] = {s.id: s for s in plan.specs}
    seen = {baseline_after.spec.id}
    out: list[PendingCandidate] = []
    for rec in recommendations:
        if rec.phase != phase:
            continue
        spec = specs.get(rec.spec_id, baseline_after.spec).with_knob(rec.knob, rec.value)
        if spec.id in seen or spec.id in held:
            continue
        seen.add(spec.id)
        out.append(PendingCandidate(phase, spec, rec, cycle))
    return tuple(out)
