"""The ``paired`` policy (the default).

``PairedPolicy`` (``paired``) keeps the four gates' names and order, but asks whether the
candidate is better *on the same prompts*, corrected for the number of candidates
(statistics in ``loop/stats.py``, numbers in docs/statistics.md). As in ``seed``, an errored
sample is a failed sample, and a candidate or baseline with no sample or in an outage is
HOLD with a ``could not decide`` reason (``policies.base.undecidable``). The decision's
estimate is the effect the improvement gate measured, so the winner is chosen by it:

1. samples:     as the seed, and the two specs share at least one sampled case   else HOLD
2. stability:   mean per-case run-to-run flip rate <= ``max_flip_rate`` (default 1.0: the
   gate is advisory, its number recorded; the test already pays for run-to-run noise)
                                                        else HOLD
3. improvement: one-sided stratified test (exact permutation / CMH), Holm over every candidate
   of the phase, adjusted p <= ``alpha``, and the estimated effect >= the minimum effect
   (``min_effect``, at least ``min_effect_prompts`` prompts' worth). The gate's value is the
   estimate, its detail carries the interval (``interval_level``, 90%)  else REJECT
4. restraint:   as the seed                             else REJECT
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pytest_selfopt.loop import stats as st
from pytest_selfopt.loop.policies.base import (
    ACTIONS,
    COULD_NOT_DECIDE,
    TOLERANCE,
    seed_gates,
    undecidable,
)
from pytest_selfopt.loop.types import (
    HOLD,
    PROMOTE,
    Candidate,
    Cause,
    Decision,
    GateResult,
    GateSettings,
    SpecStats,
)


def _pct(x: float) -> str:
    return f"{x:+.3f}"


class PairedPolicy:
    """Paired, Holm-corrected gates: false promotion stays at ``alpha`` per phase and cycle
    whatever the number of candidates (docs/statistics.md)."""

    name = "paired"

    def decide(
        self,
        phase: str,
        baseline: SpecStats,
        candidates: Sequence[tuple[Candidate, SpecStats]],
        settings: GateSettings,
        labels: Mapping[str, str],
    ) -> tuple[Decision, ...]:
        tests = [self._test(baseline, stats, settings) for _, stats in candidates]
        adjusted = st.holm([t[1] for t in tests])
        baseline_problem = undecidable(baseline, "baseline")
        decisions = []
        for (candidate, stats), test, adj in zip(candidates, tests, adjusted):
            spec_id = candidate.spec.id
            gates = self._gates(stats, test, adj, len(candidates), settings)
            problem = undecidable(stats, "candidate") or baseline_problem
            if problem is None and test[0] == 0:
                problem = (
                    Cause.NO_COMMON_CASE,
                    f"{COULD_NOT_DECIDE}: no case sampled by both baseline and candidate",
                )
            failed = next((g for g in gates if not g.passed), None)
            cause = None
            if problem is not None:
                verdict, (cause, reason) = HOLD, problem
            elif failed is None:
                verdict = PROMOTE
                restraint = "n/a" if stats.restraint is None else f"{stats.restraint:.2f}"
                reason = f"{PROMOTE}: {gates[2].detail}, restraint {restraint}"
            else:
                verdict = ACTIONS[failed.name]
                why = {
                    "samples": "too few samples",
                    "stability": "unstable",
                    "improvement": "no significant improvement",
                    "restraint": "restraint too low",
                }[failed.name]
                reason = f"{verdict}: {why}: {failed.detail}"
            decisions.append(
                Decision(
                    phase,
                    spec_id,
                    labels.get(spec_id, spec_id),
                    verdict,
                    reason,
                    gates,
                    cause=cause,
                    estimate=test[3][0],
                )
            )
        return tuple(decisions)

    @staticmethod
    def _test(
        baseline: SpecStats, stats: SpecStats, settings: GateSettings
    ) -> tuple[int, float, str, tuple[float, float, float]]:
        """``(prompts compared, raw one-sided p, method, (estimate, low, high))``."""
        _, x, n, y, m = st.paired_counts(baseline, stats)
        if x.size == 0:
            return 0, 1.0, "none", (0.0, -1.0, 1.0)
        p, method = st.stratified_pvalue(x, n, y, m, settings.exact_below)
        return int(x.size), p, method, st.effect_interval(x, n, y, m, settings.interval_level)

    @staticmethod
    def _gates(
        stats: SpecStats,
        test: tuple[int, float, str, tuple[float, float, float]],
        adjusted: float,
        family: int,
        settings: GateSettings,
    ) -> tuple[GateResult, ...]:
        samples, stability, _, restraint = seed_gates(stats, stats, settings)
        flips = st.flip_rate(stats)
        steady = flips <= settings.max_flip_rate + TOLERANCE
        advisory = " (advisory)" if settings.max_flip_rate >= 1.0 else ""
        stability = GateResult(
            "stability",
            steady,
            flips,
            settings.max_flip_rate,
            f"flip rate {flips:.3f} {'<=' if steady else '>'} {settings.max_flip_rate:.3f}"
            + advisory,
        )
        prompts, p, method, (est, low, high) = test
        bar = st.min_effect(settings, prompts)
        significant = adjusted <= settings.alpha
        big_enough = est >= bar - TOLERANCE
        level = f"{settings.interval_level:.0%}"
        detail = (
            f"effect {_pct(est)} [{level} {_pct(low)}, {_pct(high)}] on {prompts} prompts, "
            f"p={p:.4f} ({method}, holm over {family}: {adjusted:.4f}) "
            f"{'<=' if significant else '>'} {settings.alpha:g}"
        )
        if significant and not big_enough:
            detail += f", effect {_pct(est)} < minimum {_pct(bar)}"
        improvement = GateResult("improvement", significant and big_enough, est, bar, detail)
        return samples, stability, improvement, restraint
