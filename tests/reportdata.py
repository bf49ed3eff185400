"""A hand-made cycle outcome and history for the report tests (test_report*.py)."""

from __future__ import annotations

import statistics
from typing import Any

from pytest_selfopt.loop.outcome import CycleOutcome, PhaseOutcome
from pytest_selfopt.loop.spec import Spec
from pytest_selfopt.loop.types import (
    AuditRecord,
    Candidate,
    CasePattern,
    Decision,
    Diagnosis,
    GateResult,
    PendingCandidate,
    PhaseBaseline,
    PhasePlan,
    Recommendation,
    Route,
    SpecStats,
)

GATES = ("samples", "stability", "improvement", "restraint")
BASE = Spec("lfm", "native_api", 60, 1, "i0", False)
HOSTILE = "</details><script>alert(1)</script> @someone | `rm -rf` [x](http://e.vil)"


def _stats(
    phase: str,
    spec: Spec,
    accs: list[float],
    cases: dict[str, str],
    restraint: float | None = 0.95,
    p50: float = 0.41,
) -> SpecStats:
    patterns = tuple(
        CasePattern(
            case,
            tuple(range(1, len(p) + 1)),
            tuple(c == "P" for c in p),
            tuple(None if c == "P" else "wrong_answer" for c in p),
            ("gw0",) * len(p),
        )
        for case, p in sorted(cases.items())
    )
    return SpecStats(
        phase=phase,
        spec_id=spec.id,
        runs=len(accs),
        run_accuracies=tuple(accs),
        median=statistics.median(accs),
        mean=statistics.fmean(accs),
        variance=statistics.pvariance(accs),
        latency_p50_s=p50,
        latency_p95_s=p50 * 3,
        restraint=restraint,
        input_tokens=100,
        output_tokens=50,
        cost=None,
        samples=len(accs) * len(cases),
        errored=0,
        case_ids=tuple(sorted(cases)),
        run_numbers=tuple(range(1, len(accs) + 1)),
        passes=(),
        patterns=patterns,
    )


def _decision(
    phase: str,
    spec: Spec,
    verdict: str,
    failed: tuple[str, ...] = (),
    reason: str = "",
    label: str | None = None,
) -> Decision:
    gates = tuple(GateResult(g, g not in failed, 0.5, 0.4, f"{g} detail") for g in GATES)
    return Decision(
        phase,
        spec.id,
        label or spec.label(BASE),
        verdict,
        reason or f"{verdict}: gates {', '.join(failed) or 'all passed'}",
        gates,
    )


def _diag(
    phase: str, spec: Spec, case: str, kind: str, pattern: str, detail: str = ""
) -> Diagnosis:
    return Diagnosis(phase, spec.id, case, kind, pattern, detail)


