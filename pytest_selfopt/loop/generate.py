"""Step 1, generate: the committed baseline -> this cycle's candidate specs.

One factor at a time, as the seed: every candidate differs from the baseline in one knob,
so a promotion says exactly which change helped. Order is deterministic, because the
candidate list is computed once on the controller and every xdist worker must collect the
same items:

1. pending candidates of this phase (recommendations from earlier cycles awaiting
   verification), in their given order: they carry evidence, the search does not;
2. for each knob of the search space in declared order, each value in declared order,
   ``baseline.with_knob(knob, value)``.

Skipped: the baseline itself and duplicates (by spec id); **held back** (and listed in
``PhasePlan.held_back`` with why, for reports):

* *cooling down*: REJECT or HOLD in this phase in one of the last ``gates.cooldown_cycles``
  cycles, so a failed idea is not re-measured every cycle;
* *retired*: REJECTed in two different cycles against the current baseline, so a
  recommendation that keeps failing stops coming back and the loop reaches a plateau; it is
  free again once the phase's baseline changes;
* *no room*: beyond ``max_candidates``.

Only decisions that measured the candidate count (``Decision.is_try``): a HOLD for want of
data (no sample, an outage) or a screened leader's HOLD (confirmed next cycle,
loop/screen.py) neither cools down nor retires.

With ``gates.screen_runs`` on and 3+ search candidates, they are screened: runs 1..k only.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from pytest_selfopt.loop.screen import screen_plan
from pytest_selfopt.loop.spec import Spec
from pytest_selfopt.loop.types import (
    HOLD,
    REJECT,
    Candidate,
    CandidateStatus,
    Decision,
    HeldBack,
    LoopSettings,
    Origin,
    PendingCandidate,
    PhasePlan,
    TriedSpec,
)

#: REJECTs, in different cycles against the same baseline, that retire a spec
RETIRE_AFTER = 2


def _counts(t: TriedSpec, phase: str) -> bool:
    """A decision of ``phase`` that measured its candidate (a screened leader's HOLD did not;
    histories written before ``cause`` existed only say so through the origin)."""
    return (
        t.phase == phase
        and t.is_try
        and t.verdict in (REJECT, HOLD)
        and not (t.verdict == HOLD and t.origin == Origin.SCREEN)
    )


def _last_tries(
    phase: str, tried: Sequence[TriedSpec], cycle: int, cooldown_cycles: int
) -> dict[str, int]:
    """Spec id -> the cycle of its last counted REJECT/HOLD within the cool-down window."""
    lo = cycle - cooldown_cycles
    out: dict[str, int] = {}
    for t in tried:
        if _counts(t, phase) and lo <= t.cycle <= cycle - 1:
            out[t.spec_id] = max(out.get(t.spec_id, t.cycle), t.cycle)
    return out


def cooling_down(
    phase: str, tried: Sequence[TriedSpec], cycle: int, cooldown_cycles: int
) -> frozenset[str]:
    """Spec ids that may not be proposed in ``cycle``: a counted REJECT/HOLD in
    ``[cycle - cooldown_cycles, cycle - 1]`` (module doc)."""
    return frozenset(_last_tries(phase, tried, cycle, cooldown_cycles))


def _rejections(phase: str, tried: Sequence[TriedSpec], baseline_id: str) -> dict[str, set[int]]:
    """Spec id -> the cycles in which it was REJECTed (counted) against ``baseline_id``
    (a TriedSpec without a baseline id counts against any)."""
    out: dict[str, set[int]] = defaultdict(set)
    for t in tried:
        if _counts(t, phase) and t.verdict == REJECT and t.baseline_id in ("", baseline_id):
            out[t.spec_id].add(t.cycle)
    return out


def retired(phase: str, tried: Sequence[TriedSpec], baseline_id: str) -> frozenset[str]:
    """Spec ids REJECTed in ``RETIRE_AFTER`` (2) different cycles against ``baseline_id``: not
    proposed again until the phase's baseline changes."""
    return frozenset(
        spec_id
        for spec_id, cycles in _rejections(phase, tried, baseline_id).items()
        if len(cycles) >= RETIRE_AFTER
    )


