"""Cases: one prompt, its expected answer and its restraint constraints, loaded from YAML.

A cases file (the phase defaults to the file's stem; a bare top-level list of cases works too)::

    phase: atomic
    cases:
      - id: capital-france          # required, unique, [a-z0-9][a-z0-9._-]*: the pytest id
        prompt: What is the capital of France?
        expect: {equals: Paris}     # exactly one kind, see below; `expect: Paris` is equals
        restraint: {max_words: 5, must_not_contain: [Lyon]}
        answer: Paris               # optional reply that passes; required for regex
        wrong_answer: Lyon          # optional reply that fails (derived when absent)
        sim: {difficulty: 0.3}      # optional, 0..1, read by simulated models only

Expect kinds (case-insensitive unless ``case_sensitive: true``; replies are whitespace-trimmed
and collapsed, and ``equals``/``one_of`` ignore trailing ``.``/``!``):

* ``{equals: Paris}``, ``{contains: Paris}``, ``{one_of: [Paris, paris city]}``
* ``{regex: "^P\\w+s$"}`` (``re.search``)
* ``{number: 42, tolerance: 0.5}``: the first number of the reply (``-3.5``, ``1,234``,
  ``.5``, ``2e3``) within the absolute tolerance (default 0)
* ``{abstain: true}`` (or ``restraint: {abstain: true}``): the reply must decline, e.g.
  "I don't know", "not enough information", "cannot answer"

Restraint constraints (a sample's restraint is the fraction kept): ``max_words`` (at most N
words), each ``must_not_contain`` string (absent, case-insensitive), ``abstain``. A wrong
answer fails the test; broken restraint alone does not (it is recorded and gated) but is
named in the failure message.

Every case's answer is checked to pass (and keep its restraint) and its wrong answer to fail,
at load time, so simulators and tests can rely on both.
"""

from __future__ import annotations

import contextvars
import difflib
import inspect
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pytest_selfopt.models.base import Reference
from pytest_selfopt.suite.checks import (
    Expect,
    RegexTimeout,
    abstains,
    first_number,
    format_number,
    norm,
)
from pytest_selfopt.suite.yamlread import ConfigError, Reader, load_yaml, show

KINDS: tuple[str, ...] = ("equals", "contains", "regex", "one_of", "number", "abstain")
CASE_KEYS: tuple[str, ...] = (
    "id",
    "prompt",
    "expect",
    "restraint",
    "answer",
    "wrong_answer",
    "sim",
)
CASE_ID = re.compile(r"[a-z0-9][a-z0-9._-]*")
PHASE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_WRONG_TEXTS = ("I am not sure.", "No answer.", "42", "xyzzy", "?")
_REPLY_SHOWN = 200


class CaseError(ConfigError):
    """A bad cases file: same ``path: key: expected ..., got ...`` shape as ConfigError."""


@dataclass(frozen=True)
class CheckResult:
    """One reply checked: ``restraint`` is kept/total constraints, None when a case has none."""

    passed: bool
    restraint: float | None
    kept: tuple[str, ...]
    broken: tuple[str, ...]
    message: str


#: Set by the plugin: called with every ``Case.check`` result, so restraint is recorded
#: even when the test then fails.
CHECK_RECORDER: contextvars.ContextVar[Callable[[Case, CheckResult], None] | None] = (
    contextvars.ContextVar("selfopt_check_recorder", default=None)
)


