"""What every gate policy is, and the four gates both built-in policies share.

A policy decides a whole phase at once, so that a policy with a correction for several
candidates (``paired``) can see every comparison it is making. Policies are objects passed
in (docs/architecture.md, "Gates"); there is no registry.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from pytest_selfopt.loop.diagnose import outage
from pytest_selfopt.loop.types import (
    HOLD,
    REJECT,
    Candidate,
    Cause,
    Decision,
    GateResult,
    GateSettings,
    SpecStats,
    Verdict,
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


def undecidable(stats: SpecStats, who: str) -> tuple[Cause, str] | None:
    """``(cause, reason)`` when nothing can be decided from ``stats``: no sample, or an
    outage (``diagnose.outage``: most samples failed in transport with one kind, the service
    did not answer). Otherwise None: an errored sample is then a failed sample, as the
    application would get it; a baseline that times out everywhere can be beaten."""
    if stats.samples == 0:
        return Cause.NO_SAMPLES, f"{COULD_NOT_DECIDE}: no samples ({who})"
    down = outage(stats)
    if down is not None:
        kind, count = down
        return Cause.OUTAGE, (
            f"{COULD_NOT_DECIDE}: outage ({who}: {count} of {stats.samples} samples failed "
            f"with {kind})"
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


ACTIONS: dict[str, Verdict] = {
    "samples": HOLD,
    "stability": HOLD,
    "improvement": REJECT,
    "restraint": REJECT,
}
