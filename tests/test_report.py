"""What a person reads at the terminal, and the JSON document and curve of a cycle."""

from __future__ import annotations

import json
import re

from reportdata import BASE, HOSTILE, build_outcome, sample_history

from pytest_selfopt.loop.outcome import CycleOutcome
from pytest_selfopt.report.common import curve
from pytest_selfopt.report.jsondoc import json_document
from pytest_selfopt.report.terminal import terminal_lines

# --------------------------------------------------------------------------- terminal


def _row(lines: list[str], label: str) -> list[str]:
    (line,) = [x for x in lines if x.strip().startswith(label + " ")]
    return line.split()


def test_matrix_has_every_gate_column_and_the_right_marks() -> None:
    lines = terminal_lines(build_outcome(), written=[], dry_run=True)
    header = next(x.split() for x in lines if x.strip().startswith("spec "))
    assert header == [
        "spec",
        "median",
        "var",
        "restr",
        "p50",
        "g1",
        "g2",
        "g3",
        "g4",
        "decision",
        "reason",
    ]
    legend = next(x for x in lines if x.strip().startswith("gates:"))
    assert "g1 samples  g2 stability  g3 improvement  g4 restraint" in legend
    gate_cols = slice(5, 9)
    assert _row(lines, "variant=atomic")[gate_cols] == ["✓", "✓", "✓", "✓"]
    assert _row(lines, "variant=atomic")[9] == "PROMOTE"
    assert _row(lines, "retries=2")[gate_cols] == ["✓", "✓", "✗", "✓"]
    assert _row(lines, "retries=2")[9] == "REJECT"
    assert _row(lines, "warmup=true")[gate_cols] == ["✓", "✗", "✓", "✓"]
    base_rows = [x for x in lines if x.strip().startswith("baseline ")]
    assert [r.split()[1:] for r in base_rows] == [
        ["0.667", "0.0000", "0.95", "0.41s", "-", "-", "-", "-", "reference"],
        ["0.500", "0.0012", "0.95", "0.41s", "-", "-", "-", "-", "reference"],
    ]
    for phase in ("atomic", "extended"):  # the baseline row comes first in each phase
        start = lines.index(f"phase {phase}")
        assert lines[start + 2].strip().startswith("baseline ")


def test_terminal_diagnoses_group_compactly_and_skip_stable_lines() -> None:
    lines = terminal_lines(build_outcome(), written=[], dry_run=True)
    assert "    baseline: 4 stable, 1 cold_start, 1 capability_limit" in lines
    assert any(
        re.fullmatch(r" +capital-france +\[F,F,P,P,P,P,P\] +cold_start +first 2 runs failed", x)
        for x in lines
    )
    assert any(re.fullmatch(r" +hard +\[F,F,F,F,F,F,F\] +capability_limit", x) for x in lines)
    assert not any("[P,P,P,P,P,P,P]" in x for x in lines)
    # a candidate's diagnoses that repeat the baseline's are counted, not listed again
    at = lines.index("    retries=2: 2 stable, 1 capability_limit (1 as baseline)")
    assert lines[at + 1] == "  recommendations"
    assert "    variant=atomic: 1 flaky" in lines
    assert not any(x.strip().startswith("warmup=true:") for x in lines)  # only stable: skipped
    assert "    variant=atomic: 1 flaky" in lines
    assert any("enable_warmup: warmup=true" in x for x in lines)
    assert "    baseline: variant native_api -> atomic (verified)" in lines


def test_terminal_end_line_says_what_was_written() -> None:
    outcome = build_outcome()
    assert terminal_lines(outcome, written=[], dry_run=True)[-1] == "dry run: nothing written"
    written = ["baselines/baseline.yaml", "baselines/history.json"]
    assert terminal_lines(outcome, written=written, dry_run=False)[-1] == (
        "written: baselines/baseline.yaml, baselines/history.json"
    )
    quiet = CycleOutcome(1, 1, 7, "seed", (outcome.phases[1],), (), ())
    tail = terminal_lines(quiet, written=["baselines/history.json"], dry_run=False)[-2:]
    assert tail == [
        "nothing promoted: baseline.yaml and routing.yaml unchanged",
        "written: baselines/history.json",
    ]


def test_terminal_lines_fit_the_width_and_truncate_reasons() -> None:
    outcome = build_outcome(reason="x" * 300 + " tail-marker")
    for width in (80, 100, 140):
        lines = terminal_lines(outcome, written=[], dry_run=True, width=width)
        assert all(len(x) <= width for x in lines), [x for x in lines if len(x) > width]
        assert not any("tail-marker" in x for x in lines)
        assert any(x.endswith("…") and "xxxx" in x for x in lines)
    narrow = terminal_lines(outcome, written=[], dry_run=True, width=60)
    assert "reason" not in narrow[narrow.index("phase atomic") + 1].split()
    assert any(x.startswith("      reason: median 0.667 = 0.667 (no improvement)") for x in narrow)


def test_terminal_strips_control_sequences() -> None:
    lines = terminal_lines(build_outcome(reason="ok\x1b[2Jcleared\nnext"), written=[], dry_run=True)
    assert not any("\x1b" in x or "\n" in x for x in lines)
    assert any("ok\\x1b[2Jcleared next" in x for x in lines)


# --------------------------------------------------------------------------- JSON and curve


def test_json_document_is_plain_and_complete() -> None:
    outcome = build_outcome(reason=HOSTILE)
    doc = json_document(outcome, [{"spec_id": "x", "passed": True}])
    assert json.loads(json.dumps(doc)) == doc
    assert [p["phase"] for p in doc["phases"]] == ["atomic", "extended"]
    atomic = doc["phases"][0]
    assert [d["verdict"] for d in atomic["decisions"]] == ["PROMOTE", "REJECT"]
    assert atomic["decisions"][0]["reason"] == HOSTILE  # JSON keeps the raw text
    assert atomic["winner"] == BASE.with_knob("variant", "atomic").id
    assert atomic["stats"][BASE.id]["median"] == 0.667
    assert atomic["stats"][BASE.id]["patterns"][0]["pattern"] == "[F,F,P,P,P,P,P]"
    assert len(atomic["diagnoses"]) == 10 and atomic["recommendations"][0]["knob"] == "warmup"
    assert doc["phases"][1]["route_before"] is None
    assert doc["pending"][0]["recommendation"]["action"] == "enable_warmup"
    assert doc["samples"] == [{"spec_id": "x", "passed": True}]
    assert doc["promoted"] is True


def test_curve_reads_baseline_after_medians_fromsample_history() -> None:
    assert curve(sample_history()) == {
        "atomic": [(1, 0.667), (2, 0.833), (3, 0.833)],
        "extended": [(1, 0.5), (2, None)],  # unmeasured initial: the re-measured median, if any
    }
    assert curve([]) == {} and curve([{"cycle": "x"}]) == {}