def build_outcome(reason: str = "", label: str | None = None, cycle: int = 2) -> CycleOutcome:
    """Two phases: atomic promotes variant=atomic; extended holds and keeps its baseline."""
    atomic_win = BASE.with_knob("variant", "atomic")
    atomic_rej = BASE.with_knob("retries", 2)
    cases = {
        "capital-france": "FFPPPPP",
        "math": "PPPPPPP",
        "colour": "PPPPPPP",
        "river": "PPPPPPP",
        "planet": "PPPPPPP",
        "hard": "FFFFFFF",
    }
    atomic_plan = PhasePlan(
        "atomic",
        BASE,
        (Candidate("atomic", atomic_win, "search"), Candidate("atomic", atomic_rej, "search")),
    )
    atomic_stats = {
        BASE.id: _stats("atomic", BASE, [0.667] * 7, cases),
        atomic_win.id: _stats("atomic", atomic_win, [0.833] * 7, {**cases, "hard": "FFFPPPP"}),
        atomic_rej.id: _stats("atomic", atomic_rej, [0.667] * 7, cases),
    }
    atomic_before = PhaseBaseline("atomic", BASE, atomic_stats[BASE.id].metrics(), 1, "initial")
    atomic_after = PhaseBaseline(
        "atomic",
        atomic_win,
        atomic_stats[atomic_win.id].metrics(),
        cycle,
        "variant=atomic: PROMOTE",
    )
    atomic = PhaseOutcome(
        phase="atomic",
        plan=atomic_plan,
        stats=atomic_stats,
        decisions=(
            _decision(
                "atomic",
                atomic_win,
                "PROMOTE",
                reason=reason or "median 0.833 > 0.667",
                label=label,
            ),
            _decision(
                "atomic",
                atomic_rej,
                "REJECT",
                ("improvement",),
                reason="REJECT: median 0.667 = 0.667 (no improvement)",
            ),
        ),
        diagnoses=(
            _diag(
                "atomic",
                BASE,
                "capital-france",
                "cold_start",
                "[F,F,P,P,P,P,P]",
                "first 2 runs failed",
            ),
            *[
                _diag("atomic", BASE, c, "stable_pass", "[P,P,P,P,P,P,P]")
                for c in ("colour", "math", "planet", "river")
            ],
            _diag("atomic", BASE, "hard", "capability_limit", "[F,F,F,F,F,F,F]"),
            *[
                _diag("atomic", atomic_rej, c, "stable_pass", "[P,P,P,P,P,P,P]")
                for c in ("colour", "math")
            ],
            _diag("atomic", atomic_rej, "hard", "capability_limit", "[F,F,F,F,F,F,F]"),
            _diag("atomic", atomic_win, "hard", "flaky", "[F,F,F,P,P,P,P]", detail=reason),
        ),
        recommendations=(
            Recommendation(
                "atomic",
                "enable_warmup",
                "warmup",
                True,
                BASE.id,
                "cold start in 1 of 6 cases",
                ("capital-france",),
            ),
        ),
        winner=atomic_plan.candidates[0],
        baseline_before=atomic_before,
        baseline_after=atomic_after,
        route_before=Route("atomic", BASE),
        route_after=Route("atomic", atomic_win, ("claude-haiku",)),
        enforced=("baseline: variant native_api -> atomic (verified)",),
    )
    ext_cand = BASE.with_knob("warmup", True)
    ext_plan = PhasePlan("extended", BASE, (Candidate("extended", ext_cand, "pending"),))
    ext_stats = {
        BASE.id: _stats("extended", BASE, [0.5, 0.5, 0.6, 0.5, 0.5, 0.5, 0.5], {"a": "PFPFPPF"}),
        ext_cand.id: _stats(
            "extended",
            ext_cand,
            [0.4, 0.9, 0.5, 0.6, 0.5, 0.7, 0.5],
            {"a": "PPFPFPP"},
            restraint=None,
        ),
    }
    ext_base = PhaseBaseline("extended", BASE, None, 0, "initial spec")
    extended = PhaseOutcome(
        phase="extended",
        plan=ext_plan,
        stats=ext_stats,
        decisions=(
            _decision(
                "extended",
                ext_cand,
                "HOLD",
                ("stability",),
                reason="HOLD: variance 0.0216 > 0.0025",
            ),
        ),
        diagnoses=(
            _diag("extended", BASE, "a", "flaky", "[P,F,P,F,P,P,F]"),
            _diag("extended", ext_cand, "a", "stable_pass", "[P,P,P,P,P,P,P]"),
        ),
        recommendations=(),
        winner=None,
        baseline_before=ext_base,
        baseline_after=ext_base,
        route_before=None,
        route_after=Route("extended", BASE),
    )
    pending = PendingCandidate(
        "atomic", atomic_win.with_knob("warmup", True), atomic.recommendations[0], cycle
    )
    audit = (AuditRecord(cycle, "atomic", "promote", atomic_win.id, "variant=atomic"),)
    return CycleOutcome(cycle, 42, 7, "seed", (atomic, extended), (pending,), audit)


def sample_history() -> list[dict[str, Any]]:
    def phase(
        before: float | None,
        after: float | None,
        winner: str | None,
        candidates: int = 1,
        measured: float | None = None,
    ) -> dict[str, Any]:
        return {
            "baseline_before": {"spec_id": "b", "spec": {}, "metrics": None},
            "baseline_after": {
                "spec_id": "b" if winner is None else winner,
                "spec": {},
                "metrics": None if after is None else {"median": after},
            },
            "measured_baseline": None if measured is None else {"median": measured},
            "improvement": 0.0,
            "winner": winner,
            "candidates": [{"spec_id": "c"}] * candidates,
            "patterns": {},
        }

    return [
        {
            "cycle": 1,
            "phases": {
                "atomic": phase(None, 0.667, "x"),
                "extended": phase(None, None, None, measured=0.5),
            },
        },
        {
            "cycle": 2,
            "phases": {"atomic": phase(0.667, 0.833, "y"), "extended": phase(None, None, None)},
        },
        {"cycle": 3, "phases": {"atomic": phase(0.833, 0.833, None, candidates=0)}},
    ]
