"""The regression gate of --selfopt-check (loop/regress.py): the case-stratified one-sided
test of committed per-case counts against today's, on hand-made measurements."""

from __future__ import annotations

from collections.abc import Mapping

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytest_selfopt.loop.evaluate import evaluate
from pytest_selfopt.loop.learn import first_measurement
from pytest_selfopt.loop.regress import (
    RegressionResult,
    check_regression,
    pass_counts,
    stratified_drop,
)
from pytest_selfopt.loop.spec import Spec
from pytest_selfopt.loop.types import GateSettings, PhaseBaseline, Sample, SpecStats

SPEC = Spec("lfm", "atomic", 60, 1, "i0", False)
GATES = GateSettings()


def measure(table: Mapping[str, str], *, error_kind: str | None = None) -> SpecStats:
    """``{case: "PPPFPPP"}`` -> the SpecStats of SPEC over those outcomes (run i = i-th mark)."""
    samples = [
        Sample(
            phase="atomic",
            spec_id=SPEC.id,
            case_id=case,
            run=run,
            passed=mark == "P",
            restraint=None,
            latency_s=0.5,
            total_latency_s=0.5,
            attempts=1,
            error_kind=None if mark == "P" else (error_kind or "wrong_answer"),
            started_at=float(run * 100 + i),
        )
        for i, (case, marks) in enumerate(sorted(table.items()))
        for run, mark in enumerate(marks, start=1)
    ]
    return evaluate(samples)[("atomic", SPEC.id)]


def committed(stats: SpecStats | None, *, reference: bool = True) -> PhaseBaseline:
    """The champion as the loop commits it: metrics and per-case counts of its measurement."""
    if stats is None:
        return PhaseBaseline("atomic", SPEC, None, 0, "initial spec from selfopt.yaml")
    ref = stats.reference() if reference else {}
    return PhaseBaseline("atomic", SPEC, stats.metrics(), 1, "PROMOTE", reference=ref)


def patterns(table: Mapping[str, str]) -> dict[str, str]:
    return {case: "[" + ",".join(marks) + "]" for case, marks in table.items()}


GOOD = {case: "PPPPPPP" for case in "abcdefghij"} | {"k": "FFFFFFF", "l": "PPPFPPF"}


def check(
    before: Mapping[str, str], now: Mapping[str, str], *, level: float = 0.05
) -> RegressionResult:
    return check_regression("atomic", committed(measure(before)), measure(now), GATES, level=level)


def test_unchanged_measurement_is_not_a_regression() -> None:
    result = check(GOOD, GOOD)
    assert not result.regressed and result.reason.startswith("ok: ")
    assert result.effect == 0.0 and result.p_value is not None and result.p_value > 0.5
    assert result.worse_cases == () and result.compared == 12


def test_a_case_that_stopped_passing_is_a_named_regression() -> None:
    result = check(GOOD, dict(GOOD, a="FFFFFFF"))
    assert result.regressed and result.reason.startswith("REGRESSED: pass rate -0.083")
    assert result.p_value is not None and result.p_value < 0.01
    assert result.interval is not None and result.interval[1] < 0
    [case] = result.worse_cases
    assert (case.case_id, case.committed_pattern, case.measured_pattern) == (
        "a",
        "7/7",
        "[F,F,F,F,F,F,F]",
    )
    assert (case.committed_rate, case.measured_rate, case.drop) == (1.0, 0.0, 1.0)


def test_a_flaky_case_wobbling_is_noise_not_a_regression() -> None:
    # "l" was 5/7 and is 3/7 today: a drop of 2 runs of one flaky case, 1/6 of a prompt
    result = check(GOOD, dict(GOOD, l="PFFPFPF"))
    assert not result.regressed
    assert [c.case_id for c in result.worse_cases] == ["l"]
    assert "1 case(s) pass less often" in result.reason


def test_a_significant_drop_below_one_prompt_is_not_a_regression() -> None:
    # a perfect case now fails 6 runs of 7: significant, but 6/7 of one prompt's worth
    result = check(GOOD, dict(GOOD, a="PFFFFFF"))
    assert result.p_value is not None and result.p_value <= 0.05
    assert not result.regressed and "below the minimum 0.083" in result.reason


def test_worse_cases_are_listed_largest_drop_first() -> None:
    result = check(GOOD, dict(GOOD, a="PPPPFFF", b="FFFFFFF", c="PPPPPPF"))
    assert result.regressed
    assert [c.case_id for c in result.worse_cases] == ["b", "a", "c"]


def test_a_deleted_case_is_listed_not_counted() -> None:
    now = {case: marks for case, marks in GOOD.items() if case != "a"}
    result = check(GOOD, now)
    assert not result.regressed and result.missing_cases == ("a",) and result.compared == 11


