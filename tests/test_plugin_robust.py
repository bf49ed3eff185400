"""Broken sessions write nothing; bad input is named; exit statuses say what happened."""

from __future__ import annotations

import textwrap

import pytest
from suites import copy_example, decisions, history, snapshot

RUN = ("--selfopt", "-p", "no:cacheprovider", "benchmarks")


def test_bad_config_names_file_and_key_and_writes_nothing(pytester: pytest.Pytester) -> None:
    copy_example(pytester, gates={"max_variance": "lots"})
    result = pytester.runpytest_subprocess(*RUN)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    err = result.stderr.str()
    assert "selfopt.yaml" in err and "gates.max_variance" in err and "expected" in err
    assert snapshot(pytester) == {}


def test_unknown_model_in_initial_is_refused_before_any_call(pytester: pytest.Pytester) -> None:
    copy_example(
        pytester,
        initial={
            "model": "gpt-9",
            "variant": "native_api",
            "timeout_s": 60,
            "retries": 1,
            "isolation": "i0",
            "warmup": False,
        },
    )
    result = pytester.runpytest_subprocess(*RUN)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "initial.model" in result.stderr.str()
    assert snapshot(pytester) == {}


def test_malformed_committed_file_is_named_and_left_alone(pytester: pytest.Pytester) -> None:
    copy_example(pytester)
    folder = pytester.path / "baselines"
    folder.mkdir()
    (folder / "baseline.yaml").write_text("version: 1\nphases:\n  atomic: [not, a, mapping]\n")
    result = pytester.runpytest_subprocess(*RUN)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "baseline.yaml" in result.stderr.str()
    assert (folder / "baseline.yaml").read_text().endswith("[not, a, mapping]\n")
    assert set(snapshot(pytester)) == {"baseline.yaml"}


INTERRUPT = """
import pytest
_count = 0

@pytest.hookimpl(tryfirst=True)
def pytest_runtest_call(item):
    global _count
    _count += 1
    if _count == 25:
        raise KeyboardInterrupt
"""


def test_interrupted_session_writes_nothing(pytester: pytest.Pytester) -> None:
    copy_example(pytester)
    pytester.makeconftest(INTERRUPT)
    result = pytester.runpytest_subprocess(*RUN)
    assert result.ret == pytest.ExitCode.INTERRUPTED
    assert snapshot(pytester) == {}


def test_stop_on_first_failure_writes_nothing(pytester: pytest.Pytester) -> None:
    copy_example(pytester)
    result = pytester.runpytest_subprocess(*RUN, "-x")
    assert result.ret != 0
    assert "nothing written" in result.stdout.str()
    assert snapshot(pytester) == {}


CRASH = """
import os

def pytest_runtest_call(item):
    if item.name == "test_atomic[hamlet-author-baseline-r2]":
        os._exit(3)
"""


def test_crashed_worker_writes_nothing(pytester: pytest.Pytester) -> None:
    copy_example(pytester)
    pytester.makeconftest(CRASH)
    result = pytester.runpytest_subprocess(*RUN, "-n", "2")
    assert result.ret != 0
    assert "nothing written" in result.stdout.str()
    assert snapshot(pytester) == {}


def test_every_sample_errored_is_a_failed_cycle(pytester: pytest.Pytester) -> None:
    copy_example(
        pytester,
        models={
            "lfm": {"provider": "sim", "transient_errors": 1.0},
            "claude-haiku": {"provider": "sim"},
        },
    )
    result = pytester.runpytest_subprocess(*RUN, "--selfopt-runs", "3")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    assert "could not decide" in result.stdout.str()


def test_too_few_runs_hold_every_candidate(pytester: pytest.Pytester) -> None:
    copy_example(pytester)
    result = pytester.runpytest_subprocess(*RUN, "--selfopt-runs", "2")
    assert result.ret == 0, result.stdout.str()
    verdicts = decisions(history(pytester)[0])
    assert set(verdicts.values()) == {"HOLD"}
    assert (
        "baseline.yaml" not in snapshot(pytester)
        or "promoted_in_cycle: 1" not in (pytester.path / "baselines" / "baseline.yaml").read_text()
    )


