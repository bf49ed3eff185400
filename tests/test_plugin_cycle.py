"""One cycle through real pytest sessions: the example end to end in subprocesses (each
cycle its own process, as users run it), the rest in-process on the mini suite."""

from __future__ import annotations

import pytest
from suites import (
    CYCLE,
    PLAIN,
    XDIST,
    copy_example,
    decisions,
    diagnosis_kinds,
    history,
    mini_suite,
    recommendations,
    reset,
    run,
    run_subprocess,
    snapshot,
)


@pytest.mark.slow
def test_two_cycles_of_the_example_in_their_own_processes(pytester: pytest.Pytester) -> None:
    """Cycle 1 promotes variant=atomic and recommends a route; cycle 2 holds the cold route,
    recommends warm-up and leaves the reviewed files alone."""
    copy_example(pytester)
    result = run_subprocess(pytester, *CYCLE)
    assert result.ret == 0, result.stdout.str()
    out = result.stdout.str()
    assert set(snapshot(pytester)) == {
        "baseline.yaml",
        "routing.yaml",
        "history.json",
        "decisions.log",
    }
    entry = history(pytester)[0]
    verdicts = decisions(entry)
    assert verdicts[("atomic", "variant=atomic")] == "PROMOTE"
    assert verdicts[("atomic", "timeout_s=120")] == "REJECT"
    atomic = entry["phases"]["atomic"]
    assert atomic["measured_baseline"]["median"] == pytest.approx(0.6667, abs=1e-3)
    assert atomic["baseline_after"]["metrics"]["median"] == pytest.approx(0.8333, abs=1e-3)
    assert all(v == "REJECT" for (phase, _), v in verdicts.items() if phase == "extended")
    assert diagnosis_kinds(entry, "extended", cases_only=True) == {"capability_limit"}
    assert ("extended", "route_next_model", "claude-haiku") in recommendations(entry)
    assert "no improvement" in out
    baseline = (pytester.path / "baselines" / "baseline.yaml").read_text()
    atomic_section = baseline.split("  atomic:")[1].split("  extended:")[0]
    assert "variant: atomic" in atomic_section and "promoted_in_cycle: 1" in atomic_section
    routing = (pytester.path / "baselines" / "routing.yaml").read_text()
    assert "variant: atomic" in routing

    before = snapshot(pytester)
    result = run_subprocess(pytester, *CYCLE)
    assert result.ret == 0, result.stdout.str()
    after = snapshot(pytester)
    # Nothing promoted: the reviewed files do not move; the audit trail grows.
    assert after["baseline.yaml"] == before["baseline.yaml"]
    assert after["routing.yaml"] == before["routing.yaml"]
    assert len(after["decisions.log"]) > len(before["decisions.log"])
    entries = history(pytester)
    assert [e["cycle"] for e in entries] == [1, 2]
    second = entries[1]
    assert decisions(second)[("extended", "model=claude-haiku")] == "HOLD"
    assert ("extended", "enable_warmup", "True") in recommendations(second)
    assert "cold_start" in diagnosis_kinds(second, "extended")


def test_mini_suite_tells_the_examples_story(pytester: pytest.Pytester) -> None:
    """The in-process tests below stand on this: the mini suite decides like the example."""
    mini_suite(pytester)
    assert run(pytester, *CYCLE).ret == 0
    first = history(pytester)[0]
    assert decisions(first) == {
        ("atomic", "variant=atomic"): "PROMOTE",
        ("atomic", "timeout_s=120"): "REJECT",
        ("extended", "variant=atomic"): "REJECT",
        ("extended", "timeout_s=120"): "REJECT",
    }
    assert first["phases"]["atomic"]["baseline_after"]["metrics"]["median"] == pytest.approx(
        2 / 3, abs=1e-3
    )
    assert recommendations(first) == {("extended", "route_next_model", "claude-haiku")}
    assert run(pytester, *CYCLE).ret == 0
    second = history(pytester)[1]
    assert decisions(second)[("extended", "model=claude-haiku")] == "HOLD"
    assert ("extended", "enable_warmup", "True") in recommendations(second)
    assert "cold_start" in diagnosis_kinds(second, "extended")


@pytest.mark.slow  # two sessions with xdist workers
def test_xdist_and_serial_make_the_same_decisions_and_files(pytester: pytest.Pytester) -> None:
    """Two cycles serially, then the same two under ``-n 2``: same decisions, same
    recommendations, byte-identical baseline.yaml and routing.yaml (same seed, same files)."""
    mini_suite(pytester)
    serial, parallel = [], []
    for args, into in (((), serial), (XDIST, parallel)):
        for _ in range(2):
            result = run(pytester, *CYCLE, *args)
            assert result.ret == 0, result.stdout.str()
        entries = history(pytester)
        into.extend((decisions(e), recommendations(e)) for e in entries)
        files = snapshot(pytester)
        into.append((files["baseline.yaml"], files["routing.yaml"]))
        reset(pytester)
    assert serial == parallel
    # the comparison is not vacuous: cycle 2 held the cold route in both
    assert serial[1][0][("extended", "model=claude-haiku")] == "HOLD"


def test_plain_run_of_one_case_runs_it_once_and_writes_nothing(pytester: pytest.Pytester) -> None:
    mini_suite(pytester)
    result = run(pytester, *PLAIN, "-k", "capital-france", "-v")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*test_atomic[[]capital-france[]] PASSED*"])
    assert snapshot(pytester) == {}


def test_dry_run_writes_nothing(pytester: pytest.Pytester) -> None:
    mini_suite(pytester)
    result = run(pytester, *CYCLE, "--selfopt-dry-run")
    assert result.ret == 0, result.stdout.str()
    assert "dry run" in result.stdout.str()
    assert snapshot(pytester) == {}


def test_item_ids_are_readable_and_run_major(pytester: pytest.Pytester) -> None:
    mini_suite(pytester)
    result = run(pytester, *CYCLE, "--collect-only", "-q")
    lines = [line for line in result.stdout.lines if "::test_" in line]
    assert len(lines) == 2 * 3 * 3 * 3  # phases x cases x specs x runs
    assert "benchmarks/test_atomic.py::test_atomic[capital-france-variant=atomic-r3]" in lines
    runs = [int(line.rsplit("-r", 1)[1].rstrip("]")) for line in lines]
    assert runs == sorted(runs), "items must be ordered run-major"
    first_run = [line for line in lines if line.endswith("-r1]")]
    # specs interleaved within a run: the first case's specs come before the second case
    assert first_run[0].endswith("[capital-france-baseline-r1]")
    assert first_run[1].endswith("[capital-france-variant=atomic-r1]")
    assert snapshot(pytester) == {}
