"""What a person reads: terminal matrix, pull-request Markdown, JSON document, curve."""

from __future__ import annotations

import json
import re
import statistics
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from pytest_selfopt.loop.types import (
    AuditRecord,
    Candidate,
    CasePattern,
    CycleOutcome,
    Decision,
    Diagnosis,
    GateResult,
    PendingCandidate,
    PhaseBaseline,
    PhaseOutcome,
    PhasePlan,
    Recommendation,
    Route,
    Spec,
    SpecStats,
)
from pytest_selfopt.report import (
    curve,
    curve_lines,
    escape_md,
    json_document,
    markdown,
    terminal_lines,
)

GATES = ("samples", "stability", "improvement", "restraint")
BASE = Spec("lfm", "native_api", 60, 1, "i0", False)
HOSTILE = "</details><script>alert(1)</script> @someone | `rm -rf` [x](http://e.vil)"


def _stats(
    phase: str,
    spec: Spec,
    accs: list[float],
    cases: dict[str, str],
    restraint: float | None = 0.95,
    p50: float = 0.41,
) -> SpecStats:
    patterns = tuple(
        CasePattern(
            case,
            tuple(range(1, len(p) + 1)),
            tuple(c == "P" for c in p),
            tuple(None if c == "P" else "wrong_answer" for c in p),
            ("gw0",) * len(p),
        )
        for case, p in sorted(cases.items())
    )
    return SpecStats(
        phase=phase,
        spec_id=spec.id,
        runs=len(accs),
        run_accuracies=tuple(accs),
        median=statistics.median(accs),
        mean=statistics.fmean(accs),
        variance=statistics.pvariance(accs),
        latency_p50_s=p50,
        latency_p95_s=p50 * 3,
        restraint=restraint,
        input_tokens=100,
        output_tokens=50,
        cost=None,
        samples=len(accs) * len(cases),
        errored=0,
        case_ids=tuple(sorted(cases)),
        run_numbers=tuple(range(1, len(accs) + 1)),
        passes=(),
        patterns=patterns,
    )


def _decision(
    phase: str,
    spec: Spec,
    verdict: str,
    failed: tuple[str, ...] = (),
    reason: str = "",
    label: str | None = None,
) -> Decision:
    gates = tuple(GateResult(g, g not in failed, 0.5, 0.4, f"{g} detail") for g in GATES)
    return Decision(
        phase,
        spec.id,
        label or spec.label(BASE),
        verdict,
        reason or f"{verdict}: gates {', '.join(failed) or 'all passed'}",
        gates,
    )


def _diag(
    phase: str, spec: Spec, case: str, kind: str, pattern: str, detail: str = ""
) -> Diagnosis:
    return Diagnosis(phase, spec.id, case, kind, pattern, detail)


