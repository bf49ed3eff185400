"""The pull-request Markdown of a cycle and of a check run: structure and escaping."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st
from reportdata import GATES, HOSTILE, build_outcome, sample_history
from suites import copy_example
from suites import run as run_session  # in-process, simulated cold starts reset

from pytest_selfopt.loop.regress import CaseChange, RegressionResult
from pytest_selfopt.loop.spec import Spec
from pytest_selfopt.report.markdown import check_markdown, escape_html, escape_md, markdown
from pytest_selfopt.report.terminal import check_terminal_lines

# --------------------------------------------------------------------------- Markdown


def test_markdown_has_tables_changes_curve_and_details() -> None:
    md = markdown(
        build_outcome(), history=sample_history()[:1], written=["baselines/baseline.yaml"]
    )
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


def test_markdown_does_not_repeat_a_cycle_already_insample_history() -> None:
    history = sample_history()[:1] + [{"cycle": 2, "phases": {}}]
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


# --------------------------------------------------------------------------- structure


def md_tables(md: str) -> list[list[str]]:
    """Every Markdown table: runs of lines starting with ``|``."""
    tables: list[list[str]] = []
    current: list[str] = []
    for line in md.splitlines() + [""]:
        if line.startswith("|"):
            current.append(line)
        elif current:
            tables.append(current)
            current = []
    return tables


def assert_well_formed(md: str) -> None:
    """Tables keep their column count, HTML blocks balance, code fences close, no raw HTML."""
    for table in md_tables(md):
        columns = _unescaped_pipes(table[0])
        assert re.fullmatch(r"\|( :?-+:? \|)+", table[1]), table[1]
        assert all(_unescaped_pipes(row) == columns for row in table), table
    assert md.count("<details>") == md.count("</details>")
    assert md.count("<summary>") == md.count("</summary>") == md.count("<details>")
    assert md.count("```") % 2 == 0
    tags = set(re.findall(r"</?([a-zA-Z]+)", md))
    assert tags <= {"details", "summary"}, tags
    assert not re.search(r"@(?!\u200b)", md)


REPLY = "Paris</details>\n<script>alert('x')</script> cc @someone | ok"


def test_a_hostile_model_reply_cannot_break_the_report() -> None:
    outcome = build_outcome(reason=REPLY, label=f"variant={REPLY}")
    atomic = replace(outcome.phases[0], phase=f"atomic{REPLY}")
    md = markdown(replace(outcome, phases=(atomic, *outcome.phases[1:])), history=sample_history())
    assert_well_formed(md)
    assert "&lt;/details&gt;" in md and "&lt;script&gt;" in md and "@\u200bsomeone" in md
    assert "\\| ok" in md  # the pipe is escaped, in tables and in lists
    summary = next(
        x for x in md.splitlines() if x.startswith("<details><summary>Full metrics: atomic")
    )
    assert "&#124;" in summary and "\\" not in summary  # entities inside HTML, not backslashes
    assert md.count("```mermaid") == 1


def test_escape_html_examples() -> None:
    assert escape_html("a</summary>|@b") == "a&lt;/summary&gt;&#124;@\u200bb"
    assert escape_html("x\ny") == "x y"


# --------------------------------------------------------------------------- check mode

SPEC = Spec("lfm", "atomic", 60, 1, "i0", False)


def _result(
    phase: str, regressed: bool, *changes: CaseChange, new: tuple[str, ...] = ()
) -> RegressionResult:
    reason = "REGRESSED: median 0.667 vs committed 0.833 (below)" if regressed else "ok: held"
    return RegressionResult(
        phase,
        regressed,
        reason,
        committed_spec_id=SPEC.id,
        measured_spec_id=SPEC.id,
        committed_median=0.8333,
        measured_median=0.667 if regressed else 0.833,
        tolerance=0.0,
        worse_cases=changes,
        new_cases=new,
        samples=42,
        compared=6,
        effect=-0.166 if regressed else 0.0,
        interval=(-0.3, -0.05) if regressed else (-0.1, 0.1),
        p_value=0.01 if regressed else 0.5,
    )


DROP = CaseChange("capital-france", (7, 7), (0, 7), "[F,F,F,F,F,F,F]")


def test_check_terminal_names_phases_and_cases_that_got_worse() -> None:
    lines = check_terminal_lines(
        [_result("atomic", True, DROP), _result("extended", False)],
        notes=["notes: no measured baseline"],
    )
    assert lines[0] == "selfopt check: 1 of 2 phase(s) regressed: atomic"
    assert lines[1].split()[:2] == ["atomic", "REGRESSED"]
    assert "capital-france  7/7 -> [F,F,F,F,F,F,F]  (pass rate 1.00 → 0.00)" in lines[2]
    assert lines[3].split()[:3] == ["extended", "ok", "held"]
    assert lines[-2:] == ["  notes: no measured baseline", "check mode: nothing written"]
    ok = check_terminal_lines([_result("atomic", False)])
    assert ok[0] == "selfopt check: no regression in 1 phase(s)"


def test_check_markdown_tables_and_escaping() -> None:
    hostile = CaseChange(REPLY, (2, 2), (0, 2), REPLY)
    md = check_markdown(
        [
            _result("atomic", True, DROP, hostile, new=("new-case",)),
            _result("extended", False),
        ],
        notes=["extended: nothing to compare"],
    )
    assert_well_formed(md)
    assert md.startswith("## pytest-selfopt check: 1 of 2 phase(s) regressed: atomic\n")
    tables = md_tables(md)
    assert tables[0][0] == (
        "| phase | verdict | effect [90 % interval] | p | minimum drop | samples (errored) | reason |"
    )
    assert tables[0][2].startswith(
        "| atomic | **REGRESSED** | -0.166 [-0.300, -0.050] | 0.010 | 0.000 | 42 (0) |"
    )
    assert tables[0][3].startswith("| extended | ok | +0.000 [-0.100, +0.100] | 0.500 |")
    not_compared = check_markdown([replace(_result("new", False), effect=None, p_value=None)])
    assert "| new | not compared | – | – | 0.000 | 42 (0) |" in not_compared
    assert tables[1][0] == "| case | committed (passed/runs) | now (runs in order) | pass rate |"
    assert tables[1][2] == "| capital-france | 7/7 | 0/7 `[F,F,F,F,F,F,F]` | 1.00 → 0.00 |"
    assert "### Cases of atomic that pass less often" in md
    assert "- extended: nothing to compare" in md
    assert "- atomic: new-case" in md


# --------------------------------------------------------------------------- a real cycle


def test_the_report_of_an_example_cycle_renders(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy_example(pytester)
    summary = pytester.path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    run = ("--selfopt", "-p", "no:cacheprovider", "benchmarks", "--selfopt-report=r.md")
    result = run_session(pytester, *run)
    assert result.ret == 0, result.stdout.str()
    md = (pytester.path / "r.md").read_text(encoding="utf-8")
    assert summary.read_text(encoding="utf-8") == md + "\n"
    assert_well_formed(md)
    assert md.startswith("## pytest-selfopt cycle 1: 1 promotion(s): atomic\n")
    assert "### Phase atomic" in md and "### Phase extended" in md
    tables = md_tables(md)
    matrices = [t for t in tables if t[0].startswith("| spec | median | variance |")]
    assert len(matrices) == 2
    assert any(
        row.startswith("| variant=atomic | 0.833 |") and "**PROMOTE**" in row for row in matrices[0]
    )
    assert "| baseline.yaml | variant | native\\_api | atomic |" in md
    assert re.search(r"  - iso-date `\[F,F,F,F,F,F,F\]` capability_limit", md)
    assert md.count("<details><summary>Full metrics:") == 2
    mermaid = md.split("```mermaid\n", 1)[1].split("```", 1)[0].splitlines()
    assert mermaid[:4] == [
        "xychart-beta",
        '    title "Committed baseline median per cycle"',
        '    x-axis "cycle" [1]',
        '    y-axis "median run accuracy" 0 --> 1',
    ]
    assert mermaid[4:] == ["    line [0.833]", "    line [0.000]"]
