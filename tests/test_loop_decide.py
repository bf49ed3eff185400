"""loop.decide: the seed's four gates, verdicts, reasons, winner choice."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_selfopt.loop.decide import pick_winner
from pytest_selfopt.loop.policies import builtin_policies
from pytest_selfopt.loop.policies.paired import PairedPolicy
from pytest_selfopt.loop.policies.seed import SeedPolicy
from pytest_selfopt.loop.spec import Spec
from pytest_selfopt.loop.types import (
    HOLD,
    PROMOTE,
    REJECT,
    Candidate,
    Decision,
    GateSettings,
    SpecStats,
)

BASE = Spec("lfm", "native_api", 60, 1, "i0", False)
GATES = GateSettings()


def stats(
    accs: Sequence[float],
    *,
    spec_id: str = "x",
    restraint: float | None = 1.0,
    samples: int = 42,
    errored: int = 0,
    variance: float | None = None,
    latency: float = 1.0,
    median: float | None = None,
) -> SpecStats:
    arr = np.array(accs, dtype=float)
    return SpecStats(
        phase="p",
        spec_id=spec_id,
        runs=len(accs),
        run_accuracies=tuple(accs),
        median=float(np.median(arr)) if median is None else median,
        mean=float(arr.mean()),
        variance=float(arr.var()) if variance is None else variance,
        latency_p50_s=latency,
        latency_p95_s=latency,
        restraint=restraint,
        input_tokens=0,
        output_tokens=0,
        cost=None,
        samples=samples,
        errored=errored,
        case_ids=(),
        run_numbers=tuple(range(1, len(accs) + 1)),
        passes=(),
        patterns=(),
    )


def cand(knob: str = "variant", value: str | float | bool = "atomic") -> Candidate:
    return Candidate("p", BASE.with_knob(knob, value), "search")


def decide_one(base: SpecStats, cs: SpecStats, gates: GateSettings = GATES) -> Decision:
    c = cand()
    (d,) = SeedPolicy().decide("p", base, [(c, cs)], gates, {c.spec.id: "variant=atomic"})
    return d


def test_promote_with_all_gates_and_numbers() -> None:
    d = decide_one(stats([4 / 6] * 7), stats([5 / 6] * 7))
    assert d.verdict == PROMOTE
    assert d.reason == "PROMOTE: median 0.833 > 0.667, variance 0.0000, restraint 1.00"
    assert d.label == "variant=atomic"
    assert [g.name for g in d.gates] == ["samples", "stability", "improvement", "restraint"]
    assert all(g.passed for g in d.gates)
    samples, stability, improvement, restraint = d.gates
    assert (samples.value, samples.threshold) == (7, 3)
    assert stability.value == pytest.approx(0.0, abs=1e-20) and stability.threshold == 0.0025
    assert improvement.value == pytest.approx(5 / 6)
    assert improvement.threshold == pytest.approx(4 / 6)
    assert improvement.detail == "median 0.833 > 0.667"
    assert (restraint.value, restraint.threshold) == (1.0, 0.80)


def test_equal_median_is_rejected_as_no_improvement() -> None:
    d = decide_one(stats([4 / 6] * 7), stats([4 / 6] * 7))
    assert d.verdict == REJECT
    assert d.reason == "REJECT: no improvement: median 0.667 = baseline 0.667"
    assert [g.passed for g in d.gates] == [True, True, False, True]


def test_lower_median_is_rejected() -> None:
    d = decide_one(stats([4 / 6] * 7), stats([3 / 6] * 7))
    assert d.verdict == REJECT
    assert d.reason == "REJECT: no improvement: median 0.500 < baseline 0.667"


def test_float_noise_never_looks_better() -> None:
    base = stats([4 / 6] * 7)
    noisy = stats([4 / 6] * 7, median=4 / 6 + 1e-12)  # e.g. a mean of sums in another order
    assert noisy.median != base.median and abs(noisy.median - base.median) < 1e-9
    assert decide_one(base, noisy).verdict == REJECT


def test_unstable_candidate_is_held_and_later_gates_still_recorded() -> None:
    d = decide_one(stats([4 / 6] * 7), stats([1.0] * 7, variance=0.0034))
    assert d.verdict == HOLD
    assert d.reason == "HOLD: unstable: variance 0.0034 > 0.0025"
    assert [g.passed for g in d.gates] == [True, False, True, True]


def test_variance_equal_to_threshold_passes() -> None:
    d = decide_one(stats([0.5] * 7), stats([1.0] * 7, variance=0.0025))
    assert d.verdict == PROMOTE


def test_too_few_runs_is_held() -> None:
    d = decide_one(stats([0.5] * 7), stats([1.0, 1.0]))
    assert d.verdict == HOLD
    assert d.reason == "HOLD: too few samples: 2 runs < 3"
    assert d.gates[0].value == 2 and not d.gates[0].passed


def test_first_failing_gate_decides() -> None:
    # too few runs AND no improvement: the samples gate comes first -> HOLD
    d = decide_one(stats([1.0] * 7), stats([0.5, 0.5]))
    assert d.verdict == HOLD
    assert [g.passed for g in d.gates] == [False, True, False, True]


def test_low_restraint_is_rejected() -> None:
    d = decide_one(stats([0.5] * 7), stats([1.0] * 7, restraint=0.75))
    assert d.verdict == REJECT
    assert d.reason == "REJECT: restraint too low: restraint 0.75 < 0.80"
    assert d.gates[3].value == 0.75


def test_no_restraint_constraints_pass() -> None:
    d = decide_one(stats([0.5] * 7), stats([1.0] * 7, restraint=None))
    assert d.verdict == PROMOTE
    assert d.gates[3].passed and d.gates[3].detail == "no restraint constraints"
    assert d.reason.endswith("restraint n/a")


def test_thresholds_are_configurable() -> None:
    gates = GateSettings(min_samples=10, max_variance=0.1, min_restraint=0.5)
    d = decide_one(stats([0.5] * 7), stats([1.0] * 7, restraint=0.6), gates)
    assert d.verdict == HOLD and d.gates[0].threshold == 10


def test_an_errored_candidate_is_a_failed_candidate() -> None:
    # issue 10.4: transport errors count as failures in the gates' arithmetic
    d = decide_one(stats([0.5] * 7), stats([0.0] * 7, samples=42, errored=42))
    assert d.verdict == REJECT and d.cause == "improvement"
    assert len(d.gates) == 4


def test_a_baseline_that_cannot_answer_can_be_beaten() -> None:
    d = decide_one(stats([0.0] * 7, errored=42), stats([1.0] * 7))
    assert d.verdict == PROMOTE and d.cause == "passed"


def test_no_samples_cannot_be_decided() -> None:
    empty = SpecStats(**{**stats([0.0]).__dict__, "runs": 0, "run_accuracies": (), "samples": 0})
    d = decide_one(stats([0.5] * 7), empty)
    assert d.verdict == HOLD and d.reason.startswith("could not decide")


def test_decides_every_candidate_in_order() -> None:
    cs = [cand("variant", "atomic"), cand("retries", 2), cand("isolation", "i1")]
    measured = [stats([0.9] * 7), stats([0.5] * 7), stats([1.0] * 7, restraint=0.1)]
    decisions = SeedPolicy().decide("p", stats([0.5] * 7), list(zip(cs, measured)), GATES, {})
    assert [d.spec_id for d in decisions] == [c.spec.id for c in cs]
    assert [d.verdict for d in decisions] == [PROMOTE, REJECT, REJECT]
    assert decisions[0].label == cs[0].spec.id  # no label given: the spec id


def test_builtin_policies_are_fresh_objects_not_a_registry() -> None:
    first, second = builtin_policies(), builtin_policies()
    assert isinstance(first["seed"], SeedPolicy) and first["seed"].name == "seed"
    assert isinstance(first["paired"], PairedPolicy) and first["paired"].name == "paired"
    first["mine"] = first.pop("seed")
    assert sorted(second) == ["paired", "seed"] and sorted(builtin_policies()) == ["paired", "seed"]
    assert first["paired"] is not second["paired"]


def _decision(spec_id: str, verdict: str = PROMOTE) -> Decision:
    return Decision("p", spec_id, spec_id, verdict, "", ())


def test_pick_winner_highest_median_then_variance_then_latency_then_order() -> None:
    by = {
        "a": stats([0.8] * 7),
        "b": stats([0.9] * 7, variance=0.002),
        "c": stats([0.9] * 7, variance=0.001, latency=2.0),
        "d": stats([0.9] * 7, variance=0.001, latency=1.0),
        "e": stats([0.9] * 7, variance=0.001, latency=1.0),
        "f": stats([1.0] * 7),
    }
    ds = [_decision(k) for k in "abcde"] + [_decision("f", REJECT)]
    winner = pick_winner(ds, by)
    assert winner is not None and winner.spec_id == "d"  # e ties with d, d comes first
    assert pick_winner(ds[:3], by).spec_id == "c"  # type: ignore[union-attr]
    assert pick_winner(ds[:2], by).spec_id == "b"  # type: ignore[union-attr]
    assert pick_winner([_decision("a", HOLD)], by) is None
    assert pick_winner([], by) is None


fractions = st.integers(min_value=0, max_value=6).map(lambda k: k / 6)


@settings(max_examples=300, deadline=None)
@given(
    base_accs=st.lists(fractions, min_size=0, max_size=9),
    cand_accs=st.lists(fractions, min_size=0, max_size=9),
    restraint=st.one_of(st.none(), st.floats(0, 1)),
    errored_share=st.sampled_from([0.0, 0.5, 1.0]),
)
def test_never_promotes_without_a_strictly_higher_median(
    base_accs: list[float],
    cand_accs: list[float],
    restraint: float | None,
    errored_share: float,
) -> None:
    base = stats(base_accs or [0.0], samples=6 * max(len(base_accs), 1))
    n = 6 * len(cand_accs)
    cs = stats(cand_accs or [0.0], restraint=restraint, samples=n, errored=int(n * errored_share))
    d = decide_one(base, cs)
    assert d.verdict in (PROMOTE, HOLD, REJECT)
    if d.verdict == PROMOTE:
        assert cs.median > base.median
        assert cs.runs >= GATES.min_samples and cs.variance <= GATES.max_variance
        assert restraint is None or restraint >= GATES.min_restraint
        # errored samples are failed samples (issue 10.4): no rule on cs.errored
    if cs.median <= base.median:
        assert d.verdict != PROMOTE
