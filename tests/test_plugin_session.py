"""The plugin's session semantics, on small inline suites run in-process (pytester).

Samples are data, tests keep their meaning: test bugs stop the cycle, unjudged tests are
left out, uneven skips are refused, ordinary tests fail the session, and only ``selfopt.*``
properties reach ``--junitxml``.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

CONFIG = """\
seed: 3
runs: 3
policy: seed
models:
  small: {provider: sim, skill: {facts: 0.5}, latency_s: 0.1}
  big: {provider: sim, skill: {facts: 0.95}, latency_s: 0.2}
fallback_chain: [small, big]
variants:
  plain: "{prompt}"
  short: "Answer briefly.\\n\\n{prompt}"
initial: {model: small, variant: plain, timeout_s: 30, retries: 0, isolation: i0, warmup: false}
search:
  variant: [plain, short]
max_candidates: 2
gates: {min_samples: 3, max_variance: 0.0025, min_restraint: 0.80}
"""

CASES = """\
phase: facts
cases:
  - {id: one, prompt: "Say one.", expect: {equals: one}, sim: {difficulty: 0.2}}
  - {id: two, prompt: "Say two.", expect: {equals: two}, sim: {difficulty: 0.4}}
  - {id: three, prompt: "Say three.", expect: {equals: three}, sim: {difficulty: 0.6}}
"""

GOOD_TEST = """\
import pytest
from pytest_selfopt import load_cases

@pytest.mark.parametrize("case", load_cases("facts.yaml"))
def test_facts(case, llm):
    case.check(llm.ask(case.prompt))
