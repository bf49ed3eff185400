"""Cases: loading (with errors naming file and key), checking replies against every expect kind
and restraint constraint, and the reference answers simulators rely on."""

from __future__ import annotations

import importlib.util
import math
import textwrap
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_selfopt.models.base import Reference
from pytest_selfopt.suite import cases as cases_mod
from pytest_selfopt.suite.cases import (
    CHECK_RECORDER,
    Case,
    CaseError,
    CheckResult,
    find_case,
    load_cases,
    parse_case,
)
from pytest_selfopt.suite.checks import Expect, abstains, first_number
from pytest_selfopt.suite.yamlread import ConfigError

ATOMIC = """\
phase: atomic
cases:
  - id: capital-france
    prompt: What is the capital of France?
    expect: {equals: Paris}
    restraint: {max_words: 5, must_not_contain: [Lyon]}
    sim: {difficulty: 0.3}
  - id: sum-small
    prompt: What is 17 + 25?
    expect: {number: 42, tolerance: 0.5}
  - id: planet-red
    prompt: Which planet is called the red planet?
    expect: {contains: mars}
    answer: It is Mars.
  - id: iso-date
    prompt: Write the date of the moon landing as YYYY-MM-DD.
    expect: {regex: "1969-07-2[01]"}
    answer: 1969-07-20
  - id: yes-no
    prompt: Is water wet? Answer yes or no.
    expect: {one_of: [yes, "yes, it is"]}
  - id: unknowable
    prompt: What did I have for breakfast?
    restraint: {abstain: true}
  - id: short-answer
    prompt: Name a primary colour.
    expect: red
"""


