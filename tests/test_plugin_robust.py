"""Broken sessions write nothing; bad input is named; exit statuses say what happened.

In-process sessions on the mini suite (tests/suites.py); ``-n 2`` where a worker is the point.
"""

from __future__ import annotations

import pytest
from suites import (
    CHECK,
    CYCLE,
    PLAIN,
    XDIST,
    decisions,
    history,
    mini_suite,
    run,
    run_as_from_a_terminal,
    run_subprocess,
    snapshot,
)


def test_bad_config_names_file_and_key_and_writes_nothing(pytester: pytest.Pytester) -> None:
    mini_suite(pytester, gates={"max_variance": "lots"})
    result = run(pytester, *CYCLE)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    err = result.stderr.str()
    assert "selfopt.yaml" in err and "gates.max_variance" in err and "expected" in err
    assert snapshot(pytester) == {}


def test_unknown_model_in_initial_is_refused_before_any_call(pytester: pytest.Pytester) -> None:
    mini_suite(
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
    result = run(pytester, *CYCLE)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "initial.model" in result.stderr.str()
    assert snapshot(pytester) == {}


def test_malformed_committed_file_is_named_and_left_alone(pytester: pytest.Pytester) -> None:
    mini_suite(pytester)
    folder = pytester.path / "baselines"
    folder.mkdir()
    (folder / "baseline.yaml").write_text("version: 1\nphases:\n  atomic: [not, a, mapping]\n")
    result = run(pytester, *CYCLE)
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
    mini_suite(pytester)
    pytester.makeconftest(INTERRUPT)
    result = run(pytester, *CYCLE, no_reraise_ctrlc=True)
    assert result.ret == pytest.ExitCode.INTERRUPTED
    assert "nothing written" in result.stdout.str()
    # pytest's banner and source line give way to the summary (what was kept, how to resume)
    assert "KeyboardInterrupt" not in result.stdout.str() + result.stderr.str()
    assert snapshot(pytester) == {}


EARLY_LINE = "interrupted before any test ran: nothing was run or written"


def selfopt_section(text: str) -> list[str]:
    """The lines under the ``selfopt`` separator, up to the next separator."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if " selfopt " in line and "===" in line)
    rest = lines[start + 1 :]
    return rest[: next((i for i, line in enumerate(rest) if line.startswith("===")), len(rest))]


def assert_quiet(result: pytest.RunResult) -> None:
    both = result.stdout.str() + result.stderr.str()
    assert "Traceback" not in both and "KeyboardInterrupt" not in both, both


def test_ctrl_c_while_collecting_is_one_line(pytester: pytest.Pytester) -> None:
    mini_suite(pytester)
    pytester.makeconftest(
        """
        def pytest_collectstart(collector):
            if collector.name == "test_extended.py":
                raise KeyboardInterrupt
        """
    )
    result = run(pytester, *CYCLE, no_reraise_ctrlc=True)
    assert result.ret == pytest.ExitCode.INTERRUPTED
    assert selfopt_section(result.stdout.str()) == [EARLY_LINE]
    assert_quiet(result)
    folder = pytester.path / "baselines"  # made for the lock, which was given back
    assert not folder.exists() or list(folder.iterdir()) == []


def test_ctrl_c_while_the_plugin_plans_is_one_line_and_gives_the_lock_back(
    pytester: pytest.Pytester,
) -> None:
    """After the plugin read the files and took the lock, before the session started: pytest
    itself prints nothing then, and its own teardown gives the lock back."""
    mini_suite(pytester)
    pytester.makeconftest(
        """
        import pytest

        @pytest.hookimpl(trylast=True)
        def pytest_configure(config):
            raise KeyboardInterrupt
        """
    )
    result = run(pytester, *CYCLE, no_reraise_ctrlc=True)
    assert result.ret == pytest.ExitCode.INTERRUPTED
    assert result.stderr.str().strip().splitlines() == [f"selfopt: {EARLY_LINE}"]
    assert_quiet(result)
    assert result.stdout.str().strip() == ""
    folder = pytester.path / "baselines"
    assert not folder.exists() or list(folder.iterdir()) == []


def test_ctrl_c_while_pytest_starts_is_one_line(pytester: pytest.Pytester) -> None:
    """While pytest imports conftests (before any session exists), Python's own handler would
    print an import traceback and end by the signal (status 130)."""
    mini_suite(pytester)
    pytester.makeconftest(
        """
        import os, signal, time

        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)
        """
    )
    result = run_subprocess(pytester, *CYCLE)
    assert result.ret == 2
    assert result.stderr.str().strip().splitlines() == [
        "selfopt: interrupted while pytest was starting; nothing was run or written"
    ]
    assert_quiet(result)
    assert not (pytester.path / "baselines").exists()


START_LINE = "selfopt: interrupted while pytest was starting; nothing was run or written"


@pytest.mark.parametrize("selfopt", [True, False])
def test_ctrl_c_before_pytest_imports_the_plugin_is_one_line(
    pytester: pytest.Pytester, selfopt: bool
) -> None:
    """Before pytest imports the plugin (its own imports, the plugins it loads first) only the
    installed ``pytest_selfopt.pth`` can act. To stand for that moment the plugin is not loaded
    at all (``-p no:selfopt``) and a conftest sends the SIGINT; a command line without
    ``--selfopt`` keeps Python's own handling."""
    pytester.makeconftest(
        """
        import os, signal, time

        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)
        """
    )
    args = ["-p", "no:selfopt", "-p", "no:cacheprovider", *(["--selfopt"] if selfopt else [])]
    done = run_as_from_a_terminal(pytester.path, *args)
    if selfopt:
        assert done.returncode == 2, done.stdout + done.stderr
        assert done.stderr.strip().splitlines() == [START_LINE] and not done.stdout
    else:
        assert "KeyboardInterrupt" in done.stdout + done.stderr
        assert START_LINE not in done.stderr


