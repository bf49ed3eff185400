"""Statistics of the ``paired`` gate policy: candidate versus baseline on the same prompts.

Why paired: prompts differ far more from each other than runs of one prompt do, so comparing
run accuracies (the seed's median) mixes the two and mostly measures the prompt count.
Here each prompt is a stratum, its runs are replicates, and the question per stratum is
"did the candidate pass more of its runs than the baseline did of theirs?".

Per prompt ``i``: the baseline passed ``x_i`` of ``n_i`` runs, the candidate ``y_i`` of
``m_i``. Under the null hypothesis (within each prompt the two specs are exchangeable) the
candidate's share of the prompt's ``t_i = x_i + y_i`` passes is hypergeometric, and the test
statistic ``S = sum(y_i)`` is a sum of independent hypergeometrics:

* with fewer than ``exact_below`` informative prompts (``0 < t_i < n_i + m_i``), the p-value
  ``P(S >= s)`` is exact: the hypergeometrics are convolved (this *is* the exact
  within-prompt permutation test, enumerated analytically: deterministic, no Monte Carlo);
* otherwise the Cochran-Mantel-Haenszel z, ``(S - E[S] - 1/2) / sd(S)``, one-sided (with
  the continuity correction, which the simulation showed is needed to stay at ``alpha``).

Counts come from the samples actually taken (the case patterns), never from missing cells:
an item skipped by racing is not a sample, and so never counts as a failure.

Holm's step-down correction covers every candidate of a phase. The effect is the mean
per-prompt difference in pass rate (= difference of mean accuracies when both specs ran every
item), with a Wald interval whose per-prompt variances use ``(x + 0.5) / (n + 1)`` so that a
prompt that always passes or always fails still carries some uncertainty.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache
from itertools import pairwise
from statistics import NormalDist

import numpy as np
import numpy.typing as npt

from pytest_selfopt.loop.types import GateSettings, SpecStats

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
_N = NormalDist()
#: Float noise never decides a comparison.
TOLERANCE = 1e-9


def case_counts(stats: SpecStats) -> dict[str, tuple[int, int]]:
    """Per case id ``(runs passed, runs sampled)``; a run with several samples passes when any
    did. Read from the patterns (samples actually taken); the raw matrix only without them."""
    if stats.patterns:
        out: dict[str, tuple[int, int]] = {}
        for p in stats.patterns:
            seen: dict[int, bool] = {}
            for run, ok in zip(p.runs, p.outcomes):
                seen[run] = seen.get(run, False) or ok
            out[p.case_id] = (sum(seen.values()), len(seen))
        return out
    rows = stats.passes
    return {
        cid: (sum(1 for row in rows if row[j]), len(rows)) for j, cid in enumerate(stats.case_ids)
    }


def paired_counts(
    baseline: SpecStats, candidate: SpecStats
) -> tuple[tuple[str, ...], IntArray, IntArray, IntArray, IntArray]:
    """``(case_ids, x, n, y, m)`` over the cases both specs sampled, sorted by case id."""
    b, c = case_counts(baseline), case_counts(candidate)
    common = tuple(sorted(k for k in b.keys() & c.keys() if b[k][1] > 0 and c[k][1] > 0))
    x = np.array([b[k][0] for k in common], dtype=np.int64)
    n = np.array([b[k][1] for k in common], dtype=np.int64)
    y = np.array([c[k][0] for k in common], dtype=np.int64)
    m = np.array([c[k][1] for k in common], dtype=np.int64)
    return common, x, n, y, m


@lru_cache(maxsize=4096)
def _hypergeom(n: int, m: int, t: int) -> tuple[int, FloatArray]:
    """``(lowest y, pmf)`` of the candidate's passes ``y`` given ``t`` passes in the stratum."""
    lo, hi = max(0, t - n), min(m, t)
    total = math.comb(n + m, t)
    pmf = np.array([math.comb(m, y) * math.comb(n, t - y) / total for y in range(lo, hi + 1)])
    return lo, pmf


@lru_cache(maxsize=65536)
def _null_sf(strata: tuple[tuple[int, int, int], ...]) -> tuple[int, FloatArray]:
    """``(lowest S, P(S >= lowest + j) for each j)`` for informative ``(n, m, t)`` strata."""
    lowest, dist = 0, np.ones(1)
    for n, m, t in strata:
        lo, pmf = _hypergeom(n, m, t)
        lowest += lo
        dist = np.convolve(dist, pmf)
    sf = np.cumsum(dist[::-1])[::-1]
    return lowest, np.minimum(sf, 1.0)


