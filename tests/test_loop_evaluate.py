"""loop.evaluate: hand-computed statistics, column building, scale."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from pytest_selfopt.loop.evaluate import (
    SampleColumns,
    SampleColumnsBuilder,
    empty_stats,
    evaluate,
)
from pytest_selfopt.loop.types import Sample


def smp(
    case: str,
    run: int,
    passed: bool,
    *,
    kind: str | None = None,
    phase: str = "p",
    spec: str = "s",
    latency: float = 1.0,
    restraint: float | None = None,
    started: float = 0.0,
    worker: str = "main",
    cost: float | None = None,
) -> Sample:
    return Sample(
        phase=phase,
        spec_id=spec,
        case_id=case,
        run=run,
        passed=passed,
        restraint=restraint,
        latency_s=latency,
        total_latency_s=latency,
        attempts=1,
        error_kind=None if passed else (kind or "wrong_answer"),
        input_tokens=10,
        output_tokens=5,
        started_at=started,
        worker=worker,
        cost=cost,
    )


def hand_set() -> list[Sample]:
    """3 cases x 3 runs. Pass matrix (runs x cases a,b,c): [P P F] [P F F] [P P P]."""
    return [
        smp("a", 1, True, latency=1, restraint=1.0, started=10),
        smp("b", 1, True, latency=2, restraint=0.5, started=11),
        smp("c", 1, False, kind="timeout", latency=3, started=12, worker="gw1"),
        smp("a", 2, True, latency=4, restraint=1.0, started=20),
        smp("b", 2, False, kind="http_5xx", latency=5, started=21),
        smp("c", 2, False, kind="wrong_answer", latency=6, started=22),
        smp("a", 3, True, latency=7, restraint=1.0, started=30),
        smp("b", 3, True, latency=8, started=31),
        # case c's run 3 started first of all its samples (time order r3, r1, r2): patterns
        # are still read in run order
        smp("c", 3, True, latency=9, started=5, worker="gw1"),
    ]


def test_hand_computed_statistics() -> None:
    stats = evaluate(hand_set())
    assert list(stats) == [("p", "s")]
    s = stats[("p", "s")]
    assert s.runs == 3 and s.samples == 9
    assert s.run_accuracies == pytest.approx((2 / 3, 1 / 3, 1.0))
    assert s.median == pytest.approx(2 / 3)
    assert s.mean == pytest.approx(2 / 3)
    assert s.variance == pytest.approx(2 / 27)  # population variance, not sample variance
    assert s.latency_p50_s == pytest.approx(5.0)
    assert s.latency_p95_s == pytest.approx(8.6)  # linear: 8 + 0.6 * (9 - 8)
    assert s.restraint == pytest.approx((1 + 0.5 + 1 + 1) / 4)  # None restraints ignored
    assert (s.input_tokens, s.output_tokens) == (90, 45)
    assert s.cost is None
    assert s.errored == 2  # timeout and http_5xx; a wrong answer is not a transport error
    assert s.case_ids == ("a", "b", "c")
    assert s.run_numbers == (1, 2, 3)
    assert s.passes == ((True, True, False), (True, False, False), (True, True, True))


def test_patterns_are_in_run_order_not_completion_order() -> None:
    s = evaluate(hand_set())[("p", "s")]
    c = s.patterns[2]
    assert c.case_id == "c"
    assert c.runs == (1, 2, 3)
    assert c.outcomes == (False, False, True)
    assert c.error_kinds == ("timeout", "wrong_answer", None)
    assert c.workers == ("gw1", "main", "gw1")
    assert c.started_at == (12.0, 22.0, 5.0)
    assert c.render() == "[F,F,P]"
    assert [p.case_id for p in s.patterns] == list(s.case_ids)


def test_time_ties_are_broken_by_run() -> None:
    samples = [smp("a", r, r != 2, started=1.0) for r in (3, 1, 2)]
    pattern = evaluate(samples)[("p", "s")].patterns[0]
    assert pattern.runs == (1, 2, 3)
    assert pattern.render() == "[P,F,P]"


def test_groups_by_phase_and_spec() -> None:
    samples = hand_set() + [
        smp("x", 1, True, phase="q", spec="s"),
        smp("x", 1, False, phase="p", spec="t"),
        smp("y", 1, True, phase="p", spec="t"),
    ]
    stats = evaluate(samples)
    assert set(stats) == {("p", "s"), ("q", "s"), ("p", "t")}
    assert stats[("p", "s")].median == pytest.approx(2 / 3)  # unchanged by other groups
    assert stats[("q", "s")].run_accuracies == (1.0,)
    assert stats[("p", "t")].run_accuracies == (0.5,)


def test_missing_cell_counts_as_not_passed_and_duplicates_pass_if_any() -> None:
    samples = [
        smp("a", 1, True),
        smp("b", 1, True),
        smp("a", 2, True),  # b has no sample in run 2
        smp("a", 3, False),
        smp("a", 3, True),
        smp("b", 3, True),  # a twice in run 3
    ]
    s = evaluate(samples)[("p", "s")]
    assert s.run_accuracies == (1.0, 0.5, 1.0)
    assert s.samples == 6


def test_cost_sums_known_costs() -> None:
    samples = [smp("a", 1, True, cost=0.25), smp("a", 2, True), smp("a", 3, True, cost=0.5)]
    assert evaluate(samples)[("p", "s")].cost == pytest.approx(0.75)


def _assert_builtins(value: Any) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _assert_builtins(k)
            _assert_builtins(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _assert_builtins(v)
    else:
        assert value is None or type(value) in (str, int, float, bool), type(value)


def test_output_holds_builtins_only() -> None:
    s = evaluate(hand_set())[("p", "s")]
    for name in s.__dataclass_fields__:
        value = getattr(s, name)
        if name == "patterns":
            for p in value:
                _assert_builtins([p.runs, p.outcomes, p.error_kinds, p.workers, p.started_at])
        else:
            _assert_builtins(value)


def test_every_input_form_gives_the_same_stats() -> None:
    samples = hand_set()
    expected = evaluate(samples)
    from_dicts = evaluate(SampleColumns.from_dicts([s.to_dict() for s in samples]))
    builder = SampleColumnsBuilder()
    for i, s in enumerate(samples):
        builder.add(s if i % 2 else s.to_dict())
    assert len(builder) == len(samples)
    merged = SampleColumns.concat(
        [SampleColumns.from_samples(samples[:4]), SampleColumns.from_samples(samples[4:])]
    )
    assert len(merged) == len(samples)
    assert from_dicts == expected
    assert evaluate(builder.build()) == expected
    assert evaluate(merged) == expected


def test_vocabularies_are_sorted_so_case_order_is_by_name() -> None:
    cols = SampleColumns.from_samples([smp("zeta", 1, True), smp("alpha", 1, False)])
    assert cols.case_ids == ("alpha", "zeta")
    assert cols.case.tolist() == [1, 0]
    assert cols.error_kinds == (None, "wrong_answer")


def test_empty_input_and_empty_stats() -> None:
    assert evaluate([]) == {}
    assert evaluate(SampleColumnsBuilder().build()) == {}
    e = empty_stats("p", "s")
    assert (e.runs, e.samples, e.errored) == (0, 0, 0)


def test_two_hundred_thousand_samples_through_columns() -> None:
    n_specs, n_cases, n_runs = 40, 250, 20  # 200,000 samples
    rows = [
        {
            "phase": "atomic" if spec % 2 else "extended",
            "spec_id": f"spec{spec:03d}",
            "case_id": f"case{case:04d}",
            "run": run,
            "passed": (case + run + spec) % 4 != 0,
            "restraint": None,
            "latency_s": float(case % 10),
            "total_latency_s": 1.0,
            "attempts": 1,
            "error_kind": None if (case + run + spec) % 4 else "timeout",
            "started_at": float(run * 1000 + case),
            "worker": f"gw{case % 4}",
        }
        for spec in range(n_specs)
        for run in range(1, n_runs + 1)
        for case in range(n_cases)
    ]
    cols = SampleColumns.from_dicts(rows)
    del rows
    assert len(cols) == 200_000
    stats = evaluate(cols)
    assert len(stats) == n_specs
    # independent numpy computation of spec 0's run accuracies
    case = np.arange(n_cases)
    expected = [float(np.mean((case + run) % 4 != 0)) for run in range(1, n_runs + 1)]
    s0 = stats[("extended", "spec000")]
    assert s0.run_accuracies == pytest.approx(expected)
    assert s0.runs == n_runs and s0.samples == n_cases * n_runs
    assert s0.errored == n_cases * n_runs // 4
    assert len(s0.patterns) == n_cases and len(s0.patterns[0].outcomes) == n_runs
    assert s0.patterns[0].runs == tuple(range(1, n_runs + 1))