@dataclass(frozen=True, repr=False)
class Case:
    """One prompt with its check. Build it with :func:`load_cases` or :func:`parse_case`."""

    id: str
    phase: str
    prompt: str
    expect: Expect
    max_words: int | None = None
    must_not_contain: tuple[str, ...] = ()
    abstain: bool = False
    answer: str = ""
    wrong_answer: str = ""
    difficulty: float = 0.5
    source: str = ""
    #: Index in its cases file (``load_cases``); the simulator's cold start hits the first ones.
    position: int | None = field(default=None, compare=False)

    def __repr__(self) -> str:
        return f"Case({self.id!r})"

    def evaluate(self, reply: str) -> CheckResult:
        """Check a reply (pure, never raises): passed, and which restraint constraints held."""
        text = reply if isinstance(reply, str) else ("" if reply is None else str(reply))
        try:
            passed = self.expect.matches(text)
            checks = self._constraints(text)
        except Exception as exc:  # noqa: BLE001 - a pathological regex must not crash a run
            return CheckResult(False, None, (), (), f"{self.id}: could not check the reply: {exc}")
        kept = tuple(name for name, ok, _ in checks if ok)
        broken = [(name, detail) for name, ok, detail in checks if not ok]
        restraint = len(kept) / len(checks) if checks else None
        if passed:
            message = f"{self.id}: passed"
        else:
            message = f"{self.id}: expected {self.expect.describe()}, got {_short(text)}"
            if self.expect.kind == "number":
                got = first_number(text)
                message += " (no number found)" if got is None else f" (read {format_number(got)})"
        if broken:
            message += "; restraint broken: " + ", ".join(
                n + (f" ({d})" if d else "") for n, d in broken
            )
        return CheckResult(passed, restraint, kept, tuple(n for n, _ in broken), message)

    def check(self, reply: str) -> CheckResult:
        """Evaluate, hand the result to the recorder, and fail the test on a wrong answer."""
        result = self.evaluate(reply)
        recorder = CHECK_RECORDER.get()
        if recorder is not None:
            recorder(self, result)
        if not result.passed:
            raise AssertionError(result.message)
        return result

    def reference(
        self, *, run: int, attempt: int, variant: str, spec_id: str, seed: int
    ) -> Reference:
        """What a simulated model may see about this case (never a real one)."""
        return Reference(
            case_id=self.id, phase=self.phase, answer=self.answer, wrong_answer=self.wrong_answer,
            difficulty=self.difficulty, run=run, attempt=attempt, variant=variant,
            spec_id=spec_id, seed=seed, max_words=self.max_words,
            forbidden=self.must_not_contain, abstain=self.abstain, position=self.position,
        )  # fmt: skip

    def _constraints(self, reply: str) -> list[tuple[str, bool, str]]:
        out: list[tuple[str, bool, str]] = []
        if self.max_words is not None:
            words = len(reply.split())
            out.append((f"max_words<={self.max_words}", words <= self.max_words, f"{words} words"))
        folded = reply.casefold()
        for text in self.must_not_contain:
            out.append((f"must_not_contain:{text}", text.casefold() not in folded, ""))
        if self.abstain:
            out.append(("abstain", abstains(reply), ""))
        return out