def write(folder: Path, text: str, name: str = "atomic.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def case(**raw: Any) -> Case:
    raw.setdefault("id", "c")
    raw.setdefault("prompt", "p")
    return parse_case(raw, phase="atomic")


# --- loading ------------------------------------------------------------------------------


def test_realistic_file_loads_with_derived_answers(tmp_path: Path) -> None:
    loaded = load_cases(write(tmp_path, ATOMIC))
    assert [c.id for c in loaded] == [
        "capital-france", "sum-small", "planet-red", "iso-date", "yes-no", "unknowable", "short-answer",
    ]  # fmt: skip
    by_id = {c.id: c for c in loaded}
    france = by_id["capital-france"]
    assert france.phase == "atomic" and france.prompt == "What is the capital of France?"
    assert france.expect == Expect("equals", "Paris")
    assert (france.max_words, france.must_not_contain, france.difficulty) == (5, ("Lyon",), 0.3)
    assert france.source == "atomic.yaml:3"
    assert (france.answer, france.wrong_answer) == ("Paris", "I am not sure.")
    assert (by_id["sum-small"].answer, by_id["sum-small"].wrong_answer) == ("42", "43.5")
    assert by_id["sum-small"].expect == Expect("number", 42.0, 0.5)
    assert by_id["planet-red"].answer == "It is Mars."
    assert by_id["iso-date"].answer == "1969-07-20"  # a string, not a YAML date
    assert by_id["yes-no"].expect.value == ("yes", "yes, it is") and by_id["yes-no"].answer == "yes"
    unknowable = by_id["unknowable"]
    assert unknowable.abstain and unknowable.expect.kind == "abstain"
    assert unknowable.answer == "I don't know." and not abstains(unknowable.wrong_answer)
    assert by_id["short-answer"].expect == Expect("equals", "red")
    assert by_id["sum-small"].difficulty == 0.5  # default
    for c in loaded:  # the contract simulators rely on
        assert c.evaluate(c.answer).passed and c.evaluate(c.answer).restraint in (None, 1.0)
        assert not c.evaluate(c.wrong_answer).passed


def test_phase_defaults_to_stem_and_argument_overrides(tmp_path: Path) -> None:
    listed = write(tmp_path, "- {id: a, prompt: p, expect: x}\n", name="extended.yaml")
    assert load_cases(listed)[0].phase == "extended"
    assert load_cases(write(tmp_path, ATOMIC), phase="other")[0].phase == "other"


def test_relative_path_resolves_next_to_the_calling_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bench = tmp_path / "benchmarks"
    write(bench, ATOMIC)
    (bench / "test_atomic.py").write_text(
        "from pytest_selfopt.suite.cases import load_cases\nCASES = load_cases('atomic.yaml')\n"
    )
    elsewhere = tmp_path / "somewhere" / "else"
    write(elsewhere, "- {id: decoy, prompt: p, expect: x}\n")  # same name in the cwd: not used
    monkeypatch.chdir(elsewhere)
    spec = importlib.util.spec_from_file_location("bench_test_atomic", bench / "test_atomic.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert [c.id for c in module.CASES][:2] == ["capital-france", "sum-small"]


def test_relative_path_falls_back_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path / "data", ATOMIC)
    monkeypatch.chdir(tmp_path)
    assert not (Path(__file__).parent / "data" / "atomic.yaml").exists()
    assert load_cases("data/atomic.yaml")[0].id == "capital-france"


def test_missing_relative_file_is_a_case_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(
        CaseError, match=r"tests/nope\.yaml: file not found \(looked next to test_cases\.py and in "
    ):
        load_cases("nope.yaml")
    with pytest.raises(CaseError) as info:
        load_cases(tmp_path / "gone.yaml")
    assert str(info.value) == "gone.yaml: file not found"


ENTRY = {"id": "c", "prompt": "p", "expect": {"equals": "Paris"}}
BAD: list[tuple[Any, str, str]] = [
    # (cases list or whole document, key, substring of the message after the key)
    (
        [{**ENTRY, "expect": {}}],
        "cases[0].expect",
        "expected exactly one of equals, contains, regex, one_of, number, abstain, got {}",
    ),
    (
        [ENTRY, {**ENTRY, "id": "d", "expect": {"equals": "a", "contains": "b"}}],
        "cases[1].expect",
        "exactly one of",
    ),
    ([{"prompt": "p", "expect": "x"}], "cases[0].id", "missing; expected a case id"),
    ([{**ENTRY, "id": "Capital France"}], "cases[0].id", "expected an id of lowercase letters"),
    ([ENTRY, {**ENTRY, "id": "d"}, ENTRY], "cases[2].id", "got 'c', which cases[0] already uses"),
    ([{**ENTRY, "promt": "x"}], "cases[0].promt", "unknown key; expected one of: id, prompt"),
    ([{"id": "c", "expect": "x"}], "cases[0].prompt", "missing; expected the prompt text"),
    (
        [{**ENTRY, "expect": {"regex": "19[0-9]{2}"}}],
        "cases[0].answer",
        "missing; expected a reply that matches",
    ),
    (
        [{**ENTRY, "expect": {"regex": "(unclosed"}, "answer": "x"}],
        "cases[0].expect.regex",
        "expected a valid regular expression, got '(unclosed'",
    ),
    (
        [{**ENTRY, "answer": "Lyon"}],
        "cases[0].answer",
        "expected a reply that passes the check (equals 'Paris'), got 'Lyon'",
    ),
    (
        [{**ENTRY, "wrong_answer": "paris."}],
        "cases[0].wrong_answer",
        "expected a reply that fails the check",
    ),
    (
        [{**ENTRY, "restraint": {"max_words": 0}}],
        "cases[0].restraint.max_words",
        "expected a whole number >= 1, got 0",
    ),
    (
        [{**ENTRY, "restraint": {"must_not_contain": ["paris"]}}],
        "cases[0].restraint",
        "the answer 'Paris' can keep; it breaks must_not_contain:paris",
    ),
    (
        [{**ENTRY, "restraint": {"abstain": True}}],
        "cases[0].restraint.abstain",
        "but expect wants equals 'Paris'",
    ),
    (
        [{**ENTRY, "expect": {"equals": "x", "tolerance": 1}}],
        "cases[0].expect.tolerance",
        "number: only",
    ),
    (
        [{**ENTRY, "expect": {"number": "forty"}}],
        "cases[0].expect.number",
        "expected a number, got 'forty'",
    ),
    (
        [{**ENTRY, "expect": {"number": 4, "tolerance": -1}}],
        "cases[0].expect.tolerance",
        "expected a number >= 0",
    ),
    ([{**ENTRY, "expect": {"one_of": []}}], "cases[0].expect.one_of", "expected a non-empty list"),
    ([{**ENTRY, "expect": {"abstain": False}}], "cases[0].expect.abstain", "expected true"),
    (
        [{**ENTRY, "sim": {"difficulty": 2}}],
        "cases[0].sim.difficulty",
        "expected a number from 0 to 1, got 2",
    ),
    (
        [{**ENTRY, "expect": {"equals": "  "}}],
        "cases[0].expect.equals",
        "expected a non-empty expected answer",
    ),
    ([], "cases", "expected at least one case, got []"),
    ({"phase": "atomic"}, "cases", "missing; expected a list of cases"),
    ({"phase": "bad phase", "cases": [ENTRY]}, "phase", "expected a phase name"),
    ({"cases": [ENTRY], "extra": 1}, "extra", "unknown key; expected one of: phase, cases"),
    (["just a string"], "cases[0]", "expected a mapping"),
]


@pytest.mark.parametrize(
    ("doc", "key", "message"), BAD, ids=[f"{i}-{b[1]}" for i, b in enumerate(BAD)]
)
def test_bad_cases_name_file_key_and_expectation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 doc: Any, key: str, message: str) -> None:  # fmt: skip
    import yaml

    monkeypatch.chdir(tmp_path)
    write(tmp_path / "benchmarks", yaml.safe_dump({"cases": doc} if isinstance(doc, list) else doc))
    with pytest.raises(CaseError) as info:
        load_cases(tmp_path / "benchmarks" / "atomic.yaml")
    err = info.value
    assert isinstance(err, ConfigError)  # the plugin catches one type for both files
    assert (err.path, err.key) == ("benchmarks/atomic.yaml", key)
    assert str(err).startswith(f"benchmarks/atomic.yaml: {key}: "), str(err)
    assert message in str(err), str(err)