def blocked(
    phase: str,
    tried: Sequence[TriedSpec],
    cycle: int,
    cooldown_cycles: int,
    baseline_id: str,
) -> frozenset[str]:
    """Spec ids that may not run in ``cycle`` of a phase whose baseline is ``baseline_id``:
    cooling down or retired."""
    return cooling_down(phase, tried, cycle, cooldown_cycles) | retired(phase, tried, baseline_id)


def candidate_status(
    phase: str,
    spec_id: str,
    tried: Sequence[TriedSpec],
    cycle: int,
    cooldown_cycles: int,
    baseline_id: str,
) -> CandidateStatus:
    """Where ``spec_id`` stands for ``cycle`` of a phase whose baseline is ``baseline_id``."""
    if spec_id in retired(phase, tried, baseline_id):
        return CandidateStatus.RETIRED
    if spec_id in cooling_down(phase, tried, cycle, cooldown_cycles):
        return CandidateStatus.COOLING_DOWN
    measured = any(
        t.spec_id == spec_id and _counts(t, phase) and t.baseline_id in ("", baseline_id)
        for t in tried
    )
    return CandidateStatus.RETRY if measured else CandidateStatus.UNTRIED


def generate(
    phase: str,
    baseline: Spec,
    settings: LoopSettings,
    pending: Sequence[PendingCandidate],
    tried: Sequence[TriedSpec],
    cycle: int,
) -> PhasePlan:
    """The baseline plus at most ``max_candidates`` one-knob candidates, pending first, and
    what was held back (module doc)."""
    cooldown = settings.gates.cooldown_cycles
    last = _last_tries(phase, tried, cycle, cooldown)
    rejected = _rejections(phase, tried, baseline.id)
    gone = retired(phase, tried, baseline.id)
    seen = {baseline.id}
    chosen: list[Candidate] = []
    held: list[HeldBack] = []

    def offer(candidate: Candidate) -> None:
        spec, spec_id = candidate.spec, candidate.spec.id
        if spec_id in seen:
            return
        seen.add(spec_id)
        if spec_id in gone:
            since = max(rejected[spec_id])
            held.append(HeldBack(spec, candidate.origin, CandidateStatus.RETIRED, None, since))
        elif spec_id in last:
            free = last[spec_id] + cooldown + 1
            status = CandidateStatus.COOLING_DOWN
            held.append(HeldBack(spec, candidate.origin, status, free, last[spec_id]))
        elif len(chosen) >= settings.max_candidates:
            status = candidate_status(phase, spec_id, tried, cycle, cooldown, baseline.id)
            held.append(HeldBack(spec, candidate.origin, status))
        else:
            chosen.append(candidate)

    for item in pending:
        if item.phase == phase:
            offer(Candidate(phase, item.spec, Origin.PENDING, item.recommendation))
    for knob, values in settings.search.knobs:
        for value in values:
            offer(Candidate(phase, baseline.with_knob(knob, value), Origin.SEARCH))
    plan = PhasePlan(phase, baseline, tuple(chosen), tuple(held))
    return screen_plan(plan, settings.runs, settings.gates.screen_runs)


def tries_of(plan: PhasePlan, decisions: Sequence[Decision], cycle: int) -> tuple[TriedSpec, ...]:
    """This cycle's decisions as ``TriedSpec`` (as ``learn.tried_from_history`` will read
    them back), for the cool-downs and retirements of the next cycle."""
    origins = {c.spec.id: c.origin for c in plan.candidates}
    return tuple(
        TriedSpec(
            plan.phase,
            d.spec_id,
            cycle,
            d.verdict,
            origins.get(d.spec_id, Origin.SEARCH),
            d.is_try,
            plan.baseline.id,
        )
        for d in decisions
    )
