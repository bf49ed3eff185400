"""``selfopt report [--why [PHASE]]`` on good, bad and hostile files (issues 12.4 and 15.7).

Every bad history.json or decisions.log is one line naming the file on stderr and exit 4,
never a traceback; a closed output pipe ends quietly (exit 141); bare ``--why`` explains every
phase, and a PROMOTE verdict that did not win is told.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_selfopt.cli import main as cli
from pytest_selfopt.loop.spec import Spec
from pytest_selfopt.loop.types import PhaseBaseline, Route
from pytest_selfopt.report.history import NextCycle, curve_lines, cycle_line, plateau_line
from pytest_selfopt.report.why import explain_phase, phases_in, why_lines
from pytest_selfopt.store.formats import FORMAT_VERSION, dump_baseline, dump_history, dump_routing


@pytest.fixture(autouse=True)
def _here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PYTEST_ADDOPTS", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")  # an ini file: no warning about it


def _entry(cycle: int, median: float, winner: str | None = None) -> dict[str, Any]:
    return {
        "cycle": cycle,
        "phases": {
            "atomic": {
                "measured_baseline": {"median": median},
                "baseline_after": {"spec_id": "b", "spec": {}, "metrics": {"median": median}},
                "winner": winner,
                "candidates": [],
            }
        },
        "pending": [],
    }


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = cli.main(["report", "--baselines", "baselines", *args])
    out, err = capsys.readouterr()
    return code, out, err


def _bad_file(code: int, out: str, err: str, name: str) -> None:
    """The contract for a bad file: exit 4, one line on stderr naming it, nothing else."""
    assert code == 4, (out, err)
    assert out == ""
    (line,) = err.splitlines()
    assert name in line and "Traceback" not in line


# --------------------------------------------------------------------------- history.json

DEEP = "[" * 5000 + "]" * 5000
GOOD = dump_history([_entry(1, 0.5), _entry(2, 0.75, winner="w")])

BAD_HISTORY: dict[str, bytes] = {
    "null": b"null",
    "number": b"42",
    "string": b'"history"',
    "list": b"[]",
    "empty": b"",
    "utf16": GOOD.encode("utf-16"),
    "latin1": '{"version": 1, "cycles": [], "x": "\xe9"}'.encode("latin-1"),
    "binary": bytes(range(256)),
    "truncated": GOOD[: len(GOOD) // 2].encode(),
    "deep": DEEP.encode(),
    "deep-inside": ('{"version": 1, "cycles": ' + DEEP + "}").encode(),
    "no-version": b'{"cycles": []}',
    "cycles-object": json.dumps({"version": FORMAT_VERSION, "cycles": {}}).encode(),
    "cycle-number": json.dumps({"version": FORMAT_VERSION, "cycles": [1]}).encode(),
    "bom": b"\xef\xbb\xbf" + GOOD.encode(),
}


@pytest.mark.parametrize("name", sorted(BAD_HISTORY))
def test_a_bad_history_is_one_line_naming_the_file(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "baselines").mkdir()
    (tmp_path / "baselines" / "history.json").write_bytes(BAD_HISTORY[name])
    _bad_file(*_run(capsys), "history.json")


def test_a_folder_named_history_json_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "baselines" / "history.json").mkdir(parents=True)
    _bad_file(*_run(capsys), "history.json")


WRONG_SHAPES: list[Any] = [
    {"cycle": "x", "phases": [1, 2], "pending": 3},
    {"cycle": 1, "phases": {"a": 1, "b": None, "c": "text"}},
    {"cycle": 1, "phases": {"a": {"candidates": "zz", "winner": 5, "baseline_after": []}}},
    {
        "cycle": 2,
        "phases": {"a": {"measured_baseline": {"median": "high"}, "candidates": [1, None, {}]}},
        "pending": [1, {"phase": ["x"], "spec": 3, "recommendation": "r"}],
    },
    {"phases": {"a": {"winner": "w", "candidates": [{"spec_id": "w", "decision": 7}]}}},
    {"cycle": 3, "phases": {"a": {"baseline_after": {"metrics": {"median": True}}}}},
]


@pytest.mark.parametrize("entry", WRONG_SHAPES)
def test_wrong_shapes_inside_an_entry_are_refused_or_rendered(
    entry: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "baselines"
    folder.mkdir()
    (folder / "history.json").write_text(dump_history([_entry(1, 0.5), entry]))
    code, out, err = _run(capsys)
    if code == 4:  # the store's validation refused the entry: one line naming the file
        _bad_file(code, out, err, "history.json")
        return
    assert code == 0, err
    assert out.splitlines()[0].startswith("baseline accuracy") and "last cycle" in out


def test_no_history_yet_is_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys)
    assert code == 1 and "no cycle recorded yet" in out


# --------------------------------------------------------------------------- decisions.log


def _rec(cycle: int, event: str, label: str, **detail: Any) -> dict[str, Any]:
    return {"cycle": cycle, "phase": "atomic", "event": event, "spec_id": label,
            "label": label, "detail": detail}  # fmt: skip


def _log(tmp_path: Path, lines: list[str] | bytes) -> None:
    folder = tmp_path / "baselines"
    folder.mkdir(exist_ok=True)
    data = lines if isinstance(lines, bytes) else ("\n".join(lines) + "\n").encode()
    (folder / "decisions.log").write_bytes(data)


ROUTE = {"spec_id": "s1", "spec": {"model": "lfm"}, "fallbacks": []}
LOG = [
    _rec(1, "decision", "retries=2", verdict="REJECT", reason="REJECT: no improvement: x",
         origin="search"),
    _rec(1, "decision", "variant=atomic", verdict="PROMOTE", reason="PROMOTE: +0.20 points",
         origin="search"),
    _rec(1, "decision", "timeout_s=120", verdict="PROMOTE", reason="PROMOTE: +0.16 points",
         origin="search"),
    _rec(1, "promote", "variant=atomic", reason="variant=atomic: PROMOTE: +0.20 points"),
    _rec(1, "enforce", "variant=atomic", before=None, after=ROUTE),
    {**_rec(1, "enforce", "x", before=None, after=ROUTE), "phase": "extended"},
]  # fmt: skip


def test_why_tells_a_promote_verdict_that_did_not_win(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _log(tmp_path, [json.dumps(r) for r in LOG])
    code, out, err = _run(capsys, "--why", "atomic")
    assert code == 0 and err == ""
    steps = [line.strip() for line in out.splitlines()]
    assert "cycle 1: PROMOTE variant=atomic: +0.20 points -> new baseline" in steps
    assert (
        "cycle 1: PROMOTE timeout_s=120 passed the gates but was not chosen "
        "(variant=atomic gained more): +0.16 points"
    ) in steps
    assert "cycle 1: REJECT 1 searched candidate(s) (retries=2): no improvement" in steps


def test_bare_why_explains_every_phase(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _log(tmp_path, [json.dumps(r) for r in LOG])
    code, out, _ = _run(capsys, "--why")
    assert code == 0
    heads = [line for line in out.splitlines() if line.startswith("why ")]
    assert [h.split()[1] for h in heads] == ["atomic", "extended"]


def test_why_unknown_phase_is_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _log(tmp_path, [json.dumps(r) for r in LOG])
    code, out, _ = _run(capsys, "--why", "nope")
    assert code == 1 and "no record for phase 'nope'; phases: atomic, extended" in out


BAD_LOG: dict[str, bytes] = {
    "null": b"null\n",
    "number": b"42\n",
    "utf16": ("\n".join(json.dumps(r) for r in LOG) + "\n").encode("utf-16"),
    "binary": bytes(range(256)),
    "deep": (DEEP + "\n").encode(),
    "not-records": b'{"a": 1}\n[1, 2]\n',
    "truncated-only": json.dumps(LOG[0])[:40].encode(),
}


@pytest.mark.parametrize("name", sorted(BAD_LOG))
@pytest.mark.parametrize("phase", [["atomic"], []])
def test_a_bad_decisions_log_is_one_line_naming_the_file(
    name: str, phase: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _log(tmp_path, BAD_LOG[name])
    _bad_file(*_run(capsys, "--why", *phase), "decisions.log")


def test_a_truncated_last_line_is_skipped_with_one_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = [json.dumps(r) for r in LOG]
    _log(tmp_path, [*lines, lines[0][:30], "[" * 3000])
    code, out, err = _run(capsys, "--why", "atomic")
    assert code == 0 and "PROMOTE variant=atomic" in out
    (warning,) = err.splitlines()
    assert "decisions.log: skipped 2 line(s) that are not records: 7 (not JSON), 8" in warning


WRONG_RECORDS: list[Any] = [
    {"phase": "atomic", "event": "enforce", "detail": [1]},
    {"phase": "atomic", "event": "enforce", "cycle": [1], "detail": {"after": 3, "before": 4}},
    {"phase": "atomic", "event": "enforce", "detail": {"after": {"spec": [1], "fallbacks": 5}}},
    {"phase": "atomic", "event": "promote", "detail": "x", "label": None},
    {"phase": "atomic", "event": "decision", "detail": {"verdict": "PROMOTE", "reason": 5}},
    {"phase": "atomic", "event": "verify_failed"},
    {"phase": "atomic", "event": 42, "git_commit": 12345678901234},
]


@pytest.mark.parametrize("record", WRONG_RECORDS)
def test_wrong_record_shapes_never_crash_why(
    record: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _log(tmp_path, [json.dumps(LOG[0]), json.dumps(record)])
    code, out, err = _run(capsys, "--why")
    assert code == 0, err
    assert out.startswith("why atomic is routed as it is")


# --------------------------------------------------------------------------- closed pipe


@pytest.mark.parametrize("args", [[], ["--why"]])
def test_a_closed_pipe_ends_quietly(tmp_path: Path, args: list[str]) -> None:
    folder = tmp_path / "baselines"
    folder.mkdir()
    (folder / "history.json").write_text(dump_history([_entry(c, 0.5) for c in range(1, 30)]))
    (folder / "decisions.log").write_text("".join(json.dumps(r) + "\n" for r in LOG * 20))
    command = [
        sys.executable,
        "-m",
        "pytest_selfopt.cli.main",
        "report",
        "--baselines",
        "baselines",
    ]
    proc = subprocess.Popen(
        [*command, *args], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader went away before a line was written (`| head -0`)
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141
    assert err == ""


# --------------------------------------------------------------------------- any shape at all

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                  max_size=3),
    max_leaves=12,
)  # fmt: skip
KEYS = st.sampled_from(
    ["cycle", "phases", "pending", "winner", "candidates", "measured_baseline", "baseline_after",
     "metrics", "median", "spec", "phase", "event", "detail", "label", "spec_id", "verdict",
     "reason", "origin", "before", "after", "fallbacks", "git_commit", "recommendation"]
)  # fmt: skip
# values under the keys the readers look at, nested a few levels: the shapes that matter
SHAPED = st.recursive(JSON, lambda inner: st.dictionaries(KEYS, inner, max_size=5), max_leaves=20)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.dictionaries(KEYS, SHAPED, max_size=5), min_size=1, max_size=3))
def test_the_readers_never_raise_on_any_shape(entries: list[dict[str, Any]]) -> None:
    """What the store's top-level check lets through (a list of objects) is rendered."""
    curve_lines(entries)
    cycle_line(entries[-1])
    plateau_line(entries, None)
    plateau_line(entries, {"p": NextCycle(("a",), ("b",), (("c", 3),))})
    for phase in phases_in(entries) or ["p"]:
        explain_phase(entries, phase, "decisions.log")


