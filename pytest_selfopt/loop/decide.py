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

``PairedPolicy`` (``paired``) keeps the four gates' names and order, but asks whether the
candidate is better *on the same prompts*, corrected for the number of candidates
(statistics in ``loop/paired.py``, numbers in docs/statistics.md):

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
from typing import Protocol

from pytest_selfopt.loop import stats as st
from pytest_selfopt.loop.types import (
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
        baseline_problem = _undecidable(baseline, "baseline")
        decisions = []
        for (candidate, stats), test, adj in zip(candidates, tests, adjusted):
            spec_id = candidate.spec.id
            gates = self._gates(stats, test, adj, len(candidates), settings)
            problem = _undecidable(stats, "candidate") or baseline_problem
            if problem is None and test[0] == 0:
                problem = f"{COULD_NOT_DECIDE}: no case sampled by both baseline and candidate"
            failed = next((g for g in gates if not g.passed), None)
            if problem is not None:
                verdict, reason = HOLD, problem
            elif failed is None:
                verdict = PROMOTE
                restraint = "n/a" if stats.restraint is None else f"{stats.restraint:.2f}"
                reason = f"{PROMOTE}: {gates[2].detail}, restraint {restraint}"
            else:
                verdict = _ACTIONS[failed.name]
                why = {
                    "samples": "too few samples",
                    "stability": "unstable",
                    "improvement": "no significant improvement",
                    "restraint": "restraint too low",
                }[failed.name]
                reason = f"{verdict}: {why}: {failed.detail}"
            decisions.append(
                Decision(phase, spec_id, labels.get(spec_id, spec_id), verdict, reason, gates)
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


POLICIES: dict[str, GatePolicy] = {"seed": SeedPolicy(), "paired": PairedPolicy()}


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
