"""Paper cuts a new user hit in the first hour (issue 15), where no other test file pins them.

Points covered elsewhere: 1 test_cli_setup.py, 2 test_plugin_session.py (path options), 3
test_providers_http.py (the URL requested, a 404's hint), 4 test_runner.py (i1 latency), 5
test_simserver.py (streaming refused, the Anthropic SDK's /v1/v1), 6 test_history_compact.py
and test_diff_friendly.py, 7 test_report.py and test_cli_report.py (spec-level diagnosis,
power lines, "x 1 candidate", ceiling, --why). Here: the words of point 7 about ``-x``, and
point 8's docs held to the code (the README's config reference and cases load as written).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from suites import CYCLE, mini_suite, run

from pytest_selfopt import load_cases
from pytest_selfopt.loop.spec import CORE_KNOBS, Spec
from pytest_selfopt.suite.cases import CASE_ID
from pytest_selfopt.suite.config import load_config

FAILING_UNIT_TEST = "\n\ndef test_unit():\n    assert 1 == 2\n"


def test_stop_on_first_failure_says_the_session_stopped_not_that_a_worker_crashed(
    pytester: pytest.Pytester,
) -> None:
    """``-x`` in a serial run said "items did not finish (crashed worker?)": no worker was
    involved, and the user had asked for the stop."""
    bench = mini_suite(pytester)
    test_file = bench / "test_extended.py"
    test_file.write_text(test_file.read_text() + FAILING_UNIT_TEST)
    result = run(pytester, *CYCLE, "-x")
    out = result.stdout.str()
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    assert "incomplete session, nothing written:" in out
    assert "session stopped early: stopping after 1 failures" in out
    summary = out[out.index("incomplete session") :]
    assert "crash" not in summary.lower() and "worker" not in summary


# --------------------------------------------------------------------------- point 8: docs

ROOT = Path(__file__).resolve().parents[1]


def _readme_block(after: str, fence: str = "```yaml") -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    rest = text[text.index(after) :]
    body = rest[rest.index(fence) + len(fence) :]
    return body[: body.index("```")]


def test_the_readme_config_reference_loads_and_marks_every_initial_knob_required(
    tmp_path: Path,
) -> None:
    block = _readme_block("## Config reference")
    (tmp_path / "selfopt.yaml").write_text(block)
    config = load_config(tmp_path / "selfopt.yaml")
    initial = block[block.index("\ninitial:") + 1 :].splitlines()[1:7]
    assert [line.split(":")[0].strip() for line in initial] == list(CORE_KNOBS)
    assert all("# required;" in line for line in initial), initial
    assert config.initial.id == Spec("lfm", "native_api", 60, 1, "i0", False).id


def test_the_readme_cases_load_and_the_case_id_rule_is_the_code_s(tmp_path: Path) -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    example = text[text.index("# benchmarks/atomic.yaml") :]
    (tmp_path / "atomic.yaml").write_text(example[: example.index("```")])
    cases = load_cases(tmp_path / "atomic.yaml")
    regex_case = next(c for c in cases if c.expect.kind == "regex")
    assert (regex_case.answer, regex_case.wrong_answer) == ("2024-03-05", "05/03/2024")
    assert "**Case ids** are lowercase ASCII letters, digits and `.`, `_`, `-`, starting" in text
    for ok in ("capital-france", "q1.2", "prime_after_89"):  # the README's examples
        assert CASE_ID.fullmatch(ok)
    for bad in ("Capital", "-x", "café", "a b", ".x"):
        assert not CASE_ID.fullmatch(bad)
