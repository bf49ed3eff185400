"""Each sample's metrics reach ``--junitxml`` as flat, readable properties of its test case
(in-process sessions on the mini suite, tests/suites.py)."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
from suites import CYCLE, PLAIN, XDIST, mini_suite, run, snapshot

#: ``selfopt.<field>`` properties every sampled test case carries (Sample fields).
FIELDS = (
    "phase",
    "spec_id",
    "case_id",
    "run",
    "passed",
    "error_kind",
    "latency_s",
    "attempts",
    "restraint",
    "input_tokens",
    "output_tokens",
    "model",
)


def junit_cases(path: str) -> dict[str, tuple[dict[str, str], bool]]:
    """testcase name -> (selfopt.* properties, failed?)."""
    out = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        props = {
            p.get("name", "").removeprefix("selfopt."): p.get("value", "")
            for p in case.iter("property")
            if p.get("name", "").startswith("selfopt.")
        }
        out[case.get("name", "")] = (props, case.find("failure") is not None)
    return out


@pytest.fixture
def example(pytester: pytest.Pytester) -> pytest.Pytester:
    mini_suite(pytester)
    return pytester


def test_plain_run_puts_the_sample_on_its_testcase(example: pytest.Pytester) -> None:
    result = run(example, *PLAIN, "-k", "capital-france", "--junitxml=out.xml")
    assert result.ret == 0, result.stdout.str()
    cases = junit_cases(str(example.path / "out.xml"))
    props, failed = cases["test_atomic[capital-france]"]
    assert set(FIELDS) <= set(props), sorted(props)
    assert (props["phase"], props["case_id"], props["run"]) == ("atomic", "capital-france", "1")
    assert (props["passed"], props["error_kind"], failed) == ("True", "None", False)
    assert props["model"] == "lfm" and float(props["latency_s"]) > 0
    assert int(props["attempts"]) == 1 and float(props["restraint"]) == 1.0


@pytest.mark.parametrize(
    "workers",
    [pytest.param((), id="serial"), pytest.param(XDIST, id="xdist", marks=pytest.mark.slow)],
)
def test_every_selfopt_sample_reaches_junit(
    example: pytest.Pytester, workers: tuple[str, ...]
) -> None:
    result = run(example, *CYCLE, "--selfopt-dry-run", "--junitxml=out.xml", *workers)
    assert result.ret == 0, result.stdout.str()
    assert snapshot(example) == {}
    cases = junit_cases(str(example.path / "out.xml"))
    sampled = {name: v for name, v in cases.items() if v[0]}
    assert len(sampled) == len(cases) == 54
    for name, (props, failed) in sampled.items():
        assert set(FIELDS) <= set(props), (name, sorted(props))
        assert not failed, name  # a failed reply check is data, not a failed test
        assert name.endswith(f"-r{props['run']}]")
        assert props["case_id"] in name
    # the property carries the sample's verdict: as many False as the summary counts
    wrong = sum(props["passed"] == "False" for props, _ in sampled.values())
    assert 0 < wrong < len(sampled)
    assert f"{wrong} of {len(sampled)} samples failed their checks" in result.stdout.str()