def _informative(
    x: IntArray, n: IntArray, y: IntArray, m: IntArray
) -> tuple[IntArray, IntArray, IntArray, IntArray]:
    t = x + y
    keep = (t > 0) & (t < n + m)
    return n[keep], m[keep], t[keep], y[keep]


def exact_pvalue(x: IntArray, n: IntArray, y: IntArray, m: IntArray) -> float:
    """One-sided exact p-value ``P(S >= observed)`` of the within-prompt permutation test."""
    ni, mi, ti, yi = _informative(x, n, y, m)
    if ni.size == 0:
        return 1.0
    key = tuple(sorted(zip(ni.tolist(), mi.tolist(), ti.tolist())))
    lowest, sf = _null_sf(key)
    j = int(yi.sum()) - lowest
    return float(sf[j]) if 0 <= j < sf.size else (1.0 if j < 0 else 0.0)


def cmh_z(
    x: npt.ArrayLike,
    n: npt.ArrayLike,
    y: npt.ArrayLike,
    m: npt.ArrayLike,
    correction: float = 0.5,
) -> FloatArray:
    """One-sided CMH z, ``(S - E[S] - correction) / sd(S)``, over the last axis (prompts),
    vectorised over any leading axes; 0 when no prompt is informative. The continuity
    correction keeps the normal tail from being slightly anti-conservative (simulation)."""
    xf, n, yf, m = (np.asarray(a, dtype=np.float64) for a in (x, n, y, m))
    big_n = n + m
    t = xf + yf
    expected = (m * t / big_n).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        var_i = np.where(big_n > 1, n * m * t * (big_n - t) / (big_n**2 * (big_n - 1)), 0.0)
    var = var_i.sum(axis=-1)
    diff = yf.sum(axis=-1) - expected - correction
    with np.errstate(invalid="ignore", divide="ignore"):
        z = np.where(var > 0, diff / np.sqrt(np.where(var > 0, var, 1.0)), 0.0)
    return np.asarray(z, dtype=np.float64)


def normal_sf(z: float) -> float:
    """``P(Z >= z)`` for a standard normal, via erfc (accurate far in the tail)."""
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def stratified_pvalue(
    x: IntArray, n: IntArray, y: IntArray, m: IntArray, exact_below: int = 20
) -> tuple[float, str]:
    """``(one-sided p, "exact" | "cmh")``: exact with fewer than ``exact_below`` informative
    prompts (where the normal approximation is poor), the CMH z otherwise."""
    ni, _, _, _ = _informative(x, n, y, m)
    if ni.size < exact_below:
        return exact_pvalue(x, n, y, m), "exact"
    return normal_sf(float(cmh_z(x, n, y, m))), "cmh"


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm step-down adjusted p-values, in input order: reject ``i`` when ``adj[i] <= alpha``
    controls the chance of any false rejection at ``alpha`` for any dependence."""
    k = len(pvalues)
    order = sorted(range(k), key=lambda i: (pvalues[i], i))
    adjusted = [1.0] * k
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (k - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def _smoothed_var(passed: FloatArray, runs: FloatArray) -> FloatArray:
    p = (passed + 0.5) / (runs + 1.0)
    return np.asarray(p * (1.0 - p) / runs, dtype=np.float64)


def effect_interval(
    x: IntArray, n: IntArray, y: IntArray, m: IntArray, level: float = 0.90
) -> tuple[float, float, float]:
    """``(estimate, low, high)`` of the mean per-prompt pass-rate difference (candidate minus
    baseline) with a two-sided ``level`` interval, clipped to [-1, 1]."""
    if x.size == 0:
        return 0.0, -1.0, 1.0
    xf, nf, yf, mf = (a.astype(np.float64) for a in (x, n, y, m))
    est = float(np.mean(yf / mf - xf / nf))
    se = math.sqrt(float((_smoothed_var(yf, mf) + _smoothed_var(xf, nf)).sum())) / x.size
    half = _N.inv_cdf(0.5 + level / 2.0) * se
    return est, max(-1.0, est - half), min(1.0, est + half)


def min_effect(settings: GateSettings, prompts: int) -> float:
    """The smallest improvement worth promoting: ``min_effect``, and at least
    ``min_effect_prompts`` prompts' worth of accuracy."""
    per_prompt = settings.min_effect_prompts / prompts if prompts else 0.0
    return max(settings.min_effect, per_prompt)


