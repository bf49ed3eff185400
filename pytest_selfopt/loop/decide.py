"""Phase 3, decide: baseline and candidate stats -> PROMOTE / HOLD / REJECT, with reasons.

A policy decides a whole phase at once, so that a later policy (a paired significance test
with correction for several candidates) can see every comparison it is making.

``SeedPolicy`` is the seed's four gates exactly (DESIGN.md §8), evaluated in order and all
recorded with their numbers; the verdict is the action of the first failing gate:

1. samples:     runs >= ``min_samples``                 else HOLD
2. stability:   variance of run accuracies <= ``max_variance``   else HOLD
3. improvement: median strictly above the baseline's (1e-9 tolerance, so float noise never
   makes an equal median look better)                   else REJECT ("no improvement")
4. restraint:   restraint >= ``min_restraint`` (no constraints: passes)   else REJECT

Nothing can be decided from transport failures alone: when every sample of a candidate (or of
the baseline it is compared to) errored in transport, or there is no sample, the verdict is
HOLD with a reason starting ``could not decide``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from .types import (
    HOLD,
    PROMOTE,
    REJECT,
    Candidate,
    Decision,
    GateResult,
    GateSettings,
    SpecStats,
)

#: Medians closer than this are equal: an improvement must be real, not float noise.
TOLERANCE = 1e-9
COULD_NOT_DECIDE = "could not decide"


class GatePolicy(Protocol):
    """Turns one phase's measurements into one decision per candidate, in candidate order."""

    name: str

    def decide(
        self,
        phase: str,
        baseline: SpecStats,
        candidates: Sequence[tuple[Candidate, SpecStats]],
        settings: GateSettings,
        labels: Mapping[str, str],
    ) -> tuple[Decision, ...]: ...


def _undecidable(stats: SpecStats, who: str) -> str | None:
    if stats.samples == 0:
        return f"{COULD_NOT_DECIDE}: no samples ({who})"
    if stats.errored == stats.samples:
        return (
            f"{COULD_NOT_DECIDE}: every sample errored ({who}: {stats.errored} of "
            f"{stats.samples} samples ended in a transport error)"
        )
    return None


def seed_gates(
    baseline: SpecStats, candidate: SpecStats, settings: GateSettings
) -> tuple[GateResult, ...]:
    """The four gates with their values, thresholds and a one-phrase detail each."""
    runs_ok = candidate.runs >= settings.min_samples
    stable = candidate.variance <= settings.max_variance
    diff = candidate.median - baseline.median
    better = diff > TOLERANCE
    relation = ">" if better else "=" if abs(diff) <= TOLERANCE else "<"
    restraint = candidate.restraint
    restrained = restraint is None or restraint >= settings.min_restraint
    if restraint is None:
        restraint_detail = "no restraint constraints"
    else:
        op = ">=" if restrained else "<"
        restraint_detail = f"restraint {restraint:.2f} {op} {settings.min_restraint:.2f}"
    return (
        GateResult(
            "samples",
            runs_ok,
            float(candidate.runs),
            float(settings.min_samples),
            f"{candidate.runs} runs {'>=' if runs_ok else '<'} {settings.min_samples}",
        ),
        GateResult(
            "stability",
            stable,
            candidate.variance,
            settings.max_variance,
            f"variance {candidate.variance:.4f} {'<=' if stable else '>'} "
            f"{settings.max_variance:.4f}",
        ),
        GateResult(
            "improvement",
            better,
            candidate.median,
            baseline.median,
            f"median {candidate.median:.3f} {relation} {baseline.median:.3f}",
        ),
        GateResult("restraint", restrained, restraint, settings.min_restraint, restraint_detail),
    )


_ACTIONS = {"samples": HOLD, "stability": HOLD, "improvement": REJECT, "restraint": REJECT}


def _reason(gates: Sequence[GateResult], candidate: SpecStats, baseline: SpecStats) -> str:
    failed = next((g for g in gates if not g.passed), None)
    if failed is None:
        restraint = "n/a" if candidate.restraint is None else f"{candidate.restraint:.2f}"
        return (
            f"{PROMOTE}: median {candidate.median:.3f} > {baseline.median:.3f}, "
            f"variance {candidate.variance:.4f}, restraint {restraint}"
        )
    verdict = _ACTIONS[failed.name]
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
        baseline_problem = _undecidable(baseline, "baseline")
        decisions = []
        for candidate, stats in candidates:
            spec_id = candidate.spec.id
            gates = seed_gates(baseline, stats, settings)
            problem = _undecidable(stats, "candidate") or baseline_problem
            if problem is not None:
                verdict, reason = HOLD, problem
            else:
                failed = next((g for g in gates if not g.passed), None)
                verdict = PROMOTE if failed is None else _ACTIONS[failed.name]
                reason = _reason(gates, stats, baseline)
            decisions.append(
                Decision(phase, spec_id, labels.get(spec_id, spec_id), verdict, reason, gates)
            )
        return tuple(decisions)


POLICIES: dict[str, GatePolicy] = {"seed": SeedPolicy()}


def get_policy(name: str) -> GatePolicy:
    """The registered policy called ``name``; unknown names list the known ones."""
    try:
        return POLICIES[name]
    except KeyError:
        known = ", ".join(sorted(POLICIES))
        raise KeyError(f"unknown gate policy {name!r}; known policies: {known}") from None


def pick_winner(
    decisions: Sequence[Decision], stats_by_spec: Mapping[str, SpecStats]
) -> Decision | None:
    """The promoted candidate with the highest median; ties: lower variance, lower latency
    p50, then plan (decision) order."""
    ranked = [
        (
            round(-stats_by_spec[d.spec_id].median, 9),
            stats_by_spec[d.spec_id].variance,
            stats_by_spec[d.spec_id].latency_p50_s,
            i,
            d,
        )
        for i, d in enumerate(decisions)
        if d.verdict == PROMOTE
    ]
    if not ranked:
        return None
    return min(ranked, key=lambda r: r[:4])[4]
