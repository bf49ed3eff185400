"""Judging a reply: the expect kinds, number parsing and abstention phrases.

Pure text functions, apart from loading, so a case's check reads the same in a test,
in the simulator's self-check at load time, and in a user's own code.
"""

from __future__ import annotations

import math
import re
import signal
import threading
import time
from dataclasses import dataclass
from types import FrameType
from typing import Any

ABSTENTIONS: tuple[str, ...] = (
    "i don't know", "i do not know", "i dont know", "i'm not sure", "i am not sure",
    "im not sure", "cannot answer", "can't answer", "unable to answer", "unknown",
    "not enough information", "insufficient information", "don't have enough information",
    "do not have enough information", "cannot be determined", "can't be determined",
    "cannot determine", "can't determine", "no way to know", "i have no idea",
    "impossible to know", "impossible to say",
)  # fmt: skip
_ABSTAIN = re.compile(r"\b(?:" + "|".join(re.escape(p) for p in ABSTENTIONS) + r")\b")
_NUMBER = re.compile(
    r"(?<![\w.])([-+\u2212]?)"
    r"((?:[0-9]{1,3}(?:,[0-9]{3})+(?![0-9])|[0-9]+)(?:\.[0-9]+)?|\.[0-9]+)"
    r"([eE][-+]?[0-9]+)?"
)


#: Seconds one regex check may take. Python's ``re`` has no timeout, and a pattern with nested
#: repetition (``^(a+)+$``) takes exponential time on some replies: without a budget one
#: hostile cases file or model reply would hang the session (docs/reliability.md).
REGEX_BUDGET_S = 1.0


class RegexTimeout(Exception):
    """A regex check took longer than REGEX_BUDGET_S (catastrophic backtracking)."""


def _expire(signum: int, frame: FrameType | None) -> None:
    raise RegexTimeout(
        f"the regex took more than {REGEX_BUDGET_S:g} s on this reply (nested repetition "
        "like (a+)+ backtracks exponentially); simplify the pattern"
    )


def regex_search(pattern: str, text: str, flags: int = 0) -> bool:
    """``re.search`` under REGEX_BUDGET_S (``re`` checks for signals while it matches).

    Needs the main thread (elsewhere it runs unbounded, as plain ``re.search`` would). A
    timer already running (pytest-timeout, the caller's alarm) is honoured: when it is due
    first nothing changes, else it is suspended and re-armed with the time it had left."""
    if not hasattr(signal, "setitimer") or threading.current_thread() is not (
        threading.main_thread()
    ):
        return re.search(pattern, text, flags) is not None
    outer_left, outer_interval = signal.getitimer(signal.ITIMER_REAL)
    if outer_left and outer_left <= REGEX_BUDGET_S:
        return re.search(pattern, text, flags) is not None
    started = time.monotonic()
    previous = signal.signal(signal.SIGALRM, _expire)
    try:
        try:
            signal.setitimer(signal.ITIMER_REAL, REGEX_BUDGET_S)
            return re.search(pattern, text, flags) is not None
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    finally:
        # Again: a Ctrl-C (KeyboardInterrupt between two bytecodes) can cut the line above
        # short, and a timer left running with the default SIGALRM handler back in place
        # would kill the process a second later. One interrupt cuts one clause, not both.
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer_left:
            left = max(outer_left - (time.monotonic() - started), 1e-3)
            signal.setitimer(signal.ITIMER_REAL, left, outer_interval)


@dataclass(frozen=True)
class Expect:
    """What counts as the right answer; ``value`` is text, a tuple of texts or a float."""

    kind: str
    value: Any
    tolerance: float = 0.0
    case_sensitive: bool = False

    def describe(self) -> str:
        if self.kind == "one_of":
            return "one of " + ", ".join(repr(v) for v in self.value)
        if self.kind == "number":
            tol = f" ± {format_number(self.tolerance)}" if self.tolerance else ""
            return f"number {format_number(self.value)}{tol}"
        if self.kind == "abstain":
            return 'an abstention (like "I don\'t know")'
        return f"{self.kind} {self.value!r}"

    def matches(self, reply: str) -> bool:
        if self.kind == "abstain":
            return abstains(reply)
        if self.kind == "number":
            got = first_number(reply)
            slack = self.tolerance + 1e-9 * max(1.0, abs(self.value))  # float noise is not a miss
            return got is not None and abs(got - self.value) <= slack
        if self.kind == "regex":
            flags = 0 if self.case_sensitive else re.IGNORECASE
            return regex_search(self.value, reply.strip(), flags)
        if self.kind == "contains":
            return norm(self.value, self.case_sensitive) in norm(reply, self.case_sensitive)
        options = self.value if self.kind == "one_of" else (self.value,)
        got_text = norm(reply, self.case_sensitive, final=True)
        return any(norm(v, self.case_sensitive, final=True) == got_text for v in options)


def abstains(reply: str) -> bool:
    """Does the reply decline to answer (one of :data:`ABSTENTIONS`)?"""
    return _ABSTAIN.search(" ".join(reply.replace("\u2019", "'").casefold().split())) is not None


def first_number(reply: str) -> float | None:
    """The first number in a reply: ``-3.5``, ``1,234``, ``.5``, ``2e3``; None if there is none."""
    found = _NUMBER.search(reply)
    if found is None:
        return None
    sign = "-" if found[1] in ("-", "\u2212") else ""
    try:
        value = float(sign + found[2].replace(",", "") + (found[3] or ""))
    except (ValueError, OverflowError):
        return None
    return value if math.isfinite(value) else None


def format_number(value: float) -> str:
    """``42`` not ``42.0``; exact repr otherwise, so it parses back to the same float."""
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def norm(text: str, case_sensitive: bool, final: bool = False) -> str:
    """Trimmed, whitespace collapsed, casefolded unless case-sensitive; ``final`` also drops
    trailing ``.``/``!`` (``Paris.`` equals ``Paris``)."""
    out = " ".join(text.split())
    if final:
        out = out.rstrip(".!").rstrip()
    return out if case_sensitive else out.casefold()
