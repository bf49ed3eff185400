"""The loop, composed: the plugin calls ``plan_cycle`` before collection and ``close_cycle``
at session end; everything in between is measurement.

Per phase (sorted): evaluate -> decide (the configured gate policy) -> screen (screened
candidates: the leader HOLD for confirmation next cycle, the others REJECT; loop/screen.py) ->
diagnose every spec -> learn (winner, new baseline) -> recommend (a screened leader's
confirmation first, then from the new baseline's spec and from every unscreened HOLD candidate,
applied to that candidate's spec; one recommendation per resulting spec) -> enforce (route,
pending, audit) -> outlook (the next cycle's plan of the phase as it stands, with what is held
back and why: ``PhaseOutcome.outlook``, written to history for reports).

Screened candidates are decided by the policy apart from the others: they are never promoted in
the cycle that screened them, so they must not widen the others' multiple-comparison family.

Pending candidates of the previous cycle that did not fit this cycle's plan (cap), or that
were planned but could not be decided for want of data (no sample, an outage: not a try), are
carried over unless they became the baseline or are cooling down or retired; pending candidates
of phases not planned this cycle are carried over untouched. So a cycle run during an outage
leaves the next healthy cycle the same work, and no cool-down.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

from pytest_selfopt.loop.diagnose import diagnose, recommend
from pytest_selfopt.loop.enforce import enforce
from pytest_selfopt.loop.evaluate import SampleColumns, as_columns, empty_stats, evaluate
from pytest_selfopt.loop.generate import blocked, candidate_status, generate, tries_of
from pytest_selfopt.loop.learn import learn
from pytest_selfopt.loop.outcome import CycleOutcome, Outlook, PhaseOutcome
from pytest_selfopt.loop.policies.base import GatePolicy
from pytest_selfopt.loop.screen import CONFIRM_ACTION, screen, screened
from pytest_selfopt.loop.spec import Spec
from pytest_selfopt.loop.types import (
    HOLD,
    AuditRecord,
    Decision,
    Diagnosis,
    LoopSettings,
    LoopState,
    PendingCandidate,
    PhaseBaseline,
    PhasePlan,
    Recommendation,
    Sample,
    SpecStats,
)

INITIAL_REASON = "initial spec from selfopt.yaml"


def _baseline(state: LoopState, settings: LoopSettings, phase: str) -> PhaseBaseline:
    found = state.baselines.get(phase)
    if found is not None:
        return found
    return PhaseBaseline(phase, settings.initial, None, 0, INITIAL_REASON)


def plan_cycle(
    state: LoopState, settings: LoopSettings, phases: Sequence[str]
) -> dict[str, PhasePlan]:
    """Every phase's plan for cycle ``state.last_cycle + 1``, phases sorted."""
    cycle = state.last_cycle + 1
    return {
        phase: generate(
            phase,
            _baseline(state, settings, phase).spec,
            settings,
            state.pending,
            state.tried,
            cycle,
        )
        for phase in sorted(set(phases))
    }


def close_cycle(
    state: LoopState,
    settings: LoopSettings,
    plans: Mapping[str, PhasePlan],
    samples: Sequence[Sample] | SampleColumns,
    *,
    policy: GatePolicy,
) -> CycleOutcome:
    """Decide, diagnose, learn and enforce every planned phase from this cycle's samples."""
    cycle = state.last_cycle + 1
    all_stats = evaluate(as_columns(samples))
    outcomes: list[PhaseOutcome] = []
    pending: list[PendingCandidate] = []
    audit: list[AuditRecord] = []
    for phase in sorted(plans):
        outcome, phase_pending, phase_audit = _close_phase(
            state, settings, plans[phase], all_stats, policy, cycle
        )
        outcomes.append(outcome)
        pending.extend(phase_pending)
        audit.extend(phase_audit)
    pending.extend(p for p in state.pending if p.phase not in plans)
    return CycleOutcome(
        cycle=cycle,
        seed=settings.seed,
        runs=settings.runs,
        policy=policy.name,
        phases=tuple(outcomes),
        pending=tuple(pending),
        audit=tuple(audit),
    )


