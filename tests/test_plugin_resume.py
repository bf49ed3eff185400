"""The sample journal and ``--selfopt-resume``: a broken cycle keeps its samples, and the
resumed session runs only the missing items and decides exactly as an unbroken one."""

from __future__ import annotations

import re
import shutil

import pytest
from suites import STOP_AFTER_CONFTEST
from test_plugin_session import make_suite

STOPPER = STOP_AFTER_CONFTEST

FILES = ("baseline.yaml", "routing.yaml", "history.json")


def broken_cycle(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, after: int, *args: str
) -> pytest.RunResult:
    """The inline suite's cycle, broken by a Ctrl-C after ``after`` items (exit 2 asserted)."""
    make_suite(pytester)
    pytester.makeconftest(STOPPER)
    monkeypatch.setenv("STOP_AFTER", str(after))
    broken = pytester.runpytest("benchmarks", "--selfopt", *args, no_reraise_ctrlc=True)
    assert broken.ret == pytest.ExitCode.INTERRUPTED, broken.stdout.str()
    monkeypatch.delenv("STOP_AFTER")
    return broken


def samples_run(text: str) -> int:
    found = re.search(r"(\d+) samples? in ", text.strip().splitlines()[-1])
    return int(found[1]) if found else 0


def test_an_interrupted_cycle_resumes_with_the_missing_items_only(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_suite(pytester)
    pytester.makeconftest(STOPPER)
    whole = pytester.runpytest("benchmarks", "--selfopt")
    assert whole.ret == 0
    total = samples_run(whole.stdout.str())
    assert total == 18  # 3 cases x 3 runs x 2 specs
    reference = {n: (pytester.path / "baselines" / n).read_bytes() for n in FILES}
    shutil.rmtree(pytester.path / "baselines")

    monkeypatch.setenv("STOP_AFTER", "7")
    broken = pytester.runpytest("benchmarks", "--selfopt", no_reraise_ctrlc=True)
    assert broken.ret == pytest.ExitCode.INTERRUPTED
    text = broken.stdout.str()
    assert "incomplete session, nothing written" in text
    assert "kept 7 sample(s) in .pytest_cache/selfopt/journal.jsonl" in text
    command = text.split("finish this cycle without repeating them: ")[1].splitlines()[0]
    assert command.startswith("pytest benchmarks --selfopt ") and command.endswith(
        " --selfopt-resume"
    )
    assert not any((pytester.path / "baselines" / n).exists() for n in FILES)

    monkeypatch.delenv("STOP_AFTER")
    resumed = pytester.runpytest("benchmarks", "--selfopt", "--selfopt-resume")
    assert resumed.ret == 0, resumed.stdout.str()
    assert "resumed: 7 sample(s) from the journal, not run again" in resumed.stdout.str()
    assert samples_run(resumed.stdout.str()) == total - 7
    for name, data in reference.items():
        assert (pytester.path / "baselines" / name).read_bytes() == data, name
    assert not (pytester.path / ".pytest_cache" / "selfopt" / "journal.jsonl").exists()


def test_a_journal_of_another_plan_is_refused_with_the_reason(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken_cycle(pytester, monkeypatch, 4)
    other = pytester.runpytest("benchmarks", "--selfopt", "--selfopt-resume", "--selfopt-seed=9")
    assert other.ret == pytest.ExitCode.USAGE_ERROR
    assert "belongs to another plan (seed 3 -> 9)" in other.stderr.str()
    assert not any((pytester.path / "baselines" / n).exists() for n in FILES)
    nothing = pytester.runpytest("benchmarks", "--selfopt", "--selfopt-resume")
    assert nothing.ret == 0  # the journal was left alone by the refusal


def test_a_dry_run_leaves_a_broken_cycles_journal_and_a_fresh_start_says_it_replaced_it(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A dry run writes nothing, the journal included: the paid samples stay for the real
    resume. A session without --selfopt-resume starts afresh and says whose journal it replaced."""
    broken_cycle(pytester, monkeypatch, 5)
    journal = pytester.path / ".pytest_cache" / "selfopt" / "journal.jsonl"
    kept = journal.read_bytes()
    for extra in (["--selfopt-resume"], []):
        dry = pytester.runpytest("benchmarks", "--selfopt", "--selfopt-dry-run", *extra)
        assert dry.ret == 0, dry.stdout.str()
        assert journal.read_bytes() == kept, extra
    assert not (pytester.path / "baselines").exists()  # not even an empty folder
    fresh = pytester.runpytest("benchmarks", "--selfopt")
    assert fresh.ret == 0, fresh.stdout.str()
    assert (
        "started afresh: the journal of a broken session (5 sample(s)) was replaced "
        "(--selfopt-resume would have reused them)" in fresh.stdout.str()
    )
    assert samples_run(fresh.stdout.str()) == 18 and not journal.exists()


def test_the_resume_command_drops_item_selection(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cycle needs every item: a resume that kept ``-k`` could never close it."""
    broken = broken_cycle(pytester, monkeypatch, 3, "-k", "not zzz", "-m", "not slow", "-x")
    text = broken.stdout.str()
    command = text.split("finish this cycle without repeating them: ")[1].splitlines()[0]
    words = command.split()  # (pytester adds its own --basetemp)
    assert words[:4] == ["pytest", "benchmarks", "--selfopt", "-x"]
    assert "-k" not in words and "-m" not in words and words[-1] == "--selfopt-resume"


def test_resume_without_a_journal_says_so(pytester: pytest.Pytester) -> None:
    make_suite(pytester)
    result = pytester.runpytest("benchmarks", "--selfopt", "--selfopt-resume")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert (
        "no journal at .pytest_cache/selfopt/journal.jsonl: nothing to resume"
        in result.stderr.str()
    )


def test_ctrl_c_after_the_cycle_was_written_is_one_line(pytester: pytest.Pytester) -> None:
    """A Ctrl-C during teardown (here: another plugin's sessionfinish, after ours wrote the
    files) ends with exit status 2 and one line, never a traceback."""
    make_suite(pytester)
    pytester.makeconftest(
        """
        import os, signal, pytest

        @pytest.hookimpl(trylast=True)
        def pytest_sessionfinish(session):
            os.kill(os.getpid(), signal.SIGINT)
        """
    )
    result = pytester.runpytest_subprocess("benchmarks", "--selfopt")
    assert result.ret == 2
    err = result.stderr.str()
    assert "interrupted after the cycle was closed; its files are complete" in err
    assert "Traceback" not in err + result.stdout.str()
    assert "KeyboardInterrupt" not in err + result.stdout.str()
    assert (pytester.path / "baselines" / "history.json").exists()