def build_outcome(reason: str = "", label: str | None = None, cycle: int = 2) -> CycleOutcome:
    """Two phases: atomic promotes variant=atomic; extended holds and keeps its baseline."""
    atomic_win = BASE.with_knob("variant", "atomic")
    atomic_rej = BASE.with_knob("retries", 2)
    cases = {
        "capital-france": "FFPPPPP",
        "math": "PPPPPPP",
        "colour": "PPPPPPP",
        "river": "PPPPPPP",
        "planet": "PPPPPPP",
        "hard": "FFFFFFF",
    }
    atomic_plan = PhasePlan(
        "atomic",
        BASE,
        (Candidate("atomic", atomic_win, "search"), Candidate("atomic", atomic_rej, "search")),
    )
    atomic_stats = {
        BASE.id: _stats("atomic", BASE, [0.667] * 7, cases),
        atomic_win.id: _stats("atomic", atomic_win, [0.833] * 7, {**cases, "hard": "FFFPPPP"}),
        atomic_rej.id: _stats("atomic", atomic_rej, [0.667] * 7, cases),
    }
    atomic_before = PhaseBaseline("atomic", BASE, atomic_stats[BASE.id].metrics(), 1, "initial")
    atomic_after = PhaseBaseline(
        "atomic",
        atomic_win,
        atomic_stats[atomic_win.id].metrics(),
        cycle,
        "variant=atomic: PROMOTE",
    )
    atomic = PhaseOutcome(
        phase="atomic",
        plan=atomic_plan,
        stats=atomic_stats,
        decisions=(
            _decision(
                "atomic",
                atomic_win,
                "PROMOTE",
                reason=reason or "median 0.833 > 0.667",
                label=label,
            ),
            _decision(
                "atomic",
                atomic_rej,
                "REJECT",
                ("improvement",),
                reason="REJECT: median 0.667 = 0.667 (no improvement)",
            ),
        ),
        diagnoses=(
            _diag(
                "atomic",
                BASE,
                "capital-france",
                "cold_start",
                "[F,F,P,P,P,P,P]",
                "first 2 runs failed",
            ),
            *[
                _diag("atomic", BASE, c, "stable_pass", "[P,P,P,P,P,P,P]")
                for c in ("colour", "math", "planet", "river")
            ],
            _diag("atomic", BASE, "hard", "capability_limit", "[F,F,F,F,F,F,F]"),
            *[
                _diag("atomic", atomic_rej, c, "stable_pass", "[P,P,P,P,P,P,P]")
                for c in ("colour", "math")
            ],
            _diag("atomic", atomic_rej, "hard", "capability_limit", "[F,F,F,F,F,F,F]"),
            _diag("atomic", atomic_win, "hard", "flaky", "[F,F,F,P,P,P,P]", detail=reason),
        ),
        recommendations=(
            Recommendation(
                "atomic",
                "enable_warmup",
                "warmup",
                True,
                BASE.id,
                "cold start in 1 of 6 cases",
                ("capital-france",),
            ),
        ),
        winner=atomic_plan.candidates[0],
        baseline_before=atomic_before,
        baseline_after=atomic_after,
        route_before=Route("atomic", BASE),
        route_after=Route("atomic", atomic_win, ("claude-haiku",)),
        enforced=("baseline: variant native_api -> atomic (verified)",),
    )
    ext_cand = BASE.with_knob("warmup", True)
    ext_plan = PhasePlan("extended", BASE, (Candidate("extended", ext_cand, "pending"),))
    ext_stats = {
        BASE.id: _stats("extended", BASE, [0.5, 0.5, 0.6, 0.5, 0.5, 0.5, 0.5], {"a": "PFPFPPF"}),
        ext_cand.id: _stats(
            "extended",
            ext_cand,
            [0.4, 0.9, 0.5, 0.6, 0.5, 0.7, 0.5],
            {"a": "PPFPFPP"},
            restraint=None,
        ),
    }
    ext_base = PhaseBaseline("extended", BASE, None, 0, "initial spec")
    extended = PhaseOutcome(
        phase="extended",
        plan=ext_plan,
        stats=ext_stats,
        decisions=(
            _decision(
                "extended",
                ext_cand,
                "HOLD",
                ("stability",),
                reason="HOLD: variance 0.0216 > 0.0025",
            ),
        ),
        diagnoses=(
            _diag("extended", BASE, "a", "flaky", "[P,F,P,F,P,P,F]"),
            _diag("extended", ext_cand, "a", "stable_pass", "[P,P,P,P,P,P,P]"),
        ),
        recommendations=(),
        winner=None,
        baseline_before=ext_base,
        baseline_after=ext_base,
        route_before=None,
        route_after=Route("extended", BASE),
    )
    pending = PendingCandidate(
        "atomic", atomic_win.with_knob("warmup", True), atomic.recommendations[0], cycle
    )
    audit = (AuditRecord(cycle, "atomic", "promote", atomic_win.id, "variant=atomic"),)
    return CycleOutcome(cycle, 42, 7, "seed", (atomic, extended), (pending,), audit)


def _history() -> list[dict[str, Any]]:
    def phase(
        before: float | None,
        after: float | None,
        winner: str | None,
        candidates: int = 1,
        measured: float | None = None,
    ) -> dict[str, Any]:
        return {
            "baseline_before": {"spec_id": "b", "spec": {}, "metrics": None},
            "baseline_after": {
                "spec_id": "b" if winner is None else winner,
                "spec": {},
                "metrics": None if after is None else {"median": after},
            },
            "measured_baseline": None if measured is None else {"median": measured},
            "improvement": 0.0,
            "winner": winner,
            "candidates": [{"spec_id": "c"}] * candidates,
            "patterns": {},
        }

    return [
        {
            "cycle": 1,
            "phases": {
                "atomic": phase(None, 0.667, "x"),
                "extended": phase(None, None, None, measured=0.5),
            },
        },
        {
            "cycle": 2,
            "phases": {"atomic": phase(0.667, 0.833, "y"), "extended": phase(None, None, None)},
        },
        {"cycle": 3, "phases": {"atomic": phase(0.833, 0.833, None, candidates=0)}},
    ]


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


# --------------------------------------------------------------------------- Markdown