"""


def make_suite(pytester: pytest.Pytester, test_body: str = GOOD_TEST, **files: str) -> Path:
    bench = pytester.path / "benchmarks"
    bench.mkdir()
    (bench / "selfopt.yaml").write_text(CONFIG)
    (bench / "facts.yaml").write_text(CASES)
    (bench / "test_facts.py").write_text(test_body)
    for name, text in files.items():
        (bench / name).write_text(text)
    return bench


def baselines(pytester: pytest.Pytester) -> list[str]:
    folder = pytester.path / "baselines"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


#: Under xdist, two worker processes start: slow.
XDIST = [
    pytest.param([], id="serial"),
    pytest.param(["-n", "2"], id="xdist", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("xdist", XDIST)
def test_samples_are_not_failed_tests_in_closing_line_or_junit(
    pytester: pytest.Pytester, xdist: list[str]
) -> None:
    make_suite(pytester)
    junit = pytester.path / "junit.xml"
    result = pytester.runpytest("benchmarks", "--selfopt", f"--junitxml={junit}", *xdist)
    assert result.ret == 0
    text = result.stdout.str()
    closing = text.strip().splitlines()[-1]
    assert "samples" in closing and "failed" not in closing, closing
    assert "samples failed their checks (data, not errors" in text
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None and suite.get("failures") == "0"
    names = {p.get("name") for p in ET.parse(junit).getroot().iter("property")}
    assert names and all(str(n).startswith("selfopt.") for n in names), names
    assert "selfopt.spec_id" in names and "selfopt.passed" in names
    assert baselines(pytester) == ["baseline.yaml", "decisions.log", "history.json", "routing.yaml"]


@pytest.mark.parametrize("xdist", XDIST)
def test_a_test_bug_stops_the_cycle_and_is_named(
    pytester: pytest.Pytester, xdist: list[str]
) -> None:
    make_suite(
        pytester,
        test_body=GOOD_TEST.replace(
            "    case.check(llm.ask(case.prompt))",
            "    reply = llm.ask(case.prompt)\n    case.check(reply.lowercase())",
        ),
    )
    result = pytester.runpytest("benchmarks", "--selfopt", *xdist)
    assert result.ret == 1
    text = result.stdout.str()
    assert "nothing written" in text
    assert "test bug: benchmarks/test_facts.py::test_facts[" in text
    assert "AttributeError: 'str' object has no attribute 'lowercase'" in text
    assert "test_facts.py:7)" in text  # the line of the bug
    assert baselines(pytester) == []


def test_a_test_that_never_judges_is_left_out_and_named(pytester: pytest.Pytester) -> None:
    make_suite(
        pytester,
        test_body=GOOD_TEST.replace("case.check(llm.ask(case.prompt))", "llm.ask(case.prompt)"),
    )
    result = pytester.runpytest("benchmarks", "--selfopt")
    text = result.stdout.str()
    assert "not judged, left out of the decisions: benchmarks/test_facts.py::test_facts" in text
    assert "no judged sample: nothing decided, nothing written" in text
    assert result.ret == 1
    assert baselines(pytester) == []


def test_a_case_skipped_under_one_spec_only_is_refused(pytester: pytest.Pytester) -> None:
    body = GOOD_TEST.replace(
        "def test_facts(case, llm):\n",
        "def test_facts(case, llm):\n"
        "    if llm.spec.variant == 'short' and case.id == 'three':\n"
        "        pytest.skip('too hard for this one')\n",
    )
    make_suite(pytester, test_body=body)
    result = pytester.runpytest("benchmarks", "--selfopt")
    assert result.ret == 1
    text = result.stdout.str()
    assert "case three was skipped under spec" in text and "incomplete comparison" in text
    assert baselines(pytester) == []


@pytest.mark.parametrize("xdist", XDIST)
def test_an_ordinary_failing_test_keeps_its_meaning(
    pytester: pytest.Pytester, xdist: list[str]
) -> None:
    make_suite(pytester, GOOD_TEST, **{"test_unit.py": "def test_unit():\n    assert 1 == 2\n"})
    result = pytester.runpytest("benchmarks", "--selfopt", *xdist)
    assert result.ret == 1
    text = result.stdout.str()
    assert "FAILED benchmarks/test_unit.py::test_unit" in text
    assert "1 failed" in text.strip().splitlines()[-1]
    # the cycle itself is complete and written: the unit test is not a sample
    assert "baseline.yaml" in baselines(pytester)


def test_policies_come_from_a_hook_that_returns_them(pytester: pytest.Pytester) -> None:
    make_suite(pytester)
    config = pytester.path / "benchmarks" / "selfopt.yaml"
    config.write_text(config.read_text().replace("policy: seed", "policy: never"))
    pytester.makeconftest(
        """
        from dataclasses import replace

        from pytest_selfopt.loop.policies import builtin_policies

        class Never:
            name = "never"

            def __init__(self):
                self.inner = builtin_policies()["seed"]

            def __getattr__(self, attr):
                return getattr(self.inner, attr)

            def decide(self, phase, baseline, candidates, settings, labels):
                return tuple(
                    replace(d, verdict="REJECT")
                    for d in self.inner.decide(phase, baseline, candidates, settings, labels)
                )

        def pytest_selfopt_make_policies(config):
            return {"never": Never()}
        """
    )
    result = pytester.runpytest("benchmarks", "--selfopt")
    assert result.ret == 0, result.stdout.str()
    assert "PROMOTE" not in (pytester.path / "baselines" / "history.json").read_text()


def test_an_unknown_policy_names_the_hook(pytester: pytest.Pytester) -> None:
    make_suite(pytester)
    config = pytester.path / "benchmarks" / "selfopt.yaml"
    config.write_text(config.read_text().replace("policy: seed", "policy: strict"))
    result = pytester.runpytest("benchmarks", "--selfopt")
    assert result.ret == 4
    text = result.stderr.str() + result.stdout.str()
    assert "policy" in text and "strict" in text


@pytest.mark.parametrize("option", ["--selfopt-json", "--selfopt-report"])
def test_a_path_option_with_a_space_says_how_to_write_it(
    pytester: pytest.Pytester, option: str, tmp_path: Path
) -> None:
    make_suite(pytester)
    target = tmp_path / "out.json"
    target.write_text("{}")
    result = pytester.runpytest("benchmarks", "--selfopt", option, str(target))
    assert result.ret == 4
    assert f"write {option}={target}" in result.stderr.str()
    ok = pytester.runpytest("benchmarks", "--selfopt", f"{option}={target}")
    assert ok.ret == 0, ok.stdout.str()
