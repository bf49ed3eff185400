"""One cycle through real pytest sessions (pytester subprocesses, so each is its own process)."""

from __future__ import annotations

import pytest
from suites import copy_example, decisions, history, recommendations, snapshot

RUN = ("--selfopt", "-p", "no:cacheprovider", "benchmarks")


@pytest.fixture
def example(pytester: pytest.Pytester) -> pytest.Pytester:
    copy_example(pytester)
    return pytester


def test_first_cycle_promotes_variant_and_recommends_route(example: pytest.Pytester) -> None:
    result = example.runpytest_subprocess(*RUN)
    assert result.ret == 0, result.stdout.str()
    out = result.stdout.str()
    assert set(snapshot(example)) == {
        "baseline.yaml",
        "routing.yaml",
        "history.json",
        "decisions.log",
    }
    entry = history(example)[0]
    verdicts = decisions(entry)
    assert verdicts[("atomic", "variant=atomic")] == "PROMOTE"
    assert verdicts[("atomic", "timeout_s=120")] == "REJECT"
    atomic = entry["phases"]["atomic"]
    assert atomic["measured_baseline"]["median"] == pytest.approx(0.6667, abs=1e-3)
    assert atomic["baseline_after"]["metrics"]["median"] == pytest.approx(0.8333, abs=1e-3)
    extended = entry["phases"]["extended"]
    assert all(v == "REJECT" for (phase, _), v in verdicts.items() if phase == "extended")
    assert {d["kind"] for d in extended["diagnoses"] if d["case_id"]} == {"capability_limit"}
    assert ("extended", "route_next_model", "claude-haiku") in recommendations(entry)
    assert "no improvement" in out
    baseline = (example.path / "baselines" / "baseline.yaml").read_text()
    atomic_section = baseline.split("  atomic:")[1].split("  extended:")[0]
    assert "variant: atomic" in atomic_section and "promoted_in_cycle: 1" in atomic_section
    routing = (example.path / "baselines" / "routing.yaml").read_text()
    assert "variant: atomic" in routing


def test_second_cycle_holds_cold_route_and_leaves_committed_files(example: pytest.Pytester) -> None:
    assert example.runpytest_subprocess(*RUN).ret == 0
    before = snapshot(example)
    result = example.runpytest_subprocess(*RUN)
    assert result.ret == 0, result.stdout.str()
    after = snapshot(example)
    # Nothing promoted: the reviewed files do not move; the audit trail grows.
    assert after["baseline.yaml"] == before["baseline.yaml"]
    assert after["routing.yaml"] == before["routing.yaml"]
    assert len(after["decisions.log"]) > len(before["decisions.log"])
    entries = history(example)
    assert [e["cycle"] for e in entries] == [1, 2]
    second = entries[1]
    assert decisions(second)[("extended", "model=claude-haiku")] == "HOLD"
    assert ("extended", "enable_warmup", "True") in recommendations(second)
    kinds = {d["kind"] for d in second["phases"]["extended"]["diagnoses"]}
    assert "cold_start" in kinds


def test_xdist_and_serial_make_the_same_decisions(pytester: pytest.Pytester) -> None:
    copy_example(pytester)
    serial, parallel = [], []
    for args, into in (((), serial), (("-n", "2"), parallel)):
        for _ in range(2):
            result = pytester.runpytest_subprocess(*RUN, *args)
            assert result.ret == 0, result.stdout.str()
        entries = history(pytester)
        into.extend((decisions(e), recommendations(e)) for e in entries)
        into.append(snapshot(pytester)["baseline.yaml"])
        for name in ("baseline.yaml", "routing.yaml", "history.json", "decisions.log"):
            (pytester.path / "baselines" / name).unlink()
    assert serial == parallel


def test_same_seed_same_files(pytester: pytest.Pytester) -> None:
    copy_example(pytester)
    outputs = []
    for _ in range(2):
        assert pytester.runpytest_subprocess(*RUN, "-n", "2").ret == 0
        files = snapshot(pytester)
        outputs.append((files["baseline.yaml"], files["routing.yaml"]))
        for name in files:
            (pytester.path / "baselines" / name).unlink()
    assert outputs[0] == outputs[1]


def test_plain_run_of_one_case_runs_it_once_and_writes_nothing(example: pytest.Pytester) -> None:
    result = example.runpytest_subprocess(
        "-p", "no:cacheprovider", "benchmarks", "-k", "capital-france", "-v"
    )
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*test_atomic[[]capital-france[]] PASSED*"])
    assert snapshot(example) == {}


def test_dry_run_writes_nothing(example: pytest.Pytester) -> None:
    result = example.runpytest_subprocess(*RUN, "--selfopt-dry-run")
    assert result.ret == 0, result.stdout.str()
    assert "dry run" in result.stdout.str()
    assert snapshot(example) == {}


def test_item_ids_are_readable_and_run_major(example: pytest.Pytester) -> None:
    result = example.runpytest_subprocess(*RUN, "--collect-only", "-q")
    lines = [l for l in result.stdout.lines if "::test_" in l]
    assert "benchmarks/test_atomic.py::test_atomic[capital-france-variant=atomic-r3]" in lines
    runs = [int(l.rsplit("-r", 1)[1].rstrip("]")) for l in lines]
    assert runs == sorted(runs), "items must be ordered run-major"
    first_run = [l for l in lines if l.endswith("-r1]")]
    # specs interleaved within a run: the first case's specs come before the second case
    assert first_run[0].endswith("[capital-france-baseline-r1]")
    assert first_run[1].endswith("[capital-france-variant=atomic-r1]")
