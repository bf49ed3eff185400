"""Phase 1, generate: the committed baseline -> this cycle's candidate specs.

One factor at a time, as the seed: every candidate differs from the baseline in one knob,
so a promotion says exactly which change helped. Order is deterministic, because the
candidate list is computed once on the controller and every xdist worker must collect the
same items:

1. pending candidates of this phase (recommendations from earlier cycles awaiting
   verification), in their given order: they carry evidence, the search does not;
2. for each knob of the search space in declared order, each value in declared order,
   ``baseline.with_knob(knob, value)``.

Skipped: the baseline itself, duplicates (by spec id), and specs in cool-down: tried in this
phase with verdict REJECT or HOLD in one of the last ``gates.cooldown_cycles`` cycles, so a
failed idea is not re-measured every cycle; a screened leader's HOLD is not a failed try (it is
confirmed next cycle, loop/screen.py). At most ``max_candidates`` are kept.

With ``gates.screen_runs`` on and 3+ search candidates, they are screened: runs 1..k only.
"""

from __future__ import annotations

from collections.abc import Sequence

from pytest_selfopt.loop.screen import SCREEN, screen_plan
from pytest_selfopt.loop.spec import Spec
from pytest_selfopt.loop.types import (
    HOLD,
    REJECT,
    Candidate,
    LoopSettings,
    PendingCandidate,
    PhasePlan,
    TriedSpec,
)


def cooling_down(
    phase: str, tried: Sequence[TriedSpec], cycle: int, cooldown_cycles: int
) -> frozenset[str]:
    """Spec ids that may not be proposed in ``cycle``: REJECT/HOLD in
    ``[cycle - cooldown_cycles, cycle - 1]``; a screened leader's HOLD does not count."""
    lo = cycle - cooldown_cycles
    return frozenset(
        t.spec_id
        for t in tried
        if t.phase == phase
        and t.verdict in (REJECT, HOLD)
        and not (t.verdict == HOLD and t.origin == SCREEN)
        and lo <= t.cycle <= cycle - 1
    )


def generate(
    phase: str,
    baseline: Spec,
    settings: LoopSettings,
    pending: Sequence[PendingCandidate],
    tried: Sequence[TriedSpec],
    cycle: int,
) -> PhasePlan:
    """The baseline plus at most ``max_candidates`` one-knob candidates, pending first."""
    blocked = cooling_down(phase, tried, cycle, settings.gates.cooldown_cycles)
    seen = {baseline.id}
    chosen: list[Candidate] = []

    def offer(candidate: Candidate) -> None:
        spec_id = candidate.spec.id
        if len(chosen) >= settings.max_candidates or spec_id in seen or spec_id in blocked:
            return
        seen.add(spec_id)
        chosen.append(candidate)

    for item in pending:
        if item.phase == phase:
            offer(Candidate(phase, item.spec, "pending", item.recommendation))
    for knob, values in settings.search.knobs:
        for value in values:
            offer(Candidate(phase, baseline.with_knob(knob, value), "search"))
    plan = PhasePlan(phase=phase, baseline=baseline, candidates=tuple(chosen))
    return screen_plan(plan, settings.runs, settings.gates.screen_runs)
