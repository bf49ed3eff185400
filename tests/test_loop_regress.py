"""The regression gate of --selfopt-check (loop/regress.py), on hand-made measurements."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytest_selfopt.loop.evaluate import evaluate
from pytest_selfopt.loop.regress import check_regression, pass_rate
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


def committed(stats: SpecStats | None, median: float | None = None) -> PhaseBaseline:
    metrics = None
    if stats is not None:
        metrics = dict(stats.metrics())
        metrics["median"] = round(stats.median if median is None else median, 4)
    return PhaseBaseline("atomic", SPEC, metrics, 1, "variant=atomic: PROMOTE")


def patterns(table: Mapping[str, str]) -> dict[str, str]:
    return {case: "[" + ",".join(marks) + "]" for case, marks in table.items()}


GOOD = {
    "a": "PPPPPPP",
    "b": "PPPPPPP",
    "c": "PPPPPPP",
    "d": "FFFFFFF",
    "e": "PPPPPPP",
    "f": "PPPPPPP",
}


def test_unchanged_measurement_is_not_a_regression() -> None:
    stats = measure(GOOD)
    result = check_regression("atomic", committed(stats), stats, patterns(GOOD), GATES)
    assert not result.regressed
    assert result.worse_cases == () and result.reason.startswith("ok: ")
    # the committed median is written with 4 decimals (0.8333): rounding is not a drop
    assert result.committed_median == 0.8333 and result.measured_median > 0.8333


def test_a_case_that_stopped_passing_is_a_named_regression() -> None:
    now = dict(GOOD, a="FFFFFFF")
    result = check_regression(
        "atomic", committed(measure(GOOD)), measure(now), patterns(GOOD), GATES
    )
    assert result.regressed
    assert result.reason.startswith("REGRESSED: median 0.667 vs committed 0.833")
    [case] = result.worse_cases
    assert (case.case_id, case.committed_pattern, case.measured_pattern) == (
        "a",
        "[P,P,P,P,P,P,P]",
        "[F,F,F,F,F,F,F]",
    )
    assert (case.committed_rate, case.measured_rate, case.drop) == (1.0, 0.0, 1.0)


def test_worse_cases_are_listed_largest_drop_first() -> None:
    now = dict(GOOD, a="PPPPFFF", b="FFFFFFF", c="PPPPPPF")
    result = check_regression(
        "atomic", committed(measure(GOOD)), measure(now), patterns(GOOD), GATES
    )
    assert [c.case_id for c in result.worse_cases] == ["b", "a", "c"]


def test_a_worse_case_while_the_median_holds_is_listed_but_passes() -> None:
    now = dict(GOOD, a="PPPPPPF")  # one run of one case: the run median does not move
    result = check_regression(
        "atomic", committed(measure(GOOD)), measure(now), patterns(GOOD), GATES
    )
    assert not result.regressed
    assert [c.case_id for c in result.worse_cases] == ["a"]
    assert "held" in result.reason and "1 case(s) pass less often" in result.reason


def test_a_new_failing_case_lowers_the_median_but_is_no_regression() -> None:
    now = dict(GOOD, g="FFFFFFF", h="FFFFFFF")
    result = check_regression(
        "atomic", committed(measure(GOOD)), measure(now), patterns(GOOD), GATES
    )
    assert result.measured_median < 0.8
    assert not result.regressed
    assert result.new_cases == ("g", "h")
    assert "no committed case got worse" in result.reason and "new cases: g, h" in result.reason


def test_without_recorded_patterns_the_median_alone_decides() -> None:
    now = dict(GOOD, a="FFFFFFF")
    result = check_regression("atomic", committed(measure(GOOD)), measure(now), None, GATES)
    assert result.regressed and result.worse_cases == ()
    assert "no recorded patterns" in result.reason


@dataclass(frozen=True)
class WithTolerance:
    """Stands in for GateSettings once it carries ``regression_tolerance``."""

    regression_tolerance: float


def test_tolerance_from_settings_or_argument() -> None:
    now = dict(GOOD, a="FFFFFFF")  # a drop of exactly one prompt's worth (1/6)
    base, stats, pats = committed(measure(GOOD)), measure(now), patterns(GOOD)
    one_prompt = 1 / 6
    loose = check_regression("atomic", base, stats, pats, WithTolerance(one_prompt))  # type: ignore[arg-type]
    assert not loose.regressed and loose.tolerance == one_prompt
    assert "within tolerance" in loose.reason
    tight = check_regression("atomic", base, stats, pats, GATES, tolerance=one_prompt / 2)
    assert tight.regressed and tight.tolerance == one_prompt / 2
    with pytest.raises(ValueError, match="tolerance must be >= 0"):
        check_regression("atomic", base, stats, pats, GATES, tolerance=-0.1)


def test_no_committed_metrics_is_not_compared() -> None:
    result = check_regression("atomic", committed(None), measure(GOOD), None, GATES)
    assert not result.regressed and result.committed_median is None
    assert "nothing to compare" in result.reason


def test_every_sample_errored_cannot_vouch_and_regresses() -> None:
    down = {case: "FFFFFFF" for case in GOOD}
    result = check_regression(
        "atomic", committed(measure(GOOD)), measure(down, error_kind="connect"), None, GATES
    )
    assert result.regressed and result.errored == result.samples == 42
    assert "could not measure: all 42 samples errored" in result.reason


def test_a_routed_spec_other_than_the_baseline_is_said() -> None:
    stats = measure(GOOD)
    other = PhaseBaseline("atomic", SPEC.with_knob("retries", 2), stats.metrics(), 1, "")
    result = check_regression("atomic", other, stats, None, GATES)
    assert f"routed spec {SPEC.id}" in result.reason


@pytest.mark.parametrize(
    ("text", "rate"),
    [("[P,F,P,P]", 0.75), ("[F]", 0.0), ("[]", None), ("P,F", None), ("[P,X]", None)],
)
def test_pass_rate(text: str, rate: float | None) -> None:
    assert pass_rate(text) == rate


marks = st.text(alphabet="PF", min_size=7, max_size=7)


@given(st.dictionaries(st.sampled_from("abcdef"), marks, min_size=1), st.data())
def test_never_regressed_when_no_case_got_worse(
    before: dict[str, str], data: st.DataObject
) -> None:
    """With patterns recorded, a regression always names a case that passes less often."""
    after: dict[str, str] = {}
    for case, old in before.items():
        # each case passes at least as often as before
        gained = data.draw(st.lists(st.booleans(), min_size=7, max_size=7))
        after[case] = "".join("P" if o == "P" or g else "F" for o, g in zip(old, gained))
    result = check_regression(
        "atomic", committed(measure(before)), measure(after), patterns(before), GATES
    )
    assert not result.regressed
    assert result.worse_cases == ()
