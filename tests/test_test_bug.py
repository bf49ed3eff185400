"""A test bug stops the cycle as ``-x`` would (issue 10.2): samples nobody can use must not
cost more model calls, and the output must not bury the one line that names the bug."""

from __future__ import annotations

import pytest
from suites import CYCLE, XDIST, mini_suite, run

BUGGY = """\
import pytest

from pytest_selfopt import load_cases


@pytest.mark.parametrize("case", load_cases("atomic.yaml"))
def test_atomic(case, llm):
    reply = llm.ask(case.prompt)
    case.check(reply.lowercase())
"""
ITEMS = 54  # the mini suite under --selfopt: 2 phases x 3 cases x 3 specs x 3 runs


@pytest.mark.parametrize("workers", [(), XDIST], ids=["serial", "xdist"])
def test_the_first_test_bug_stops_the_session(
    pytester: pytest.Pytester, workers: tuple[str, ...]
) -> None:
    bench = mini_suite(pytester)
    (bench / "test_atomic.py").write_text(BUGGY)
    result = run(pytester, *CYCLE, *workers)
    text = result.stdout.str()
    assert result.ret == 1, text
    assert "a test bug in benchmarks/test_atomic.py::test_atomic[" in text
    assert "AttributeError: 'str' object has no attribute 'lowercase'" in text
    outcomes = result.parseoutcomes()
    ran = outcomes.get("failed", 0) + outcomes.get("samples", 0) + outcomes.get("passed", 0)
    assert 0 < ran < ITEMS, outcomes
    assert not (pytester.path / "baselines" / "baseline.yaml").exists()