def test_ctrl_c_during_xdist_teardown_after_the_write_is_one_line(
    pytester: pytest.Pytester,
) -> None:
    mini_suite(pytester)
    pytester.makeconftest(
        """
        import os, signal, time
        from xdist import workermanage

        _teardown = workermanage.NodeManager.teardown_nodes

        def teardown_nodes(self):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
            return _teardown(self)

        workermanage.NodeManager.teardown_nodes = teardown_nodes
        """
    )
    result = run_subprocess(pytester, *CYCLE, *XDIST)
    assert result.ret == 2
    assert result.stderr.str().strip().splitlines()[-1] == (
        "selfopt: interrupted after the cycle was closed; its files are complete"
    )
    assert_quiet(result)
    assert "written: baselines/baseline.yaml" in result.stdout.str()  # the summary got out
    assert len(history(pytester)) == 1
    assert sorted(p.name for p in (pytester.path / "baselines").iterdir()) == [
        "baseline.yaml",
        "decisions.log",
        "history.json",
        "routing.yaml",
    ]  # the lock was given back


def test_stop_on_first_failure_writes_nothing(pytester: pytest.Pytester) -> None:
    # A failed reply check is data, not a failure; an ordinary failing test is one, and -x
    # stops the session on it before the cycle has all its samples.
    bench = mini_suite(pytester)
    (bench / "test_extended.py").write_text(
        (bench / "test_extended.py").read_text() + "\n\ndef test_unit():\n    assert 1 == 2\n"
    )
    result = run(pytester, *CYCLE, "-x")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    assert "nothing written" in result.stdout.str()
    assert snapshot(pytester) == {}


CRASH = """
import os

def pytest_runtest_call(item):
    if item.name == "test_atomic[prime-after-89-baseline-r2]":
        os._exit(3)
"""


def test_crashed_worker_writes_nothing(pytester: pytest.Pytester) -> None:
    mini_suite(pytester)
    pytester.makeconftest(CRASH)
    result = run(pytester, *CYCLE, *XDIST)
    assert result.ret != 0
    assert "nothing written" in result.stdout.str()
    assert snapshot(pytester) == {}


def test_every_sample_errored_is_a_failed_cycle(pytester: pytest.Pytester) -> None:
    mini_suite(
        pytester,
        models={
            "lfm": {"provider": "sim", "transient_errors": 1.0},
            "claude-haiku": {"provider": "sim"},
        },
    )
    result = run(pytester, *CYCLE, "--selfopt-runs", "3")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    assert "could not decide" in result.stdout.str()