RAMBLER = """
seed: 1
runs: 5
models:
  small: {provider: sim, skill: 0.3}
  rambler: {provider: sim, skill: 0.9, ramble: 1.0}
variants: {plain: "{prompt}"}
initial: {model: small, variant: plain, timeout_s: 30, retries: 0, isolation: i0, warmup: false}
search: {model: [small, rambler]}
"""

CASES = """
phase: quiz
cases:
  - {id: one, prompt: "1+1?", expect: {number: 2}, restraint: {max_words: 3}, sim: {difficulty: 0.1}}
  - {id: two, prompt: "2+2?", expect: {number: 4}, restraint: {max_words: 3}, sim: {difficulty: 0.5}}
  - {id: three, prompt: "3+3?", expect: {number: 6}, restraint: {max_words: 3}, sim: {difficulty: 0.8}}
"""

TEST = """
import pytest
from pytest_selfopt import load_cases

@pytest.mark.parametrize("case", load_cases("quiz.yaml"))
def test_quiz(case, llm):
    case.check(llm.ask(case.prompt))
"""


def test_unrestrained_better_model_is_rejected_by_the_restraint_gate(
    pytester: pytest.Pytester,
) -> None:
    bench = pytester.path / "benchmarks"
    bench.mkdir()
    (bench / "selfopt.yaml").write_text(RAMBLER)
    (bench / "quiz.yaml").write_text(CASES)
    (bench / "test_quiz.py").write_text(textwrap.dedent(TEST))
    result = pytester.runpytest_subprocess(*RUN)
    assert result.ret == 0, result.stdout.str()
    entry = history(pytester)[0]
    cand = entry["phases"]["quiz"]["candidates"][0]
    assert cand["label"] == "model=rambler"
    assert cand["decision"]["verdict"] == "REJECT"
    gates = {g["name"]: g["passed"] for g in cand["decision"]["gates"]}
    assert gates == {"samples": True, "stability": True, "improvement": True, "restraint": False}


def test_broken_config_fails_only_llm_tests_in_a_plain_run(pytester: pytest.Pytester) -> None:
    copy_example(pytester, gates={"max_variance": "lots"})
    pytester.makepyfile(test_unrelated="def test_unrelated():\n    assert True\n")
    for extra in ((), ("-n", "2")):
        result = pytester.runpytest_subprocess(
            "-p",
            "no:cacheprovider",
            "test_unrelated.py",
            "benchmarks",
            "-k",
            "unrelated or capital",
            *extra,
        )
        result.assert_outcomes(passed=1, errors=1)
        result.stdout.fnmatch_lines(["*selfopt.yaml: gates.max_variance: expected*"])
    assert snapshot(pytester) == {}


@pytest.mark.parametrize("mode", ["--selfopt", "--selfopt-check"])
@pytest.mark.parametrize("workers", ["0", "2"])
def test_broken_cases_file_stops_the_cycle(
    pytester: pytest.Pytester, mode: str, workers: str
) -> None:
    bench = copy_example(pytester)
    cases = bench / "atomic.yaml"
    cases.write_text(cases.read_text().replace("expect: {equals: Paris}", "expect: {equal: Paris}"))
    result = pytester.runpytest_subprocess(
        mode, "-p", "no:cacheprovider", "-n", workers, "benchmarks"
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stdout.fnmatch_lines(
        [
            "*nothing written*",
            "*bad input: benchmarks/atomic.yaml: cases[[]0[]].expect.equal: unknown key*",
        ]
    )
    assert snapshot(pytester) == {}


def test_committed_routing_naming_an_unknown_model_is_refused(pytester: pytest.Pytester) -> None:
    copy_example(pytester)
    assert pytester.runpytest_subprocess(*RUN).ret == 0
    routing = pytester.path / "baselines" / "routing.yaml"
    text = routing.read_text().replace("model: lfm", "model: gpt-9", 1)
    routing.write_text("\n".join(l for l in text.splitlines() if "spec_id" not in l) + "\n")
    before = snapshot(pytester)
    result = pytester.runpytest_subprocess(*RUN)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*baselines/routing.yaml: phases.atomic.model: 'gpt-9' is not defined*"]
    )
    assert snapshot(pytester) == before