# --------------------------------------------------------------------------- untried / cooling

EXAMPLE_CONFIG = Path(__file__).resolve().parents[1] / "benchmarks" / "selfopt.yaml"


def _decided(spec: Spec, verdict: str) -> dict[str, Any]:
    return {"spec_id": spec.id, "label": spec.label(INITIAL), "origin": "search",
            "spec": spec.to_dict(), "decision": {"verdict": verdict}}  # fmt: skip


def _phase(candidates: list[dict[str, Any]]) -> dict[str, Any]:
    record = {"spec_id": INITIAL.id, "spec": INITIAL.to_dict(), "metrics": None}
    return {"baseline_before": record, "baseline_after": record,
            "measured_baseline": {"median": 0.5}, "winner": None, "candidates": candidates}  # fmt: skip


def _suite(tmp_path: Path, entries: list[dict[str, Any]]) -> None:
    """The example's config and committed files of an older history (no ``next`` records):
    the report plans the next cycle from the config."""
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks" / "selfopt.yaml").write_text(EXAMPLE_CONFIG.read_text())
    folder = tmp_path / "baselines"
    folder.mkdir()
    base = PhaseBaseline("atomic", INITIAL, None, 0, "initial spec from selfopt.yaml")
    (folder / "baseline.yaml").write_text(dump_baseline({"atomic": base}))
    route = Route("atomic", INITIAL, ("claude-haiku",))
    (folder / "routing.yaml").write_text(dump_routing({"atomic": route}))
    (folder / "history.json").write_text(dump_history(entries))