def find_case(cases: Iterable[Case], case_id: str) -> Case:
    """The case with this id; KeyError with a did-you-mean otherwise."""
    cases = list(cases)
    for case in cases:
        if case.id == case_id:
            return case
    close = difflib.get_close_matches(case_id, [c.id for c in cases], n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise KeyError(f"no case with id {case_id!r}{hint}")


def load_cases(path: str | Path, phase: str | None = None) -> list[Case]:
    """Load a cases file. A relative path is looked up next to the calling source file, then in
    the working directory, so ``load_cases("atomic.yaml")`` works from any cwd. ``phase``
    overrides the file's ``phase:``, which defaults to the file stem."""
    frame = inspect.currentframe()
    caller = frame.f_back if frame is not None else None
    file, looked = _resolve(Path(path), caller.f_code.co_filename if caller is not None else None)
    del frame, caller
    r = Reader(file, CaseError)
    doc = load_yaml(file, CaseError, f"file not found{looked}")
    if isinstance(doc, list):
        raw_cases, file_phase = doc, None
    else:
        if doc is None:
            r.fail("", "cases", message="the file is empty; expected `cases:` with a list of cases")
        top = r.mapping(doc, "", ["phase", "cases"])
        if "cases" not in top:
            r.missing("cases", "a list of cases (- id: ..., prompt: ..., expect: ...)")
        raw_cases = r.items(
            top["cases"], "cases", "a list of cases (- id: ..., prompt: ..., expect: ...)"
        )
        file_phase = top.get("phase")
    phase_name = r.string(
        phase if phase is not None else file_phase if file_phase is not None else file.stem,
        "phase", PHASE_NAME, "a phase name of letters, digits and ._-",
    )  # fmt: skip
    if not raw_cases:
        r.fail("cases", "at least one case", raw_cases)
    out: list[Case] = []
    first_seen: dict[str, int] = {}
    for i, raw in enumerate(raw_cases):
        case = parse_case(raw, phase=phase_name, path=file, key=f"cases[{i}]")
        if case.id in first_seen:
            j = first_seen[case.id]
            r.fail(f"cases[{i}].id", "a unique id", message=(
                f"expected a unique id, got {case.id!r}, which cases[{j}] already uses"))  # fmt: skip
        first_seen[case.id] = i
        out.append(replace(case, position=i))
    return out


def _resolve(path: Path, caller_file: str | None) -> tuple[Path, str]:
    """Next to the caller's source file, else the working directory; and where we looked."""
    if path.is_absolute():
        return path, ""
    here = Path.cwd() / path
    if not caller_file or caller_file.startswith("<"):  # an interactive or exec'd caller
        return here, ""
    nearby = Path(caller_file).resolve().parent / path
    looked = f" (looked next to {Path(caller_file).name} and in the working directory {Path.cwd()})"
    return (nearby, "") if nearby.exists() else (here, "") if here.exists() else (nearby, looked)


def parse_case(raw: Any, *, phase: str, path: str | Path = "<cases>", key: str = "case") -> Case:
    """Validate one case mapping (as in a cases file) into a :class:`Case`; raises CaseError."""
    r = Reader(path, CaseError)
    m = r.mapping(raw, key, CASE_KEYS)
    if "id" not in m:
        r.missing(f"{key}.id", "a case id like capital-france")
    if "prompt" not in m:
        r.missing(f"{key}.prompt", "the prompt text")
    case_id = r.string(m["id"], f"{key}.id", CASE_ID,
                       "an id of lowercase letters, digits and ._- (it becomes the pytest id)")  # fmt: skip
    rkey = f"{key}.restraint"
    restraint = r.mapping(_opt(m, "restraint"), rkey, ["max_words", "must_not_contain", "abstain"])
    abstain = r.boolean(restraint.get("abstain", False), f"{rkey}.abstain")
    if "expect" not in m and not abstain:
        r.missing(f"{key}.expect", f"exactly one of {', '.join(KINDS)}, e.g. {{equals: Paris}}")
    expect = _expect(r, m["expect"], f"{key}.expect") if "expect" in m else Expect("abstain", True)
    if abstain and expect.kind != "abstain":
        r.fail(f"{rkey}.abstain", "abstain: true only with expect: {abstain: true}", message=(
            f"abstain: true means the reply must decline, but expect wants {expect.describe()}"))  # fmt: skip
    max_words = restraint.get("max_words")
    forbidden = restraint.get("must_not_contain", [])
    if not isinstance(forbidden, str):
        r.items(forbidden, f"{rkey}.must_not_contain", "a list of strings")
    forbidden = [forbidden] if isinstance(forbidden, str) else forbidden
    for j, text in enumerate(forbidden):
        r.string(text, f"{rkey}.must_not_contain[{j}]", what="a non-empty string")
    sim = r.mapping(_opt(m, "sim"), f"{key}.sim", ["difficulty"])
    line = getattr(raw, "line", 0)
    case = Case(
        id=case_id, phase=phase, prompt=r.string(m["prompt"], f"{key}.prompt", what="the prompt text"),
        expect=expect, must_not_contain=tuple(forbidden), abstain=expect.kind == "abstain",
        max_words=None if max_words is None else r.integer(max_words, f"{rkey}.max_words", lo=1),
        difficulty=r.number(sim.get("difficulty", 0.5), f"{key}.sim.difficulty", 0, 1),
        source=f"{Path(path).name}:{line}" if line else Path(path).name,
    )  # fmt: skip
    return _with_answers(r, case, m, key)


def _text(r: Reader, value: Any, key: str, what: str) -> str:
    """A scalar as text (YAML may hand us 42 or true where a person meant the text)."""
    if isinstance(value, bool):
        value = "true" if value else "false"
    elif isinstance(value, int | float):
        value = format_number(value) if math.isfinite(value) else str(value)
    if not isinstance(value, str) or not norm(value, False, final=True):
        r.fail(key, what, value)
    return value


def _expect(r: Reader, raw: Any, key: str) -> Expect:
    if not isinstance(raw, Mapping) and not isinstance(raw, list):
        return Expect("equals", _text(r, raw, key, "an expected answer, or {kind: value}"))
    kinds_text = ", ".join(KINDS)
    m = r.mapping(raw, key, [*KINDS, "tolerance", "case_sensitive"])
    kinds = [k for k in m if k in KINDS]
    if len(kinds) != 1:
        r.fail(key, f"exactly one of {kinds_text}", m)
    kind, value = kinds[0], m[kinds[0]]
    vkey = f"{key}.{kind}"
    if "tolerance" in m and kind != "number":
        r.fail(
            f"{key}.tolerance",
            "tolerance with number: only",
            message="tolerance applies to number: only",
        )
    if "case_sensitive" in m and kind in ("number", "abstain"):
        r.fail(f"{key}.case_sensitive", "case_sensitive with text kinds only",
               message=f"case_sensitive does not apply to {kind}:")  # fmt: skip
    cs = r.boolean(m.get("case_sensitive", False), f"{key}.case_sensitive")
    if kind == "number":
        tol = r.number(m.get("tolerance", 0), f"{key}.tolerance", lo=0)
        return Expect("number", r.number(value, vkey), tol)
    if kind == "abstain":
        if value is not True:
            r.fail(vkey, "true (the reply must decline to answer)", value)
        return Expect("abstain", True)
    if kind == "one_of":
        items = r.items(value, vkey, "a non-empty list of accepted answers")
        if not items:
            r.fail(vkey, "a non-empty list of accepted answers", items)
        texts = tuple(
            _text(r, v, f"{vkey}[{i}]", "an accepted answer") for i, v in enumerate(items)
        )
        return Expect("one_of", texts, case_sensitive=cs)
    text = _text(
        r, value, vkey, "a regular expression" if kind == "regex" else "a non-empty expected answer"
    )
    if kind == "regex":
        try:
            re.compile(text)
        except re.error as exc:
            r.fail(vkey, "a valid regular expression", message=(
                f"expected a valid regular expression, got {show(text)} ({exc})"))  # fmt: skip
    return Expect(kind, text, case_sensitive=cs)


def _derived_answer(expect: Expect) -> str | None:
    if expect.kind in ("equals", "contains"):
        return str(expect.value)
    if expect.kind == "one_of":
        return str(expect.value[0])
    if expect.kind == "number":
        return format_number(expect.value)
    if expect.kind == "abstain":
        return "I don't know."
    return None  # regex: no way to invent a matching reply


def _derived_wrong(expect: Expect) -> list[str]:
    if expect.kind == "abstain":
        return ["The answer is 42.", "Yes."]
    if expect.kind == "number":
        v, tol = expect.value, expect.tolerance
        return [
            format_number(x) for x in (v + tol + 1, v - tol - 1, v + tol + abs(v), v - tol - abs(v))
        ]
    pool = "xqzjkwv#@%&0123456789"
    folded = "".join(
        str(v).casefold() for v in (expect.value if expect.kind == "one_of" else (expect.value,))
    )
    spare = [c * 3 for c in pool if c not in folded][:1]
    return [*_WRONG_TEXTS, *spare]


def _with_answers(r: Reader, case: Case, m: Mapping[str, Any], key: str) -> Case:
    """Give the case a reply that passes and one that fails, both proven against the check."""
    if "answer" in m:
        answer = _text(r, m["answer"], f"{key}.answer", "a reply that passes the check")
    else:
        derived = _derived_answer(case.expect)
        if derived is None:
            r.missing(
                f"{key}.answer",
                "a reply that matches the regex (regex cases need an explicit answer)",
            )
        answer = derived
    _within_budget(r, case, answer, key, "answer")
    result = case.evaluate(answer)
    where = f"{key}.answer" if "answer" in m else f"{key}.restraint"
    if not result.passed:
        r.fail(f"{key}.answer", f"a reply that passes the check ({case.expect.describe()})", answer)
    if result.broken:
        r.fail(where, "constraints the right answer can keep", message=(
            f"expected constraints the answer {show(answer)} can keep; it breaks {', '.join(result.broken)}"))  # fmt: skip
    if "wrong_answer" in m:
        wrong = _text(r, m["wrong_answer"], f"{key}.wrong_answer", "a reply that fails the check")
        _within_budget(r, case, wrong, key, "wrong answer")
        if case.evaluate(wrong).passed:
            r.fail(
                f"{key}.wrong_answer",
                f"a reply that fails the check ({case.expect.describe()})",
                wrong,
            )
    else:
        derived_wrong = _derived_wrong(case.expect)
        for w in derived_wrong:
            _within_budget(r, case, w, key, "derived wrong answer")
        candidates = [w for w in derived_wrong if not case.evaluate(w).passed]
        if not candidates:
            r.missing(
                f"{key}.wrong_answer", "a reply that fails the check (none could be derived for it)"
            )
        wrong = candidates[0]
    return replace(case, answer=answer, wrong_answer=wrong)


def _within_budget(r: Reader, case: Case, reply: str, key: str, what: str) -> None:
    """A regex that cannot judge this case's own replies in time is refused at load."""
    if case.expect.kind != "regex":
        return
    try:
        case.expect.matches(reply)
    except RegexTimeout as exc:
        r.fail(f"{key}.expect.regex", "a regex that checks a reply in time",
               message=f"on the {what} {show(reply)}: {exc}")  # fmt: skip


def _short(reply: str) -> str:
    text = reply.strip()
    return repr(text if len(text) <= _REPLY_SHOWN else text[:_REPLY_SHOWN] + "…")


def _opt(m: Mapping[str, Any], key: str) -> Any:
    """An optional sub-mapping; absent or left empty means none."""
    return {} if m.get(key) is None else m[key]