def flip_rate(stats: SpecStats) -> float:
    """Share of consecutive sample pairs of a case (time order) whose outcomes differ,
    averaged over cases: run-to-run instability, independent of the prompt count."""
    rates = []
    for p in stats.patterns:
        o = p.outcomes
        if len(o) > 1:
            rates.append(sum(1 for a, b in pairwise(o) if a != b) / (len(o) - 1))
    if not stats.patterns and len(stats.passes) > 1:
        cols = list(zip(*stats.passes))
        rates = [sum(1 for a, b in pairwise(c) if a != b) / (len(c) - 1) for c in cols]
    return float(np.mean(rates)) if rates else 0.0


def mde_from_rates(
    rates: Sequence[float], runs: int, candidates: int, settings: GateSettings
) -> float:
    """Minimum detectable effect for per-prompt baseline pass ``rates``, both specs run
    ``runs`` times, Bonferroni over ``candidates`` (Holm's worst case), at ``settings.power``;
    never below the minimum effect. Normal approximation: a planning number."""
    prompts = len(rates)
    if prompts == 0:
        return 1.0
    r = float(max(runs, 1))
    passed = np.asarray(rates, dtype=np.float64) * r
    se = math.sqrt(float(2.0 * _smoothed_var(passed, np.full(prompts, r)).sum())) / prompts
    z = _N.inv_cdf(1.0 - settings.alpha / max(candidates, 1)) + _N.inv_cdf(settings.power)
    return min(1.0, max(min_effect(settings, prompts), z * se))


def minimum_detectable_effect(
    stats: SpecStats, candidates: int, settings: GateSettings, runs: int | None = None
) -> float:
    """The true improvement the paired gate detects with probability ``settings.power``,
    from the baseline's per-case pass rates (``mde_from_rates``); ``runs``: the runs planned
    per spec (default: the baseline's)."""
    rates = [c[0] / c[1] for c in case_counts(stats).values() if c[1] > 0]
    return mde_from_rates(rates, runs or stats.runs or 1, candidates, settings)


def power_note(
    stats: SpecStats, candidates: int, settings: GateSettings, runs: int | None = None
) -> str | None:
    """``underpowered: ...`` when the minimum detectable effect exceeds the effect of
    interest, else None."""
    mde = minimum_detectable_effect(stats, candidates, settings, runs)
    if mde <= settings.effect_of_interest + TOLERANCE:
        return None
    prompts = len(stats.case_ids) or len(stats.patterns)
    r = runs or stats.runs
    return (
        f"underpowered: add prompts or runs (minimum detectable effect {mde * 100:+.1f} points "
        f"> effect of interest {settings.effect_of_interest * 100:+.1f} with {prompts} prompts "
        f"x {r} runs x {candidates} candidate{'s' if candidates != 1 else ''})"
    )


def optimistic_effect(
    x: IntArray, n: IntArray, y: IntArray, m: IntArray, z: float = 2.326
) -> FloatArray:
    """``estimate + z * se`` of the effect, over the last axis (prompts), vectorised over any
    leading axes: the racing bound."""
    xf, nf, yf, mf = (np.asarray(a, dtype=np.float64) for a in (x, n, y, m))
    prompts = xf.shape[-1]
    est = (yf / mf - xf / nf).mean(axis=-1)
    se = np.sqrt((_smoothed_var(yf, mf) + _smoothed_var(xf, nf)).sum(axis=-1)) / prompts
    return np.asarray(est + z * se, dtype=np.float64)


def can_still_win(
    baseline_partial: SpecStats,
    candidate_partial: SpecStats,
    remaining_runs: int,
    settings: GateSettings,
    z: float = 2.326,
) -> bool:
    """Racing: False when the candidate's remaining items are not worth running.

    The candidate is given up when even the optimistic end of a one-sided 99% interval
    (``z``) of its effect so far is below the minimum effect: it would need its remaining
    runs to reverse a clear deficit. ``remaining_runs == 0``: whether the estimate already
    clears the minimum effect. With no paired data yet nothing is known: True. Skipped items
    are not samples (``case_counts``), so giving up never records a failure."""
    _, x, n, y, m = paired_counts(baseline_partial, candidate_partial)
    if x.size == 0:
        return True
    bar = min_effect(settings, x.size)
    if remaining_runs <= 0:
        return float(optimistic_effect(x, n, y, m, 0.0)) >= bar - TOLERANCE
    return float(optimistic_effect(x, n, y, m, z)) >= bar - TOLERANCE