INITIAL = Spec("lfm", "native_api", 60, 1, "i0", False)


def test_report_tells_untried_from_cooling_down(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rejected = [_decided(INITIAL.with_knob("variant", "atomic"), "REJECT"),
                _decided(INITIAL.with_knob("timeout_s", 120), "HOLD")]  # fmt: skip
    _suite(tmp_path, [{"cycle": 1, "phases": {"atomic": _phase(rejected)}, "pending": []}])
    code, out, _ = _run(capsys)
    assert code == 0
    assert "not at a plateau yet: the next cycle tries atomic: retries=2, isolation=i1" in out
    assert "untried" not in out.replace("no untried", "")


def test_report_says_again_after_the_cool_down_and_what_cools_down(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    all_four = [_decided(INITIAL.with_knob(k, v), "REJECT")
                for k, v in (("variant", "atomic"), ("timeout_s", 120), ("retries", 2),
                             ("isolation", "i1"))]  # fmt: skip
    quiet = {"atomic": _phase([])}
    entries = [{"cycle": 1, "phases": {"atomic": _phase(all_four)}, "pending": []}]
    _suite(tmp_path, entries + [{"cycle": 2, "phases": quiet, "pending": []}])
    code, out, _ = _run(capsys)
    assert code == 0
    assert (
        "plateau reached: cycle 2 promoted nothing, no untried candidate and no pending "
        "recommendation left; cooling down: atomic variant=atomic (may run again in cycle 5), "
    ) in out
    entries += [{"cycle": c, "phases": quiet, "pending": []} for c in (2, 3, 4)]
    (tmp_path / "baselines" / "history.json").write_text(dump_history(entries))
    code, out, _ = _run(capsys)
    assert "the next cycle tries atomic: variant=atomic (again after its cool-down)" in out


def test_why_says_retired_or_cooling_down_as_the_log_records_it() -> None:
    detail = {"verdict": "REJECT", "reason": "REJECT: no improvement", "action": "raise_retries"}
    retired = _rec(4, "verify_failed", "retries=2", **detail,
                   after_failure="retired: rejected twice against this baseline")  # fmt: skip
    older = _rec(2, "verify_failed", "retries=2", **detail)  # a log written before the field
    assert why_lines([older, retired]) == [
        "cycle 2: not verified: retries=2 (raise_retries) REJECT: no improvement; not enforced, "
        "not re-proposed while cooling down",
        "cycle 4: not verified: retries=2 (raise_retries) REJECT: no improvement; not enforced, "
        "retired: rejected twice against this baseline",
    ]
