"""What one cycle found and did, per phase and in all: the output of ``loop.cycle``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from pytest_selfopt.loop.types import (
    AuditRecord,
    Candidate,
    Decision,
    Diagnosis,
    PendingCandidate,
    PhaseBaseline,
    PhasePlan,
    Recommendation,
    Route,
    SpecStats,
)


@dataclass(frozen=True)
class PhaseOutcome:
    """Everything one cycle found and did in one phase."""

    phase: str
    plan: PhasePlan
    stats: Mapping[str, SpecStats]  # by spec id; every spec of the plan
    decisions: tuple[Decision, ...]  # one per candidate, in plan order
    diagnoses: tuple[Diagnosis, ...]
    recommendations: tuple[Recommendation, ...]
    winner: Candidate | None
    baseline_before: PhaseBaseline
    baseline_after: PhaseBaseline
    route_before: Route | None
    route_after: Route
    enforced: tuple[str, ...] = ()  # human lines: "routing: model lfm -> claude-haiku (verified)"


@dataclass(frozen=True)
class CycleOutcome:
    cycle: int
    seed: int
    runs: int
    policy: str
    phases: tuple[PhaseOutcome, ...]
    pending: tuple[PendingCandidate, ...]  # for the next cycle
    audit: tuple[AuditRecord, ...]

    @property
    def promoted(self) -> bool:
        return any(p.winner is not None for p in self.phases)
