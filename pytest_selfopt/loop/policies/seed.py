"""The ``seed`` policy: the original four gates, one candidate at a time.

``SeedPolicy`` is the seed's four gates exactly (docs/architecture.md, "Gates"), evaluated in order and all
recorded with their numbers; the verdict is the action of the first failing gate:

1. samples:     runs >= ``min_samples``                 else HOLD
2. stability:   variance of run accuracies <= ``max_variance``   else HOLD
3. improvement: median strictly above the baseline's (1e-9 tolerance, so float noise never
   makes an equal median look better)                   else REJECT ("no improvement")
4. restraint:   restraint >= ``min_restraint`` (no constraints: passes)   else REJECT

A transport-errored sample is a failed sample (what the application would get). Nothing is
decided when a candidate or its baseline has no sample or is in an outage
(``policies.base.undecidable``): the verdict is HOLD, its cause says which, and its reason
starts ``could not decide``. The decision's estimate is the median difference.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pytest_selfopt.loop.policies.base import ACTIONS, seed_gates, undecidable
from pytest_selfopt.loop.types import (
    HOLD,
    PROMOTE,
    Candidate,
    Decision,
    GateResult,
    GateSettings,
    SpecStats,
)


def _reason(gates: Sequence[GateResult], candidate: SpecStats, baseline: SpecStats) -> str:
    failed = next((g for g in gates if not g.passed), None)
    if failed is None:
        restraint = "n/a" if candidate.restraint is None else f"{candidate.restraint:.2f}"
        return (
            f"{PROMOTE}: median {candidate.median:.3f} > {baseline.median:.3f}, "
            f"variance {candidate.variance:.4f}, restraint {restraint}"
        )
    verdict = ACTIONS[failed.name]
    if failed.name == "samples":
        return f"{verdict}: too few samples: {failed.detail}"
    if failed.name == "stability":
        return f"{verdict}: unstable: {failed.detail}"
    if failed.name == "improvement":
        relation = failed.detail.split()[2]
        return (
            f"{verdict}: no improvement: median {candidate.median:.3f} {relation} "
            f"baseline {baseline.median:.3f}"
        )
    return f"{verdict}: restraint too low: {failed.detail}"


class SeedPolicy:
    """The seed's gates, one candidate at a time (no correction for multiple comparisons)."""

    name = "seed"

    def decide(
        self,
        phase: str,
        baseline: SpecStats,
        candidates: Sequence[tuple[Candidate, SpecStats]],
        settings: GateSettings,
        labels: Mapping[str, str],
    ) -> tuple[Decision, ...]:
        baseline_problem = undecidable(baseline, "baseline")
        decisions = []
        for candidate, stats in candidates:
            spec_id = candidate.spec.id
            gates = seed_gates(baseline, stats, settings)
            problem = undecidable(stats, "candidate") or baseline_problem
            cause = None
            if problem is not None:
                verdict, (cause, reason) = HOLD, problem
            else:
                failed = next((g for g in gates if not g.passed), None)
                verdict = PROMOTE if failed is None else ACTIONS[failed.name]
                reason = _reason(gates, stats, baseline)
            decisions.append(
                Decision(
                    phase,
                    spec_id,
                    labels.get(spec_id, spec_id),
                    verdict,
                    reason,
                    gates,
                    cause=cause,
                    estimate=stats.median - baseline.median,
                )
            )
        return tuple(decisions)