def test_too_few_runs_hold_every_candidate(pytester: pytest.Pytester) -> None:
    mini_suite(pytester)
    result = run(pytester, *CYCLE, "--selfopt-runs", "2")
    assert result.ret == 0, result.stdout.str()
    verdicts = decisions(history(pytester)[0])
    assert len(verdicts) == 4 and set(verdicts.values()) == {"HOLD"}
    assert (
        "baseline.yaml" not in snapshot(pytester)
        or "promoted_in_cycle: 1" not in (pytester.path / "baselines" / "baseline.yaml").read_text()
    )


RAMBLER = {
    "seed": 1,
    "runs": 5,
    "models": {
        "small": {"provider": "sim", "skill": 0.3},
        "rambler": {"provider": "sim", "skill": 0.9, "ramble": 1.0},
    },
    "variants": {"plain": "{prompt}"},
    "initial": {
        "model": "small",
        "variant": "plain",
        "timeout_s": 30,
        "retries": 0,
        "isolation": "i0",
        "warmup": False,
    },
    "search": {"model": ["small", "rambler"]},
}

QUIZ = """
phase: quiz
cases:
  - {id: one, prompt: "1+1?", expect: {number: 2}, restraint: {max_words: 3}, sim: {difficulty: 0.1}}
  - {id: two, prompt: "2+2?", expect: {number: 4}, restraint: {max_words: 3}, sim: {difficulty: 0.5}}
  - {id: three, prompt: "3+3?", expect: {number: 6}, restraint: {max_words: 3}, sim: {difficulty: 0.8}}
"""


def test_unrestrained_better_model_is_rejected_by_the_restraint_gate(
    pytester: pytest.Pytester,
) -> None:
    mini_suite(pytester, config=RAMBLER, cases={"quiz": QUIZ})
    result = run(pytester, *CYCLE)
    assert result.ret == 0, result.stdout.str()
    entry = history(pytester)[0]
    cand = entry["phases"]["quiz"]["candidates"][0]
    assert cand["label"] == "model=rambler"
    assert cand["decision"]["verdict"] == "REJECT"
    gates = {g["name"]: g["passed"] for g in cand["decision"]["gates"]}
    assert gates == {"samples": True, "stability": True, "improvement": True, "restraint": False}


@pytest.mark.parametrize("workers", [(), XDIST], ids=["serial", "xdist"])
def test_broken_config_fails_only_llm_tests_in_a_plain_run(
    pytester: pytest.Pytester, workers: tuple[str, ...]
) -> None:
    mini_suite(pytester, gates={"max_variance": "lots"})
    pytester.makepyfile(test_unrelated="def test_unrelated():\n    assert True\n")
    result = run(pytester, "test_unrelated.py", *PLAIN, "-k", "unrelated or capital", *workers)
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*selfopt.yaml: gates.max_variance: expected*"])
    assert snapshot(pytester) == {}


@pytest.mark.parametrize("mode", [CYCLE, CHECK], ids=["selfopt", "check"])
@pytest.mark.parametrize("workers", ["0", "2"])
def test_broken_cases_file_stops_the_cycle(
    pytester: pytest.Pytester, mode: tuple[str, ...], workers: str
) -> None:
    bench = mini_suite(pytester)
    cases = bench / "atomic.yaml"
    cases.write_text(cases.read_text().replace("expect: {equals: Paris}", "expect: {equal: Paris}"))
    result = run(pytester, *mode, "-n", workers)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stdout.fnmatch_lines(
        [
            "*nothing written*",
            "*bad input: benchmarks/atomic.yaml: cases[[]0[]].expect.equal: unknown key*",
        ]
    )
    assert snapshot(pytester) == {}


def test_committed_routing_naming_an_unknown_model_is_refused(pytester: pytest.Pytester) -> None:
    mini_suite(pytester)
    assert run(pytester, *CYCLE).ret == 0
    routing = pytester.path / "baselines" / "routing.yaml"
    text = routing.read_text().replace("model: lfm", "model: gpt-9", 1)
    routing.write_text(
        "\n".join(line for line in text.splitlines() if "spec_id" not in line) + "\n"
    )
    before = snapshot(pytester)
    result = run(pytester, *CYCLE)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*baselines/routing.yaml: phases.atomic.model: 'gpt-9' is not defined*"]
    )
    assert snapshot(pytester) == before


def many_cases(count: int) -> str:
    rows = "".join(
        f"  - {{id: c{i}, prompt: 'What is {i} + 1?', expect: {{number: {i + 1}}}}}\n"
        for i in range(count)
    )
    return f"phase: atomic\ncases:\n{rows}"


