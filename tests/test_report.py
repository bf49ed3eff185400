"""What a person reads at the terminal, and the JSON document and curve of a cycle."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from typing import Any

from reportdata import BASE, HOSTILE, build_outcome, sample_history

from pytest_selfopt.loop.outcome import CycleOutcome
from pytest_selfopt.loop.regress import RegressionResult
from pytest_selfopt.loop.types import Diagnosis, GateSettings
from pytest_selfopt.report.common import curve
from pytest_selfopt.report.history import NextCycle, curve_lines, next_cycles, plateau_line
from pytest_selfopt.report.jsondoc import json_document
from pytest_selfopt.report.power import power_lines
from pytest_selfopt.report.terminal import check_terminal_lines, terminal_lines

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


def test_terminal_lines_fit_the_width_and_wrap_reasons() -> None:
    outcome = build_outcome(reason="x" * 300 + " tail-marker")
    for width in (80, 100, 140):
        lines = terminal_lines(outcome, written=[], dry_run=True, width=width)
        assert all(len(x) <= width for x in lines), [x for x in lines if len(x) > width]
        assert any("tail-marker" in x for x in lines)  # wrapped, not cut
        assert not any(x.endswith("…") for x in lines)
        assert sum(x.count("x") for x in lines) >= 300
    narrow = terminal_lines(outcome, written=[], dry_run=True, width=60)
    assert "reason" not in narrow[narrow.index("phase atomic") + 1].split()
    assert any(x.startswith("      reason: median 0.667 = 0.667 (no improvement)") for x in narrow)


LONG = (
    "no improvement: the paired test found +0.02 points [-0.04, +0.08] over 20 prompts, "
    "p = 0.41 > 0.05 after Holm over 4 candidates; the minimum effect is one prompt's worth"
)


def _words(lines: list[str]) -> list[str]:
    return " ".join(lines).split()


def test_at_80_columns_reasons_and_diagnoses_wrap_and_are_never_cut() -> None:
    """Issue 10.10: CI logs are 80 columns wide; every word of a reason, a diagnosis, a
    recommendation and an enforced line is still there, on continuation lines."""
    base = build_outcome()
    atomic = base.phases[0]
    detail = "first 2 runs failed (timeout, timeout), then all passed on gw0 and gw1 " * 2
    atomic = replace(
        atomic,
        decisions=(
            replace(atomic.decisions[0], reason=LONG + " END-REASON"),
            *atomic.decisions[1:],
        ),
        diagnoses=(replace(atomic.diagnoses[0], detail=detail + "END-DIAG"), *atomic.diagnoses[1:]),
        recommendations=(replace(atomic.recommendations[0], reason=LONG + " END-REC"),),
        enforced=("routing atomic: " + LONG + " END-ENFORCED",),
    )
    outcome = replace(base, phases=(atomic, base.phases[1]))
    lines = terminal_lines(outcome, written=["baselines/" + "x" * 90 + ".yaml"], dry_run=False,
                           width=80)  # fmt: skip
    assert all(len(x) <= 80 for x in lines), [x for x in lines if len(x) > 80]
    words = _words(lines)
    for marker in ("END-REASON", "END-DIAG", "END-REC", "END-ENFORCED"):
        assert marker in words
    assert not any("…" in x for x in lines)
    # at 80 columns a reason goes under its row and continues indented under "reason:"
    at = next(i for i, x in enumerate(lines) if x.startswith("      reason: no improvement: the"))
    assert lines[at + 1].startswith(" " * 8) and not lines[at + 1].startswith(" " * 9)
    # wide enough for a reason column: the reason continues under itself, in that column
    wide = terminal_lines(outcome, written=[], dry_run=True, width=140)
    first = next(x for x in wide if "no improvement: the paired" in x)
    column = first.index("no improvement")
    following = wide[wide.index(first) + 1]
    assert following[:column].strip() == "" and following[column] != " "
    assert all(len(x) <= 140 for x in wide) and "END-REASON" in _words(wide)
    # a diagnosis continues indented under its case, not at the margin
    diag = next(i for i, x in enumerate(lines) if x.strip().startswith("capital-france"))
    assert lines[diag + 1].startswith(" " * 10) and "END-DIAG" in " ".join(lines[diag : diag + 4])


def test_check_summary_wraps_at_80_columns() -> None:
    results = [
        RegressionResult(
            phase="atomic", regressed=True, reason="REGRESSED: " + LONG + " END-CHECK",
            committed_spec_id="a", measured_spec_id="a", committed_median=0.9,
            measured_median=0.5, tolerance=0.0, new_cases=tuple(f"case-{i}" for i in range(30)),
        )
    ]  # fmt: skip
    lines = check_terminal_lines(results, notes=[LONG + " END-NOTE"], width=80)
    assert all(len(x) <= 80 for x in lines)
    words = _words(lines)
    assert {"END-CHECK", "END-NOTE", "case-29"} <= set(words)


def test_a_long_label_is_shown_in_full_above_its_row() -> None:
    label = "model=claude-haiku,warmup=true,timeout_s=120"
    lines = terminal_lines(build_outcome(label=label), written=[], dry_run=True, width=80)
    assert f"  {label}" in lines
    assert lines[lines.index(f"  {label}") + 1].strip().startswith(label[:20])


# --------------------------------------------------------------------------- words (15.7)


def test_a_spec_level_diagnosis_is_not_counted_as_a_case() -> None:
    """A 6-case phase read "2 stable, 5 cold_start": the per-worker line counted as a case."""
    base = build_outcome()
    atomic = base.phases[0]
    spec_id = atomic.plan.baseline.id
    cases = [
        Diagnosis("atomic", spec_id, f"c{i}", kind, "[F,P,P,P,P,P,P]" if kind != "stable_pass"
                  else "[P,P,P,P,P,P,P]", "")
        for i, kind in enumerate(["stable_pass"] * 2 + ["cold_start"] * 4)
    ]  # fmt: skip
    spec_level = Diagnosis("atomic", spec_id, None, "cold_start", "", "cold start: gw0 first 4")
    atomic = replace(atomic, diagnoses=(*cases, spec_level))
    lines = terminal_lines(replace(base, phases=(atomic,)), written=[], dry_run=True)
    assert "    baseline: 2 stable, 4 cold_start; spec-level: cold_start" in lines
    assert any(x.strip().startswith("(spec)") and "cold start: gw0" in x for x in lines)


def _gates() -> GateSettings:
    return GateSettings()


def test_power_lines_only_under_paired_and_only_with_candidates() -> None:
    base = build_outcome()
    assert power_lines(replace(base, policy="seed"), _gates()) == []  # not seed's notion
    paired = replace(base, policy="paired")
    lines = power_lines(paired, _gates())
    assert [x.split(":")[0] for x in lines] == ["power atomic", "power extended"]
    assert "6 prompts x 7 runs x 2 candidates" in lines[0]
    assert "1 prompts x 7 runs x 1 candidate)" in lines[1]
    none = replace(base.phases[1], plan=replace(base.phases[1].plan, candidates=()))
    lines = power_lines(replace(paired, phases=(base.phases[0], none)), _gates())
    assert len(lines) == 1 and "extended" not in lines[0]  # no "x 1 candidate" for none


def _perfect_history() -> list[dict[str, Any]]:
    rec = {
        "measured_baseline": {"median": 1.0},
        "baseline_after": {"spec_id": "b", "spec": {}, "metrics": {"median": 1.0}},
        "winner": None,
        "candidates": [],
    }
    return [{"cycle": c, "phases": {"extended": rec}, "pending": []} for c in (1, 2)]


def test_report_never_says_ceiling_and_not_at_the_ceiling_together() -> None:
    history = _perfect_history()
    left = {"extended": NextCycle(untried=("retries=2",), again=("timeout_s=120",))}
    text = "\n".join([*curve_lines(history), plateau_line(history, left)])
    assert "(ceiling: perfect score since the start)" in text  # the phase's score
    assert "not at the ceiling" not in text
    assert plateau_line(history, left) == (
        "not at a plateau yet: the next cycle tries extended: retries=2, "
        "timeout_s=120 (again after its cool-down)"
    )


def test_plateau_line_names_what_is_cooling_down() -> None:
    history = _perfect_history()
    left = {"extended": NextCycle(cooling=(("retries=2", 5),))}
    assert plateau_line(history, left) == (
        "plateau reached: cycle 2 promoted nothing, no untried candidate and no pending "
        "recommendation left; cooling down: extended retries=2 (may run again in cycle 5)"
    )
    assert plateau_line(history, None).startswith("plateau unless a candidate is left")


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


def test_the_next_cycle_as_the_loop_recorded_it() -> None:
    """History's ``phases.*.next`` (written by the loop): planned/waiting/cooling/retired."""
    nxt = {
        "planned": [{"spec_id": "1", "label": "retries=2", "origin": "search", "status": "untried"},
                    {"spec_id": "2", "label": "timeout_s=120", "origin": "search",
                     "status": "retry"}],
        "waiting": [{"spec_id": "3", "label": "isolation=i1", "origin": "search",
                     "status": "untried", "free_in_cycle": None, "since_cycle": None}],
        "cooling_down": [{"spec_id": "4", "label": "variant=atomic", "origin": "search",
                          "status": "cooling_down", "free_in_cycle": 6, "since_cycle": 2}],
        "retired": [{"spec_id": "5", "label": "warmup=true", "origin": "pending",
                     "status": "retired", "free_in_cycle": None, "since_cycle": 3}],
    }  # fmt: skip
    history = _perfect_history()
    history[-1]["phases"]["extended"] = {**history[-1]["phases"]["extended"], "next": nxt}
    left = next_cycles(history[-1])
    assert left == {
        "extended": NextCycle(
            untried=("retries=2", "isolation=i1"),
            again=("timeout_s=120",),
            cooling=(("variant=atomic", 6),),
            retired=("warmup=true",),
        )
    }
    assert plateau_line(history, left) == (
        "not at a plateau yet: the next cycle tries extended: retries=2, isolation=i1, "
        "timeout_s=120 (again after its cool-down)"
    )
    held = {"extended": NextCycle(cooling=(("variant=atomic", 6),), retired=("warmup=true",))}
    assert plateau_line(history, held).endswith(
        "; cooling down: extended variant=atomic (may run again in cycle 6); retired (rejected "
        "twice against this baseline): extended warmup=true"
    )
    assert next_cycles(_perfect_history()[-1]) is None  # an older history: not recorded
