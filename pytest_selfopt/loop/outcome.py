"""What one cycle found and did, per phase and in all: the output of ``loop.cycle``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pytest_selfopt.loop.types import (
    AuditRecord,
    Candidate,
    CandidateStatus,
    Decision,
    Diagnosis,
    DiagnosisKind,
    PendingCandidate,
    PhaseBaseline,
    PhasePlan,
    Recommendation,
    Route,
    SpecStats,
)


@dataclass(frozen=True)
class Outlook:
    """A phase's next cycle as this cycle leaves it (``generate`` run one cycle ahead): what
    it will try (untried, or again after a cool-down) and what it holds back, with why."""

    plan: PhasePlan
    status: Mapping[str, CandidateStatus]  # planned candidates by spec id: UNTRIED or RETRY

    def to_dict(self) -> dict[str, Any]:
        """``{"planned": [...], "waiting": [...], "cooling_down": [...], "retired": [...]}``;
        each item ``{"spec_id", "label", "origin", "status"}``, held-back ones also
        ``free_in_cycle`` (cooling down: the first cycle it may run again) and
        ``since_cycle`` (the cycle of the decision that holds it back)."""
        base = self.plan.baseline
        planned = [
            {
                "spec_id": c.spec.id,
                "label": c.spec.label(base),
                "origin": str(c.origin),
                "status": str(self.status.get(c.spec.id, CandidateStatus.UNTRIED)),
            }
            for c in self.plan.candidates
        ]
        held = [h.to_dict(base) for h in self.plan.held_back]
        by = {
            "waiting": (CandidateStatus.UNTRIED, CandidateStatus.RETRY),
            "cooling_down": (CandidateStatus.COOLING_DOWN,),
            "retired": (CandidateStatus.RETIRED,),
        }
        out: dict[str, Any] = {"planned": planned}
        for key, statuses in by.items():
            out[key] = [h for h in held if h["status"] in statuses]
        return out


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
    #: the phase's next cycle as this cycle leaves it; None when not computed
    outlook: Outlook | None = None

    @property
    def outages(self) -> tuple[Diagnosis, ...]:
        """The phase's ``outage`` diagnoses (one per spec in an outage)."""
        return tuple(d for d in self.diagnoses if d.kind == DiagnosisKind.OUTAGE)


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

    @property
    def outages(self) -> tuple[Diagnosis, ...]:
        """Every phase's ``outage`` diagnoses, phases sorted: the specs whose service did not
        answer (``Diagnosis.model``, ``error_kind``, ``failures`` of ``samples``)."""
        return tuple(d for p in self.phases for d in p.outages)