def test_too_many_items_are_refused_while_parametrizing(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """runs x specs x cases over the bound: one named line, exit 4, before pytest makes the
    items (the bound is lowered here, in-process; the next test uses the real one)."""
    monkeypatch.setattr("pytest_selfopt.suite.config.MAX_ITEMS", 40)
    mini_suite(pytester)
    assert run(pytester, *CYCLE, "--selfopt-runs", "2", "--collect-only").ret == 0
    result = run(pytester, *CYCLE, "--selfopt-runs", "3")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stdout.fnmatch_lines(
        [
            "*bad input: benchmarks/selfopt.yaml: runs: this session would collect more than 40 "
            "test items (runs x specs x cases, at 3 runs per spec); lower runs*"
        ]
    )
    assert "Traceback" not in result.stdout.str() and "config.py:" not in result.stdout.str()
    assert snapshot(pytester) == {}


@pytest.mark.parametrize("workers", [(), XDIST], ids=["serial", "xdist"])
def test_runs_1000_over_many_cases_is_refused_before_collecting(
    pytester: pytest.Pytester, workers: tuple[str, ...]
) -> None:
    """1000 runs x 2 specs x 60 cases: 120,000 items, refused before any is made (each
    xdist worker collects on its own, and refuses on its own)."""
    mini_suite(pytester, runs=1000, cases={"atomic": many_cases(60)})
    result = run(pytester, *CYCLE, *workers)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stdout.fnmatch_lines(
        ["*benchmarks/selfopt.yaml: runs: this session would collect more than 100,000 test*"]
    )
    assert "Traceback" not in result.stdout.str() and "config.py:" not in result.stdout.str()
    assert snapshot(pytester) == {}


def test_runs_over_1000_are_refused_at_load(pytester: pytest.Pytester) -> None:
    mini_suite(pytester, runs=100000)
    result = run(pytester, *CYCLE)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*benchmarks/selfopt.yaml: runs: expected *1000*"])
    assert snapshot(pytester) == {}


def test_ctrl_c_while_the_interpreter_exits_after_the_write_is_one_line(
    pytester: pytest.Pytester,
) -> None:
    """After pytest returned (its cleanups ran), only the interpreter's exit is left: a Ctrl-C
    there, in a process started for a cycle, stays one line (a test process that runs sessions
    in-process gets its own handler back instead)."""
    mini_suite(pytester)
    pytester.makeconftest(
        """
        import atexit, os, signal, time

        def late():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)

        atexit.register(late)
        """
    )
    result = run_subprocess(pytester, *CYCLE)
    assert result.ret == 2
    assert result.stderr.str().strip().splitlines()[-1] == (
        "selfopt: interrupted after the cycle was closed; its files are complete"
    )
    assert_quiet(result)
    assert len(history(pytester)) == 1


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (("--selfopt-resume",), "--selfopt-resume is for a cycle: add --selfopt"),
        (("--selfopt-dry-run",), "--selfopt-dry-run is for a cycle: add --selfopt"),
        (("--selfopt-shard=1/3", "--selfopt-samples=s.jsonl"), "--selfopt-shard is for a cycle"),
        (("--selfopt", "--selfopt-samples=s.jsonl"), "add --selfopt-shard K/N"),
    ],
)
def test_an_option_without_its_companion_is_refused_not_ignored(
    pytester: pytest.Pytester, args: tuple[str, ...], said: str
) -> None:
    """Not a plain run taken for a resume or a shard, nor a whole cycle written where a
    shard's samples were asked for."""
    mini_suite(pytester)
    result = run(pytester, "-p", "no:cacheprovider", "benchmarks", *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert said in result.stderr.str()
    assert snapshot(pytester) == {} and not (pytester.path / "s.jsonl").exists()


def test_a_test_path_that_does_not_exist_is_pytests_error_and_leaves_nothing(
    pytester: pytest.Pytester,
) -> None:
    """Not "no test used the llm fixture" (the user would look in the wrong place), and no
    empty baselines/ folder behind a cycle that wrote nothing."""
    mini_suite(pytester)
    result = run(pytester, "--selfopt", "-p", "no:cacheprovider", "no-such-folder")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    text = result.stdout.str()
    assert "nothing ran: pytest refused the command line; nothing written" in text
    assert "no test used the llm fixture" not in text
    assert not (pytester.path / "baselines").exists()