def test_yaml_syntax_error_points_at_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "cases:\n  - id: a\n    prompt: [unclosed\n")
    with pytest.raises(CaseError, match=r"atomic\.yaml: not valid YAML \(line \d+, column \d+\)"):
        load_cases(path)


def test_yes_and_no_answers_stay_text(tmp_path: Path) -> None:
    loaded = load_cases(
        write(
            tmp_path,
            "- {id: a, prompt: p, expect: no}\n- {id: b, prompt: p, expect: {equals: 007}}\n",
        )
    )
    assert loaded[0].expect.value == "no" and loaded[0].evaluate("No.").passed
    assert loaded[1].expect.value == "007" and not loaded[1].evaluate("7").passed


# --- checking -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expect", "reply", "passed"),
    [
        ({"equals": "Paris"}, "  paris. ", True),
        ({"equals": "Paris"}, "Paris is the capital", False),
        ({"equals": "New York"}, "new   york", True),
        ({"equals": "Paris", "case_sensitive": True}, "paris", False),
        ({"equals": "Paris", "case_sensitive": True}, "Paris", True),
        ({"contains": "mars"}, "It is MARS, of course.", True),
        ({"contains": "mars"}, "Jupiter", False),
        ({"regex": r"^\d{4}-\d{2}-\d{2}$"}, " 1969-07-20 ", True),
        ({"regex": "^abc$"}, "ABC", True),
        ({"regex": "^abc$", "case_sensitive": True}, "ABC", False),
        ({"one_of": ["yes", "yep"]}, "Yep!", True),
        ({"one_of": ["yes", "yep"]}, "no", False),
        ({"number": 42}, "The answer is 42.", True),
        ({"number": 42}, "The answer is 42.5", False),
        ({"number": 42, "tolerance": 0.5}, "about 42.5", True),
        ({"number": 42, "tolerance": 0.5}, "about 42.6", False),
        ({"number": -3.5}, "It was -3.5 degrees", True),
        ({"number": 1234567}, "1,234,567 people", True),
        ({"number": 0.5}, "roughly .5", True),
        ({"number": 2000}, "2e3", True),
        ({"number": -7}, "\u22127", True),
        ({"number": 3}, "3 apples and 4 pears", True),
        ({"number": 4}, "3 apples and 4 pears", False),  # the FIRST number counts
        ({"number": 0.1}, "0.1", True),
        ({"number": 0.3, "tolerance": 0}, "0.30000000000000004", True),  # float noise is not a miss
        ({"abstain": True}, "I don\u2019t know.", True),
        ({"abstain": True}, "There is not enough information to say.", True),
        ({"abstain": True}, "It is 42.", False),
    ],
)
def test_expect_kinds(expect: dict[str, Any], reply: str, passed: bool) -> None:
    extra = {"answer": REGEX_ANSWERS[expect["regex"]]} if "regex" in expect else {}
    assert case(expect=expect, **extra).evaluate(reply).passed is passed


REGEX_ANSWERS = {r"^\d{4}-\d{2}-\d{2}$": "1969-07-20", "^abc$": "abc"}


