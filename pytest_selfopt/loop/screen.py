"""Screen -> confirm: fewer model calls for the same certainty (docs/statistics.md).

With ``gates.screen_runs`` = k > 0 and 3 or more *search* candidates in a phase's plan, those
candidates run only runs ``1..k`` (``screen_plan``); the baseline and pending candidates run
all R. At close (``screen``, applied after the policy decided, as ``racing.RacedPolicy``):

* the **leader** is the screened candidate with the most passes on runs ``1..k`` (ties: plan
  order), and it must beat the baseline's passes on the same runs and cases, else nobody
  leads. It is HOLD ("screened: leads on runs 1..k, confirmed next cycle on fresh runs") and
  becomes a ``confirm_screened`` recommendation: next cycle it runs first, on all R runs, as an
  ordinary pending candidate decided by the policy. It is never promoted in the cycle that
  chose it, so selection and confirmation never share data (which is why no correction for
  the screened candidates is needed). Its HOLD is not a failed try: no cool-down
  (``generate.cooling_down``).
* every other screened candidate is REJECTed ("screened out: ...") and cools down as usual.

Pending candidates are never screened: they carry evidence and are being verified.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from pytest_selfopt.loop.types import (
    HOLD,
    REJECT,
    Action,
    Candidate,
    Cause,
    Decision,
    Origin,
    PhasePlan,
    Recommendation,
    SpecStats,
)

SCREEN = Origin.SCREEN  # Candidate.origin of a screened candidate
CONFIRM_ACTION = Action.CONFIRM_SCREENED  # Recommendation.action of a screened leader
MIN_CANDIDATES = 3  # below this, screening saves too little to pay for its lost power


def screen_plan(plan: PhasePlan, runs: int, screen_runs: int) -> PhasePlan:
    """The plan with its search candidates limited to runs ``1..screen_runs``, when screening
    is on (0 < screen_runs < runs) and there are at least 3 of them; else ``plan`` as is."""
    search = [c for c in plan.candidates if c.origin == Origin.SEARCH]
    if not 0 < screen_runs < runs or len(search) < MIN_CANDIDATES:
        return plan
    return replace(
        plan,
        candidates=tuple(
            replace(c, origin=SCREEN, runs=screen_runs) if c.origin == Origin.SEARCH else c
            for c in plan.candidates
        ),
    )


def screened(plan: PhasePlan) -> tuple[Candidate, ...]:
    """The plan's screened candidates (limited runs), in plan order."""
    return tuple(c for c in plan.candidates if c.origin == SCREEN and c.runs is not None)


def passes_on(candidate: SpecStats, baseline: SpecStats, k: int) -> tuple[int, int]:
    """``(candidate passes, baseline passes)`` on runs ``1..k`` over the cases both sampled:
    the same cells for both, so the comparison is paired."""
    common = set(candidate.case_ids) & set(baseline.case_ids)

    def count(stats: SpecStats) -> int:
        cols = [j for j, cid in enumerate(stats.case_ids) if cid in common]
        return sum(
            1
            for run, row in zip(stats.run_numbers, stats.passes)
            if run <= k
            for j in cols
            if row[j]
        )

    return count(candidate), count(baseline)


@dataclass(frozen=True)
class Screening:
    """What screening decided in one phase."""

    decisions: tuple[Decision, ...]  # every decision, screened ones replaced, plan order
    leader: Candidate | None
    recommendation: Recommendation | None  # the leader's confirm_screened, or None
    line: str | None  # "screened 4 candidates on 3 of 7 runs: 96 items saved"; None: no screen


def screen(
    plan: PhasePlan,
    stats: Mapping[str, SpecStats],
    decisions: Sequence[Decision],
    runs: int,
) -> Screening:
    """Replace the screened candidates' decisions: the leader HOLD, the others REJECT."""
    group = screened(plan)
    if not group:
        return Screening(tuple(decisions), None, None, None)
    base = stats[plan.baseline.id]
    counts = {c.spec.id: passes_on(stats[c.spec.id], base, c.runs or runs) for c in group}
    best = max(group, key=lambda c: counts[c.spec.id][0])  # first of the best: plan order
    leader = best if counts[best.spec.id][0] > counts[best.spec.id][1] else None
    label = {d.spec_id: d.label for d in decisions}
    k = max(c.runs or runs for c in group)
    out = []
    for d in decisions:
        if d.spec_id not in counts:
            out.append(d)
            continue
        mine, theirs = counts[d.spec_id]
        if leader is not None and d.spec_id == leader.spec.id:
            reason = (
                f"{HOLD}: screened: leads on runs 1..{k}, confirmed next cycle on fresh runs "
                f"({mine} passes vs the baseline's {theirs})"
            )
            out.append(replace(d, verdict=HOLD, reason=reason, cause=Cause.SCREENED_LEAD))
            continue
        if leader is None:
            why = f"nobody beat the baseline on runs 1..{k} ({mine} passes vs its {theirs})"
        else:
            lead = counts[leader.spec.id][0]
            who = label.get(leader.spec.id, leader.spec.id)
            why = f"{mine} passes on runs 1..{k}, leader {who} {lead}, baseline {theirs}"
        reason = f"{REJECT}: screened out: {why}"
        out.append(replace(d, verdict=REJECT, reason=reason, cause=Cause.SCREENED_OUT))
    cases = {cid for s in stats.values() for cid in s.case_ids}
    saved = sum(len(cases) * (runs - (c.runs or runs)) for c in group)
    line = f"screened {len(group)} candidates on {k} of {runs} runs: {saved} items saved"
    rec = None if leader is None else _confirm(plan, leader, counts[leader.spec.id], k, runs)
    return Screening(tuple(out), leader, rec, line)


def _confirm(
    plan: PhasePlan, leader: Candidate, counts: tuple[int, int], k: int, runs: int
) -> Recommendation:
    """The leader as a recommendation on itself (``spec_id`` its own, knob = its changed knob,
    value = its own value), so ``enforce`` turns it into exactly the screened spec."""
    changed = [k for k, (_, v) in leader.spec.diff(plan.baseline).items() if v is not None]
    knob = changed[0] if changed else "model"  # any knob at its own value names the leader
    value = leader.spec.get(knob)
    return Recommendation(
        phase=plan.phase,
        action=CONFIRM_ACTION,
        knob=knob,
        value=value,
        spec_id=leader.spec.id,
        reason=(
            f"led the screening on runs 1..{k} ({counts[0]} passes vs the baseline's "
            f"{counts[1]}); confirm on {runs} fresh runs"
        ),
    )