def _close_phase(
    state: LoopState,
    settings: LoopSettings,
    plan: PhasePlan,
    all_stats: Mapping[tuple[str, str], SpecStats],
    policy: GatePolicy,
    cycle: int,
) -> tuple[PhaseOutcome, tuple[PendingCandidate, ...], tuple[AuditRecord, ...]]:
    phase = plan.phase
    stats = {
        spec.id: all_stats.get((phase, spec.id)) or empty_stats(phase, spec.id)
        for spec in plan.specs
    }
    labels = {c.spec.id: c.spec.label(plan.baseline) for c in plan.candidates}
    group = {c.spec.id for c in screened(plan)}
    pairs = [(c, stats[c.spec.id]) for c in plan.candidates]
    families = [
        [p for p in pairs if p[0].spec.id not in group],
        [p for p in pairs if p[0].spec.id in group],
    ]
    by_id = {
        d.spec_id: d
        for family in families
        if family
        for d in policy.decide(phase, stats[plan.baseline.id], family, settings.gates, labels)
    }
    screening = screen(plan, stats, [by_id[c.spec.id] for c in plan.candidates], settings.runs)
    decisions = screening.decisions
    models = {s.id: s.model for s in plan.specs}
    diagnoses_by_spec: dict[str, tuple[Diagnosis, ...]] = {
        spec_id: diagnose(
            s, s.runs or settings.runs, models[spec_id], settings.gates.warmup_min_cases
        )
        for spec_id, s in stats.items()
    }
    before = _baseline(state, settings, phase)
    winner, after = learn(phase, plan, stats, decisions, before, cycle)

    def recs_for(spec_id: str) -> tuple[Recommendation, ...]:
        spec = next(s for s in plan.specs if s.id == spec_id)
        return recommend(
            phase, spec, diagnoses_by_spec[spec_id], settings, len(stats[spec_id].case_ids)
        )

    recommendations = [screening.recommendation] if screening.recommendation else []
    recommendations += recs_for(after.spec.id)
    for d in decisions:
        if d.verdict == HOLD and d.spec_id not in group:
            recommendations.extend(recs_for(d.spec_id))
    recommendations = _unique(recommendations, plan.specs, after.spec)
    route_before = state.routes.get(phase)
    route, new_pending, audit, enforced = enforce(
        phase,
        plan,
        decisions,
        winner,
        after,
        route_before,
        recommendations,
        settings,
        state.tried,
        cycle,
    )
    carried = _carry_over(state, settings, plan, after, decisions, new_pending, cycle)
    outcome = PhaseOutcome(
        phase=phase,
        plan=plan,
        stats=stats,
        decisions=tuple(decisions),
        diagnoses=tuple(d for spec in plan.specs for d in diagnoses_by_spec[spec.id]),
        recommendations=tuple(recommendations),
        winner=winner,
        baseline_before=before,
        baseline_after=after,
        route_before=route_before,
        route_after=route,
        enforced=((screening.line,) if screening.line else ()) + enforced,
    )
    # A screened leader runs first next cycle: its confirmation was earned this cycle.
    ordered = sorted(carried + new_pending, key=lambda p: p.recommendation.action != CONFIRM_ACTION)
    tried = (*state.tried, *tries_of(plan, decisions, cycle))
    # Recommendations that enforce held back (cooling down, retired) are offered too, so the
    # outlook lists them with why: they come back by themselves once free.
    specs = {s.id: s for s in plan.specs}
    offered = [
        *ordered,
        *(
            PendingCandidate(
                phase, specs.get(r.spec_id, after.spec).with_knob(r.knob, r.value), r, cycle
            )
            for r in recommendations
        ),
    ]
    ahead = generate(phase, after.spec, settings, offered, tried, cycle + 1)
    cooldown = settings.gates.cooldown_cycles
    status = {
        c.spec.id: candidate_status(phase, c.spec.id, tried, cycle + 1, cooldown, after.spec.id)
        for c in ahead.candidates
    }
    return replace(outcome, outlook=Outlook(ahead, status)), tuple(ordered), audit


def _unique(
    recommendations: Sequence[Recommendation], specs: Sequence[Spec], after: Spec
) -> list[Recommendation]:
    """The first recommendation for each resulting spec: two diagnoses that lead to the same
    spec are one candidate, never two."""
    by_id = {s.id: s for s in specs}
    seen: set[str] = set()
    out = []
    for rec in recommendations:
        spec_id = by_id.get(rec.spec_id, after).with_knob(rec.knob, rec.value).id
        if spec_id not in seen:
            seen.add(spec_id)
            out.append(rec)
    return out


def _carry_over(
    state: LoopState,
    settings: LoopSettings,
    plan: PhasePlan,
    after: PhaseBaseline,
    decisions: Sequence[Decision],
    new_pending: Sequence[PendingCandidate],
    cycle: int,
) -> tuple[PendingCandidate, ...]:
    """Earlier pending candidates of this phase that the plan had no room for, or that were
    planned but not decided for want of data."""
    undecided = {d.spec_id for d in decisions if not d.is_try}
    planned = {s.id for s in plan.specs} - undecided
    now = tries_of(plan, decisions, cycle)
    held = blocked(
        plan.phase,
        (*state.tried, *now),
        cycle + 1,
        settings.gates.cooldown_cycles,
        after.spec.id,
    )
    seen = {after.spec.id} | {p.spec.id for p in new_pending}
    out = []
    for p in state.pending:
        sid = p.spec.id
        if p.phase != plan.phase or sid in planned or sid in seen or sid in held:
            continue
        seen.add(sid)
        out.append(p)
    return tuple(out)
