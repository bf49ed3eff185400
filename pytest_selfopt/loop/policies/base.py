"""What every gate policy is, and the four gates both built-in policies share.

A policy decides a whole phase at once, so that a policy with a correction for several
candidates (``paired``) can see every comparison it is making. Policies are objects passed
in (docs/architecture.md, "Gates"); there is no registry.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from pytest_selfopt.loop.types import (
    HOLD,
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


def undecidable(stats: SpecStats, who: str) -> str | None:
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


ACTIONS = {"samples": HOLD, "stability": HOLD, "improvement": REJECT, "restraint": REJECT}
