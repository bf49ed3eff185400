"""Hot paths under pytest-benchmark (docs/performance.md). Figures: `pytest tests/test_bench.py`.

Each benchmark also asserts its result, so it is a test that can fail; none asserts speed.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from suites import copy_example

from pytest_selfopt.loop.cycle import close_cycle, plan_cycle
from pytest_selfopt.loop.evaluate import SampleColumns, evaluate
from pytest_selfopt.loop.policies import builtin_policies
from pytest_selfopt.loop.policies.base import GatePolicy
from pytest_selfopt.loop.spec import Spec
from pytest_selfopt.loop.types import GateSettings, LoopSettings, LoopState, Sample, SearchSpace
from pytest_selfopt.store import files

INITIAL = Spec("m", "plain", 60, 1, "i0", False)
SETTINGS = LoopSettings(
    initial=INITIAL,
    search=SearchSpace(
        (("variant", ("plain", "terse")), ("retries", (1, 2)), ("timeout_s", (60, 90)))
    ),
    max_candidates=3,
    gates=GateSettings(),
    fallback_chain=("m",),
    runs=7,
    seed=0,
)


def POLICY_OF(settings: LoopSettings) -> GatePolicy:  # noqa: N802
    return builtin_policies()[settings.policy]


def synthetic_samples(plans: dict[str, Any], cases: int, runs: int) -> list[Sample]:
    rng = random.Random(1)
    out = []
    t = 0.0
    for run in range(1, runs + 1):
        for phase, plan in plans.items():
            for c in range(cases):
                for spec in plan.specs:
                    t += 0.001
                    ok = rng.random() < 0.7
                    out.append(
                        Sample(phase, spec.id, f"case-{c}", run, ok, 1.0, 0.5, 0.5, 1,
                               None if ok else "wrong_answer", 10, 5, t, f"gw{c % 2}", "m")
                    )  # fmt: skip
    return out


@pytest.fixture(scope="module")
def big_cycle() -> tuple[LoopState, dict[str, Any], list[Sample]]:
    state = LoopState(baselines={}, routes={})
    plans = plan_cycle(state, SETTINGS, ["a", "b"])
    return state, plans, synthetic_samples(plans, cases=1000, runs=7)  # 56,000 samples


def test_bench_evaluate_and_decide(benchmark: Any, big_cycle: Any) -> None:
    state, plans, samples = big_cycle
    columns = SampleColumns.from_samples(samples)
    outcome = benchmark(close_cycle, state, SETTINGS, plans, columns, policy=POLICY_OF(SETTINGS))
    assert {p.phase for p in outcome.phases} == {"a", "b"}
    assert all(len(p.decisions) == 3 for p in outcome.phases)


def test_bench_columns_from_sample_dicts(benchmark: Any, big_cycle: Any) -> None:
    """What the controller does with what arrives from workers: dicts -> columns."""
    _, _, samples = big_cycle
    rows = [s.to_dict() for s in samples]
    columns = benchmark(SampleColumns.from_dicts, rows)
    assert len(columns) == len(samples)
    stats = evaluate(columns)
    assert sum(s.samples for s in stats.values()) == len(samples)


def test_bench_sample_round_trip(benchmark: Any) -> None:
    """Per item: the fixture records a sample, the controller reads it back."""
    sample = Sample("a", "abc", "case-1", 3, True, 1.0, 0.5, 0.6, 1, None, 10, 5, 1.0, "gw0", "m")
    back = benchmark(lambda: Sample.from_dict(sample.to_dict()))
    assert back == sample


def test_bench_write_cycle(benchmark: Any, big_cycle: Any, tmp_path: Path) -> None:
    state, plans, samples = big_cycle
    outcome = close_cycle(state, SETTINGS, plans, samples[:5000], policy=POLICY_OF(SETTINGS))
    from pytest_selfopt.loop.learn import history_entry

    entry = history_entry(outcome)
    baselines = {p.phase: p.baseline_after for p in outcome.phases}
    routes = {p.phase: p.route_after for p in outcome.phases}
    counter = iter(range(10**6))

    def write() -> list[Path]:
        folder = tmp_path / f"b{next(counter)}"
        return files.write_cycle(
            folder, baselines=baselines, routes=routes, history_entry=entry,
            audit=outcome.audit, expected_baseline_sha256=None,
        )  # fmt: skip

    written = benchmark(write)
    assert {p.name for p in written} >= {"history.json", "decisions.log", "routing.yaml"}


def test_bench_collect_selfopt_items(benchmark: Any, pytester: pytest.Pytester) -> None:
    """Collection of the example suite under --selfopt (420 items), in process."""
    copy_example(pytester)

    def collect() -> int:
        result = pytester.inline_run(
            "--selfopt", "--collect-only", "-q", "-p", "no:cacheprovider", "benchmarks"
        )
        return len(result.getcalls("pytest_itemcollected"))

    items = benchmark.pedantic(collect, rounds=3, iterations=1)
    assert items == 420