@pytest.mark.parametrize(
    ("text", "number"),
    [
        ("The answer is 42.", 42.0),
        ("-3.5", -3.5),
        ("1,234,567 x", 1234567.0),
        (".5", 0.5),
        ("2e3", 2000.0),
        ("\u22127", -7.0),
        ("$1,000.50", 1000.5),
        ("42nd", 42.0),
        ("10,000", 10000.0),
        ("1,2345", 1.0),
        ("3-5", 3.0),
        ("H2O", None),
        ("v1.2.3", None),
        ("no digits", None),
        ("", None),
    ],
)
def test_first_number_edge_cases(text: str, number: float | None) -> None:
    assert first_number(text) == number


def test_restraint_constraints_are_counted_one_by_one() -> None:
    c = case(
        expect={"equals": "Paris"}, restraint={"max_words": 3, "must_not_contain": ["Lyon", "Nice"]}
    )
    assert c.evaluate("Paris").restraint == 1.0
    rambling = c.evaluate("Paris, not Lyon, obviously.")
    assert not rambling.passed  # the wrong text fails the check ...
    assert rambling.broken == ("max_words<=3", "must_not_contain:Lyon")
    assert rambling.kept == ("must_not_contain:Nice",) and rambling.restraint == pytest.approx(
        1 / 3
    )
    assert (
        "max_words<=3 (4 words)" in rambling.message and "must_not_contain:Lyon" in rambling.message
    )
    assert case(expect={"equals": "Paris"}).evaluate("Paris").restraint is None  # no constraints


def test_restraint_break_alone_does_not_fail() -> None:
    c = case(expect={"contains": "Paris"}, restraint={"max_words": 2, "must_not_contain": "Lyon"})
    result = c.check("It is Paris, not Lyon.")  # right answer, unrestrained
    assert result.passed and result.restraint == 0.0
    assert result.broken == ("max_words<=2", "must_not_contain:Lyon")


def test_abstain_is_both_the_check_and_a_constraint() -> None:
    c = case(restraint={"abstain": True})
    assert c.evaluate("I cannot answer that.") == CheckResult(
        True, 1.0, ("abstain",), (), "c: passed"
    )
    confident = c.evaluate("You had eggs.")
    assert not confident.passed and confident.broken == ("abstain",) and confident.restraint == 0.0


def test_check_raises_a_short_readable_assertion() -> None:
    c = parse_case(
        {"id": "capital-france", "prompt": "p", "expect": {"equals": "Paris"}}, phase="atomic"
    )
    with pytest.raises(AssertionError) as info:
        c.check("Lyon")
    assert str(info.value) == "capital-france: expected equals 'Paris', got 'Lyon'"
    with pytest.raises(AssertionError) as info:
        c.check("x" * 1000)
    assert len(str(info.value)) < 300 and "…" in str(info.value)


def test_number_failure_says_what_was_read() -> None:
    c = case(expect={"number": 42, "tolerance": 0.5})
    assert c.evaluate("about 40").message == "c: expected number 42 ± 0.5, got 'about 40' (read 40)"
    assert "(no number found)" in c.evaluate("forty-two").message


def test_check_hands_every_result_to_the_recorder() -> None:
    c = case(expect={"equals": "Paris"}, restraint={"max_words": 1})
    seen: list[tuple[Case, CheckResult]] = []
    token = CHECK_RECORDER.set(lambda k, r: seen.append((k, r)))
    try:
        c.check("Paris")
        with pytest.raises(AssertionError):
            c.check("Lyon is it")
    finally:
        CHECK_RECORDER.reset(token)
    assert [(k.id, r.passed, r.restraint) for k, r in seen] == [("c", True, 1.0), ("c", False, 0.0)]
    c.check("Paris")  # no recorder: nothing recorded, no error
    assert len(seen) == 2


def test_evaluate_never_raises_on_odd_replies() -> None:
    c = case(expect={"number": 1})
    assert not c.evaluate(None).passed  # type: ignore[arg-type]
    assert c.evaluate(1).passed  # type: ignore[arg-type]


def test_reference_carries_what_simulators_need() -> None:
    c = case(
        expect={"equals": "Paris"},
        restraint={"max_words": 5, "must_not_contain": ["Lyon"]},
        sim={"difficulty": 0.7},
    )
    ref = c.reference(run=3, attempt=1, variant="atomic", spec_id="abc", seed=9)
    assert ref == Reference(
        case_id="c", phase="atomic", answer="Paris", wrong_answer="I am not sure.", difficulty=0.7,
        run=3, attempt=1, variant="atomic", spec_id="abc", seed=9, max_words=5, forbidden=("Lyon",),
        abstain=False,
    )  # fmt: skip


