"""loop.paired and the ``paired`` policy: exact p-values, Holm, effect, power, racing."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_selfopt.loop import stats as paired
from pytest_selfopt.loop.evaluate import evaluate
from pytest_selfopt.loop.policies import builtin_policies
from pytest_selfopt.loop.policies.paired import PairedPolicy
from pytest_selfopt.loop.spec import Spec
from pytest_selfopt.loop.types import (
    HOLD,
    PROMOTE,
    REJECT,
    Candidate,
    GateSettings,
    Sample,
    SpecStats,
)

BASE = Spec("lfm", "native_api", 60, 1, "i0", False)
CAND = BASE.with_knob("variant", "atomic")
GATES = GateSettings()


def stats_from(
    matrix: Sequence[Sequence[bool]] | np.ndarray,
    spec: Spec = BASE,
    skip: frozenset[tuple[int, int]] = frozenset(),
) -> SpecStats:
    """SpecStats of a runs x cases pass matrix, through ``evaluate`` (the real path);
    ``skip``: (run index, case index) items never sampled."""
    samples = [
        Sample("p", spec.id, f"c{j:03d}", i + 1, bool(ok), None, 1.0, 1.0, 1,
               None if ok else "wrong_answer", started_at=float(i * 1000 + j))
        for i, row in enumerate(matrix)
        for j, ok in enumerate(row)
        if (i, j) not in skip
    ]  # fmt: skip
    return evaluate(samples)[("p", spec.id)]


def decide(
    base: SpecStats, cands: Sequence[SpecStats], gates: GateSettings = GATES
) -> list[tuple[str, str]]:
    specs = [CAND.with_knob("retries", i + 2) for i in range(len(cands))]
    pairs = []
    for spec, s in zip(specs, cands):
        s = SpecStats(**{**s.__dict__, "spec_id": spec.id})
        pairs.append((Candidate("p", spec, "search"), s))
    return [(d.verdict, d.reason) for d in PairedPolicy().decide("p", base, pairs, gates, {})]


# --- the exact test against brute-force permutation --------------------------------------


def brute_force_p(strata: Sequence[tuple[int, int, int, int]]) -> float:
    """Enumerate every within-prompt relabelling: P(candidate passes >= observed)."""
    per_stratum = []
    observed = 0
    for x, n, y, m in strata:
        pooled = [1] * (x + y) + [0] * (n + m - x - y)
        per_stratum.append(
            [sum(pooled[i] for i in c) for c in itertools.combinations(range(n + m), m)]
        )
        observed += y
    hits = total = 0
    for combo in itertools.product(*per_stratum):
        total += 1
        hits += sum(combo) >= observed
    return hits / total


stratum = st.tuples(st.integers(1, 3), st.integers(1, 3)).flatmap(
    lambda nm: st.tuples(
        st.integers(0, nm[0]), st.just(nm[0]), st.integers(0, nm[1]), st.just(nm[1])
    )
)


@settings(max_examples=150, deadline=None)
@given(strata=st.lists(stratum, min_size=1, max_size=4))
def test_exact_pvalue_equals_brute_force_permutation(
    strata: list[tuple[int, int, int, int]],
) -> None:
    x, n, y, m = (np.array(col, dtype=np.int64) for col in zip(*strata))
    assert paired.exact_pvalue(x, n, y, m) == pytest.approx(brute_force_p(strata), abs=1e-12)


def test_exact_pvalue_known_values() -> None:
    one = np.array([1])
    # one prompt, 7 runs each: 0/7 vs 7/7 is the single most extreme of C(14, 7) splits
    assert paired.exact_pvalue(np.array([0]), 7 * one, np.array([7]), 7 * one) == pytest.approx(
        1 / math.comb(14, 7)
    )
    # no informative prompt (all pass or all fail everywhere): nothing to see, p = 1
    assert paired.exact_pvalue(np.array([3, 0]), np.array([3, 3]), np.array([3, 0]),
                               np.array([3, 3])) == 1.0  # fmt: skip


def test_cmh_is_close_to_exact_with_many_prompts() -> None:
    rng = np.random.default_rng(3)
    rates = rng.uniform(0.2, 0.8, 40)
    x = rng.binomial(7, rates)
    y = rng.binomial(7, np.minimum(rates + 0.08, 1))
    n = np.full(40, 7)
    exact = paired.exact_pvalue(x, n, y, n)
    approx = paired.normal_sf(float(paired.cmh_z(x, n, y, n)))
    assert abs(approx - exact) < 0.01
    assert paired.stratified_pvalue(x, n, y, n, exact_below=20)[1] == "cmh"
    assert paired.stratified_pvalue(x, n, y, n, exact_below=100) == (exact, "exact")


# --- Holm ---------------------------------------------------------------------------------

pvals = st.lists(st.floats(0, 1, allow_nan=False), min_size=1, max_size=12)


@settings(max_examples=300, deadline=None)
@given(p=pvals)
def test_holm_is_monotone_and_bounded(p: list[float]) -> None:
    adj = paired.holm(p)
    k = len(p)
    for i in range(k):
        assert p[i] <= adj[i] + 1e-15 <= min(1.0, k * p[i]) + 2e-15  # between raw and Bonferroni
        for j in range(k):
            if p[i] <= p[j]:
                assert adj[i] <= adj[j] + 1e-15  # order preserved


@settings(max_examples=300, deadline=None)
@given(p=pvals, i=st.integers(0, 11), factor=st.floats(0, 1))
def test_holm_lowering_one_pvalue_never_raises_any_adjusted(
    p: list[float], i: int, factor: float
) -> None:
    i %= len(p)
    lower = list(p)
    lower[i] *= factor
    assert all(a <= b + 1e-15 for a, b in zip(paired.holm(lower), paired.holm(p)))


def test_holm_known_values() -> None:
    assert paired.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert paired.holm([]) == []


# --- the policy ---------------------------------------------------------------------------

SEED_BASE = [[True] * 4 + [False] * 2] * 7  # 0.667, same failures every run
SEED_CAND = [[True] * 5 + [False]] * 7  # 0.833


def test_seed_scenario_is_promoted_with_an_interval() -> None:
    (d,) = PairedPolicy().decide(
        "p", stats_from(SEED_BASE), [(Candidate("p", CAND, "search"),
                                      stats_from(SEED_CAND, CAND))], GATES, {}
    )  # fmt: skip
    assert d.verdict == PROMOTE
    assert [g.name for g in d.gates] == ["samples", "stability", "improvement", "restraint"]
    improvement = d.gates[2]
    assert improvement.value == pytest.approx(1 / 6)
    assert improvement.threshold == pytest.approx(1 / 6)  # one prompt's worth
    assert "[90% +0.080, +0.254]" in improvement.detail
    assert f"p={1 / math.comb(14, 7):.4f} (exact, holm over 1" in improvement.detail
    assert d.reason.startswith("PROMOTE: effect +0.167 [90%")


def test_equal_candidate_is_rejected_and_holm_counts_every_candidate() -> None:
    verdicts = decide(stats_from(SEED_BASE), [stats_from(SEED_BASE), stats_from(SEED_CAND)])
    assert verdicts[0][0] == REJECT and "no significant improvement" in verdicts[0][1]
    assert verdicts[1][0] == PROMOTE and "holm over 2" in verdicts[1][1]


def test_significant_but_below_minimum_effect_is_rejected() -> None:
    gates = GateSettings(min_effect=0.2)
    ((verdict, reason),) = decide(stats_from(SEED_BASE), [stats_from(SEED_CAND)], gates)
    assert verdict == REJECT and "< minimum +0.200" in reason


def test_flip_gate_is_advisory_by_default_and_can_hold() -> None:
    flippy = [[True] * 5 + [r % 2 == 0] for r in range(7)]
    d = decide(stats_from(SEED_BASE), [stats_from(flippy)])
    assert d[0][0] == PROMOTE
    held = decide(stats_from(SEED_BASE), [stats_from(flippy)], GateSettings(max_flip_rate=0.1))
    assert held[0][0] == HOLD and held[0][1].startswith("HOLD: unstable: flip rate 0.167")


def test_too_few_runs_and_undecidable_are_held() -> None:
    assert decide(stats_from(SEED_BASE), [stats_from(SEED_CAND[:2])])[0][0] == HOLD
    other = stats_from([[True]], CAND)
    other = SpecStats(**{**other.__dict__, "case_ids": ("zzz",), "patterns": ()})
    (v, reason) = decide(stats_from(SEED_BASE), [other])[0]
    assert v == HOLD and reason.startswith("could not decide")


matrices = st.integers(1, 5).flatmap(
    lambda p: st.tuples(
        st.lists(st.lists(st.booleans(), min_size=p, max_size=p), min_size=3, max_size=6),
        st.lists(st.lists(st.booleans(), min_size=p, max_size=p), min_size=3, max_size=6),
    )
)


@settings(max_examples=150, deadline=None)
@given(m=matrices, min_prompts=st.sampled_from([0.0, 1.0]))
def test_never_promotes_a_candidate_whose_mean_is_not_above(
    m: tuple[list[list[bool]], list[list[bool]]], min_prompts: float
) -> None:
    base, cand = stats_from(m[0]), stats_from(m[1], CAND)
    ((verdict, _),) = decide(base, [cand], GateSettings(min_effect_prompts=min_prompts))
    if cand.mean <= base.mean + 1e-9:
        assert verdict != PROMOTE


def test_equal_candidate_is_rarely_promoted() -> None:
    rng = np.random.default_rng(20240601)
    rates = np.array([0.9] * 7 + [0.5] * 3 + [0.1] * 2)
    promoted = 0
    for _ in range(200):
        base = rng.random((7, 12)) < rates
        cand = rng.random((7, 12)) < rates
        promoted += decide(stats_from(base), [stats_from(cand, CAND)])[0][0] == PROMOTE
    assert promoted / 200 <= 0.08


def test_registry() -> None:
    assert builtin_policies()["paired"].name == "paired"


# --- effect, power, racing ----------------------------------------------------------------


def test_interval_contains_estimate_and_widens_with_level() -> None:
    x, n = np.array([1, 4, 6]), np.array([7, 7, 7])
    y = np.array([3, 5, 6])
    est, lo, hi = paired.effect_interval(x, n, y, n, 0.90)
    _, lo2, hi2 = paired.effect_interval(x, n, y, n, 0.99)
    assert est == pytest.approx(3 / 21) and lo < est < hi and lo2 < lo and hi2 > hi


def test_mde_shrinks_with_prompts_and_runs_and_grows_with_candidates() -> None:
    def mde(prompts: int, runs: int, k: int) -> float:
        rates = [0.9, 0.1, 0.5, 0.9] * (prompts // 4)
        return paired.mde_from_rates(rates, runs, k, GateSettings(min_effect_prompts=0.0))

    assert mde(100, 7, 1) < mde(20, 7, 1) < mde(8, 7, 1)
    assert mde(20, 15, 1) < mde(20, 7, 1)
    assert mde(20, 7, 1) < mde(20, 7, 3) < mde(20, 7, 10)
    assert paired.mde_from_rates([0.5] * 6, 7, 1, GATES) >= 1 / 6  # never below min effect


def test_power_note_warns_only_when_underpowered() -> None:
    small = stats_from(SEED_BASE)
    note = paired.power_note(small, 3, GATES)
    assert note is not None and note.startswith("underpowered: add prompts or runs")
    assert "6 prompts x 7 runs x 3 candidates" in note
    assert paired.minimum_detectable_effect(small, 3, GATES) > GATES.effect_of_interest
    big = stats_from([[True] * 150 + [False] * 50] * 7)
    assert paired.power_note(big, 1, GATES) is None


def test_can_still_win() -> None:
    base = stats_from([[True] * 20] * 3)
    worse = stats_from([[True] * 10 + [False] * 10] * 3, CAND)
    same = stats_from([[True] * 20] * 3, CAND)
    assert not paired.can_still_win(base, worse, 4, GATES)
    assert paired.can_still_win(stats_from([[True] * 10 + [False] * 10] * 3), same, 4, GATES)
    empty = SpecStats(**{**same.__dict__, "patterns": (), "case_ids": (), "passes": ()})
    assert paired.can_still_win(base, empty, 4, GATES)


def test_a_skipped_item_never_counts_as_a_failure() -> None:
    full = [[True] * 6] * 4
    skip = frozenset((3, j) for j in range(3, 6))  # run 4 raced out after 3 of its 6 items
    partial = stats_from(full, CAND, skip)
    assert partial.run_accuracies[-1] == 0.5  # evaluate's matrix counts the gap as "not passed"
    counts = paired.case_counts(partial)
    assert counts["c000"] == (4, 4) and counts["c005"] == (3, 3)  # ...the paired test does not
    _, x, n, y, m = paired.paired_counts(stats_from(full), partial)
    assert paired.effect_interval(x, n, y, m)[0] == 0.0
    assert paired.flip_rate(partial) == 0.0