def test_new_failing_cases_are_no_regression() -> None:
    result = check(GOOD, dict(GOOD, m="FFFFFFF", n="FFFFFFF"))
    assert not result.regressed and result.new_cases == ("m", "n")
    assert result.compared == 12 and result.measured_median < 0.8


def test_without_a_reference_the_history_patterns_are_the_evidence() -> None:
    base = committed(measure(GOOD), reference=False)
    now = measure(dict(GOOD, a="FFFFFFF"))
    result = check_regression("atomic", base, now, GATES, history_patterns=patterns(GOOD))
    assert result.regressed and [c.case_id for c in result.worse_cases] == ["a"]
    compact = {case: marks for case, marks in GOOD.items()}  # history's compact form
    again = check_regression("atomic", base, now, GATES, history_patterns=compact)
    assert again.regressed and again.p_value == result.p_value


def test_no_committed_evidence_is_not_compared() -> None:
    result = check_regression("atomic", committed(None), measure(GOOD), GATES)
    assert not result.regressed and result.effect is None and result.committed_median is None
    assert "run `pytest --selfopt` once" in result.reason


def test_the_tolerance_raises_the_minimum_effect() -> None:
    now = dict(GOOD, a="FFFFFFF", b="FFFFFFF")  # two prompts' worth: 2/12
    assert check(GOOD, now).regressed
    loose = GateSettings(regression_tolerance=0.2)
    result = check_regression("atomic", committed(measure(GOOD)), measure(now), loose)
    assert not result.regressed and result.tolerance == 0.2
    with pytest.raises(ValueError, match="level"):
        check(GOOD, GOOD, level=1.5)


def test_every_sample_errored_cannot_vouch_and_regresses() -> None:
    down = {case: "FFFFFFF" for case in GOOD}
    result = check_regression(
        "atomic", committed(measure(GOOD)), measure(down, error_kind="connect"), GATES
    )
    assert result.regressed and result.errored == result.samples == 84
    assert "could not measure: all 84 samples errored" in result.reason


def test_a_routed_spec_other_than_the_baseline_is_said() -> None:
    stats = measure(GOOD)
    other = PhaseBaseline(
        "atomic", SPEC.with_knob("retries", 2), stats.metrics(), 1, "", stats.reference()
    )
    result = check_regression("atomic", other, stats, GATES)
    assert f"routed spec {SPEC.id}" in result.reason


@pytest.mark.parametrize(
    ("text", "counts"),
    [("[P,F,P,P]", (3, 4)), ("[F]", (0, 1)), ("PFPP", (3, 4)), ("[]", None), ("[P,X]", None)],
)
def test_pass_counts(text: str, counts: tuple[int, int] | None) -> None:
    assert pass_counts(text) == counts


def test_stratification_weighs_each_case_by_its_own_noise() -> None:
    # the same total drop (2 runs) is certain on a deterministic case, noise on a flaky one
    sure = stratified_drop({"a": (7, 7), "b": (7, 7)}, {"a": (5, 7), "b": (7, 7)})
    flaky = stratified_drop({"a": (4, 7), "b": (7, 7)}, {"a": (2, 7), "b": (7, 7)})
    assert sure.drop == flaky.drop
    assert sure.p_value < flaky.p_value


marks = st.text(alphabet="PF", min_size=7, max_size=7)


@given(st.dictionaries(st.sampled_from("abcdef"), marks, min_size=1), st.data())
def test_never_regressed_when_no_case_got_worse(
    before: dict[str, str], data: st.DataObject
) -> None:
    """A regression always names a case that passes less often."""
    after: dict[str, str] = {}
    for case, old in before.items():
        # each case passes at least as often as before
        gained = data.draw(st.lists(st.booleans(), min_size=7, max_size=7))
        after[case] = "".join("P" if o == "P" or g else "F" for o, g in zip(old, gained))
    result = check(before, after)
    assert not result.regressed
    assert result.worse_cases == ()


def test_first_measurement_commits_a_never_measured_champion_once() -> None:
    initial = committed(None)
    stats = measure(GOOD)
    first = first_measurement(initial, stats)
    assert first.metrics == stats.metrics() and first.reference == stats.reference()
    assert first.reference["l"] == (5, 7) and first.promoted_in_cycle == 0
    assert first_measurement(first, measure(dict(GOOD, a="FFFFFFF"))) is first  # no churn
    down = measure({case: "FFFFFFF" for case in GOOD}, error_kind="connect")
    assert first_measurement(initial, down) is initial  # an outage vouches for nothing
    assert first_measurement(initial, None) is initial