def test_find_case_and_repr() -> None:
    loaded = [case(id="capital-france", expect="Paris"), case(id="sum-small", expect={"number": 1})]
    assert find_case(loaded, "sum-small") is loaded[1]
    with pytest.raises(KeyError, match="did you mean capital-france"):
        find_case(loaded, "capital-franse")
    assert repr(loaded[0]) == "Case('capital-france')"


def test_cases_module_does_not_import_pytest() -> None:
    source = Path(cases_mod.__file__).read_text()
    assert "import pytest" not in source and "from pytest " not in source


# --- properties ---------------------------------------------------------------------------

TEXT = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1, max_size=30
)
WORDY = st.text(
    "abcdefghijklmnopqrstuvwxyzABC XYZ0123456789.,!?'-", min_size=1, max_size=30
).filter(lambda s: any(ch.isalnum() for ch in s))


def _holds(raw: dict[str, Any]) -> Case | None:
    try:
        c = parse_case({"id": "g", "prompt": "p", **raw}, phase="gen")
    except CaseError:
        return None
    assert c.evaluate(c.answer).passed and c.evaluate(c.answer).restraint in (None, 1.0)
    assert not c.evaluate(c.wrong_answer).passed
    return c


@settings(max_examples=200, deadline=None)
@given(kind=st.sampled_from(["equals", "contains"]), value=WORDY, cs=st.booleans())
def test_text_answers_pass_and_wrong_answers_fail(kind: str, value: str, cs: bool) -> None:
    assert _holds({"expect": {kind: value, "case_sensitive": cs}}) is not None  # never refused


@settings(max_examples=200, deadline=None)
@given(values=st.lists(WORDY, min_size=1, max_size=4))
def test_one_of_answers_pass_and_wrong_answers_fail(values: list[str]) -> None:
    assert _holds({"expect": {"one_of": values}}) is not None


@settings(max_examples=300, deadline=None)
@given(
    value=st.one_of(st.integers(-(10**12), 10**12), st.floats(-1e12, 1e12, allow_nan=False)),
    tolerance=st.one_of(st.just(0), st.floats(0, 1e6, allow_nan=False)),
)
def test_number_answers_pass_and_wrong_answers_fail(value: float, tolerance: float) -> None:
    c = _holds({"expect": {"number": value, "tolerance": tolerance}})
    assert c is not None and math.isclose(
        first_number(c.answer) or 0.0, float(value), abs_tol=1e-300
    )


@settings(max_examples=200, deadline=None)
@given(value=TEXT, kind=st.sampled_from(["equals", "contains", "one_of"]))
def test_any_text_either_loads_consistently_or_is_a_case_error(value: str, kind: str) -> None:
    _holds({"expect": {kind: [value] if kind == "one_of" else value}})


@settings(max_examples=200, deadline=None)
@given(reply=st.text(max_size=200))
def test_evaluate_is_total(reply: str) -> None:
    c = case(expect={"number": 3}, restraint={"max_words": 3, "must_not_contain": ["x"]})
    result = c.evaluate(reply)
    assert result.restraint is not None and 0.0 <= result.restraint <= 1.0
    assert len(result.kept) + len(result.broken) == 2


# --------------------------------------------------------------------------- regex budget


def test_a_catastrophic_regex_is_refused_at_load_naming_the_key(tmp_path: Path) -> None:
    path = tmp_path / "atomic.yaml"
    path.write_text(
        "cases:\n  - id: redos\n    prompt: Say a\n    expect: {regex: '^(a+)+$'}\n"
        "    answer: a\n    wrong_answer: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa!\n"
    )
    with pytest.raises(CaseError) as err:
        load_cases(path)
    message = str(err.value)
    assert message.startswith(f"{path}: cases[0].expect.regex: on the wrong answer 'aaaa")
    assert "backtracks exponentially" in message


def test_the_regex_budget_leaves_a_running_timer_armed() -> None:
    import signal

    from pytest_selfopt.suite.checks import regex_search

    fired: list[int] = []
    previous = signal.signal(signal.SIGALRM, lambda *_: fired.append(1))
    try:
        signal.setitimer(signal.ITIMER_REAL, 30.0)
        assert regex_search("b+", "abbbc")
        left, _ = signal.getitimer(signal.ITIMER_REAL)
        assert 25.0 < left <= 30.0 and signal.getsignal(signal.SIGALRM) is not None
        assert not fired
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
