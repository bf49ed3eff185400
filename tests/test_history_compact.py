"""history.json in its compact layout (issue 15.6): a cycle is a few dozen reviewable lines,
it reads back exactly, and the older indented files still read the same for every reader:
``selfopt report``, ``--why``, the loop's inputs and the check's patterns."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reportdata import build_outcome

from pytest_selfopt.cli import main as cli
from pytest_selfopt.loop.learn import history_entry, pending_from_history, tried_from_history
from pytest_selfopt.loop.types import PhaseBaseline, Route
from pytest_selfopt.store.formats import (
    FORMAT_VERSION,
    FilesError,
    dump_baseline,
    dump_history,
    dump_routing,
    plain_json,
)
from pytest_selfopt.store.historyform import AS_RECORDED, HISTORY_VERSION
from pytest_selfopt.store.parse import parse_history


def old_layout(entries: list[dict[str, Any]]) -> str:
    """history.json exactly as committed before the compact layout (version 1, indent 2)."""
    doc = {"version": FORMAT_VERSION, "cycles": [plain_json(e) for e in entries]}
    return json.dumps(doc, indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def same(a: Any, b: Any) -> bool:
    """Equal as data (dict key order aside), the way every reader sees it."""
    return bool(json.loads(json.dumps(a)) == json.loads(json.dumps(b)))


def entries_of(cycles: int = 3) -> list[dict[str, Any]]:
    """Full in-memory records (candidates, gates, patterns, diagnoses, pending, next)."""
    return [history_entry(build_outcome(cycle=c)) for c in range(1, cycles + 1)]


def test_a_cycle_is_a_few_dozen_lines_that_read_back_exactly() -> None:
    entries = entries_of()
    text = dump_history(entries)
    lines = text.splitlines()
    assert lines[0] == f'{{"version": {HISTORY_VERSION}, "cycles": [' and lines[-1] == "]}"
    starts = [i for i, line in enumerate(lines) if line.startswith('{"cycle": ')]
    assert len(starts) == 3 and all(b - a <= 50 for a, b in zip(starts, starts[1:]))
    assert len(lines) <= 3 * 50, len(lines)  # the indented layout: 900+ lines for these
    assert len(old_layout(entries).splitlines()) > 6 * len(lines)
    assert same(parse_history(text, "history.json"), plain_json(entries))
    assert dump_history(parse_history(text, "history.json")) == text  # byte-identical again
    assert dump_history(entries) == text
    assert AS_RECORDED not in text
    # what a reviewer reads: one line per candidate, its label and verdict first
    assert any(re.match(r' +\{"label": "variant=atomic", "decision": \{"verdict": "PROMOTE"', x)
               for x in lines)  # fmt: skip
    # patterns as P/F letters, one line per spec
    tables = [x for i, x in enumerate(lines) if i and lines[i - 1].endswith('"patterns": {')]
    assert tables and all("[" not in x for x in tables)
    assert text.count("[P,") < old_layout(entries).count("[P,") / 5  # diagnoses: from the table
    pattern_lines = [x for x in lines if re.fullmatch(r' +"[0-9a-f]{10}": \{"[^"]+": "[PF]+".*', x)]
    assert pattern_lines


def test_the_old_indented_history_reads_the_same() -> None:
    entries = entries_of()
    old = parse_history(old_layout(entries), "history.json")
    new = parse_history(dump_history(entries), "history.json")
    assert same(old, new) and same(new, plain_json(entries))
    assert tried_from_history(old) == tried_from_history(new) != ()
    assert pending_from_history(old) == pending_from_history(new) != ()
    # the check's recorded patterns are the in-memory "[F,P,...]" form either way
    spec_id = entries[-1]["phases"]["atomic"]["baseline_after"]["spec_id"]
    patterns = new[-1]["phases"]["atomic"]["patterns"][spec_id]
    assert patterns == old[-1]["phases"]["atomic"]["patterns"][spec_id]
    assert all(re.fullmatch(r"\[[FP](,[FP])*\]", p) for p in patterns.values())
    # the first write after an upgrade rewrites the old file in the new layout, once
    assert dump_history(old) == dump_history(entries)


def _committed(folder: Path, history: str) -> None:
    outcome = build_outcome(cycle=3)
    folder.mkdir(parents=True, exist_ok=True)
    after = {p.phase: p.baseline_after for p in outcome.phases}
    (folder / "baseline.yaml").write_text(dump_baseline(after))
    routes = {p: Route(p, b.spec) for p, b in after.items()}
    (folder / "routing.yaml").write_text(dump_routing(routes))
    (folder / "history.json").write_text(history)
    log = [{"cycle": 3, "phase": "atomic", "event": "decision", "spec_id": "x", "label": "l",
            "detail": {"verdict": "REJECT", "reason": "no improvement"}}]  # fmt: skip
    (folder / "decisions.log").write_text("".join(json.dumps(r) + "\n" for r in log))


@pytest.mark.parametrize("args", [[], ["--why"], ["--why", "atomic"]])
def test_selfopt_report_is_the_same_on_old_and_new_history(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
) -> None:
    monkeypatch.delenv("PYTEST_ADDOPTS", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    entries = entries_of()
    shown = []
    for name, text in (("old", old_layout(entries)), ("new", dump_history(entries))):
        _committed(tmp_path / name, text)
        code = cli.main(["report", "--baselines", name, *args])
        out, err = capsys.readouterr()
        assert (code, err) == (0, ""), out + err
        shown.append(out.replace(str(tmp_path / name), "DIR").replace(f"{name}/", "DIR/"))
    assert shown[0] == shown[1]
    assert shown[0].strip()


def test_a_record_of_another_shape_is_kept_as_recorded() -> None:
    """Hand-made or older records (no decision, a pattern that is not P/F) read back exactly."""
    odd = {
        "cycle": 1,
        "phases": {
            "atomic": {"candidates": [{"spec_id": "c"}], "patterns": {"s": {"k": "[F,E]"}}},
            "extended": {"candidates": [{"spec_id": "c", "decision": {"verdict": "HOLD"}}]},
            "short": {"patterns": {"s": {"k": "PF"}}},  # not the bracketed form: kept as is
            "fine": {"patterns": {"s": {"k": "[P,F]"}}, "diagnoses": []},
        },
    }
    text = dump_history([odd])
    assert text.count(AS_RECORDED) == 3  # "fine" is compact
    assert '"k": "PF"}}, "diagnoses": []' not in text and '"fine": {' in text
    assert same(parse_history(text, "h"), [odd])
    assert dump_history(parse_history(text, "h")) == text


json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 5),
    st.floats(-2, 2),
    st.sampled_from(["", "x", "s", "a\u2028b", "\x85", "l\nm", 'q"\\']),
)
json_value = st.recursive(
    json_leaf,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.sampled_from(["a", "b", "x"]), inner, max_size=3),
    ),
    max_leaves=8,
)
pattern = st.lists(st.booleans(), max_size=4).map(
    lambda xs: "[" + ",".join("P" if x else "F" for x in xs) + "]"
)
spec_ids = st.sampled_from(["s1", "s2"])
case_ids = st.sampled_from(["c1", "c2", None])
patterns = st.dictionaries(
    spec_ids,
    st.dictionaries(st.sampled_from(["c1", "c2"]), pattern | st.sampled_from(["PF", "[E]", ""])),
    max_size=2,
)
diagnosis = st.fixed_dictionaries(
    {"phase": st.sampled_from(["p", "p", "q"]), "spec_id": spec_ids, "case_id": case_ids},
    optional={"kind": st.just("flaky"), "pattern": pattern | st.just(""), "detail": st.just("d"),
              "failures": st.integers(0, 2), "transport_failures": st.integers(0, 2),
              "extra": json_value},
)  # fmt: skip
decision = st.fixed_dictionaries(
    {"verdict": st.sampled_from(["HOLD", "REJECT"])},
    optional={"phase": st.sampled_from(["p", "p", "q"]), "spec_id": spec_ids,
              "label": st.sampled_from(["l", "m"]), "gates": json_value, "cause": json_value},
)  # fmt: skip
candidate = st.fixed_dictionaries(
    {"spec_id": spec_ids},
    optional={"label": st.sampled_from(["l", "m"]), "origin": st.just("search"),
              "decision": decision | st.none(), "extra": json_value},
)  # fmt: skip
phase_record = st.fixed_dictionaries(
    {},
    optional={"patterns": patterns, "diagnoses": st.lists(diagnosis, max_size=4),
              "candidates": st.lists(candidate, max_size=3), "winner": st.none() | spec_ids,
              AS_RECORDED: json_value, "enforced": st.lists(st.text(max_size=5), max_size=2),
              "next": json_value},
)  # fmt: skip


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(["p", "q"]), phase_record, max_size=2),
       st.sampled_from([[], plain_json(entries_of(1)[0]["pending"])]))  # fmt: skip
def test_any_entry_reads_back_exactly_and_writes_the_same_bytes(
    phases: dict[str, Any], pending: list[Any]
) -> None:
    """Whatever the record holds (compactable, or not: kept as recorded), the file reads
    back as that record and writes back as the same bytes."""
    entries = [{"cycle": 1, "phases": phases, "pending": pending}]
    text = dump_history(entries)
    assert len(text.splitlines()) == text.count("\n")  # no other line break, even in a string
    back = parse_history(text, "h")
    assert same(back, plain_json(entries))
    assert dump_history(back) == text


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"patterns": {"s": {"c": "[P,F]"}}}, r"patterns\.s\.c: expected a run pattern of P and F"),
        ({"patterns": ["PF"]}, r"patterns: expected a mapping of spec id to its case patterns"),
        ({"diagnoses": [{"case_id": "c"}]}, r"diagnoses: expected a mapping of spec id"),
        ({"diagnoses": {"s": {"case_id": "c"}}}, r"diagnoses\.s: expected a list of diagnoses"),
        ({"diagnoses": {"s": [7]}}, r"diagnoses\.s\[0\]: expected a diagnosis object, got 7"),
        ({"diagnoses": {"s": [{"case_id": "c"}]}}, r"diagnoses\.s\[0\]\.pattern: missing"),
    ],
)
def test_a_malformed_compact_part_names_file_and_key(record: dict[str, Any], message: str) -> None:
    doc = {"version": HISTORY_VERSION, "cycles": [{"cycle": 1, "phases": {"atomic": record}}]}
    with pytest.raises(FilesError, match=r"^baselines/history\.json: cycles\[0\]\.phases\.atomic\."
                       + message):  # fmt: skip
        parse_history(json.dumps(doc), "baselines/history.json")


def test_an_unknown_version_names_both_known_ones() -> None:
    with pytest.raises(
        FilesError, match=r"version: expected 2 \(or 1, the older indented layout\)"
    ):
        parse_history('{"version": 3, "cycles": []}', "h")


# --------------------------------------------------------------------------- baseline.yaml


def test_baseline_reference_round_trips_sorted_and_is_omitted_when_empty() -> None:
    outcome = build_outcome()
    base = outcome.phases[0].baseline_after
    with_ref = PhaseBaseline(base.phase, base.spec, base.metrics, 2, "r",
                             {"z-last": (3, 7), "capital-france": (7, 7), "a.b_c-1": (0, 1)})  # fmt: skip
    text = dump_baseline({"atomic": with_ref, "extended": PhaseBaseline(
        "extended", base.spec, None, 0, "initial")})  # fmt: skip
    lines = text.splitlines()
    at = lines.index(
        "    reference:   # per case: passed/runs of the champion's measurement "
        "(--selfopt-check compares with it)"
    )
    assert lines[at + 1 : at + 4] == [
        "      a.b_c-1: 0/1",
        "      capital-france: 7/7",
        "      z-last: 3/7",
    ]
    assert lines[at - 1].startswith("      ") and lines[at + 4] == "  extended:"
    assert text.count("reference:") == 1  # none for the phase without one
    from pytest_selfopt.store.parse import parse_baseline

    back = parse_baseline(text, "baselines/baseline.yaml")
    assert back["atomic"] == with_ref and back["extended"].reference == {}
    assert dump_baseline(back) == text


@pytest.mark.parametrize(
    ("value", "got"),
    [("7", "7"), ("8/7", "8/7"), ("0/0", "0/0"), ("x/7", "'x/7'"), ("[1, 7]", "a list"),
     ("7/7/7", "'7/7/7'"), ("-1/7", "'-1/7'")],
)  # fmt: skip
def test_a_bad_reference_names_file_key_and_the_expected_form(value: str, got: str) -> None:
    from pytest_selfopt.store.parse import parse_baseline

    text = dump_baseline({"atomic": PhaseBaseline("atomic", build_outcome().phases[0].baseline_after.spec,
                                                  None, 0, "r", {"capital-france": (7, 7)})})  # fmt: skip
    bad = text.replace("capital-france: 7/7", f"capital-france: {value}")
    with pytest.raises(FilesError) as exc:
        parse_baseline(bad, "baselines/baseline.yaml")
    message = str(exc.value)
    assert message.startswith(
        "baselines/baseline.yaml: phases.atomic.reference.capital-france: expected 'passed/runs'"
    )
    assert message.endswith(f"got {got}")


def test_an_old_baseline_without_reference_still_parses() -> None:
    from pytest_selfopt.store.parse import parse_baseline

    text = dump_baseline({"atomic": PhaseBaseline("atomic", build_outcome().phases[0].baseline_after.spec,
                                                  None, 0, "r")})  # fmt: skip
    assert "reference" not in text
    assert parse_baseline(text, "b")["atomic"].reference == {}


def test_a_reference_key_with_nothing_under_it_is_a_cut_file_not_an_empty_reference() -> None:
    from pytest_selfopt.store.parse import parse_baseline

    spec = build_outcome().phases[0].baseline_after.spec
    text = dump_baseline({"atomic": PhaseBaseline("atomic", spec, None, 0, "r", {"c": (7, 7)})})
    cut = text[: text.index("      c: 7/7")]  # ends with the `reference:` line and its comment
    with pytest.raises(FilesError, match=r"^b\.yaml: phases\.atomic\.reference: expected "
                       r"'case_id: passed/runs' lines, got nothing \(the file may have been cut"):  # fmt: skip
        parse_baseline(cut, "b.yaml")