def test_markdown_has_tables_changes_curve_and_details() -> None:
    md = markdown(build_outcome(), history=_history()[:1], written=["baselines/baseline.yaml"])
    assert md.startswith("## pytest-selfopt cycle 2: 1 promotion(s): atomic\n")
    header = next(x for x in md.splitlines() if x.startswith("| spec | median"))
    for gate in GATES:
        assert f"| {gate} gate |" in header
    assert "| baseline | 0.667 | 0.0000 | 0.95 | 0.41s |  |  |  |  | reference |  |" in md
    promote = "| variant=atomic | 0.833 | 0.0000 | 0.95 | 0.41s | ✓ | ✓ | ✓ | ✓ | **PROMOTE** |"
    assert promote in md
    assert (
        "| retries=2 | 0.667 | 0.0000 | 0.95 | 0.41s | ✓ | ✓ | ✗ | ✓ | REJECT | "
        "median 0.667 = 0.667 (no improvement) |"
    ) in md
    assert "| baseline.yaml | variant | native\\_api | atomic |" in md
    assert "| routing.yaml | fallbacks | none | claude-haiku |" in md
    assert "| routing.yaml | model | — | lfm |" in md  # extended had no route before
    assert "  - capital-france `[F,F,P,P,P,P,P]` cold\\_start" not in md  # kinds are not escaped
    assert "  - capital-france `[F,F,P,P,P,P,P]` cold_start — first 2 runs failed" in md
    assert "- baseline: 4 stable, 1 cold_start, 1 capability_limit" in md
    assert md.count("<details>") == md.count("</details>") == 2
    block = md[md.index("```mermaid") :]
    block = block[: block.index("```", 3) + 3]
    assert block.splitlines()[:5] == [
        "```mermaid",
        "xychart-beta",
        '    title "Committed baseline median per cycle"',
        '    x-axis "cycle" [1, 2]',
        '    y-axis "median run accuracy" 0 --> 1',
    ]
    assert re.findall(r"line \[(.*)\]", block) == ["0.667, 0.833", "0.500, 0.500"]
    assert "line 1: atomic; line 2: extended" in md
    assert md.rstrip().endswith("written: baselines/baseline.yaml")


def test_markdown_does_not_repeat_a_cycle_already_in_history() -> None:
    history = _history()[:1] + [{"cycle": 2, "phases": {}}]
    md = markdown(build_outcome(), history=history)
    assert '    x-axis "cycle" [1, 2]' in md


def _unescaped_pipes(line: str) -> int:
    return len(re.findall(r"(?<!\\)\|", line))


def test_markdown_escapes_hostile_reasons_and_labels() -> None:
    md = markdown(build_outcome(reason=HOSTILE, label="lbl</details>@boss|x`y"), dry_run=True)
    for raw in ("<script>", "</script>", "@someone", "@boss", "`rm -rf`", "[x](http", "|x`"):
        assert raw not in md
    assert md.count("</details>") == md.count("<details>") == 2  # only the ones we opened
    matrix = next(x for x in md.splitlines() if x.startswith("| spec | median"))
    columns = _unescaped_pipes(matrix)
    rows = [x for x in md.splitlines() if x.startswith("| lbl")]
    assert rows and all(_unescaped_pipes(r) == columns for r in rows[:1])
    assert "&lt;/details&gt;&lt;script&gt;" in md and "@\u200bsomeone" in md


def test_escape_md_examples() -> None:
    assert escape_md("a|b") == "a\\|b"
    assert escape_md("<b>&") == "&lt;b&gt;&amp;"
    assert escape_md("@x") == "@\u200bx"
    assert escape_md("`x`") == "\\`x\\`"
    assert escape_md("a\\|b") == "a\\\\\\|b"  # a backslash cannot un-escape the pipe
    assert escape_md("two\nlines") == "two lines"
    assert escape_md("plain-text 0.833") == "plain-text 0.833"


@given(st.text())
def test_escape_md_never_leaves_a_dangerous_character(text: str) -> None:
    out = escape_md(text)
    assert not re.search(r"[<>\n\r]", out)
    assert not re.search(r"@(?!\u200b)", out)
    stripped = out.replace("\\\\", "")  # drop escaped backslashes, then every | ` must be escaped
    assert not re.search(r"(?<!\\)[|`\[\]]", stripped)
    assert not re.search(r"&(?!amp;|lt;|gt;)", out)


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


def test_curve_reads_baseline_after_medians_from_history() -> None:
    assert curve(_history()) == {
        "atomic": [(1, 0.667), (2, 0.833), (3, 0.833)],
        "extended": [(1, 0.5), (2, None)],  # unmeasured initial: the re-measured median, if any
    }
    assert curve([]) == {} and curve([{"cycle": "x"}]) == {}


def test_curve_lines() -> None:
    assert curve_lines(_history()) == [
        "atomic     0.667 → 0.833 → 0.833  (ceiling: no untried candidate)",
        "extended   0.500 → n/a  (plateau: no promotion in the last 2 cycles)",
    ]
