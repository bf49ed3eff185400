"""``pytest --selfopt-check`` through in-process sessions on the mini suite (tests/suites.py).

The contract (issue 5): measure the routed spec of every phase, compare with the committed
baseline through the regression gate, write nothing, exit 1 on a regression naming the phases
and cases that got worse.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from suites import CHECK, CYCLE, XDIST, mini_suite, run


def tree(root: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``root`` (bytecode caches aside) with its bytes and mtime."""
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            out[str(path.relative_to(root))] = (path.read_bytes(), path.stat().st_mtime_ns)
    return out


@pytest.fixture
def committed(pytester: pytest.Pytester) -> pytest.Pytester:
    """The mini suite after one promoting cycle: atomic's baseline is variant=atomic."""
    mini_suite(pytester)
    result = run(pytester, *CYCLE)
    assert result.ret == 0, result.stdout.str()
    assert (pytester.path / "baselines" / "baseline.yaml").exists()
    return pytester


def make_harder(pytester: pytest.Pytester, case: str = "capital-france") -> None:
    """The simulated model now fails ``case``, which the routed spec passed in every run."""
    path = pytester.path / "benchmarks" / "atomic.yaml"
    text = path.read_text()
    start = text.index(f"- id: {case}")
    end = text.index("sim: {difficulty:", start)
    stop = text.index("}", end)
    path.write_text(text[:end] + "sim: {difficulty: 0.99" + text[stop:])


def test_unchanged_suite_passes_and_writes_nothing(committed: pytest.Pytester) -> None:
    before = tree(committed.path)
    result = run(committed, *CHECK)
    out = result.stdout.str()
    assert result.ret == 0, out
    assert "selfopt check: no regression" in out
    result.stdout.re_match_lines([r"\s+atomic\s+ok\s+pass rate [+-]0\.\d{3} \[.*\] over 3 case"])
    assert "check mode: nothing written" in out
    assert tree(committed.path) == before


@pytest.mark.parametrize("workers", [(), XDIST], ids=["serial", "xdist"])
def test_a_case_made_harder_fails_naming_phase_and_case(
    committed: pytest.Pytester, workers: tuple[str, ...]
) -> None:
    make_harder(committed)
    before = tree(committed.path)
    result = run(committed, *CHECK, *workers)
    out = result.stdout.str()
    assert result.ret == 1, out
    result.stdout.re_match_lines(
        [
            r"selfopt check: 1 of \d phase\(s\) regressed: atomic",
            r"\s+atomic\s+REGRESSED\s+pass rate -0\.333 \[-0\.\d+, -0\.\d+\] over 3 case",
            r"\s+capital-france\s+3/3 -> \[F,F,F\]",
        ]
    )
    assert tree(committed.path) == before


def test_check_report_goes_to_the_file_and_the_step_summary(
    committed: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_harder(committed)
    summary = committed.path / "step-summary.md"
    summary.write_text("earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    baselines = tree(committed.path / "baselines")
    result = run(committed, *CHECK, "--selfopt-report", "check.md")
    assert result.ret == 1, result.stdout.str()
    report = (committed.path / "check.md").read_text()
    assert report.startswith("## pytest-selfopt check: 1 of")
    assert "| atomic | **REGRESSED** | -0.333 [-" in report
    assert "| capital-france | 3/3 | 0/3 `[F,F,F]` | 1.00 → 0.00 |" in report
    assert summary.read_text() == "earlier step\n" + report + "\n"
    assert tree(committed.path / "baselines") == baselines


def test_a_never_beaten_initial_spec_is_guarded(pytester: pytest.Pytester) -> None:
    """Nothing beats ``initial`` (no candidate changes anything that matters), yet its first
    measurement is committed, so breaking its model makes the check fail (issue 11.1)."""
    mini_suite(pytester, search={"timeout_s": [60, 120]}, fallback_chain=["lfm"])
    assert run(pytester, *CYCLE).ret == 0
    baseline = (pytester.path / "baselines" / "baseline.yaml").read_text()
    assert "promoted_in_cycle: 0" in baseline and "metrics: null" not in baseline
    assert "capital-france: 3/3" in baseline
    again = run(pytester, *CYCLE)  # nothing promoted: baseline.yaml is not touched again
    assert again.ret == 0
    assert (pytester.path / "baselines" / "baseline.yaml").read_text() == baseline
    make_harder(pytester)
    result = run(pytester, *CHECK)
    assert result.ret == 1, result.stdout.str()
    result.stdout.re_match_lines(
        [r"\s+atomic\s+REGRESSED\s+pass rate -0\.333", r"\s+capital-france\s+3/3 -> \[F,F,F\]"]
    )


def test_check_without_committed_baseline_compares_nothing_and_passes(
    pytester: pytest.Pytester,
) -> None:
    mini_suite(pytester)
    result = run(pytester, *CHECK)
    assert result.ret == 0, result.stdout.str()
    assert not (pytester.path / "baselines").exists()
    assert not [p for p in os.listdir(pytester.path) if p.endswith((".md", ".json"))]


def test_check_and_selfopt_exclude_each_other(pytester: pytest.Pytester) -> None:
    mini_suite(pytester)
    result = run(pytester, *CHECK, "--selfopt")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "exclude each other" in result.stderr.str()
